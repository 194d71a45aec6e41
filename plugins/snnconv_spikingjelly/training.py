"""Fine-tuning's SpikingJelly side: every spiking node of a converted network becomes a trainable
:class:`~snnconv_spikingjelly.nodes.SnnconvNode` with the same knobs. Registered with ``snnconv_ext.core.nodes`` as
the trainer of ``BaseNode`` networks; ``snnconv_ext.conversion.training`` (backend-neutral) calls it."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from spikingjelly.activation_based import base, neuron as sj_neuron

from snnconv_ext.conversion.graph import set_module
from snnconv_ext.conversion.training import DattaSurrogate
from snnconv_ext.core import nodes as core_nodes
from snnconv_ext.core.nodes import FinetuneError, params_of, spiking_modules

from .nodes import SnnconvNode

__all__ = ["prepare"]


def prepare(snn: nn.Module, trainable: Sequence[str] = ("v_threshold", "leak"), surrogate: str = "datta") -> nn.Module:
    """Swap every spiking node of ``snn`` in place for an ``SnnconvNode`` with the same neuron (``params_of``)
    whose ``trainable`` knobs are ``nn.Parameter``s, with Datta's surrogate (``"datta"``) or the node's own
    (``"native"``). Refuses, naming the layer, stateful layers that are not such nodes."""
    nodes = spiking_modules(snn)
    for name, m in snn.named_modules():
        if isinstance(m, base.MemoryModule) and name not in nodes and not hasattr(m, "surrogate_function") \
                and any(True for _ in m.parameters(recurse=False)):
            raise FinetuneError(f"layer {name!r} ({type(m).__name__}) is stateful but not a spiking node snnconv "
                                "can train")
    for name, m in nodes.items():
        if not hasattr(m, "surrogate_function"):
            raise FinetuneError(f"layer {name!r} ({type(m).__name__}) has no surrogate_function: its spikes have no "
                                "gradient")
        try:
            p = params_of(m)
        except TypeError as exc:
            raise FinetuneError(f"layer {name!r} ({type(m).__name__}) cannot be trained: {exc}") from None
        new = SnnconvNode(p, step_mode=getattr(m, "step_mode", "m"), surrogate_function=m.surrogate_function,
                          trainable=trainable)
        if surrogate == "datta":
            new.surrogate_function = DattaSurrogate(new)
        set_module(snn, name, new.to(next(iter(m.buffers()), torch.empty(0)).device))
    return snn


core_nodes.register_trainer(sj_neuron.BaseNode, prepare)
