"""Graph surgery shared by every backend: trace, fold BN, refuse what we cannot convert, record, replace.

Everything works on a ``torch.fx.GraphModule`` of the ANN (as SpikingJelly's converter does). The
SpikingJelly recipe calls these steps from its lifecycle hooks; the snnTorch converter calls the same.
"""
from __future__ import annotations

import copy
import operator
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx
from tqdm.auto import tqdm

from . import thresholds as thr
from .activations import LEAF_FUNCTIONS
from .methods import ACTIVATIONS, Method
from .neuron import NeuronParams

__all__ = [
    "trace", "fold_bn", "check_supported", "activation_nodes", "calibrate_thresholds",
    "replace_activations", "relift_activations", "SeqModule", "to_multistep", "ConversionError", "iter_inputs",
    "run_ann",
]


class ConversionError(ValueError):
    """The model contains something the method cannot convert faithfully."""


LINEAR = (nn.Conv1d, nn.Conv2d, nn.Linear)
STATELESS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
             nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity, nn.MaxPool2d, nn.MaxPool1d)
FUNCTIONS = {operator.add, torch.add, torch.flatten, operator.iadd}
METHODS = {"flatten", "add"}
KNOWN_ACTIVATION_FUNCS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.leaky_relu,
                          F.hardtanh, torch.clamp, F.elu}


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` (must be in eval mode) into an fx graph."""
    if model.training:
        raise ConversionError(f"{type(model).__name__} is in training mode: call model.eval() before converting "
                              "(BN statistics and dropout must be frozen).")
    for name, mod in model.named_modules():
        if mod.training:
            raise ConversionError(f"submodule {name!r} ({type(mod).__name__}) is in training mode: call model.eval().")
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


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


@torch.no_grad()
def fold_bn(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every BatchNorm that follows a conv/linear into it: W' = g W / s, b' = beta + g (b - mu) / s.

    (methods.md "Common ground"; s = sqrt(running_var + eps)). A BN that cannot be folded is refused.
    """
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        bn = modules[node.target]
        src = node.args[0]
        lin = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        if not isinstance(lin, LINEAR) or len(src.users) != 1:
            raise ConversionError(f"BatchNorm {node.target!r} does not directly follow a single-use conv/linear layer, "
                                  "so it cannot be folded into weights.")
        if bn.running_mean is None:
            raise ConversionError(f"BatchNorm {node.target!r} tracks no running statistics (track_running_stats=False).")
        s = torch.sqrt(bn.running_var + bn.eps)
        g = bn.weight if bn.affine else torch.ones_like(s)
        beta = bn.bias if bn.affine else torch.zeros_like(s)
        new = copy.deepcopy(lin)
        w = lin.weight * (g / s).reshape(-1, *([1] * (lin.weight.dim() - 1)))
        b = lin.bias if lin.bias is not None else torch.zeros_like(bn.running_mean)
        new.weight = nn.Parameter(w)
        new.bias = nn.Parameter(beta + g * (b - bn.running_mean) / s)
        _set_module(gm, src.target, new)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _where(node: fx.Node) -> str:
    """Name a node and, when fx traced through a custom module, the module it came from."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, kind = list(stack.values())[-1]
        return f"node {node.name!r} in module {path!r} ({getattr(kind, '__name__', kind)})"
    return f"node {node.name!r}"


def _check_maxpool(where: str, method: Method) -> None:
    """Max pooling of spikes (Datta & Beerel Sec. IV-A: the max of 0/1 spikes is a spike) is exact bookkeeping only
    for binary, non-negative spikes whose value is one positive number per channel; refuse the rest."""
    if method.signed or method.memory:
        raise ConversionError(f"{where}: max pooling of signed spikes (-1/0/+1, method {method.name!r}) would keep a "
                              "+1 over a -1 that cancels it later; use average pooling for signed neurons.")
    if method.threshold_options.get("granularity") == "neuron":
        raise ConversionError(f"{where}: method {method.name!r} gives every position its own threshold, so the spikes "
                              "entering the pool carry different values and their max is not a binary spike; use "
                              "layer- or channel-wise thresholds or average pooling.")


def check_supported(gm: fx.GraphModule, method: Method) -> None:
    """Refuse, naming the node, anything the method cannot convert faithfully. Nothing is skipped."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        where = _where(node)
        if node.op == "call_module":
            mod = modules[node.target]
            where = f"module {node.target!r} ({type(mod).__name__})"
            if isinstance(mod, method.activations):
                continue
            if type(mod) in ACTIVATIONS or isinstance(mod, tuple(ACTIVATIONS)):
                raise ConversionError(f"{where}: method {method.name!r} converts {[a.__name__ for a in method.activations]}"
                                      f" activations, not {type(mod).__name__}.")
            if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
                if not method.allow_maxpool:
                    raise ConversionError(f"{where}: max pooling has no faithful spiking equivalent in method "
                                          f"{method.name!r}; use average pooling (nn.AvgPool2d) in the ANN.")
                _check_maxpool(where, method)
                continue
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                raise ConversionError(f"{where}: unfolded BatchNorm.")
            if not isinstance(mod, STATELESS):
                raise ConversionError(f"{where}: unsupported layer; snnconv converts conv, linear, BN (folded), "
                                      "average pooling, flatten, dropout, residual additions and the method's activations.")
        elif node.op == "call_function":
            if node.target in KNOWN_ACTIVATION_FUNCS:
                raise ConversionError(f"{where}: activation {getattr(node.target, '__name__', node.target)} is called as a "
                                      "function in forward(); use an nn.Module (e.g. nn.ReLU) so it can be replaced by neurons.")
            if node.target not in FUNCTIONS:
                raise ConversionError(f"{where}: unsupported function {getattr(node.target, '__name__', node.target)!r}.")
        elif node.op == "call_method":
            if node.target not in METHODS:
                raise ConversionError(f"{where}: unsupported tensor method .{node.target}() (use nn.Flatten instead of view/reshape).")
        elif node.op == "get_attr":
            raise ConversionError(f"{where}: direct use of parameter/buffer {node.target!r} in forward is not supported.")


def activation_nodes(gm: fx.GraphModule, method: Method) -> List[fx.Node]:
    """The activation nodes that become spiking neurons, in graph order."""
    modules = dict(gm.named_modules())
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], method.activations)]


def iter_inputs(data: Iterable, device: torch.device, what: str = "calibration data",
                with_labels: bool = False) -> Iterable[torch.Tensor]:
    """Yield input tensors from a loader of tensors, (x, y) pairs or dicts; refuse empty or bad batches.
    ``with_labels=True`` yields ``(x, y)`` with ``y`` None when a batch carries no integer labels."""
    n = 0
    for batch in data:
        x, y = batch, None
        if isinstance(batch, (list, tuple)):
            if not batch:
                raise ValueError(f"{what}: empty batch")
            x = batch[0]
            y = batch[1] if len(batch) > 1 else None
        elif isinstance(batch, dict):
            x = batch.get("input", batch.get("image", batch.get("x")))
            y = batch.get("label", batch.get("target", batch.get("y")))
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{what}: batch {n} holds {type(x).__name__}, expected a tensor or (tensor, label)")
        if x.dim() < 2:
            raise ValueError(f"{what}: batch {n} has shape {tuple(x.shape)}, expected [B, ...] with a batch dimension")
        if not x.is_floating_point():
            raise ValueError(f"{what}: batch {n} has dtype {x.dtype}, expected floating point")
        if torch.isnan(x).any():
            raise ValueError(f"{what}: batch {n} contains NaN")
        if n == 0:
            shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != shape:
            raise ValueError(f"{what}: batch {n} has sample shape {tuple(x.shape[1:])}, earlier batches {shape}")
        n += 1
        if not with_labels:
            yield x.to(device)
            continue
        ok = isinstance(y, torch.Tensor) and not y.is_floating_point() and y.shape[:1] == x.shape[:1]
        yield x.to(device), (y.to(device) if ok else None)
    if n == 0:
        raise ValueError(f"{what} is empty: conversion needs at least one batch to set thresholds")


def run_ann(gm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``gm(x)``, turning a shape mismatch inside the model into an error that names the data's shape."""
    try:
        return gm(x)
    except RuntimeError as exc:
        raise ValueError(f"calibration data of shape {tuple(x.shape)} does not fit the model: {exc}") from None


@torch.no_grad()
def calibrate_thresholds(gm: fx.GraphModule, method: Method, data: Iterable, max_batches: Optional[int] = None,
                         progress: bool = True) -> Dict[str, NeuronParams]:
    """Run calibration data through the ANN, feed each activation's input to its threshold strategy,
    and return the neuron parameters for every activation module (keyed by module target)."""
    nodes = activation_nodes(gm, method)
    if not nodes:
        raise ConversionError(f"no {[a.__name__ for a in method.activations]} activation found to convert")
    strategies = {n.target: thr.get(method.threshold, **method.threshold_options) for n in nodes}
    for t, s in strategies.items():
        s.bind(gm.get_submodule(t))
    hooks = [gm.get_submodule(t).register_forward_pre_hook(lambda m, a, t=t: strategies[t].observe(a[0]))
             for t in strategies]
    device = next(gm.parameters()).device
    shape = None
    try:
        it = iter_inputs(data, device)
        for i, x in enumerate(tqdm(it, desc=f"calibrate {method.name}", disable=not progress, leave=False)):
            shape = tuple(x.shape[1:])
            run_ann(gm, x)
            if max_batches is not None and i + 1 >= max_batches:
                break
    finally:
        for h in hooks:
            h.remove()
    params = {}
    for t, s in strategies.items():
        theta = s.compute()
        knobs = dict(theta=theta, fire_at=method.fire_at, theta_neg=theta if method.signed else None,
                     memory=method.memory, amplitude=method.amplitude,
                     v0=theta / 2 if method.v0 == "half" else 0.0, leak=method.leak)
        # an activation may define the neuron it becomes (atLeakyReLU: its own negative threshold/amplitude)
        knobs.update(getattr(gm.get_submodule(t), "neuron_knobs", dict)())
        knobs.update(getattr(s, "knobs", dict)())  # a strategy may set more knobs (datta: amplitude beta, Eq. 8)
        if getattr(s, "result", None):
            gm.meta.setdefault("snnconv_thresholds", {})[t] = dict(s.result)
        params[t] = NeuronParams(**knobs)
    gm.meta["input_shape"] = shape
    return params


def replace_activations(gm: fx.GraphModule, params: Dict[str, NeuronParams],
                        factory: Callable[[NeuronParams], nn.Module]) -> fx.GraphModule:
    """Swap each activation module for ``factory(params)`` (a backend's spiking neuron)."""
    for target, p in params.items():
        _set_module(gm, target, factory(p))
    gm.recompile()
    return gm


def append_output(gm: fx.GraphModule, module: nn.Module, name: str = "output_integrator") -> fx.GraphModule:
    """Insert ``module`` before the graph output (the integrate-only output layer)."""
    gm.add_submodule(name, module)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    src = out.args[0]
    with gm.graph.inserting_before(out):
        new = gm.graph.call_module(name, (src,))
    out.args = (new,)
    gm.graph.lint()
    gm.recompile()
    return gm


class SeqModule(nn.Module):
    """Run a stateless layer on multi-step input ``[T, B, ...]`` as one batch of ``T*B``.

    Input that is constant in time (an ``expand`` view, stride 0 along T, as direct encoding feeds the
    first layer) is computed once and expanded again, so the analog first layer costs one pass, not T.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        if x.stride(0) == 0 or T == 1:
            y = self.module(x[0])
            return y.unsqueeze(0).expand(T, *y.shape)
        y = self.module(x.flatten(0, 1))
        return y.view(T, x.shape[1], *y.shape[1:])

    def extra_repr(self) -> str:
        return "multi-step [T, B, ...]"


def to_multistep(gm: fx.GraphModule, stateful: Tuple[type, ...]) -> fx.GraphModule:
    """Make the graph take ``[T, B, ...]``: wrap stateless layers, shift flatten's start_dim by one.

    Modules containing any instance of ``stateful`` (the backend's neurons) handle time themselves.
    """
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = modules[node.target]
            if not any(isinstance(m, stateful + (SeqModule,)) for m in mod.modules()):
                _set_module(gm, node.target, SeqModule(mod))
        elif (node.op == "call_function" and node.target is torch.flatten) or \
                (node.op == "call_method" and node.target == "flatten"):
            args = list(node.args)
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            if start < 0:
                raise ConversionError(f"node {node.name!r}: flatten with negative start_dim is ambiguous in multi-step mode")
            if len(args) > 1:
                args[1] = start + 1
            else:
                node.kwargs = {**node.kwargs, "start_dim": start + 1}
            node.args = tuple(args)
    gm.graph.lint()
    gm.recompile()
    return gm
