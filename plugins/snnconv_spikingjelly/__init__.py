"""SpikingJelly adapter: snnconv's neurons as SpikingJelly nodes and every snnconv method as an ``FXConversionRecipe``.

>>> from spikingjelly.activation_based import ann2snn, functional
>>> from snnconv_spikingjelly import recipes
>>> snn = ann2snn.FXConverter(recipe=recipes.PercentileRecipe(dataloader=calib)).convert(ann)
>>> functional.reset_net(snn); out = snn(x.unsqueeze(0).expand(T, *x.shape))   # [T, B, classes]
>>> logits = out.sum(0)                                                          # the readout over T

Like SpikingJelly's own recipes, the converted network returns the output layer's current at every step;
summing (or averaging) over time is the user's (``snnconv_ext.evaluate.simulate_net`` yields the running sum).
Spikes between layers are binary (0/1, signed -1/0/+1); what a spike is worth (``amplitude * theta``) is
folded into the weights of the layer that consumes it, or kept in an explicit ``graph.Scale`` where folding
is not exact. Neurons are SpikingJelly's own classes where they are exact (:func:`spikingjelly_node`):

* ``IFNode(v_threshold=theta, v_reset=None)`` for soft-reset IF with a layer-wise threshold; firing at
  ``fire_at * theta`` is the same IF started ``(1 - fire_at) * theta`` higher (ttrbr Eq. 12), set as its reset value;
* ``TernaryIFNode(v_threshold=theta, v_reset=None)`` for the signed IF with symmetric thresholds (stReLU Sec. 3);
* :class:`SnnconvNode` (a ``BaseNode``) for everything SpikingJelly cannot express: per-channel/per-neuron
  thresholds or initial potentials, SNM memory, signed firing at a fraction of theta, a leak, trainable knobs.

Networks work in both step modes (``functional.set_step_mode(snn, "s")``).
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn as nn
from spikingjelly.activation_based import base, neuron as sj_neuron, surrogate
from spikingjelly.activation_based.ann2snn import FXConverter, FXConversionRecipe
from torch import fx

from snnconv_ext import graph
from snnconv_ext.calibrate import calibrate
from snnconv_ext.evaluate import as_loader
from snnconv_ext.methods import get as get_method, methods as method_names
from snnconv_ext.neuron import NeuronParams, NeuronState, init_state, run, spike_values, start_potential, step, step_

__all__ = ["SnnconvNode", "IFNode", "TernaryIFNode", "SeqModule", "SnnconvRecipe", "QCFSRecipe", "recipe_class", "recipes",
           "convert", "spikingjelly_node",
           "node_params", "STATEFUL", "TRAINABLE"]

# knobs a node can learn (nn.Parameter on request): SpikingJelly's name -> NeuronParams field
TRAINABLE = {"v_threshold": "theta", "v_threshold_neg": "theta_neg", "v0": "v0", "leak": "leak",
             "amplitude": "amplitude"}
_STORED = {"v_threshold_neg": "_theta_neg"}  # stored under another name: v_threshold_neg is a property


class SeqModule(graph.SeqModule, base.StepModule):
    """A stateless layer in either step mode (``functional.set_step_mode`` reaches it)."""


class SnnconvNode(sj_neuron.BaseNode):
    """The snnconv neuron family (``snnconv_ext.neuron``) as a SpikingJelly node; step modes ``s`` and ``m``.

    Emits binary spikes (signed: -1/0/+1). ``v_threshold`` holds the real threshold (scalar, per channel or per
    neuron). ``trainable`` names knobs to make ``nn.Parameter``s (``v_threshold``, ``v_threshold_neg``, ``v0``,
    ``leak``, ``amplitude``); with autograd on, the spike's gradient comes from ``surrogate_function``.
    """

    def __init__(self, params: Optional[NeuronParams] = None, step_mode: str = "m",
                 surrogate_function: Optional[surrogate.SurrogateFunctionBase] = None, detach_reset: bool = False,
                 trainable: Sequence[str] = (), **knobs) -> None:
        super().__init__(v_threshold=1.0, v_reset=None, surrogate_function=surrogate_function or surrogate.Sigmoid(),
                         detach_reset=detach_reset, step_mode=step_mode)
        p = params if params is not None else NeuronParams(**knobs)
        unknown = set(trainable) - set(TRAINABLE)
        if unknown:
            raise ValueError(f"cannot train {sorted(unknown)}; trainable knobs: {sorted(TRAINABLE)}")
        if "v_threshold_neg" in trainable and p.theta_neg is None:
            raise ValueError("v_threshold_neg is trainable only on a signed neuron")
        del self.v_threshold  # BaseNode's float; ours is a tensor (buffer or parameter)
        # symmetric thresholds share one tensor (one soft reset per step) unless the negative one is trained
        self.symmetric = p.theta_neg is not None and "v_threshold_neg" not in trainable and \
            (p.theta_neg is p.theta or torch.equal(*torch.broadcast_tensors(torch.as_tensor(p.theta),
                                                                          torch.as_tensor(p.theta_neg))))
        for name, fld in TRAINABLE.items():
            val = getattr(p, fld)
            attr = _STORED.get(name, name)
            if val is None or (name == "v_threshold_neg" and self.symmetric) or \
                    (name in ("leak", "amplitude") and name not in trainable and not isinstance(val, torch.Tensor)):
                setattr(self, attr, None if name == "v_threshold_neg" else val)  # None, or a plain float knob
                continue
            t = torch.as_tensor(val, dtype=torch.float32).detach().clone()
            if name in trainable:
                setattr(self, attr, nn.Parameter(t))
            else:
                self.register_buffer(attr, t)
        self.amplitude_neg = None if p.amplitude_neg is None else torch.as_tensor(p.amplitude_neg, dtype=torch.float32)
        self.fire_at, self.memory = float(p.fire_at), bool(p.memory)
        self.register_memory("m", 0.0)  # SNM memory: the net emitted value so far (DNISNM Eq. 23)

    @property
    def v_threshold_neg(self) -> Optional[torch.Tensor]:
        """Magnitude of the negative threshold (None: unsigned); the same tensor as ``v_threshold`` when symmetric."""
        return self.v_threshold if self.symmetric else self._theta_neg

    @property
    def theta(self) -> torch.Tensor:
        """Alias of ``v_threshold`` (the papers' theta)."""
        return self.v_threshold

    def params(self, like: torch.Tensor) -> NeuronParams:
        """The node's knobs as core ``NeuronParams`` on ``like``'s device (no validation, no host sync)."""
        return NeuronParams.unchecked(theta=self.v_threshold, fire_at=self.fire_at, theta_neg=self.v_threshold_neg,
                                      memory=self.memory, amplitude=self.amplitude, v0=self.v0, leak=self.leak,
                                      amplitude_neg=self.amplitude_neg).to(like)

    def materialize_states(self, inputs, states, step_mode):
        x = inputs[0][0] if step_mode == "m" else inputs[0]
        v = states[0]
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            st = init_state(x, self.params(x))
            return (st.v, st.m if st.m is not None else 0.0)
        return states

    def _surrogate(self, x: torch.Tensor):
        if torch.is_grad_enabled() and (x.requires_grad or any(q.requires_grad for q in self.parameters())):
            return self.surrogate_function
        return None

    def single_step_functional_forward(self, inputs, states):
        x, (v, m) = inputs[0], states
        p = self.params(x)
        sg = self._surrogate(x)
        if sg is None:
            st = NeuronState(v.clone(), m.clone() if self.memory else None)
            s = step_(x, st, p)
        else:
            s, st = step(x, NeuronState(v, m if self.memory else None), p, sg, self.detach_reset)
        return (s,), (st.v, st.m if self.memory else m)

    def multi_step_functional_forward(self, inputs, states):
        x, (v, m) = inputs[0], states
        s, st = run(x, NeuronState(v, m if self.memory else None), self.params(x[0]), self._surrogate(x),
                    self.detach_reset)
        return (s,), (st.v, st.m if self.memory else m)

    def extra_repr(self) -> str:
        def shape(t):
            if t is None or not isinstance(t, torch.Tensor):
                return repr(t)
            return f"{float(t):.4g}" if t.numel() == 1 else f"shape={tuple(t.shape)}"
        signed = "" if self.v_threshold_neg is None else f", v_threshold_neg={shape(self.v_threshold_neg)}"
        return (f"v_threshold={shape(self.v_threshold)}{signed}, fire_at={self.fire_at}, v0={shape(self.v0)}, "
                f"memory={self.memory}, leak={shape(self.leak)}, step_mode={self.step_mode}")


def _fast_multi_step(node: sj_neuron.BaseNode, x_seq: torch.Tensor, p: NeuronParams) -> torch.Tensor:
    """SpikingJelly's ``multi_step_forward`` semantics on the core's in-place loop (same spikes, same state)."""
    states = node.materialize_states((x_seq,), tuple(node._memories.values()), "m")
    s, st = run(x_seq, NeuronState(states[0]), p.to(x_seq[0]))
    node._memories["v"] = st.v
    return s


class IFNode(sj_neuron.IFNode):
    """SpikingJelly's ``IFNode`` (soft reset); on CPU without autograd its multi-step pass runs the core's
    in-place loop, which gives the same spikes and is several times faster there than SpikingJelly's CPU path
    (``benchmarks/sim_speed.py``). On CUDA, or when training, SpikingJelly's own kernels run."""

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        if x_seq.device.type != "cpu" or torch.is_grad_enabled() or self.store_v_seq or args or kwargs:
            return super().multi_step_forward(x_seq, *args, **kwargs)
        return _fast_multi_step(self, x_seq, NeuronParams.unchecked(theta=self.v_threshold))


class TernaryIFNode(sj_neuron.TernaryIFNode):
    """SpikingJelly's ``TernaryIFNode`` (signed soft reset), with the same CPU fast path as :class:`IFNode`."""

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        if x_seq.device.type != "cpu" or torch.is_grad_enabled() or self.store_v_seq or args or kwargs:
            return super().multi_step_forward(x_seq, *args, **kwargs)
        th = self.v_threshold
        return _fast_multi_step(self, x_seq, NeuronParams.unchecked(theta=th, theta_neg=th))


def _scalar(t) -> Optional[float]:
    t = torch.as_tensor(t)
    return float(t.reshape(-1)[0]) if t.numel() == 1 else None


def spikingjelly_node(p: NeuronParams, step_mode: str = "m", native: bool = True,
                      surrogate_function: Optional[surrogate.SurrogateFunctionBase] = None,
                      trainable: Sequence[str] = ()) -> nn.Module:
    """The SpikingJelly module for one layer: SpikingJelly's own ``IFNode``/``TernaryIFNode`` when exactly the
    same neuron (bit-identical spikes), else :class:`SnnconvNode`."""
    sg = surrogate_function or surrogate.Sigmoid()
    theta = _scalar(p.theta)
    plain = not p.memory and isinstance(p.leak, (int, float)) and float(p.leak) == 1.0 and not trainable
    if native and plain and theta is not None and p.theta_neg is None:
        v_start = _scalar(start_potential(p))
        if v_start is not None:
            node = IFNode(v_threshold=theta, v_reset=None, surrogate_function=sg, step_mode=step_mode)
            if v_start != 0.0:  # half-threshold firing (ttrbr Eq. 12) / v0 = theta/2 (DNISNM Sec. 4.1)
                node.set_reset_value("v", v_start)
                node.v = v_start
            node.snnconv_params = p  # what the spikes are worth (analysis, energy, export)
            return node
    if native and plain and theta is not None and p.theta_neg is not None and p.fire_at == 1.0 \
            and _scalar(p.theta_neg) == theta and _scalar(p.v0) == 0.0:
        node = TernaryIFNode(v_threshold=theta, v_reset=None, surrogate_function=sg, step_mode=step_mode)
        node.snnconv_params = p
        return node
    return SnnconvNode(p, step_mode=step_mode, surrogate_function=sg, trainable=trainable)


def node_params(node: nn.Module) -> NeuronParams:
    """The core ``NeuronParams`` of a converted network's spiking node (ours or SpikingJelly's)."""
    if isinstance(node, SnnconvNode):
        return node.params(node.v_threshold.detach())
    p = getattr(node, "snnconv_params", None)
    if p is None:
        raise TypeError(f"{type(node).__name__} was not made by snnconv's converter")
    return p


STATEFUL = (base.MemoryModule,)


class SnnconvRecipe(FXConversionRecipe):
    """Convert with a registered snnconv method through SpikingJelly's ``FXConverter`` lifecycle.

    ``dataloader``: calibration batches (tensors or (x, y) pairs). ``native``: SpikingJelly's own ``IFNode`` /
    ``TernaryIFNode`` wherever they are exact (default, on every device). ``surrogate_function`` and
    ``trainable`` (knob names, see :data:`TRAINABLE`; non-empty means :class:`SnnconvNode` everywhere) prepare
    the network for fine-tuning. Extra keyword options override the method's fields (``p=99.99``, ``T=4``...).
    """

    method_name: Optional[str] = None

    def __init__(self, dataloader: Iterable, method: Optional[str] = None, native: bool = True,
                 max_batches: Optional[int] = None, progress: bool = True,
                 surrogate_function: Optional[surrogate.SurrogateFunctionBase] = None, trainable: Sequence[str] = (),
                 **options) -> None:
        name = method if method is not None else self.method_name
        if name is None:
            raise ValueError("SnnconvRecipe needs a method name (see snnconv_ext.methods())")
        if "weight_norm" in options:
            raise TypeError("weight_norm was removed: spikes are always binary now and each layer's spike value "
                            "(amplitude * theta) is folded into the next layer's weights (DNISNM Eq. 18)")
        self.method = get_method(name, **options)
        self.dataloader = dataloader
        self.native, self.max_batches, self.progress = bool(native), max_batches, progress
        self.surrogate_function, self.trainable = surrogate_function, tuple(trainable)
        self.params: Optional[Dict[str, NeuronParams]] = None
        self.folding: Dict[str, str] = {}

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

    def node(self, p: NeuronParams, step_mode: str = "m") -> nn.Module:
        """The spiking module for one layer (:func:`spikingjelly_node` with this recipe's settings)."""
        return spikingjelly_node(p, step_mode, self.native, self.surrogate_function, self.trainable)

    def calibrate(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        # thresholds, then (per method) lambda search and Li et al.'s calibration, simulated with self.node
        self.params = calibrate(fx_model, self.method, as_loader(self.dataloader), max_batches=self.max_batches,
                                progress=self.progress, node=self.node)
        return fx_model

    def replace(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        self.folding = graph.fold_spike_values(fx_model, {t: spike_values(p) for t, p in self.params.items()})
        return graph.replace_activations(fx_model, self.params, self.node)

    def finalize(self, converter, fx_model: fx.GraphModule) -> nn.Module:
        fx_model = graph.to_multistep(fx_model, STATEFUL, seq=SeqModule)
        fx_model.meta["snnconv_method"] = self.method.name
        fx_model.meta["snnconv_folding"] = dict(self.folding)
        return fx_model.to(converter.device)


class QCFSRecipe(SnnconvRecipe):
    """QCFS conversion (Bu et al., ICLR 2022): an ANN trained with ``QCFS`` activations (Eq. 15) becomes IF neurons
    with soft reset, theta = the trained lambda and v0 = theta/2 (Theorem 2's shift), SpikingJelly's own ``IFNode``
    with binary spikes (lambda folded into the next layer). SpikingJelly 2.0 has no recipe for it."""

    method_name = "qcfs"


def recipe_class(name: str) -> type:
    """An ``FXConversionRecipe`` subclass bound to the registered method ``name`` (e.g. ``PercentileRecipe``)."""
    get_method(name)
    parts = name.replace("+", "-").replace("_", "-").split("-")
    cls_name = "".join(part.replace(".", "_").capitalize() for part in parts) + "Recipe"  # percentile-99.99 -> Percentile99_99Recipe
    return type(cls_name, (SnnconvRecipe,), {"method_name": name, "__doc__": get_method(name).description})


class _Recipes:
    """Attribute access to a recipe class per registered method: ``recipes.PercentileChannelRecipe``."""

    def __getattr__(self, attr: str) -> type:
        if attr == QCFSRecipe.__name__:
            return QCFSRecipe
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
