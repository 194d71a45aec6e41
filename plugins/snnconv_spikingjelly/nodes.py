"""SpikingJelly nodes: snnconv's neuron family as a ``BaseNode`` (:class:`SnnconvNode`) and SpikingJelly's own
``IFNode``/``TernaryIFNode`` wherever they are exact (:func:`spikingjelly_node`):

* ``IFNode(v_threshold=theta, v_reset=None)`` for soft-reset IF with a layer-wise threshold; firing at
  ``fire_at * theta`` is the same IF started ``(1 - fire_at) * theta`` higher (ttrbr Eq. 12), set as its reset value;
* ``TernaryIFNode(v_threshold=theta, v_reset=None)`` for the signed IF with symmetric thresholds (stReLU Sec. 3);
* :class:`SnnconvNode` for everything SpikingJelly cannot express: per-channel/per-neuron thresholds or initial
  potentials, SNM memory, signed firing at a fraction of theta, a leak, trainable knobs;
* :class:`GatedMaxPool`: max pooling gated by the inputs' accumulated spikes (Rueckauer et al. 2017 Sec. 2.3,
  ``snnconv_ext.core.pooling``) as a ``MemoryModule``, so ``functional.reset_net`` and ``set_step_mode`` reach it.

Loading this module registers SpikingJelly's ``BaseNode`` (spiking) and ``MemoryModule`` (stateful) with
``snnconv_ext.core.nodes``, so the core finds and reads these nodes without importing SpikingJelly.
"""
from __future__ import annotations

from typing import Optional, Sequence

import snnconv_ext  # noqa: F401  (thread defaults before torch loads: book/performance.md "Threads and busy machines")
import torch
import torch.nn as nn
from spikingjelly.activation_based import base, neuron as sj_neuron, surrogate

from snnconv_ext.conversion import graph
from snnconv_ext.core import nodes as core_nodes
from snnconv_ext.core.neuron import NeuronParams, NeuronState, init_state, run, start_potential, step, step_
from snnconv_ext.core.nodes import params_of
from snnconv_ext.core.pooling import gated_max_pool

__all__ = ["SnnconvNode", "IFNode", "TernaryIFNode", "SeqModule", "GatedMaxPool", "spikingjelly_node", "node_params",
           "STATEFUL", "TRAINABLE"]

# knobs a node can learn (nn.Parameter on request): SpikingJelly's name -> NeuronParams field
TRAINABLE = {"v_threshold": "theta", "v_threshold_neg": "theta_neg", "v0": "v0", "leak": "leak",
             "amplitude": "amplitude"}
_STORED = {"v_threshold_neg": "_theta_neg"}  # stored under another name: v_threshold_neg is a property


class SeqModule(graph.SeqModule, base.StepModule):
    """A stateless layer in either step mode (``functional.set_step_mode`` reaches it)."""


class SnnconvNode(sj_neuron.BaseNode):
    """The snnconv neuron family (``snnconv_ext.core.neuron``) as a SpikingJelly node; step modes ``s`` and ``m``.

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


class GatedMaxPool(base.MemoryModule):
    """The spiking form of ``pool`` (an ``nn.MaxPool1d``/``nn.MaxPool2d``): each window passes the input of the
    position whose accumulated input is largest (``snnconv_ext.core.pooling.gated_max_pool``, Rueckauer et al. 2017
    Sec. 2.3); the accumulated input is the module's memory ``count``, cleared by ``reset()``."""

    def __init__(self, pool: nn.Module, step_mode: str = "m") -> None:
        super().__init__()
        self.pool = pool
        self.step_mode = step_mode
        self.register_memory("count", None)

    def single_step_functional_forward(self, inputs, states):
        y, count = gated_max_pool(inputs[0].unsqueeze(0), states[0], self.pool)
        return (y[0],), (count,)

    def multi_step_functional_forward(self, inputs, states):
        y, count = gated_max_pool(inputs[0], states[0], self.pool)
        return (y,), (count,)


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


def _native_params(node: nn.Module) -> NeuronParams:
    """Knobs of SpikingJelly's own IF nodes that our converter did not make (``sj-*`` rows, a loaded network):
    read for ``nodes.params_of`` (energy, analysis, export). Other node types carry none (``TypeError``)."""
    th = node.v_threshold
    if isinstance(node, sj_neuron.HalfThresholdIFNode):  # starts at v_threshold / 2, soft reset
        return NeuronParams.unchecked(theta=th, v0=th / 2)
    if isinstance(node, sj_neuron.TernaryIFNode):
        return NeuronParams.unchecked(theta=th, theta_neg=th)
    if isinstance(node, sj_neuron.IFNode):
        return NeuronParams.unchecked(theta=th)
    raise TypeError(f"{type(node).__name__} was not made by snnconv's converter and carries no snnconv parameters")


def node_params(node: nn.Module) -> NeuronParams:
    """The core ``NeuronParams`` of a converted network's spiking node (``snnconv_ext.core.nodes.params_of``)."""
    return params_of(node)


STATEFUL = (base.MemoryModule,)
core_nodes.register_node_type(sj_neuron.BaseNode, params=_native_params)
core_nodes.register_stateful(base.MemoryModule)


