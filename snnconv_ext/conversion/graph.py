"""Graph surgery on the ANN's ``torch.fx`` graph: trace, fold BN, refuse what we cannot convert, fold spike values,
replace activations by neurons and max pooling by its spiking form, make the graph step-mode aware. Surgery only: the order in which these steps run is
:mod:`snnconv_ext.conversion.pipeline`'s, and the modules a converted network runs (``SeqModule``, ``Scale``) are here
because the surgery inserts them.
"""
from __future__ import annotations

import copy
import operator
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import fx

from ..core.activations import ACTIVATIONS, LEAF_FUNCTIONS
from ..core.checks import ConversionError, check_eval
from ..core.layers import DATA_MOVEMENT, ChannelAffine, Chunk, Concat
from ..core.neuron import NeuronParams
from ..core.pooling import MAXPOOLS
from .registry import Method

__all__ = [
    "trace", "fold_bn", "check_supported", "activation_nodes", "replace_activations", "relift_activations",
    "SeqModule", "to_multistep", "ConversionError", "Scale", "fold_spike_values", "set_module", "describe",
    "check_finite", "LINEAR", "bn_terms", "bn_source", "scaled_weight", "replace_maxpools", "maxpool_targets",
]

LINEAR = (nn.Conv1d, nn.Conv2d, nn.Linear)
STATELESS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
             nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity, nn.MaxPool2d, nn.MaxPool1d,
             ChannelAffine) + DATA_MOVEMENT
FUNCTIONS = {operator.add, torch.add, torch.flatten, operator.iadd}
METHODS = {"flatten", "add"}
RESHAPES = {"view", "reshape", "view_as", "reshape_as", "flatten", "squeeze", "unsqueeze", "permute", "transpose"}


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (must be in eval mode) into an fx graph."""
    check_eval(model)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # pragma: no cover - message passthrough
        raise ConversionError(f"torch.fx could not trace {type(model).__name__}: {exc}") from exc
    gm.eval()
    return relift_activations(gm)


def relift_activations(gm: fx.GraphModule) -> fx.GraphModule:
    """Turn traced activation functions (``activations.LEAF_FUNCTIONS``) back into modules, named after the
    module they came from, so they can be replaced by neurons like ``nn.ReLU``."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in LEAF_FUNCTIONS:
            stack = node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else node.name
            name = "act_" + path.replace(".", "_")
            while hasattr(gm, name):
                name += "_"
            # a trained parameter (Clamp's alpha) arrives as a get_attr node: pass its value
            args = [float(_fetch(gm, a.target)) if isinstance(a, fx.Node) and a.op == "get_attr" else a
                    for a in node.args[1:]]
            gm.add_submodule(name, LEAF_FUNCTIONS[node.target](*args, **node.kwargs))
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(name, (node.args[0],))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            changed = True
    if changed:
        for node in list(gm.graph.nodes):  # parameters only the activations read are now unused
            if node.op == "get_attr" and not node.users:
                gm.graph.erase_node(node)
        gm.graph.lint()
        gm.recompile()
    return gm


def _fetch(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach()


def set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``target`` of ``gm`` (replacing what was there)."""
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


@torch.no_grad()
def fold_bn(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every BatchNorm that follows a conv/linear into it: W' = g W / s, b' = beta + g (b - mu) / s.

    (methods.md "Common ground"; s = sqrt(running_var + eps)). A BN that cannot be folded is refused.
    """
    check_finite(gm)  # an Inf running_var would fold into silent zero weights
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], BATCHNORMS):
            continue
        bn = modules[node.target]
        src = bn_source(gm, node)
        if src is None:
            raise ConversionError(f"BatchNorm {node.target!r} does not directly follow a single-use conv/linear layer, "
                                  "so it cannot be folded into weights.")
        lin = modules[src.target]
        s, g, beta = bn_terms(bn, node.target)
        new = copy.deepcopy(lin)
        w = lin.weight * (g / s).reshape(-1, *([1] * (lin.weight.dim() - 1)))
        b = lin.bias if lin.bias is not None else torch.zeros_like(bn.running_mean)
        new.weight = nn.Parameter(w)
        new.bias = nn.Parameter(beta + g * (b - bn.running_mean) / s)
        set_module(gm, src.target, new)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def bn_source(gm: fx.GraphModule, node: fx.Node) -> Optional[fx.Node]:
    """The conv/linear node a BatchNorm ``node`` folds into (:func:`fold_bn`): its input, when that is a conv/linear
    layer whose output nothing else reads; else None."""
    src = node.args[0]
    if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
        return None
    return src if isinstance(gm.get_submodule(src.target), LINEAR) else None


def bn_terms(bn: nn.Module, where: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(s, gamma, beta)`` of an eval-mode BatchNorm, s = sqrt(running_var + eps): BN(x) = gamma (x - mu) / s + beta.
    Refuses a BN without running statistics, naming it."""
    if bn.running_mean is None:
        raise ConversionError(f"BatchNorm {where!r} tracks no running statistics (track_running_stats=False).")
    s = torch.sqrt(bn.running_var + bn.eps)
    g = bn.weight if bn.affine else torch.ones_like(s)
    beta = bn.bias if bn.affine else torch.zeros_like(s)
    return s, g, beta


def describe(node: fx.Node) -> str:
    """Name a node and, when fx traced through a custom module, the module it came from."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, kind = list(stack.values())[-1]
        return f"node {node.name!r} in module {path!r} ({getattr(kind, '__name__', kind)})"
    return f"node {node.name!r}"


def _check_maxpool(where: str, method: Method) -> None:
    """The plain max of spikes (``maxpool="spikes"``; Datta & Beerel Sec. IV-A: the max of 0/1 spikes is a spike) is
    exact bookkeeping only for binary, non-negative spikes whose value is one positive number per channel; refuse the
    rest (the gated form, ``maxpool="gated"``, converts them all)."""
    if method.signed or method.memory:
        raise ConversionError(f"{where}: max pooling of signed spikes (-1/0/+1, method {method.name!r}) would keep a "
                              "+1 over a -1 that cancels it later; use maxpool='gated' or average pooling.")
    if method.threshold_options.get("granularity") == "neuron":
        raise ConversionError(f"{where}: method {method.name!r} gives every position its own threshold, so the spikes "
                              "entering the pool carry different values and their max is not a binary spike; use "
                              "maxpool='gated', layer- or channel-wise thresholds, or average pooling.")


def check_finite(gm: nn.Module) -> None:
    """Refuse NaN/Inf parameters or buffers, naming the module, the tensor and its shape."""
    for kind, named in (("parameter", gm.named_parameters()), ("buffer", gm.named_buffers())):
        for name, t in named:
            if t.is_floating_point() and not torch.isfinite(t).all():
                owner, _, leaf = name.rpartition(".")
                bad = "NaN" if torch.isnan(t).any() else "Inf"
                raise ConversionError(f"module {owner!r} ({type(gm.get_submodule(owner)).__name__}): {kind} {leaf!r} "
                                      f"of shape {tuple(t.shape)} contains {bad}")


def _check_weights_and_sharing(gm: fx.GraphModule, method: Method) -> None:
    """Refuse NaN/Inf parameters or buffers, and an activation module called at two places (its neuron
    would carry one membrane state for two layers)."""
    check_finite(gm)
    uses: Dict[str, List[str]] = {}
    for n in activation_nodes(gm, method):
        uses.setdefault(n.target, []).append(n.name)
    for target, names in uses.items():
        if len(names) > 1:
            raise ConversionError(f"activation module {target!r} ({type(gm.get_submodule(target)).__name__}) is used "
                                  f"{len(names)} times (nodes {names}); a spiking neuron keeps one membrane state per "
                                  "layer, so give each layer its own activation module")


def check_supported(gm: fx.GraphModule, method: Method) -> None:
    """Refuse, naming the node, anything the method cannot convert faithfully. Nothing is skipped."""
    _check_weights_and_sharing(gm, method)
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        where = describe(node)
        if node.op == "call_module":
            mod = modules[node.target]
            where = f"module {node.target!r} ({type(mod).__name__})"
            if isinstance(mod, method.activations):
                continue
            if type(mod) in ACTIVATIONS or isinstance(mod, tuple(ACTIVATIONS)):
                raise ConversionError(f"{where}: method {method.name!r} converts {[a.__name__ for a in method.activations]}"
                                      f" activations, not {type(mod).__name__}.")
            if isinstance(mod, MAXPOOLS):
                if mod.return_indices:
                    raise ConversionError(f"{where}: max pooling that returns indices has no spiking form.")
                if method.maxpool == "spikes":
                    _check_maxpool(where, method)
                continue
            if isinstance(mod, BATCHNORMS):
                raise ConversionError(f"{where}: unfolded BatchNorm.")
            if not isinstance(mod, STATELESS):
                raise ConversionError(f"{where}: unsupported layer; snnconv converts conv, linear, BN (folded or a "
                                      "per-channel affine), average and max pooling, flatten, concatenation, dropout, "
                                      "residual additions and the method's activations.")
        elif node.op == "call_function":
            if node.target not in FUNCTIONS:
                hint = " (a shape read for view/reshape: use nn.Flatten instead)" if node.target is getattr else ""
                raise ConversionError(f"{where}: unsupported function "
                                      f"{getattr(node.target, '__name__', node.target)!r}{hint}.")
        elif node.op == "call_method":
            if node.target not in METHODS:
                if node.target in RESHAPES:
                    raise ConversionError(f"{where}: unsupported tensor method .{node.target}() (use nn.Flatten "
                                          "instead of view/reshape).")
                raise ConversionError(f"{where}: unsupported tensor method .{node.target}(); torch.fx traced into a "
                                      "custom module or autograd function, which snnconv cannot turn into neurons: use "
                                      "the method's activation modules (snnconv methods) and standard layers.")
        elif node.op == "get_attr":
            raise ConversionError(f"{where}: direct use of parameter/buffer {node.target!r} in forward is not supported.")


def activation_nodes(gm: fx.GraphModule, method: Method) -> List[fx.Node]:
    """The activation nodes that become spiking neurons, in graph order."""
    modules = dict(gm.named_modules())
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], method.activations)]


def maxpool_targets(gm: fx.GraphModule) -> List[str]:
    """The max-pooling modules of ``gm``, by target, in graph order (normalisation gives each call its own)."""
    return [n.target for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), MAXPOOLS)]


def replace_maxpools(gm: fx.GraphModule, make: Callable[[nn.Module], nn.Module]) -> List[str]:
    """Swap every max-pooling module for ``make(pool)``, its spiking form (``core.pooling.GatedMaxPool`` or a
    backend's wrapper of it); returns the targets."""
    targets = maxpool_targets(gm)
    for t in targets:
        set_module(gm, t, make(gm.get_submodule(t)))
    gm.recompile()
    return targets


def replace_activations(gm: fx.GraphModule, params: Dict[str, NeuronParams],
                        factory: Callable[[NeuronParams], nn.Module]) -> fx.GraphModule:
    """Swap each activation module for ``factory(params)`` (a backend's spiking neuron)."""
    for target, p in params.items():
        set_module(gm, target, factory(p))
    gm.recompile()
    return gm


class SeqModule(nn.Module):
    """Run a stateless layer in either step mode: ``"m"`` takes ``[T, B, ...]`` as one batch of ``T*B``;
    ``"s"`` passes one step ``[B, ...]`` straight through (SpikingJelly's ``SeqToANNContainer`` semantics).

    Multi-step input that is constant in time (an ``expand`` view, stride 0 along T, as direct encoding feeds
    the first layer) is computed once and expanded again, so the analog first layer costs one pass, not T.
    A 2x2, stride-2 average pooling runs as two pairwise sums (about 4x faster than ``avg_pool2d`` on CPU;
    exact on spikes) unless hooks are registered on the pooling module itself.
    """

    def __init__(self, module: nn.Module, step_mode: str = "m") -> None:
        super().__init__()
        self.module = module
        self.step_mode = step_mode

    def _layer(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if (type(m) is nn.AvgPool2d and _is_pool_2x2(m) and x.dim() == 4 and x.shape[-2] % 2 == 0
                and x.shape[-1] % 2 == 0 and not (m._forward_hooks or m._forward_pre_hooks)):
            return avg_pool_2x2(x)
        return m(x)

    def forward(self, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
        if more:  # a layer of several inputs (a concatenation): each [T, B, ...] becomes [T*B, ...]
            if self.step_mode == "s":
                return self.module(x, *more)
            y = self.module(*(a.flatten(0, 1) for a in (x,) + more))
            return y.view(x.shape[0], x.shape[1], *y.shape[1:])
        if self.step_mode == "s":
            return self._layer(x)
        T = x.shape[0]
        if x.stride(0) == 0 or T == 1:
            y = self._layer(x[0])
            return y.unsqueeze(0).expand(T, *y.shape)
        y = self._layer(x.flatten(0, 1))
        return y.view(T, x.shape[1], *y.shape[1:])

    def extra_repr(self) -> str:
        return f"step_mode={self.step_mode}"


def _is_pool_2x2(m: nn.AvgPool2d) -> bool:
    two = lambda v: v in (2, (2, 2))  # noqa: E731
    return (two(m.kernel_size) and (two(m.stride) or m.stride == [])  # nn.AvgPool2d stores stride=None as k
            and m.padding in (0, (0, 0)) and not m.ceil_mode and m.divisor_override is None)


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``avg_pool2d(x, 2)`` of ``[N, C, H, W]`` with even H and W, as a sum of row pairs, then of column pairs."""
    n, c, h, w = x.shape
    rows = x.reshape(n, c, h // 2, 2, w)
    half = (rows[:, :, :, 0] + rows[:, :, :, 1]).view(n, c, h // 2, w // 2, 2)
    return (half[..., 0] + half[..., 1]).mul_(0.25)


class Scale(nn.Module):
    """Multiply spikes by what they are worth where that cannot be folded into the next layer's weights
    (a per-position threshold before a shared conv kernel, a residual sum): ``y = s * factor``; signed spikes
    use ``factor_neg`` for -1 when it differs. Shown in the network's ``repr``."""

    def __init__(self, factor: torch.Tensor, factor_neg: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.register_buffer("factor", torch.as_tensor(factor, dtype=torch.float32).detach().clone())
        self.register_buffer("factor_neg", None if factor_neg is None else
                             torch.as_tensor(factor_neg, dtype=torch.float32).detach().clone())

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.factor_neg is None:
            return s * self.factor
        return torch.where(s > 0, s * self.factor, s * self.factor_neg)

    def extra_repr(self) -> str:
        shape = lambda f: "scalar" if f.dim() == 0 else f"shape={tuple(f.shape)}"  # noqa: E731
        neg = "" if self.factor_neg is None else f", factor_neg {shape(self.factor_neg)}"
        return f"factor {shape(self.factor)}{neg} (spike values not folded into weights)"


_PASS = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.MaxPool1d, nn.MaxPool2d,
         nn.Dropout, nn.Identity)


def _sample_shapes(gm: fx.GraphModule, input_shape: Tuple[int, ...]) -> Dict[str, Tuple[int, ...]]:
    """Per-node output shape of one sample (batch dimension dropped), from a dummy forward."""
    from torch.fx.passes.shape_prop import ShapeProp
    p = next(gm.parameters())
    ShapeProp(gm).propagate(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    out = {}
    for n in gm.graph.nodes:
        tm = n.meta.get("tensor_meta")
        if tm is not None and hasattr(tm, "shape"):
            out[n.name] = tuple(tm.shape[1:])
    return out


def _fold_plan(gm: fx.GraphModule, node: fx.Node, sigma: torch.Tensor, shapes, plan: List) -> bool:
    """Follow ``node``'s users to the conv/linear layers that consume its spikes; append (layer, per-input
    factor) to ``plan``; False when some path cannot absorb ``sigma`` exactly (DNISNM Eq. 18)."""
    modules = dict(gm.named_modules())
    for u in node.users:
        mod = modules.get(u.target) if u.op == "call_module" else None
        per_channel = sigma.dim() == 0 or all(d == 1 for d in sigma.shape[1:])
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            if not per_channel:
                return False
            plan.append((u.target, sigma.reshape(-1) if sigma.dim() else sigma))
        elif isinstance(mod, ChannelAffine):  # a*(sigma s) + c = (a sigma) s + c: sigma joins the affine's scale
            if not per_channel:
                return False
            plan.append((u.target, sigma.reshape(-1) if sigma.dim() else sigma))
        elif isinstance(mod, DATA_MOVEMENT):
            moved = _moved_factor(mod, u, node, sigma, shapes) if per_channel else None
            if moved is None or not _fold_plan(gm, u, moved, shapes, plan):
                return False
        elif isinstance(mod, nn.Linear):
            if sigma.dim() > 1:
                return False
            plan.append((u.target, sigma))
        elif isinstance(mod, _PASS):
            if not per_channel:
                return False
            if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)) and bool((sigma <= 0).any()):
                return False  # max commutes with a positive per-channel factor only
            if not _fold_plan(gm, u, sigma, shapes, plan):
                return False
        elif isinstance(mod, nn.Flatten) or (u.op == "call_function" and u.target is torch.flatten) \
                or (u.op == "call_method" and u.target == "flatten"):
            shape = shapes.get(node.name)
            if shape is None or len(shape) < 1 or (isinstance(mod, nn.Flatten) and (mod.start_dim, mod.end_dim) != (1, -1)):
                return False
            if u.op != "call_module":
                start = u.args[1] if len(u.args) > 1 else u.kwargs.get("start_dim", 0)
                end = u.args[2] if len(u.args) > 2 else u.kwargs.get("end_dim", -1)
                if (start, end) != (1, -1):
                    return False
            flat = sigma.expand(shape).reshape(-1) if sigma.dim() else sigma
            if not _fold_plan(gm, u, flat, shapes, plan):
                return False
        else:
            return False
    return True


def _moved_factor(mod: nn.Module, user: fx.Node, node: fx.Node, sigma: torch.Tensor, shapes) -> Optional[torch.Tensor]:
    """The per-channel factor after a data-movement layer that ``node``'s (per-channel or scalar) factor ``sigma``
    enters: the layer applied to the factor itself, the other inputs of a concatenation counting 1. None when the
    layer moves values across positions within a channel differently, or shapes are unknown."""
    out_shape = shapes.get(user.name)
    if out_shape is None:
        return None
    rank = len(out_shape) + 1
    dim = mod.dim % rank if isinstance(mod, (Concat, Chunk)) else 1
    if dim != 1:  # a split / concatenation along a spatial axis keeps every channel's factor
        return sigma if isinstance(mod, Chunk) else None
    if sigma.dim() == 0 and not isinstance(mod, Concat):
        return sigma  # one factor for every channel stays one factor under any channel permutation or selection
    tail = (1,) * (len(out_shape) - 1)

    def channels(n: fx.Node, f: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        shape = shapes.get(n.name)
        if shape is None:
            return None
        return (torch.ones(shape[0]) if f is None else f.reshape(-1).expand(shape[0])).reshape(1, shape[0], *tail)

    if isinstance(mod, Concat):
        if sum(a is node for a in user.args) != 1:
            return None
        parts = [channels(a, sigma if a is node else None) for a in user.args]
        if any(p is None for p in parts):
            return None
        return mod(*parts).reshape(-1, *tail)
    moved = channels(node, sigma)
    return None if moved is None else mod(moved).reshape(-1, *tail)


def scaled_weight(lin: nn.Module, f: torch.Tensor) -> torch.Tensor:
    """``lin``'s weight with input channel (or feature) i multiplied by ``f[i]`` (``f`` scalar or per input channel);
    a grouped conv's weight ``[O, I/g, ...]`` takes the factors of its own group's inputs."""
    w = lin.weight
    if not f.dim():
        return w * f.to(w)
    groups = getattr(lin, "groups", 1)
    if groups == 1:
        return w * f.to(w).reshape([1, -1] + [1] * (w.dim() - 2))
    per_out = f.to(w).reshape(groups, -1).repeat_interleave(w.shape[0] // groups, dim=0)  # [O, I/g]
    return w * per_out.reshape(*per_out.shape, *([1] * (w.dim() - 2)))


def _same_value(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        return bool(torch.equal(*torch.broadcast_tensors(a, b)))
    except RuntimeError:
        return False


@torch.no_grad()
def fold_spike_values(gm: fx.GraphModule, values: Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]]
                      ) -> Dict[str, str]:
    """Make spikes binary: fold what each spiking layer's spikes are worth (``values[target] = (pos, neg)``,
    amplitude*theta, Datta Eq. 8) into the weights of the layers that consume them (DNISNM Eq. 18).

    Where that is not exact (per-position values before a conv, a residual sum, different positive and
    negative values) a :class:`Scale` module is inserted after the layer instead. Call before the activations
    are replaced. Returns ``{target: "folded" | "scaler"}``.
    """
    shapes = _sample_shapes(gm, gm.meta["input_shape"]) if gm.meta.get("input_shape") else {}
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module" and n.target in values}
    how = {}
    for target, (pos, neg) in values.items():
        node = nodes[target]
        pos = torch.as_tensor(pos, dtype=torch.float32)
        same = neg is None or _same_value(pos, torch.as_tensor(neg, dtype=torch.float32))
        plan: List = []
        if same and bool((pos > 0).all()) and _fold_plan(gm, node, pos, shapes, plan):
            for layer, f in plan:
                lin = gm.get_submodule(layer)
                new = copy.deepcopy(lin)  # never change a module shared with the caller
                if isinstance(lin, ChannelAffine):
                    new.scale = lin.scale * f.to(lin.scale)
                else:
                    new.weight = nn.Parameter(scaled_weight(lin, f))
                set_module(gm, layer, new)
            how[target] = "folded"
            continue
        name = "scale_" + target.replace(".", "_")
        while hasattr(gm, name):
            name += "_"
        gm.add_submodule(name, Scale(pos, None if same else neg))
        with gm.graph.inserting_after(node):
            new_node = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(new_node, delete_user_cb=lambda n: n is not new_node)
        how[target] = "scaler"
    gm.graph.lint()
    gm.recompile()
    return how


def to_multistep(gm: fx.GraphModule, stateful: Tuple[type, ...], seq: type = SeqModule) -> fx.GraphModule:
    """Make the graph step-mode aware: wrap stateless layers in ``seq`` (a :class:`SeqModule`) and turn
    ``flatten`` calls into wrapped ``nn.Flatten`` modules, so ``"m"`` ([T, B, ...]) and ``"s"`` both work.

    Modules containing any instance of ``stateful`` (the backend's neurons) handle time themselves.
    """
    for node in list(gm.graph.nodes):
        if (node.op == "call_function" and node.target is torch.flatten) or \
                (node.op == "call_method" and node.target == "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if start < 1 or (0 <= end < 1):
                raise ConversionError(f"node {node.name!r}: flatten over the batch dimension (start_dim={start}) "
                                      "has no per-sample meaning in a spiking network")
            name = f"flatten_{node.name}"
            gm.add_submodule(name, nn.Flatten(start, end))
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = modules[node.target]
            if not any(isinstance(m, stateful + (SeqModule,)) for m in mod.modules()):
                set_module(gm, node.target, seq(mod))
    gm.graph.lint()
    gm.recompile()
    return gm
