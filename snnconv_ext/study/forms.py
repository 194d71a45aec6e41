"""Equivalent forms of a converted network for other tools: the same synapses, written so that every synaptic
layer reads the spiking layer's own spikes.

A converted network runs some operations between a spiking layer and the conv / linear layer that consumes
its spikes: average pooling, a :class:`~snnconv_ext.conversion.graph.Scale` (per-position spike values that
cannot be folded into a shared kernel), flatten. A counter that sees only the consuming layer's input (such as
SpikingJelly's ``SynOpCounter``, which counts a conv / matmul only when its input is exactly 0/1) then sees
pooled or scaled values and counts nothing. :func:`synaptic_form` rewrites each such chain into one
:class:`Synapse` that takes the spikes themselves:

* average pooling folded into the next layer: a conv of average-pooled maps is a conv with stride
  ``s_pool * s_conv`` whose kernel is the conv's kernel spread over the pooling window and divided by its
  size (a linear map of linear maps); a linear layer after pooling and flatten gets the pooling's adjoint
  applied to its weights;
* spike values folded into the weights: per channel into the kernel, per position into a locally connected
  layer (unfold + ``bmm``, one weight per position) where one shared kernel cannot hold them;
* signed spikes (-1/0/+1) split into two 0/1 maps, ``y = W s+ + b - W' s-``; each spike is one synaptic
  operation, as :mod:`snnconv_ext.study.energy` counts it.

The form is the same function in exact arithmetic; in floating point its sums run in another order, so a
membrane within rounding of its threshold may flip a spike. The default conversion is never changed: the
form is a new network built from a copy.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..core.nodes import graph_of, is_multistep, is_spiking, params_of, unwrap

__all__ = ["Synapse", "synaptic_form", "sample_shapes", "fold_avgpool_kernel"]

_SCALES = ("Scale", "VoltageScaler", "ChannelVoltageScaler")


class _Shapes(fx.Interpreter):
    """Runs the graph once and records each node's output shape; a layer that cannot take its input is named."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: Dict[str, Tuple[int, ...]] = {}

    def run_node(self, n: fx.Node):
        try:
            out = super().run_node(n)
        except Exception as exc:  # one line naming the layer, no traceback of the interpreter
            what = f"layer {n.target!r} ({type(self.module.get_submodule(n.target)).__name__})" \
                if n.op == "call_module" else f"node {n.name!r}"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{what} cannot take the input: {first}") from None
        if isinstance(out, torch.Tensor):
            self.shapes[n.name] = tuple(out.shape)
        return out


@torch.no_grad()
def sample_shapes(net: nn.Module, input_shape: Sequence[int]) -> Dict[str, Tuple[int, ...]]:
    """Per fx node of a converted network, the output shape of one image and one step (batch and time dropped),
    from one zero image of ``input_shape``. A wrong ``input_shape`` is refused in one line naming it and the
    first layer that cannot take it."""
    from ..core.simulation import reset

    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else None
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ValueError(f"input_shape must be one image's shape as positive integers, e.g. (1, 28, 28); "
                         f"got {input_shape!r}")
    gm = graph_of(net)
    known = getattr(net, "meta", {}).get("input_shape") or getattr(gm, "meta", {}).get("input_shape")
    if known and tuple(known) != shape:
        raise ValueError(f"input_shape {shape} differs from the network's input shape {tuple(known)}")
    multi = is_multistep(net)
    dev = next((p.device for p in net.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros((1, 1, *shape) if multi else (1, *shape), device=dev, dtype=dtype)
    probe = _Shapes(gm)
    reset(gm)
    try:
        probe.run(x)
    except ValueError as exc:  # fx's interpreter appends the node and a trace hint on further lines
        raise ValueError(f"input_shape {shape}: {str(exc).splitlines()[0]}") from None
    finally:
        reset(gm)
    lead = 2 if multi else 1
    return {k: v[lead:] for k, v in probe.shapes.items()}


def _pair(v) -> Tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def fold_avgpool_kernel(weight: torch.Tensor, pool: nn.AvgPool2d, conv_dilation=(1, 1)) -> torch.Tensor:
    """The kernel of ``conv(avg_pool(x))`` as one conv of ``x``: each tap of ``weight`` spread over the pooling
    window, divided by the window's size. The folded conv has stride ``pool.stride * conv.stride``, padding
    ``pool.stride * conv.padding``, dilation 1. Needs kernel == stride pooling (non-overlapping windows)."""
    k = _pair(pool.kernel_size)
    d = _pair(conv_dilation)
    out, cin, kh, kw = weight.shape
    size = [k[0] * d[0] * (kh - 1) + k[0], k[1] * d[1] * (kw - 1) + k[1]]
    folded = weight.new_zeros(out, cin, *size)
    part = weight / (pool.divisor_override or k[0] * k[1])
    for a in range(k[0]):
        for b in range(k[1]):
            folded[:, :, a::k[0] * d[0], b::k[1] * d[1]] = part
    return folded


class Synapse(nn.Module):
    """A conv, linear or locally connected layer that reads 0/1 (or -1/0/+1) spikes: ``y = op(s+, w) + b``, minus
    ``op(s-, w_neg)`` for signed spikes. ``kind``: ``"conv"`` (``F.conv2d``), ``"linear"`` (flattens its input,
    ``F.linear``), ``"local"`` (one kernel per output position, ``w`` of shape ``[positions, in, out]``: unfold
    then ``bmm``)."""

    def __init__(self, kind: str, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 weight_neg: Optional[torch.Tensor] = None, stride=(1, 1), padding=(0, 0),
                 kernel_size=(1, 1), out_hw=(1, 1)) -> None:
        super().__init__()
        self.kind, self.stride, self.padding = kind, tuple(stride), tuple(padding)
        self.kernel_size, self.out_hw = tuple(kernel_size), tuple(out_hw)
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.signed = weight_neg is not None
        self.register_buffer("weight_neg", None if weight_neg is None else weight_neg.detach().clone())

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        if self.kind == "conv":
            return F.conv2d(x, w, b, self.stride, self.padding)
        if self.kind == "linear":
            return F.linear(x.flatten(1), w, b)
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # [N, C*k*k, L], still 0/1
        y = torch.bmm(cols.permute(2, 0, 1), w).permute(1, 2, 0)                          # [N, out, L]
        y = y.reshape(x.shape[0], w.shape[-1], *self.out_hw)
        return y if b is None else y + b.view(1, -1, 1, 1)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if not self.signed:
            return self._op(s, self.weight, self.bias)
        pos, neg = (s > 0).to(s.dtype), (s < 0).to(s.dtype)
        return self._op(pos, self.weight, self.bias) - self._op(neg, self.weight_neg, None)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, weight={tuple(self.weight.shape)}, signed={self.signed}"


def _chain(gm: fx.GraphModule, spiking: fx.Node) -> List[fx.Node]:
    """The nodes from a spiking layer to the conv / linear layer that consumes its spikes (that layer last), when
    only scaling, average pooling, flatten and identities lie between and nothing else reads them; [] when the
    spikes are the network's output; otherwise refused, naming the node."""
    chain, node = [], spiking
    while True:
        if len(node.users) != 1:
            raise ValueError(f"spiking layer {spiking.target!r}: node {node.name!r} feeds {len(node.users)} nodes "
                             f"({sorted(u.name for u in node.users)}); synaptic_form rewrites single chains from a "
                             "spiking layer to one conv / linear layer (no residual sums)")
        (node,) = node.users
        if node.op == "output":
            return []
        chain.append(node)
        if node.op == "call_module":
            inner = unwrap(gm.get_submodule(node.target))
            if isinstance(inner, (nn.Conv2d, nn.Linear)):
                return chain
            if type(inner).__name__ in _SCALES or isinstance(inner, (nn.AvgPool2d, nn.Flatten, nn.Identity,
                                                                     nn.Dropout)):
                continue
        elif node.op in ("call_function", "call_method") and node.target in (torch.flatten, "flatten"):
            continue
        what = type(unwrap(gm.get_submodule(node.target))).__name__ if node.op == "call_module" else \
            getattr(node.target, "__name__", str(node.target))
        raise ValueError(f"spiking layer {spiking.target!r}: node {node.name!r} ({what}) lies between it and the "
                         "next synaptic layer; synaptic_form folds scaling, average pooling and flatten only")


def _factors(mods: List[nn.Module], shape) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """What a +1 and a -1 spike are worth after the chain's scaling modules (per position, ``shape``)."""
    pos, neg = torch.ones(shape), None
    for m in mods:
        if type(m).__name__ in _SCALES:
            f = getattr(m, "factor", getattr(m, "scale", None))
            fn = getattr(m, "factor_neg", None)
            f = torch.as_tensor(f, dtype=torch.float32).detach().cpu().expand(shape)
            neg = (pos if neg is None else neg) * (f if fn is None else torch.as_tensor(fn).detach().cpu().expand(shape))
            pos = pos * f
    return pos, neg


def _synapse(gm: fx.GraphModule, chain: List[fx.Node], shape, signed: bool, where: str) -> Synapse:
    """The :class:`Synapse` equal to the chain's modules (pooling, scaling, flatten, then conv or linear)."""
    mods = [unwrap(gm.get_submodule(n.target)) for n in chain if n.op == "call_module"]
    layer = mods[-1]
    pools = [m for m in mods if isinstance(m, nn.AvgPool2d)]
    if len(pools) > 1:
        raise ValueError(f"{where}: more than one average pooling before {type(layer).__name__}")
    pool = pools[0] if pools else None
    f_pos, f_neg = _factors(mods, shape)
    f_neg = f_pos if f_neg is None else f_neg
    dev = layer.weight.device
    if pool is not None and isinstance(layer, nn.Conv2d):  # (a linear layer takes any pooling: its adjoint)
        k, st = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
        if k != st or _pair(pool.padding) != (0, 0) or pool.ceil_mode or len(shape) != 3 \
                or shape[-2] % k[0] or shape[-1] % k[1]:
            raise ValueError(f"{where}: average pooling {tuple(k)} with stride {tuple(st)}, padding {pool.padding} "
                             f"on a map {tuple(shape)} folds exactly only as non-overlapping windows that tile the "
                             "map (kernel == stride, no padding, no ceil_mode)")
    if isinstance(layer, nn.Linear):
        # the weights seen from the spikes: the adjoint of pooling (and flatten) applied to each output's row
        u = torch.zeros(layer.out_features, *shape, dtype=layer.weight.dtype, device=dev, requires_grad=True)
        with torch.enable_grad():
            z = (pool(u) if pool is not None else u).flatten(1)
            (w,) = torch.autograd.grad(z, u, grad_outputs=layer.weight.detach())
        w = w.flatten(1)
        wp, wn = w * f_pos.to(w).flatten(), w * f_neg.to(w).flatten()
        return Synapse("linear", wp, layer.bias, wn if signed else None)
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ValueError(f"{where}: {type(layer).__name__} with groups={layer.groups}, padding "
                         f"{layer.padding!r} ({layer.padding_mode}) is not folded")
    if pool is not None:
        kernel = fold_avgpool_kernel(layer.weight.detach(), pool, layer.dilation)
        m = _pair(pool.kernel_size)
        stride = (m[0] * layer.stride[0], m[1] * layer.stride[1])
        padding = (m[0] * layer.padding[0], m[1] * layer.padding[1])
    else:
        if tuple(layer.dilation) != (1, 1):
            raise ValueError(f"{where}: dilated conv is not folded")
        kernel, stride, padding = layer.weight.detach(), tuple(layer.stride), tuple(layer.padding)
    per_channel = all(bool((f == f[:, :1, :1]).all()) for f in (f_pos, f_neg))
    if per_channel:  # one value per input channel: into the shared kernel
        cp, cn = f_pos[:, 0, 0].to(kernel).view(1, -1, 1, 1), f_neg[:, 0, 0].to(kernel).view(1, -1, 1, 1)
        return Synapse("conv", kernel * cp, layer.bias, kernel * cn if signed else None, stride, padding)
    # one value per position: one kernel per output position (a locally connected layer)
    ksize = tuple(kernel.shape[-2:])
    out_hw = tuple((shape[i + 1] + 2 * padding[i] - ksize[i]) // stride[i] + 1 for i in range(2))

    def local(f):
        cols = F.unfold(f.to(kernel)[None], ksize, padding=padding, stride=stride)[0]  # [C*k*k, L]
        return cols.t()[:, :, None] * kernel.flatten(1).t()[None]                         # [L, C*k*k, out]
    return Synapse("local", local(f_pos), layer.bias, local(f_neg) if signed else None, stride, padding, ksize,
                   out_hw)


@torch.no_grad()
def synaptic_form(net: nn.Module, input_shape: Optional[Sequence[int]] = None) -> fx.GraphModule:
    """A copy of the converted ``net`` in which every conv / linear layer fed by a spiking layer reads that
    layer's 0/1 (or -1/0/+1) spikes directly (module doc). ``input_shape``: one image's shape (default: the
    network's recorded one). Chains it cannot rewrite exactly are refused by name."""
    shape_in = input_shape or getattr(net, "meta", {}).get("input_shape")
    if shape_in is None:
        raise ValueError("synaptic_form needs input_shape (one image's shape, e.g. (1, 28, 28))")
    shapes = sample_shapes(net, shape_in)
    gm = copy.deepcopy(graph_of(net))
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not is_spiking(gm.get_submodule(node.target)):
            continue
        chain = _chain(gm, node)
        if not chain:
            continue
        where = f"layer {chain[-1].target!r} (fed by spiking layer {node.target!r})"
        signed = params_of(gm.get_submodule(node.target)).theta_neg is not None
        if len(chain) == 1 and not signed:
            continue  # 0/1 spikes straight into the layer already
        syn = _synapse(gm, chain, shapes[node.name], signed, where)
        wrapper = gm.get_submodule(chain[-1].target)
        if wrapper is not unwrap(wrapper):  # the same multi-step wrapper as the layer it replaces
            syn = type(wrapper)(syn, step_mode=wrapper.step_mode) if hasattr(wrapper, "step_mode") \
                else type(wrapper)(syn)
        name = "syn_" + chain[-1].target.replace(".", "_")
        gm.add_submodule(name, syn)
        with gm.graph.inserting_before(chain[-1]):
            new = gm.graph.call_module(name, (node,))
        chain[-1].replace_all_uses_with(new)
        for n in reversed(chain):
            gm.graph.erase_node(n)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.meta = dict(getattr(net, "meta", {}) or {}, input_shape=tuple(shape_in))
    return gm
