"""Backend dispatch, once: a backend is a plugin module exposing ``convert(model, method, calib_data, **options)``.

SpikingJelly is the default (its ``FXConverter`` runs our recipe); snnTorch gives a single-step ``nn.Sequential`` /
``GraphModule`` of snnTorch neurons. Plugins are found by name (``importlib``): the core never imports a
framework, and a plugin registers its node types with :mod:`snnconv_ext.core.nodes` when it loads.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Iterable, Optional

import torch.nn as nn

__all__ = ["BACKENDS", "plugin", "convert_method"]

BACKENDS = {"spikingjelly": "snnconv_spikingjelly", "snntorch": "snnconv_snntorch"}


def plugin(backend: str) -> ModuleType:
    """The plugin module of ``backend`` (imported, so its node types are registered)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {sorted(BACKENDS)}")
    return importlib.import_module(BACKENDS[backend])


def convert_method(model: nn.Module, method: str = "percentile", calib_data: Optional[Iterable] = None,
                   backend: str = "spikingjelly", **options) -> nn.Module:
    """Convert ``model`` with one registered ``method`` in ``backend`` (``options``: method fields or backend options)."""
    return plugin(backend).convert(model, method=method, calib_data=calib_data, **options)
