"""Fine-tuning's SpikingJelly side: make every spiking node of a converted network trainable. Registered with
``snnconv_ext.core.nodes`` as the trainer of ``BaseNode`` networks; ``snnconv_ext.conversion.training``
(backend-neutral) calls it.

A node is kept when it already trains what is asked: SpikingJelly's own ``IFNode``/``TernaryIFNode`` (and an
``SnnconvNode`` with fixed knobs) when only the weights train (``trainable=()``), an ``SnnconvNode`` whose
``nn.Parameter`` knobs are exactly ``trainable``. Any other node becomes an :class:`~snnconv_spikingjelly.nodes.SnnconvNode`
with the same neuron and ``trainable`` as ``nn.Parameter``s: the same structure ``sc.convert(..., trainable=...)``
builds, so a fine-tuned ``state_dict`` loads into a network converted that way."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
from spikingjelly.activation_based import base, neuron as sj_neuron

from snnconv_ext.conversion.graph import set_module
from snnconv_ext.conversion.training import DattaSurrogate
from snnconv_ext.core import nodes as core_nodes
from snnconv_ext.core.nodes import FinetuneError, params_of, spiking_modules

from .nodes import _STORED, TRAINABLE, SnnconvNode

__all__ = ["prepare", "trained_knobs"]


def trained_knobs(node: nn.Module) -> Tuple[str, ...]:
    """The knobs (``TRAINABLE`` names) that ``node`` holds as ``nn.Parameter``s; () for SpikingJelly's own nodes."""
    return tuple(sorted(k for k in TRAINABLE if isinstance(getattr(node, _STORED.get(k, k), None), nn.Parameter)))


def _keeps(node: nn.Module, trainable: Sequence[str]) -> bool:
    """Whether ``node`` already trains exactly ``trainable`` (its class can stay)."""
    if isinstance(node, SnnconvNode):
        return trained_knobs(node) == tuple(sorted(set(trainable)))
    return not trainable and isinstance(node, (sj_neuron.IFNode, sj_neuron.TernaryIFNode))


def prepare(snn: nn.Module, trainable: Sequence[str] = ("v_threshold", "leak"), surrogate: str = "datta") -> nn.Module:
    """Make every spiking node of ``snn`` trainable in place: nodes that already train exactly ``trainable`` stay
    (SpikingJelly's ``IFNode``/``TernaryIFNode`` when only weights train), the others become ``SnnconvNode`` modules with the
    same neuron (``params_of``) and the ``trainable`` knobs as ``nn.Parameter`` objects. Every node gets Datta's surrogate
    (``"datta"``) or keeps its own (``"native"``). Refuses, naming the layer, stateful layers that are not such nodes."""
    nodes = spiking_modules(snn)
    for name, m in snn.named_modules():
        if isinstance(m, base.MemoryModule) and name not in nodes and not hasattr(m, "surrogate_function") \
                and any(True for _ in m.parameters(recurse=False)):
            raise FinetuneError(f"layer {name!r} ({type(m).__name__}) is stateful but not a spiking node snnconv "
                                "can train")
    new_nodes = {}
    for name, m in nodes.items():  # every node is checked before any is swapped
        if not hasattr(m, "surrogate_function"):
            raise FinetuneError(f"layer {name!r} ({type(m).__name__}) has no surrogate_function: its spikes have no "
                                "gradient")
        try:
            p = params_of(m)
        except TypeError as exc:
            raise FinetuneError(f"layer {name!r} ({type(m).__name__}) cannot be trained: {exc}") from None
        if not _keeps(m, trainable):
            device = next(iter(m.buffers()), next(m.parameters(), torch.empty(0))).device
            new_nodes[name] = SnnconvNode(p, step_mode=getattr(m, "step_mode", "m"),
                                          surrogate_function=m.surrogate_function, trainable=trainable).to(device)
    for name, m in nodes.items():
        node = new_nodes.get(name, m)
        if surrogate == "datta" and not isinstance(node.surrogate_function, DattaSurrogate):
            node.surrogate_function = DattaSurrogate(node)
        if name in new_nodes:
            set_module(snn, name, node)
    return snn


core_nodes.register_trainer(sj_neuron.BaseNode, prepare, knobs=tuple(TRAINABLE))
