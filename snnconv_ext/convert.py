"""``snnconv_ext.convert``: one entry point, dispatched to a backend plugin.

The core is backend-neutral; a backend is a plugin module exposing ``convert(model, method, calib_data,
**options)``. SpikingJelly is the default (its ``FXConverter`` runs our recipe); snnTorch gives a
single-step ``nn.Sequential`` / ``GraphModule`` of snnTorch neurons.
"""
from __future__ import annotations

import importlib
from typing import Iterable, Optional

import torch.nn as nn

__all__ = ["convert", "BACKENDS"]

BACKENDS = {"spikingjelly": "snnconv_spikingjelly", "snntorch": "snnconv_snntorch"}


def convert(model: nn.Module, method: str = "percentile", calib_data: Optional[Iterable] = None,
            backend: str = "spikingjelly", **options) -> nn.Module:
    """Convert ``model`` (eval mode) with a registered ``method`` using ``calib_data`` to set thresholds.

    ``options`` override the method's fields (``p=99.99``, ``granularity="channel"``, ``fire_at=0.5`` ...)
    or are backend options (``native=False``, ``max_batches=4``, ``progress=False``). ``method="auto"`` (needs
    ``T=``) picks the best applicable method on held-out calibration images (:func:`snnconv_ext.auto.convert_auto`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {sorted(BACKENDS)}")
    if method == "auto":
        from .auto import convert_auto
        return convert_auto(model, calib_data, backend=backend, **options)
    plugin = importlib.import_module(BACKENDS[backend])
    return plugin.convert(model, method=method, calib_data=calib_data, **options)
