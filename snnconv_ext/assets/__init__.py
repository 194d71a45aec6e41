"""Layer 2, assets: ``data`` (loaders that fail loudly), ``models`` (the papers' nets), ``zoo`` (checkpoints with a
sha256 manifest, files in ``zoo/``). Imports only ``core``."""
