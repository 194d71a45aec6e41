"""SpikingJelly's own conversion recipes, unchanged, as comparison rows (``sj-*`` in ``snnconv bench``): the bar.

``sj-best`` is ``RateCodingRecipe`` as its examples configure it at its strongest (channel-wise 99.9%, half
threshold); ``sj-ltb`` is its ``LocalThresholdBalancingRecipe`` (Bu et al., CVPR 2025) with its defaults. This is the
only module of ``snnconv_ext`` that imports a framework: these rows *are* SpikingJelly's code.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Dict, Optional

import torch
import torch.nn as nn

from ..conversion.backends import plugin

__all__ = ["SJ_RECIPES", "SJ_BATCH", "sj_convert"]

# SpikingJelly's own recipes, as its examples configure them.
SJ_RECIPES: Dict[str, Dict] = {
    "sj-max": {"mode": "Max"},
    "sj-99.9": {"mode": "99.9%"},
    "sj-best": {"mode": "99.9%", "channel_wise": True, "half_threshold": True},
    "sj-ltb": {"recipe": "LocalThresholdBalancingRecipe"},  # its defaults (channel-wise, half threshold)
}
SJ_BATCH = 64  # evaluation batch of SpikingJelly's recipes on CPU (fastest in our measurement)


def sj_convert(model: nn.Module, name: str, calib, device: Optional[torch.device] = None,
               progress: bool = True) -> nn.Module:
    """Convert with SpikingJelly's recipe unchanged (``RateCodingRecipe``, or ``LocalThresholdBalancingRecipe``
    for ``sj-ltb``); return it in multi-step mode (per-step readout, summed by ``snnconv_ext.core.simulation``).
    ``progress=False`` drops the recipe's calibration progress bar (SpikingJelly's has no off switch)."""
    from spikingjelly.activation_based import ann2snn, functional

    if name not in SJ_RECIPES:
        raise KeyError(f"unknown SpikingJelly recipe {name!r}; available: {sorted(SJ_RECIPES)}")
    plugin("spikingjelly")  # registers SpikingJelly's node types with the core (energy, analysis, export)
    opts = dict(SJ_RECIPES[name])
    cls = getattr(ann2snn, opts.pop("recipe", "RateCodingRecipe"))
    recipe = cls(dataloader=calib, **opts)
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    with quiet:
        net = ann2snn.FXConverter(recipe=recipe, device=device).convert(copy.deepcopy(model))
    functional.set_step_mode(net, "m")
    return net
