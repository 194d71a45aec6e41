"""Layer 3, conversion: ``registry`` (methods), ``thresholds`` and ``alphabeta`` (threshold strategies), ``graph``
(surgery only), ``normalize`` (the canonical graph every method sees), ``calibrate`` (the calibration engine), ``pipeline`` (the conversion order, once), ``backends``
(dispatch, once), ``auto`` (the front door ``convert`` and ``method="auto"``), ``training`` (fine-tuning in the SNN).
Imports ``core`` and ``assets``; never a framework (backends are plugins, found by name)."""
