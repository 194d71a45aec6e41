"""Export a converted network to NIR (the Neuromorphic Intermediate Representation, ``nir`` package).

What NIR 1.0 can and cannot say about our neurons (``nir.IF``: ``z = 1 if v > v_threshold``, then
``v = v_reset``; no initial potential):

* firing at ``v >= theta`` (ours, SpikingJelly's) vs NIR's strict ``v > v_threshold``: the same except when
  the potential lands exactly on the threshold;
* soft reset (``v -= theta``, every converted neuron) has no NIR field: NIR's IF resets *to* ``v_reset``.
  SpikingJelly's own exporter therefore refuses soft reset. We export ``nir.IF`` and record the real
  semantics in the node's metadata (``snnconv.reset = "subtract"``, ``snnconv.fire = ">="``,
  ``snnconv.v_init``); ``soft_reset="refuse"`` refuses instead. A consumer that follows NIR's text to the
  letter resets to zero and will differ.
* an initial potential (half threshold, DNI's v0, fire_at < 1, which is the same as v0 += (1 - fire_at)
  theta) exists only in that metadata.
* signed spikes, SNM memory, a leak other than 1 and two-sided spike values have no NIR node: refused, naming
  the layer.

Edges follow the fx graph; weights are exported as the network holds them (spike values already folded).
The readout is the last layer's current per step (our evaluation sums it over time).
"""
from __future__ import annotations

import operator
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import fx

from ..core.neuron import start_potential
from ..core.nodes import graph_of, is_multistep, is_spiking, params_of, unwrap
from ..core.simulation import reset

__all__ = ["to_nir", "ExportError"]


class ExportError(ValueError):
    """A layer of the network has no faithful NIR equivalent."""


def _np(t, shape=None) -> np.ndarray:
    a = torch.as_tensor(t, dtype=torch.float32).detach().cpu()
    if shape is not None:
        a = a.expand(shape) if a.dim() <= len(shape) else a
        a = a.reshape(shape)
    return a.numpy().copy()


def _neuron(mod: nn.Module, where: str, shape, soft_reset: str):
    """``nir.IF`` for a spiking module, or an :class:`ExportError` naming what NIR cannot express."""
    import nir

    kind = type(mod).__name__
    try:
        p = params_of(mod)  # the one reader of a node's knobs (ours, or the framework's class our converter made)
    except TypeError:
        raise ExportError(f"{where} ({kind}): not an integrate-and-fire neuron snnconv can export") from None
    if p.theta_neg is not None:
        raise ExportError(f"{where} ({kind}): signed (-1/0/+1) spikes have no NIR equivalent")
    if p.memory:
        raise ExportError(f"{where} ({kind}): SNM memory (DNISNM Eqs. 19-23) has no NIR equivalent")
    if p.leak is not None and not bool((torch.as_tensor(p.leak) == 1).all()):
        raise ExportError(f"{where} ({kind}): leak != 1 (NIR's LIF is a continuous-time leak with hard reset)")
    v_reset = getattr(mod, "v_reset", None)  # a framework's hard reset; ours is always soft
    theta = torch.as_tensor(p.theta, dtype=torch.float32)
    v_init = torch.as_tensor(start_potential(p), dtype=torch.float32)  # fire at f*theta == start f*theta higher
    meta = {"snnconv.fire": ">=", "snnconv.neuron": kind}
    if bool((v_init != 0).any()):
        if soft_reset == "refuse":
            raise ExportError(f"{where} ({kind}): an initial potential (half threshold, v0, fire_at < 1) has no NIR field")
        meta["snnconv.v_init"] = _np(v_init, shape)
    if v_reset is None:  # soft reset
        if soft_reset == "refuse":
            raise ExportError(f"{where} ({kind}): soft reset (v -= theta) has no NIR field (nir.IF resets to v_reset); "
                              "use soft_reset='annotate' to export nir.IF with the reset in its metadata")
        meta["snnconv.reset"] = "subtract"
        v_reset = 0.0
    return nir.IF(r=np.ones(shape, dtype=np.float32), v_threshold=_np(theta, shape),
                  v_reset=_np(torch.as_tensor(v_reset), shape), metadata=meta)


@torch.no_grad()
def to_nir(net: nn.Module, input_shape: Sequence[int], soft_reset: str = "annotate"):
    """Export a converted network (one image's ``input_shape``, e.g. ``(1, 28, 28)``) as a ``nir.NIRGraph``."""
    import nir
    from torch.fx.passes.shape_prop import ShapeProp

    if soft_reset not in ("annotate", "refuse"):
        raise ValueError(f"soft_reset must be 'annotate' or 'refuse', got {soft_reset!r}")
    gm = graph_of(net)
    multi = is_multistep(net)
    dev = next((p.device for p in net.parameters()), torch.device("cpu"))
    x = torch.zeros((1, 1, *input_shape) if multi else (1, *input_shape), device=dev)
    reset(gm)
    ShapeProp(gm).propagate(x)
    reset(gm)
    lead = 2 if multi else 1
    shape = lambda n: tuple(n.meta["tensor_meta"].shape[lead:])  # noqa: E731  per image

    nodes: Dict[str, object] = {"input": nir.Input(input_type=np.array(input_shape))}
    edges = []
    alias: Dict[fx.Node, str] = {}

    def src(node: fx.Node) -> str:
        return alias.get(node, node.name)

    for node in gm.graph.nodes:
        ins = [a for a in node.all_input_nodes]
        if node.op == "placeholder":
            alias[node] = "input"
            continue
        if node.op == "output":
            nodes["output"] = nir.Output(output_type=np.array(shape(ins[0])))
            edges.append((src(ins[0]), "output"))
            continue
        where = f"layer {node.target!r}" if node.op == "call_module" else f"node {node.name!r}"
        out: Optional[object] = None
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            inner = unwrap(mod)
            if is_spiking(mod):
                out = _neuron(inner, where, shape(node), soft_reset)
            elif isinstance(inner, nn.Conv2d):
                if inner.padding_mode != "zeros":
                    raise ExportError(f"{where}: padding_mode {inner.padding_mode!r} has no NIR equivalent")
                bias = inner.bias if inner.bias is not None else torch.zeros(inner.out_channels)
                out = nir.Conv2d(input_shape=tuple(shape(ins[0])[1:]), weight=_np(inner.weight),
                                 stride=inner.stride, padding=inner.padding, dilation=inner.dilation,
                                 groups=inner.groups, bias=_np(bias))
            elif isinstance(inner, nn.Linear):
                out = nir.Affine(weight=_np(inner.weight), bias=_np(inner.bias)) if inner.bias is not None \
                    else nir.Linear(weight=_np(inner.weight))
            elif isinstance(inner, nn.AvgPool2d):
                if inner.ceil_mode or not inner.count_include_pad and inner.padding:
                    raise ExportError(f"{where}: AvgPool2d with ceil_mode/count_include_pad=False has no NIR equivalent")
                pair = lambda v: np.array(v if isinstance(v, (tuple, list)) else (v, v))  # noqa: E731
                out = nir.AvgPool2d(kernel_size=pair(inner.kernel_size), stride=pair(inner.stride or inner.kernel_size),
                                    padding=pair(inner.padding))
            elif isinstance(inner, nn.Flatten):
                # NIR shapes carry no batch dimension: torch's start_dim 1 is NIR's 0
                out = nir.Flatten(input_type={"input": np.array(shape(ins[0]))},
                                  start_dim=max(inner.start_dim - 1, 0), end_dim=inner.end_dim)
            elif isinstance(inner, (nn.Identity, nn.Dropout)):
                alias[node] = src(ins[0])
                continue
            elif type(inner).__name__ in ("Scale", "VoltageScaler", "ChannelVoltageScaler"):
                if getattr(inner, "factor_neg", None) is not None:
                    raise ExportError(f"{where}: two-sided spike values have no NIR equivalent")
                factor = getattr(inner, "factor", getattr(inner, "scale", None))
                out = nir.Scale(scale=_np(factor, shape(node)))
            else:
                raise ExportError(f"{where} ({type(inner).__name__}): no NIR equivalent")
        elif node.op in ("call_function", "call_method") and node.target in (torch.flatten, "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            out = nir.Flatten(input_type={"input": np.array(shape(ins[0]))}, start_dim=max(start - lead, 0))
        elif node.op == "call_function" and node.target in (operator.add, torch.add):
            # NIR sums the edges that enter a node: a residual addition is an identity node with two inputs
            out = nir.Identity(input_type={"input": np.array(shape(node))})
        else:
            raise ExportError(f"{where}: {node.op} {getattr(node.target, '__name__', node.target)!r} has no NIR equivalent")
        nodes[node.name] = out
        edges += [(src(a), node.name) for a in ins]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"snnconv.readout": "sum of the output over time steps"})
