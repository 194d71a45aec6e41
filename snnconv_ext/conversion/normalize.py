"""Graph normalisation, the first step of the conversion pipeline (``pipeline.prepare``): whatever idioms a model was
written with, every method sees one canonical graph.

Each rewrite computes exactly what the model computed (up to float rounding where a BatchNorm becomes an affine or is
folded forward) and is recorded in ``gm.meta["snnconv_rewrites"]`` as ``{"rewrite", "node", "detail"}``:

* **one neuron per call site**: an activation (or max-pooling) module called at several places becomes one module per
  call; ``F.relu``, ``torch.relu(_)``, ``x.relu(_)()`` become ``nn.ReLU`` modules; in-place activations and ``+=``
  become their out-of-place forms, later readers of the overwritten tensor reading the result instead;
* **clipped activations**: ``nn.ReLU6``, ``nn.Hardtanh(0, b)``, ``F.relu6``, ``F.hardtanh(x, 0, b)`` and
  ``clamp(x, 0, b)`` become :class:`~snnconv_ext.core.activations.ClippedReLU` (threshold capped at b);
* **BatchNorm anywhere**: a BN that does not follow a single-use conv/linear layer (those fold later, ``graph.fold_bn``)
  is folded into the next conv/linear where that is exact (zero-padding-free conv, linear on a flat input), else kept
  as a per-channel :class:`~snnconv_ext.core.layers.ChannelAffine` on the current it feeds; never dropped;
* **data movement and pooling idioms**: ``torch.cat`` (:class:`Concat`), ``x.chunk`` (:class:`Chunk`), ShuffleNet's
  channel shuffle (:class:`ChannelShuffle`), ``x.view(x.size(0), -1)`` / ``reshape`` (``nn.Flatten``),
  ``x.mean((2, 3))`` (:class:`GlobalAvgPool`), ``F.adaptive_avg_pool2d`` / ``F.avg_pool2d`` / ``F.max_pool2d``
  (their modules), ``F.dropout`` in eval mode and ``.contiguous()`` (removed: identities).

What no method here converts exactly (SiLU, GELU, Hardswish, sigmoid gates, softmax attention, ...) is refused before
any work, naming the op, where it is, and why.
"""
from __future__ import annotations

import copy
import operator
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..core.activations import ACTIVATIONS, ClippedReLU
from ..core.checks import ConversionError
from ..core.layers import ChannelAffine, ChannelShuffle, Chunk, Concat, GlobalAvgPool
from ..core.pooling import MAXPOOLS
from . import graph

__all__ = ["normalize", "refuse_unconvertible", "REFUSED"]

Log = List[Dict[str, str]]

# --- what no method here converts exactly, and why ---------------------------------------------------------------
_NOT_A_CLIP = ("an activation that is not clamp(x, 0, b) of its input; an IF neuron's scaled rate is clamp(x, 0, theta) of "
           "its input current (TTRBR Eq. 7), so no threshold reproduces it")
_GATE = ("a gate multiplies two signals (x * sigmoid(s), as in squeeze-excitation); spikes only add currents, and no "
         "neuron here multiplies two rates")
_ATTENTION = "attention multiplies and normalises activations (softmax(QK^T)V); no neuron here multiplies two rates"
_NORM = "it normalises every input by its own statistics, which no fixed linear current reproduces"
_SIGNED_CLIP = ("a clip with a negative lower bound is not a ReLU clip (use ReLU6 / Hardtanh(0, b), or a symmetric "
                "StReLU with a signed method)")
REFUSED: Dict[object, str] = {
    **{m: _NOT_A_CLIP for m in (nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.Softplus,
                            nn.LeakyReLU, nn.PReLU, nn.Tanh, nn.Sigmoid, nn.Hardsigmoid, nn.LogSigmoid)},
    **{m: _ATTENTION for m in (nn.Softmax, nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoderLayer,
                               nn.TransformerDecoderLayer)},
    **{m: _NORM for m in (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.LocalResponseNorm)},
    **{f: _NOT_A_CLIP for f in (F.silu, F.gelu, F.hardswish, F.mish, F.elu, F.selu, F.celu, F.softplus, F.leaky_relu,
                            F.prelu, torch.tanh, F.tanh, torch.sigmoid, F.sigmoid, F.hardsigmoid, F.logsigmoid)},
    **{f: _ATTENTION for f in (F.softmax, torch.softmax, F.scaled_dot_product_attention, torch.matmul,
                               torch.bmm, operator.matmul)},
    **{f: _NORM for f in (F.layer_norm, F.group_norm, F.instance_norm, F.local_response_norm)},
    **{m: _NOT_A_CLIP for m in ("sigmoid", "sigmoid_", "tanh", "tanh_")},
    **{m: _ATTENTION for m in ("softmax", "matmul", "bmm")},
}
_DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
_GATES = (nn.Sigmoid, nn.Hardsigmoid, torch.sigmoid, F.sigmoid, F.hardsigmoid, "sigmoid", "sigmoid_")
_MUL = {operator.mul, torch.mul, operator.imul, "mul", "mul_"}


def _name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def refuse_unconvertible(gm: fx.GraphModule) -> None:
    """Refuse, in one line naming the op, where it is and why, the first op no method here converts exactly."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod, key = modules[node.target], type(modules[node.target])
            where = f"module {node.target!r} ({key.__name__})"
            if isinstance(mod, nn.Hardtanh) and not isinstance(mod, nn.ReLU6) and mod.min_val != 0:
                raise ConversionError(f"{where}: Hardtanh(min_val={mod.min_val:g}): {_SIGNED_CLIP}.")
        elif node.op in ("call_function", "call_method"):
            key, where = node.target, graph.describe(node)
            if node.target in _MUL and sum(isinstance(a, fx.Node) for a in node.args) == 2:
                raise ConversionError(f"{where}: {_name(node.target)} of two tensors: {_GATE}; no method here converts it "
                                      "exactly.")
            if node.target in _DROPOUTS and _arg(node, 2, "training", True) is not False:
                raise ConversionError(f"{where}: {_name(node.target)} with training=True drops values at random even "
                                      "in eval mode; pass training=self.training (or use nn.Dropout).")
        else:
            continue
        why = REFUSED.get(key)
        if why is None:
            continue
        if key in _GATES and any(u.target in _MUL for u in node.users):
            why = _GATE
        op = "" if node.op == "call_module" else f" {_name(key)}:"
        raise ConversionError(f"{where}:{op} {why}; no method here converts it exactly.")


# --- helpers -------------------------------------------------------------------------------------------------------

def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else ""


def _fresh(gm: fx.GraphModule, base: str) -> str:
    """A free submodule name ``base`` (``base_1``, ``base_2`` ... if taken) under a container of ``gm`` (never
    inside a module the graph calls, which is the caller's)."""
    parent = base.rpartition(".")[0]
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    if parent and any(parent == t or parent.startswith(t + ".") for t in called):
        base = base.replace(".", "_")
    name, k = base, 0
    while True:
        try:
            gm.get_submodule(name)
        except AttributeError:
            return name
        k += 1
        name = f"{base}_{k}"


def _add_call(gm: fx.GraphModule, node: fx.Node, module: nn.Module, kind: str, args: Tuple) -> fx.Node:
    """A call of ``module`` (named after ``node``'s enclosing module and ``kind``) right after ``node``."""
    path = _module_path(node)
    name = _fresh(gm, f"{path}.{kind}" if path else kind)
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, args)
    new.meta = dict(node.meta)
    return new


def _insert_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, kind: str, args: Tuple) -> fx.Node:
    """Put a call of ``module`` in place of ``node`` (erased); returns the new node."""
    new = _add_call(gm, node, module, kind, args)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _functionalize(node: fx.Node, x: fx.Node) -> None:
    """``node`` overwrote ``x`` in place: readers of ``x`` after ``node`` read ``node``'s result instead, so the
    out-of-place form computes the same values."""
    later, seen = [], False
    for n in node.graph.nodes:
        if n is node:
            seen = True
        elif seen and x in n.all_input_nodes:
            later.append(n)
    for n in later:
        n.replace_input_with(x, node)


def _log(log: Log, rewrite: str, node: str, detail: str) -> None:
    log.append({"rewrite": rewrite, "node": node, "detail": detail})


# --- activations ----------------------------------------------------------------------------------------------------

_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_"}
_INPLACE = {torch.relu_, F.relu_}  # and every method ending in "_"
_INPLACE_ARG = {F.relu: 1, F.relu6: 1, F.hardtanh: 3}  # position of the inplace flag
_CLAMPS = {torch.clamp, "clamp", torch.clip, "clip", "clamp_", "clip_"}


def _clip_bound(node: fx.Node) -> Optional[float]:
    """b when ``node`` computes clip(x, 0, b) with constants (relu6, hardtanh(x, 0, b), clamp(x, 0, b)); else None."""
    if node.target is F.relu6:
        return 6.0
    if node.target is F.hardtanh:
        lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
    elif node.target in _CLAMPS:
        lo, hi = _arg(node, 1, "min"), _arg(node, 2, "max")
    else:
        return None
    if isinstance(lo, (int, float)) and lo == 0 and isinstance(hi, (int, float)) and hi > 0:
        return float(hi)
    return None


def _activation_functions(gm: fx.GraphModule, log: Log) -> None:
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        x = node.args[0] if node.args else None
        bound = _clip_bound(node)
        relu = node.target in _RELU_FUNCS or (node.target in _CLAMPS and _arg(node, 1, "min") == 0
                                              and _arg(node, 2, "max") is None)
        if not isinstance(x, fx.Node) or (bound is None and not relu):
            continue
        t = node.target
        inplace = t in _INPLACE or (isinstance(t, str) and t.endswith("_")) or \
            (t in _INPLACE_ARG and bool(_arg(node, _INPLACE_ARG[t], "inplace", False)))
        if inplace:
            _functionalize(node, x)
        module, kind = (nn.ReLU(), "relu") if bound is None else (ClippedReLU(bound), "clip")
        new = _insert_module(gm, node, module, kind, (x,))
        _log(log, "activation function to module", new.target, f"{_name(node.target)}{' (in place)' if inplace else ''}"
             f" -> {type(module).__name__}{'' if bound is None else f'({bound:g}): threshold capped at {bound:g}'}")


def _one_module_per_call(gm: fx.GraphModule, log: Log) -> None:
    """An activation or max-pooling module called at several places: each further call gets its own copy (a neuron
    keeps one membrane state per layer, a gated pool one rate estimate)."""
    calls: Dict[str, List[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if type(mod) in ACTIVATIONS or isinstance(mod, (nn.ReLU6, nn.Hardtanh) + MAXPOOLS):
                calls.setdefault(node.target, []).append(node)
    for target, nodes in calls.items():
        for k, node in enumerate(nodes[1:], start=2):
            name = _fresh(gm, f"{target}_{k - 1}")
            gm.add_submodule(name, copy.deepcopy(gm.get_submodule(target)))
            node.target = name
            _log(log, "one module per call", name, f"{target!r} is called {len(nodes)} times; call {k} gets its own copy")


def _activation_modules(gm: fx.GraphModule, log: Log) -> None:
    """In-place ReLUs out of place; ReLU6 / Hardtanh(0, b) as ClippedReLU(b)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.Hardtanh):  # nn.ReLU6 is a Hardtanh(0, 6)
            new, detail = ClippedReLU(float(mod.max_val)), f"{type(mod).__name__} -> ClippedReLU({mod.max_val:g}): " \
                f"threshold capped at {mod.max_val:g}"
        elif type(mod) is nn.ReLU and mod.inplace:
            new, detail = nn.ReLU(), "ReLU(inplace=True) -> ReLU()"
        else:
            continue
        if getattr(mod, "inplace", False):
            _functionalize(node, node.args[0])
        graph.set_module(gm, node.target, new)
        _log(log, "clipped activation" if isinstance(new, ClippedReLU) else "in-place activation", node.target, detail)


# --- data movement and pooling --------------------------------------------------------------------------------------

def _dim_of(n) -> Optional[Tuple[fx.Node, int]]:
    """``(x, i)`` when ``n`` is ``x.size(i)``, ``x.size()[i]`` or ``x.shape[i]``."""
    if not isinstance(n, fx.Node):
        return None
    if n.op == "call_method" and n.target == "size" and len(n.args) == 2:
        return n.args[0], n.args[1]
    if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[1], int):
        src = n.args[0]
        if isinstance(src, fx.Node) and ((src.op == "call_method" and src.target == "size" and len(src.args) == 1)
                                         or (src.op == "call_function" and src.target is getattr
                                             and src.args[1] == "shape")):
            return src.args[0], n.args[1]
    return None


def _shape_args(node: fx.Node) -> list:
    """The target shape of a ``view`` / ``reshape`` call, as a list."""
    rest = list(node.args[1:]) or [node.kwargs.get("shape")]
    return list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest


def _is_view(n) -> bool:
    return isinstance(n, fx.Node) and ((n.op == "call_method" and n.target in ("view", "reshape"))
                                       or (n.op == "call_function" and n.target is torch.reshape))


def _shuffle_groups(v2: fx.Node) -> Optional[Tuple[fx.Node, int]]:
    """``(x, g)`` when ``v2`` ends torchvision's ``channel_shuffle(x, g)``: view(b, g, c // g, h, w), transpose(1, 2),
    (contiguous), view(b, c or -1, h, w), all sizes read from ``x``."""
    if not _is_view(v2):
        return None
    out = _shape_args(v2)
    src = v2.args[0]
    if isinstance(src, fx.Node) and src.op == "call_method" and src.target == "contiguous" and len(src.users) == 1:
        src = src.args[0]
    if not (isinstance(src, fx.Node) and src.target in (torch.transpose, "transpose") and len(src.users) == 1
            and set(src.args[1:3]) == {1, 2}):
        return None
    v1 = src.args[0]
    if not (_is_view(v1) and len(v1.users) == 1):
        return None
    x = v1.args[0]
    mid = _shape_args(v1)
    if len(mid) != 5 or len(out) != 4 or not isinstance(mid[1], int) or not (out[1] == -1 or _dim_of(out[1]) == (x, 1)):
        return None
    g, per = mid[1], mid[2]
    div = per.args if isinstance(per, fx.Node) and per.target is operator.floordiv else None
    same = [_dim_of(mid[0]), _dim_of(out[0]), _dim_of(mid[3]), _dim_of(out[2]), _dim_of(mid[4]), _dim_of(out[3])]
    if div is None or div[1] != g or _dim_of(div[0]) != (x, 1) or same != [(x, 0), (x, 0), (x, 2), (x, 2), (x, 3), (x, 3)]:
        return None
    return x, g


_POOL_FUNCS = {
    F.adaptive_avg_pool2d: (nn.AdaptiveAvgPool2d, ("output_size",)),
    F.adaptive_avg_pool1d: (nn.AdaptiveAvgPool1d, ("output_size",)),
    F.avg_pool2d: (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                  "divisor_override")),
    F.avg_pool1d: (nn.AvgPool1d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")),
    F.max_pool2d: (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
    F.max_pool1d: (nn.MaxPool1d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
}


def _data_movement(gm: fx.GraphModule, log: Log) -> None:
    gone = set()  # nodes erased ahead of the loop (a chunk's getitems)
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method") or node in gone:
            continue
        t = node.target
        x = node.args[0] if node.args else None
        shuffle = _shuffle_groups(node)
        if shuffle is not None:
            new = _insert_module(gm, node, ChannelShuffle(shuffle[1]), "shuffle", (shuffle[0],))
            _log(log, "channel shuffle", new.target, f"view/transpose/view with {shuffle[1]} groups -> ChannelShuffle")
        elif _is_view(node) and isinstance(x, fx.Node) and len(_shape_args(node)) == 2 \
                and _dim_of(_shape_args(node)[0]) == (x, 0) and _shape_args(node)[1] == -1:
            new = _insert_module(gm, node, nn.Flatten(1), "flatten", (x,))
            _log(log, "flatten", new.target, f"{_name(t)}(x.size(0), -1) -> nn.Flatten(1)")
        elif t is torch.cat and isinstance(x, (list, tuple)) and _arg(node, 1, "dim", 0) != 0:
            dim = _arg(node, 1, "dim", 0)
            new = _insert_module(gm, node, Concat(dim), "cat", tuple(x))
            _log(log, "concatenation", new.target, f"torch.cat of {len(x)} tensors along dim {dim} -> Concat")
        elif t in ("chunk", torch.chunk) and _arg(node, 2, "dim", 0) != 0 and node.users \
                and all(u.target is operator.getitem and isinstance(u.args[1], int) for u in node.users):
            chunks, dim = _arg(node, 1, "chunks"), _arg(node, 2, "dim", 0)
            for u in list(node.users):
                gone.add(u)
                new = _insert_module(gm, u, Chunk(chunks, dim, u.args[1]), "chunk", (x,))
                _log(log, "chunk", new.target, f"x.chunk({chunks}, dim={dim})[{u.args[1]}] -> Chunk")
        elif t in ("mean", torch.mean) and isinstance(x, fx.Node) \
                and isinstance(_arg(node, 1, "dim"), (list, tuple)) and set(_arg(node, 1, "dim")) in ({2, 3}, {-1, -2}):
            keep = bool(_arg(node, 2, "keepdim", False))
            new = _insert_module(gm, node, GlobalAvgPool(), "avgpool", (x,))
            if not keep:
                flat = _add_call(gm, new, nn.Flatten(1), "flatten", (new,))
                new.replace_all_uses_with(flat, delete_user_cb=lambda n: n is not flat)
            _log(log, "global average pooling", new.target, f"mean over dims {tuple(_arg(node, 1, 'dim'))}"
                 f"{', keepdim' if keep else ''} -> GlobalAvgPool{'' if keep else ' + nn.Flatten(1)'}")
        elif t in _POOL_FUNCS and isinstance(x, fx.Node):
            cls, names = _POOL_FUNCS[t]
            kw = {k: _arg(node, i + 1, k) for i, k in enumerate(names) if _arg(node, i + 1, k) is not None}
            if any(isinstance(v, fx.Node) for v in kw.values()):
                continue
            new = _insert_module(gm, node, cls(**kw), "pool", (x,))
            _log(log, "pooling function to module", new.target, f"{_name(t)} -> {cls.__name__}")
        elif t in _DROPOUTS and _arg(node, 2, "training", True) is False:
            node.replace_all_uses_with(x)
            gm.graph.erase_node(node)
            _log(log, "dropout removed", node.name, f"{_name(t)} with training=False is the identity")
        elif t == "contiguous":
            node.replace_all_uses_with(x)
            gm.graph.erase_node(node)
            _log(log, "contiguous removed", node.name, ".contiguous() keeps every value")
        elif t is operator.iadd:
            _functionalize(node, x)
            node.target = operator.add
            _log(log, "in-place add", node.name, "a += b -> a + b")


_PURE = {"size", "view", "reshape", "transpose", "contiguous", "chunk", operator.getitem, operator.floordiv, getattr,
         torch.transpose, torch.reshape, torch.chunk}


def _drop_dead(gm: fx.GraphModule) -> None:
    """Erase the size arithmetic and views the rewrites left unread (pure ops only)."""
    changed = True
    while changed:
        changed = False
        for node in reversed(list(gm.graph.nodes)):
            if node.op in ("call_function", "call_method") and not node.users and node.target in _PURE:
                gm.graph.erase_node(node)
                changed = True


# --- BatchNorm ------------------------------------------------------------------------------------------------------

def _flat_input(gm: fx.GraphModule, n) -> bool:
    """``n`` is known to be ``[N, features]`` (a linear layer's or a flatten's output)."""
    if not isinstance(n, fx.Node):
        return False
    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        return isinstance(m, nn.Linear) or (isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) == (1, -1))
    return n.target in (torch.flatten, "flatten") and _arg(n, 1, "start_dim", 0) == 1 and _arg(n, 2, "end_dim", -1) == -1


def _forward_target(gm: fx.GraphModule, node: fx.Node, bn: nn.Module) -> Optional[fx.Node]:
    """The conv/linear node that reads only this BN's output and absorbs it exactly, else None."""
    if len(node.users) != 1:
        return None
    u = next(iter(node.users))
    if u.op != "call_module" or sum(n.op == "call_module" and n.target == u.target for n in gm.graph.nodes) != 1:
        return None
    lin = gm.get_submodule(u.target)
    if isinstance(lin, (nn.Conv1d, nn.Conv2d)):
        zero_pad = lin.padding == "valid" or (not isinstance(lin.padding, str) and not any(lin.padding))
        return u if zero_pad and lin.in_channels == bn.num_features else None
    if isinstance(lin, nn.Linear) and lin.in_features == bn.num_features and _flat_input(gm, node.args[0]):
        return u
    return None


@torch.no_grad()
def _batchnorm(gm: fx.GraphModule, log: Log) -> None:
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), graph.BATCHNORMS):
            continue
        if graph.bn_source(gm, node) is not None:
            continue  # graph.fold_bn folds it into the layer before
        bn = gm.get_submodule(node.target)
        s, g, beta = graph.bn_terms(bn, node.target)
        scale = g / s
        shift = beta - bn.running_mean * scale
        u = _forward_target(gm, node, bn)
        if u is not None:  # W' = W diag(scale), b' = b + W shift (per input channel; no padding, so exact)
            lin = gm.get_submodule(u.target)
            new = copy.deepcopy(lin)
            bias = lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.weight.shape[0])
            new.weight = nn.Parameter(graph.scaled_weight(lin, scale))
            new.bias = nn.Parameter(bias + graph.scaled_weight(lin, shift).flatten(1).sum(1))
            graph.set_module(gm, u.target, new)
            u.replace_input_with(node, node.args[0])
            gm.graph.erase_node(node)
            _log(log, "batchnorm folded forward", u.target, f"BatchNorm {node.target!r} folded into the next layer "
                 f"{u.target!r} ({type(lin).__name__})")
        else:
            graph.set_module(gm, node.target, ChannelAffine(scale, shift))
            _log(log, "batchnorm affine", node.target, "BatchNorm kept as a per-channel affine on the current it feeds "
                 "(it follows no single-use conv/linear and feeds none that absorbs it exactly)")


def normalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm`` in place into the canonical graph every method converts (see the module docstring); refuses by
    name, before any rewrite, what no method converts exactly. Records the rewrites in ``gm.meta["snnconv_rewrites"]``."""
    refuse_unconvertible(gm)
    gm = graph.relift_activations(gm)
    log: Log = []
    _activation_functions(gm, log)
    _one_module_per_call(gm, log)
    _activation_modules(gm, log)
    _data_movement(gm, log)
    _drop_dead(gm)
    _batchnorm(gm, log)
    gm.graph.lint()
    gm.recompile()
    gm.meta["snnconv_rewrites"] = log
    return gm
