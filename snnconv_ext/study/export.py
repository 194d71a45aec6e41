"""NIR (the Neuromorphic Intermediate Representation, ``nir`` package): :func:`to_nir` writes a converted network,
:func:`from_nir` reads such a file back into a converted SpikingJelly network, bit for bit.

Our neuron is an IF with soft reset: ``v += x``; spike if ``v >= theta``; ``v -= theta`` (``core.neuron``), started at
``v0`` (theta/2 for DNI, ``(1 - fire_at) * theta`` for half-threshold firing). NIR 1.0's ``nir.IF`` is
``v' = R I``; spike if ``v > v_threshold``; ``v = v_reset`` (a hard reset), with no initial potential. What each
consumer makes of a ``nir.IF`` (README, "Energy and export", has the measured differences):

* sinabs 2.0.3 ``from_nir``: ``IAFSqueeze`` with subtractive reset, but several spikes per step (``MultiSpike``)
  and the membrane clipped at ``-v_threshold`` (``min_v_mem``); our IF is ``spike_fn=SingleSpike``,
  ``min_v_mem=None``. It has no average pooling: export :func:`~snnconv_ext.study.forms.synaptic_form` (pooling
  folded into the next layer) for it.
* SpikingJelly 2.0 ``import_from_nir(graph, dt=1.0)`` (``r = 1 / dt``, we write ``r = 1``): ``IFNode`` with a
  hard reset to ``v_reset``, firing at ``v >= v_threshold``; our IF is ``v_reset=None`` (soft reset).
* snnTorch 1.0 ``import_from_nir``: ``Leaky(beta=0.9)`` (a leak), ``init_hidden=False`` (returns a tuple),
  ``Flatten`` without the batch offset, firing at ``v > threshold`` and a delayed double reset.

Firing at ``>=`` (ours, SpikingJelly, sinabs) and NIR's ``>`` differ only on a potential exactly at threshold.

What NIR 1.0 cannot state, and what :func:`to_nir` does with it:

* soft reset: ``nir.IF`` with ``snnconv.reset = "subtract"`` in the node's metadata (``soft_reset="annotate"``,
  the default: two of the three consumers above reset by subtraction); ``soft_reset="refuse"`` refuses;
* an initial potential: no exact NIR equivalent (an extra input of ``v0`` at the first step only needs a node NIR's
  importers lack). Refused by name unless ``initial="metadata"``, which records it as ``snnconv.v_init`` for
  consumers that set it (SpikingJelly: the ``IFNode``'s ``v`` reset value); one that ignores it differs;
* signed spikes, SNM memory, a leak other than 1, two-sided spike values: refused, naming the layer.

Weights are exported as the network holds them (spike values already folded); the readout is the last layer's
current per step (our evaluation sums it over time).
"""
from __future__ import annotations

import operator
import os
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from torch import fx

from ..core.neuron import NeuronParams, start_potential
from ..core.nodes import graph_of, is_multistep, is_spiking, params_of, unwrap
from .forms import Synapse, sample_shapes

__all__ = ["to_nir", "from_nir", "ExportError"]

FORMAT = "snnconv-nir-1"  # the graph metadata's ``snnconv.format``: what from_nir reads


class ExportError(ValueError):
    """A layer of the network has no faithful NIR equivalent."""


def _np(t, shape=None) -> np.ndarray:
    a = torch.as_tensor(t, dtype=torch.float32).detach().cpu()
    if shape is not None:
        a = a.expand(shape) if a.dim() <= len(shape) else a
        a = a.reshape(shape)
    return a.numpy().copy()


def _neuron(mod: nn.Module, where: str, shape, soft_reset: str, initial: str):
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
    if v_reset is not None:
        raise ExportError(f"{where} ({kind}): hard reset to {v_reset} is not a converted snnconv neuron")
    theta = torch.as_tensor(p.theta, dtype=torch.float32)
    v_init = torch.as_tensor(start_potential(p), dtype=torch.float32)  # fire at f*theta == start f*theta higher
    meta = {"snnconv.fire": ">=", "snnconv.neuron": kind, "snnconv.reset": "subtract"}
    if bool((v_init != 0).any()):
        if initial != "metadata":
            raise ExportError(f"{where} ({kind}): an initial potential (half threshold, v0, fire_at < 1) has no NIR "
                              "field; initial='metadata' records it as snnconv.v_init (a consumer that ignores it "
                              "starts at 0 and differs)")
        meta["snnconv.v_init"] = _np(v_init, shape)
    if soft_reset == "refuse":
        raise ExportError(f"{where} ({kind}): soft reset (v -= theta) has no NIR field (nir.IF resets to v_reset); "
                          "use soft_reset='annotate' to export nir.IF with the reset in its metadata")
    return nir.IF(r=np.ones(shape, dtype=np.float32), v_threshold=_np(theta, shape),
                  v_reset=np.zeros(shape, dtype=np.float32), metadata=meta)


def _conv(weight, bias, stride, padding, dilation, groups, in_shape):
    import nir
    bias = bias if bias is not None else torch.zeros(weight.shape[0])
    return nir.Conv2d(input_shape=tuple(in_shape), weight=_np(weight), stride=tuple(stride), padding=tuple(padding),
                      dilation=tuple(dilation), groups=groups, bias=_np(bias))


def _linear(weight, bias):
    import nir
    return nir.Affine(weight=_np(weight), bias=_np(bias)) if bias is not None else nir.Linear(weight=_np(weight))


def _layer(inner: nn.Module, where: str, in_shape, out_shape):
    """The NIR node of a stateless layer, or None for an identity; refuses the rest by name."""
    import nir

    if isinstance(inner, nn.Conv2d):
        if inner.padding_mode != "zeros" or isinstance(inner.padding, str):
            raise ExportError(f"{where}: padding {inner.padding!r} ({inner.padding_mode}) has no NIR equivalent")
        return _conv(inner.weight, inner.bias, inner.stride, inner.padding, inner.dilation, inner.groups, in_shape[1:])
    if isinstance(inner, nn.Linear):
        return _linear(inner.weight, inner.bias)
    if isinstance(inner, Synapse):
        if inner.signed or inner.kind == "local":
            raise ExportError(f"{where}: a {'signed' if inner.signed else 'locally connected'} synapse has no NIR "
                              "equivalent")
        if inner.kind == "conv":
            return _conv(inner.weight, inner.bias, inner.stride, inner.padding, (1, 1), 1, in_shape[1:])
        return _linear(inner.weight, inner.bias)  # to_nir puts a Flatten before it
    if isinstance(inner, nn.AvgPool2d):
        if inner.ceil_mode or inner.divisor_override or (not inner.count_include_pad and inner.padding):
            raise ExportError(f"{where}: AvgPool2d with ceil_mode / divisor_override / count_include_pad=False has "
                              "no NIR equivalent")
        pair = lambda v: np.array(v if isinstance(v, (tuple, list)) else (v, v))  # noqa: E731
        return nir.AvgPool2d(kernel_size=pair(inner.kernel_size), stride=pair(inner.stride or inner.kernel_size),
                             padding=pair(inner.padding))
    if isinstance(inner, nn.Flatten):
        # NIR shapes carry no batch dimension: torch's start_dim 1 is NIR's 0
        if inner.start_dim < 1:
            raise ExportError(f"{where}: flatten over the batch dimension")
        end = inner.end_dim - 1 if inner.end_dim > 0 else inner.end_dim
        return nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=inner.start_dim - 1, end_dim=end)
    if isinstance(inner, (nn.Identity, nn.Dropout)):
        return None
    if type(inner).__name__ in ("Scale", "VoltageScaler", "ChannelVoltageScaler"):
        if getattr(inner, "factor_neg", None) is not None:
            raise ExportError(f"{where}: two-sided spike values have no NIR equivalent")
        factor = getattr(inner, "factor", getattr(inner, "scale", None))
        return nir.Scale(scale=_np(factor, out_shape))
    raise ExportError(f"{where} ({type(inner).__name__}): no NIR equivalent")


@torch.no_grad()
def to_nir(net: nn.Module, input_shape: Sequence[int], soft_reset: str = "annotate", initial: str = "refuse"):
    """Export a converted network (one image's ``input_shape``, e.g. ``(1, 28, 28)``) as a ``nir.NIRGraph``.

    ``soft_reset``: ``"annotate"`` (``nir.IF`` with the soft reset in its metadata) or ``"refuse"``.
    ``initial``: ``"refuse"`` a layer that starts at a nonzero potential, or ``"metadata"``: record it as
    ``snnconv.v_init`` (a consumer that ignores it differs: on the zoo Net4 with ``clipround``, SpikingJelly with
    soft reset but without the initial potential gives cumulative logits up to 162.7 away at T = 8, 16 test
    images, largest absolute logit 166). A consumer that resets to ``v_reset`` (SpikingJelly's default) differs too:
    34.2 (``max``), 48.7 (``percentile``); README "NIR: what each consumer needs" gives each one's settings.
    Write the graph with ``nir.write(path, graph)``; :func:`from_nir` reads it back."""
    import nir

    if soft_reset not in ("annotate", "refuse"):
        raise ValueError(f"soft_reset must be 'annotate' or 'refuse', got {soft_reset!r}")
    if initial not in ("refuse", "metadata"):
        raise ValueError(f"initial must be 'refuse' or 'metadata', got {initial!r}")
    shapes = sample_shapes(net, input_shape)  # one line naming the layer if input_shape does not fit
    gm = graph_of(net)
    nodes: Dict[str, object] = {"input": nir.Input(input_type=np.array(input_shape))}
    edges = []
    alias: Dict[fx.Node, str] = {}

    def src(node: fx.Node) -> str:
        return alias.get(node, node.name)

    for node in gm.graph.nodes:
        ins = list(node.all_input_nodes)
        if node.op == "placeholder":
            alias[node] = "input"
            continue
        if node.op == "output":
            nodes["output"] = nir.Output(output_type=np.array(shapes[ins[0].name]))
            edges.append((src(ins[0]), "output"))
            continue
        where = f"layer {node.target!r}" if node.op == "call_module" else f"node {node.name!r}"
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if is_spiking(mod):
                out = _neuron(unwrap(mod), where, shapes[node.name], soft_reset, initial)
            else:
                inner = unwrap(mod)
                out = _layer(inner, where, shapes[ins[0].name], shapes[node.name])
                if out is None:
                    alias[node] = src(ins[0])
                    continue
                if isinstance(inner, Synapse) and inner.kind == "linear" and len(shapes[ins[0].name]) > 1:
                    flat = f"{node.name}_flatten"  # the synapse flattens its spikes first
                    nodes[flat] = nir.Flatten(input_type={"input": np.array(shapes[ins[0].name])}, start_dim=0)
                    edges += [(src(ins[0]), flat), (flat, node.name)]
                    nodes[node.name] = out
                    continue
        elif node.op in ("call_function", "call_method") and node.target in (torch.flatten, "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            lead = 2 if is_multistep(net) else 1
            out = nir.Flatten(input_type={"input": np.array(shapes[ins[0].name])}, start_dim=max(start - lead, 0))
        elif node.op == "call_function" and node.target in (operator.add, torch.add):
            # NIR sums the edges that enter a node: a residual addition is an identity node with two inputs
            out = nir.Identity(input_type={"input": np.array(shapes[node.name])})
        else:
            raise ExportError(f"{where}: {node.op} {getattr(node.target, '__name__', node.target)!r} has no NIR "
                              "equivalent")
        nodes[node.name] = out
        edges += [(src(a), node.name) for a in ins]
    meta = {"snnconv.format": FORMAT, "snnconv.readout": "sum of the output over time steps"}
    method = getattr(gm, "meta", {}).get("snnconv_method")
    if method:
        meta["snnconv.method"] = method
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


# ---------------------------------------------------------------------------------------------- reading back


def _text(v) -> str:
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    return v.decode() if isinstance(v, bytes) else str(v)


def _knob(a: np.ndarray):
    """A float where every neuron has the same value (SpikingJelly's own nodes take it), else the tensor."""
    t = torch.from_numpy(np.array(a, dtype=np.float32))
    return float(t.reshape(-1)[0]) if bool((t == t.reshape(-1)[0]).all()) else t


def _read_neuron(node, name: str, factory):
    meta = {k: _text(v) if k != "snnconv.v_init" else v for k, v in (node.metadata or {}).items()}
    if meta.get("snnconv.reset") != "subtract" or meta.get("snnconv.fire") != ">=":
        raise ValueError(f"NIR node {name!r} (IF): not written by snnconv's to_nir (no snnconv.reset / "
                         "snnconv.fire metadata); its hard reset to v_reset is no snnconv neuron")
    if not bool(np.all(np.asarray(node.r) == 1)):
        raise ValueError(f"NIR node {name!r} (IF): r != 1 (to_nir writes r = 1, one step per dt)")
    v0 = meta.get("snnconv.v_init")
    p = NeuronParams(theta=_knob(node.v_threshold), v0=0.0 if v0 is None else _knob(v0))
    return factory(p)


def _read_layer(node, name: str):
    import nir

    if isinstance(node, nir.Conv2d):
        w = torch.from_numpy(np.array(node.weight, dtype=np.float32))
        conv = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[-2:]),
                         stride=tuple(int(s) for s in np.atleast_1d(node.stride)),
                         padding=tuple(int(s) for s in np.atleast_1d(node.padding)),
                         dilation=tuple(int(s) for s in np.atleast_1d(node.dilation)), groups=int(node.groups))
        conv.weight.data.copy_(w)
        conv.bias.data.copy_(torch.from_numpy(np.array(node.bias, dtype=np.float32)))
        return conv
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = torch.from_numpy(np.array(node.weight, dtype=np.float32))
        lin = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
        lin.weight.data.copy_(w)
        if isinstance(node, nir.Affine):
            lin.bias.data.copy_(torch.from_numpy(np.array(node.bias, dtype=np.float32)))
        return lin
    if isinstance(node, nir.AvgPool2d):
        ints = lambda v: tuple(int(s) for s in np.atleast_1d(v))  # noqa: E731
        return nn.AvgPool2d(ints(node.kernel_size), ints(node.stride), ints(node.padding))
    if isinstance(node, nir.Flatten):
        end = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim
        return nn.Flatten(int(node.start_dim) + 1, int(end))
    if isinstance(node, nir.Scale):
        from ..conversion.graph import Scale
        return Scale(torch.from_numpy(np.array(node.scale, dtype=np.float32)))
    if isinstance(node, nir.Identity):
        return None
    raise ValueError(f"NIR node {name!r} ({type(node).__name__}): from_nir reads what to_nir writes (IF, Conv2d, "
                     "Affine, Linear, AvgPool2d, Flatten, Scale, Identity)")


def from_nir(graph: Union["object", str, os.PathLike], backend: str = "spikingjelly") -> fx.GraphModule:
    """Read a graph written by :func:`to_nir` (a ``nir.NIRGraph`` or a file from ``nir.write``) back into a
    converted multi-step network of ``backend``'s nodes (SpikingJelly: its own ``IFNode`` where exact), with
    the same outputs bit for bit. Graphs that other tools wrote are refused by name (their ``nir.IF`` resets to
    ``v_reset``, which is no snnconv neuron)."""
    import nir
    from ..conversion.backends import plugin

    if backend != "spikingjelly":
        raise ValueError(f"from_nir builds SpikingJelly networks (backend='spikingjelly'), got {backend!r}")
    if isinstance(graph, (str, os.PathLike)):
        if not os.path.isfile(graph):
            raise FileNotFoundError(f"NIR file {os.fspath(graph)!r} does not exist")
        graph = nir.read(graph)
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"from_nir takes a nir.NIRGraph or a file path, got {type(graph).__name__}")
    if _text((graph.metadata or {}).get("snnconv.format", "")) != FORMAT:
        raise ValueError(f"this NIR graph was not written by snnconv's to_nir (graph metadata snnconv.format != "
                         f"{FORMAT!r})")
    sj = plugin(backend)
    inputs = [k for k, v in graph.nodes.items() if isinstance(v, nir.Input)]
    outputs = [k for k, v in graph.nodes.items() if isinstance(v, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"from_nir reads one input and one output node, got inputs {inputs}, outputs {outputs}")
    preds: Dict[str, list] = {k: [] for k in graph.nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    root = nn.Module()
    g = fx.Graph()
    made: Dict[str, fx.Node] = {inputs[0]: g.placeholder("x")}
    todo = [k for k in graph.nodes if k not in made]
    while todo:
        ready = [k for k in todo if all(p in made for p in preds[k])]
        if not ready:
            raise ValueError(f"NIR graph has a cycle or a dangling edge among {sorted(todo)}")
        for name in ready:
            todo.remove(name)
            node = graph.nodes[name]
            args = [made[p] for p in preds[name]]
            if not args:
                raise ValueError(f"NIR node {name!r} has no input edge")
            x = args[0]
            for extra in args[1:]:  # NIR sums the edges that enter a node
                x = g.call_function(operator.add, (x, extra))
            if isinstance(node, nir.Output):
                g.output(x)
                made[name] = x
                continue
            target = name if name.isidentifier() and not hasattr(root, name) else f"n_{len(made)}"
            if isinstance(node, nir.IF):
                root.add_module(target, _read_neuron(node, name, sj.spikingjelly_node))
            else:
                layer = _read_layer(node, name)
                if layer is None:
                    made[name] = x
                    continue
                root.add_module(target, sj.SeqModule(layer))
            made[name] = g.call_module(target, (x,))
    gm = fx.GraphModule(root, g)
    shape = graph.nodes[inputs[0]].input_type["input"]
    gm.meta = {"input_shape": tuple(int(s) for s in np.atleast_1d(shape))}
    method = (graph.metadata or {}).get("snnconv.method")
    if method is not None:
        gm.meta["snnconv_method"] = _text(method)
    return gm.eval()
