"""Layer 4, study: ``analysis`` (per-layer errors), ``energy`` (operation counts), ``export`` (NIR), ``compare``
(paired comparisons), ``theory`` (TTRBR's theorems), ``datta`` (Datta & Beerel's analysis). Imports the layers below."""
