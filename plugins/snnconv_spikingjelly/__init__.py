"""SpikingJelly adapter: snnconv's neuron as a ``BaseNode`` and every snnconv method as an ``FXConversionRecipe``.

>>> from spikingjelly.activation_based import ann2snn, functional
>>> from snnconv_spikingjelly import recipes
>>> snn = ann2snn.FXConverter(recipe=recipes.PercentileRecipe(dataloader=calib)).convert(ann)
>>> functional.reset_net(snn); out = snn(x.unsqueeze(0).expand(T, *x.shape))   # [T, B, classes], accumulated logits

The converted graph runs in multi-step mode (``[T, B, ...]``). Where a neuron is plain soft-reset IF
(thresholds folded into scalers, as SpikingJelly's ``VoltageScaler`` does) SpikingJelly's own
``IFNode``/``HalfThresholdIFNode`` is used, so its CUDA kernels apply.
"""
from __future__ import annotations

import copy
from typing import Iterable, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import base, neuron as sj_neuron
from spikingjelly.activation_based.ann2snn import FXConverter, FXConversionRecipe
from torch import fx

from snnconv_ext import graph
from snnconv_ext.calibrate import calibrate
from snnconv_ext.evaluate import as_loader
from snnconv_ext.methods import get as get_method, methods as method_names
from snnconv_ext.neuron import NeuronParams, NeuronState, init_state, run, step_

__all__ = ["SnnconvNode", "IntegratorNode", "Scale", "SnnconvRecipe", "recipe_class", "recipes", "convert",
           "native_node", "normalized_node", "STATEFUL"]


class SnnconvNode(sj_neuron.BaseNode):
    """The snnconv neuron family (``snnconv_ext.neuron``) as a SpikingJelly node; step modes ``s`` and ``m``.

    Emits the values the next layer receives (``+amplitude*theta``, ``-amplitude*theta_neg`` or 0), not 0/1.
    """

    def __init__(self, params: Optional[NeuronParams] = None, step_mode: str = "m", **knobs) -> None:
        super().__init__(v_threshold=1.0, v_reset=None, step_mode=step_mode)
        p = params if params is not None else NeuronParams(**knobs)
        self.register_buffer("theta", torch.as_tensor(p.theta, dtype=torch.float32).clone())
        self.register_buffer("theta_neg", None if p.theta_neg is None else
                             torch.as_tensor(p.theta_neg, dtype=torch.float32).clone())
        self.register_buffer("v0", torch.as_tensor(p.v0, dtype=torch.float32).clone())
        self.fire_at, self.memory = float(p.fire_at), bool(p.memory)
        self.amplitude = p.amplitude if isinstance(p.amplitude, float) else torch.as_tensor(p.amplitude)
        self.leak = p.leak if isinstance(p.leak, float) else torch.as_tensor(p.leak)
        self.amplitude_neg = None if p.amplitude_neg is None else torch.as_tensor(p.amplitude_neg)
        self.register_memory("m", 0.0)

    def params(self, like: torch.Tensor) -> NeuronParams:
        """The node's knobs as core ``NeuronParams`` on ``like``'s device."""
        return NeuronParams(self.theta, self.fire_at, self.theta_neg, self.memory, self.amplitude, self.v0,
                            self.leak, self.amplitude_neg).to(like)

    def materialize_states(self, inputs, states, step_mode):
        x = inputs[0][0] if step_mode == "m" else inputs[0]
        v, m = states
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            st = init_state(x, self.params(x))
            return (st.v, st.m if st.m is not None else 0.0)
        return states

    def _state(self, states) -> NeuronState:
        v, m = states
        return NeuronState(v.clone(), m.clone() if isinstance(m, torch.Tensor) else None)

    def single_step_functional_forward(self, inputs, states):
        st = self._state(states)
        out = step_(inputs[0], st, self.params(inputs[0]))
        return (out,), (st.v, st.m if st.m is not None else states[1])

    def multi_step_functional_forward(self, inputs, states):
        st = self._state(states)
        out = run(inputs[0], st, self.params(inputs[0][0]))
        return (out,), (st.v, st.m if st.m is not None else states[1])

    def extra_repr(self) -> str:
        th = self.theta
        shape = "scalar" if th.dim() == 0 else f"shape={tuple(th.shape)}"
        return (f"theta={shape}, fire_at={self.fire_at}, signed={self.theta_neg is not None}, memory={self.memory}, "
                f"amplitude={self.amplitude}, leak={self.leak}, step_mode={self.step_mode}")


class IntegratorNode(base.MemoryModule):
    """Integrate-only output layer: no spikes, emits the input accumulated so far (the logit)."""

    def __init__(self, step_mode: str = "m") -> None:
        super().__init__()
        self.register_memory("v", 0.0)
        self.step_mode = step_mode

    def single_step_functional_forward(self, inputs, states):
        v = states[0] + inputs[0]
        return (v,), (v,)

    def multi_step_functional_forward(self, inputs, states):
        acc = torch.cumsum(inputs[0], dim=0) + states[0]
        return (acc,), (acc[-1].clone(),)


class Scale(nn.Module):
    """Multiply by a fixed (scalar or per-channel) factor; the threshold folding of ``VoltageScaler``."""

    def __init__(self, factor: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("factor", torch.as_tensor(factor, dtype=torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def _unit(p: NeuronParams) -> NeuronParams:
    """The same neuron in units of theta: threshold 1, input and output scaled by 1/theta and theta."""
    theta = torch.as_tensor(p.theta, dtype=torch.float32)
    return NeuronParams(theta=1.0, fire_at=p.fire_at, theta_neg=None if p.theta_neg is None else p.theta_neg / theta,
                        memory=p.memory, amplitude=p.amplitude, v0=torch.as_tensor(p.v0) / theta, leak=p.leak,
                        amplitude_neg=p.amplitude_neg)


def _sj_if(unit: NeuronParams, step_mode: str = "m") -> Optional[nn.Module]:
    """SpikingJelly's own node for a unit-threshold soft-reset IF with v0 in {0, 1/2}, else None."""
    if unit.theta_neg is not None or unit.memory or unit.fire_at != 1.0 or unit.amplitude_neg is not None \
            or not (isinstance(unit.amplitude, float) and unit.amplitude == 1.0) \
            or not (isinstance(unit.leak, float) and unit.leak == 1.0):
        return None
    v0 = torch.as_tensor(unit.v0)
    if bool((v0 == 0).all()):
        return sj_neuron.IFNode(v_reset=None, step_mode=step_mode)
    if bool((v0 == 0.5).all()):
        return sj_neuron.HalfThresholdIFNode(step_mode=step_mode)  # v0 = theta/2
    return None


def normalized_node(p: NeuronParams, native: bool = False, step_mode: str = "m") -> nn.Module:
    """Weight-normalisation realisation (DNISNM Eq. 18, SpikingJelly's VoltageScaler): scale the input by
    1/theta, run a unit-threshold neuron, scale the spikes by theta. Same spikes as thresholds ``theta``."""
    unit = _unit(p)
    inner = (native and _sj_if(unit, step_mode)) or SnnconvNode(unit, step_mode=step_mode)
    return _wrap(p, inner)


def _wrap(p: NeuronParams, inner: nn.Module) -> nn.Sequential:
    theta = torch.as_tensor(p.theta, dtype=torch.float32)
    return nn.Sequential(Scale(1.0 / theta), inner, Scale(theta))


def native_node(p: NeuronParams, step_mode: str = "m") -> Optional[nn.Module]:
    """SpikingJelly's own IF node between threshold scalers when ``p`` is exactly a soft-reset IF, else None."""
    inner = _sj_if(_unit(p), step_mode)
    return None if inner is None else _wrap(p, inner)


STATEFUL = (base.MemoryModule,)


class SnnconvRecipe(FXConversionRecipe):
    """Convert with a registered snnconv method through SpikingJelly's ``FXConverter`` lifecycle.

    ``weight_norm``: realise thresholds as input/output scalers around unit-threshold neurons (DNISNM Eq. 18)
    instead of thresholds in the neurons; the spikes are the same.
    ``dataloader``: calibration batches (tensors or (x, y) pairs). ``native``: use SpikingJelly's IF nodes
    where exact; ``None`` (default) does so when converting on CUDA, where its kernels pay off (on CPU its
    reference loop is several times slower than ours). Extra keyword options override the method's fields (e.g. ``p=99.99, granularity="channel"``).
    """

    method_name: Optional[str] = None

    def __init__(self, dataloader: Iterable, method: Optional[str] = None, native: Optional[bool] = None,
                 weight_norm: bool = False, max_batches: Optional[int] = None, progress: bool = True,
                 **options) -> None:
        name = method if method is not None else self.method_name
        if name is None:
            raise ValueError("SnnconvRecipe needs a method name (see snnconv_ext.methods())")
        self.method = get_method(name, **options)
        self.dataloader = dataloader
        self.native, self.max_batches, self.progress = native, max_batches, progress
        self.weight_norm = weight_norm
        self.params = None

    def validate(self, converter) -> None:
        if self.dataloader is None:
            raise ValueError(f"{type(self).__name__} needs calibration data (dataloader=...)")

    def before_trace(self, converter, ann: nn.Module) -> nn.Module:
        for name, mod in ann.named_modules():
            if mod.training:
                raise graph.ConversionError(f"{'model' if not name else repr(name)} ({type(mod).__name__}) is in "
                                            "training mode: call model.eval() before converting.")
        return ann

    def after_trace(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        fx_model = graph.fold_bn(graph.relift_activations(fx_model))
        graph.check_supported(fx_model, self.method)
        return fx_model

    def calibrate(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        # thresholds, then (per method) lambda search and Li et al.'s bias/weight/potential calibration
        self.params = calibrate(fx_model, self.method, as_loader(self.dataloader), max_batches=self.max_batches,
                                progress=self.progress)
        return fx_model

    def node(self, p: NeuronParams) -> nn.Module:
        """The spiking module for one layer: SpikingJelly's own when exact and allowed, else ``SnnconvNode``."""
        if self.weight_norm:
            return normalized_node(p, native=bool(self.native))
        return (self.native and native_node(p)) or SnnconvNode(p)

    def replace(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        if self.native is None:
            self.native = torch.device(converter.device).type == "cuda"
        return graph.replace_activations(fx_model, self.params, self.node)

    def finalize(self, converter, fx_model: fx.GraphModule) -> nn.Module:
        fx_model = graph.append_output(fx_model, IntegratorNode())
        fx_model = graph.to_multistep(fx_model, STATEFUL)
        fx_model.meta["snnconv_method"] = self.method.name
        return fx_model.to(converter.device)


def recipe_class(name: str) -> type:
    """An ``FXConversionRecipe`` subclass bound to the registered method ``name`` (e.g. ``PercentileRecipe``)."""
    get_method(name)
    parts = name.replace("+", "-").replace("_", "-").split("-")
    cls_name = "".join(part.replace(".", "_").capitalize() for part in parts) + "Recipe"  # percentile-99.99 -> Percentile99_99Recipe
    return type(cls_name, (SnnconvRecipe,), {"method_name": name, "__doc__": get_method(name).description})


class _Recipes:
    """Attribute access to a recipe class per registered method: ``recipes.PercentileChannelRecipe``."""

    def __getattr__(self, attr: str) -> type:
        for name in method_names():
            cls = recipe_class(name)
            if cls.__name__ == attr:
                return cls
        raise AttributeError(f"no recipe {attr!r}; methods: {method_names()}")

    def __dir__(self):
        return [recipe_class(n).__name__ for n in method_names()]


recipes = _Recipes()


def convert(model: nn.Module, method: str = "percentile", calib_data: Iterable = None,
            device: Optional[torch.device] = None, **options) -> fx.GraphModule:
    """Convert a copy of ``model`` with SpikingJelly's ``FXConverter`` and an snnconv recipe."""
    if calib_data is None:
        raise ValueError("convert() needs calib_data: a DataLoader or Dataset of calibration images")
    recipe = SnnconvRecipe(calib_data, method=method, **options)
    return FXConverter(recipe=recipe, device=device).convert(copy.deepcopy(model))
