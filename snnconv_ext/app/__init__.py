"""Layer 5, app: the ``snnconv`` command line (``cli``), ``bench``, ``demo``, ``train`` (zoo training recipes),
``tuning`` (``snnconv finetune``) and ``baselines`` (SpikingJelly's own recipes as comparison rows: the only module
of the package that imports a framework)."""
