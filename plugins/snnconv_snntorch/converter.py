"""Convert any snnconv method into a single-step snnTorch network of :class:`~snnconv_snntorch.nodes.Neuron` modules."""
from __future__ import annotations

from typing import Iterable, Optional

import torch.nn as nn
from torch import fx

from snnconv_ext.conversion import pipeline
from snnconv_ext.conversion.registry import get as get_method
from snnconv_ext.core.pooling import GatedMaxPool

from .nodes import Neuron, Window

__all__ = ["convert"]


def _as_sequential(gm: fx.GraphModule) -> Optional[nn.Sequential]:
    """A chain of modules (each node feeding only the next) as ``nn.Sequential``, else None."""
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    prev = next(n for n in gm.graph.nodes if n.op == "placeholder")
    for n in nodes:
        if n.op != "call_module" or n.args != (prev,) or n.kwargs or len(prev.users) != 1:
            return None
        prev = n
    return nn.Sequential(*[gm.get_submodule(n.target) for n in nodes])


def convert(model: nn.Module, method: str = "percentile", calib_data: Iterable = None,
            max_batches: Optional[int] = None, progress: bool = True, spike_grad=None, **options) -> nn.Module:
    """Convert a copy of ``model`` into a single-step snnTorch network (``init_hidden=True`` neurons) that
    returns each step's output current; sum over steps for the logits. The conversion order is the pipeline's
    (``snnconv_ext.conversion.pipeline.convert_model``); calibration simulates with :class:`Window`.

    Max pooling becomes ``snnconv_ext.core.pooling.GatedMaxPool`` in single-step mode, which keeps a state of its
    own: ``snntorch.utils.reset`` resets snnTorch's neurons only, so reset such a network with
    ``snnconv_ext.core.simulation.reset(net)`` (which ``simulate_net`` / ``evaluate`` call)."""
    options.pop("native", None)  # SpikingJelly-only option
    m = get_method(method, **options)
    gm = pipeline.convert_model(model, m, calib_data, lambda p: Neuron(p, init_hidden=True, spike_grad=spike_grad),
                                sim_node=Window, max_batches=max_batches, progress=progress,
                                pool=lambda pool: GatedMaxPool(pool, step_mode="s"))
    seq = _as_sequential(gm)
    net = seq if seq is not None else gm
    net.step_mode = "s"
    net.meta = {k: gm.meta.get(k) for k in ("input_shape", "snnconv_method", "snnconv_folding", "snnconv_options",
                                          "snnconv_T", "snnconv_rewrites", "snnconv_maxpool")}
    return net
