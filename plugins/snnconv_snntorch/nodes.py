"""snnTorch adapter: snnconv's neuron as an ``snn.Leaky`` subclass and a converter to snnTorch networks.

>>> import snntorch.utils
>>> from snnconv_snntorch import convert
>>> net = convert(ann, method="percentile", calib_data=calib)   # nn.Sequential with init_hidden neurons
>>> snntorch.utils.reset(net)
>>> logits = sum(net(x) for _ in range(T))                      # each call: one step's output current

What is reused from ``snn.Leaky``: ``threshold`` (the real threshold, learnable with ``learn_threshold``),
``beta`` (the leak, 1 for IF), ``spike_grad`` (the surrogate gradient), ``graded_spikes_factor``, ``init_hidden``
/ ``output``, the ``mem`` state, ``reset_mechanism="subtract"`` with ``reset_delay=False``. What differs, and
why the update is the core's (``snnconv_ext.core.neuron.step``): snnTorch fires when ``mem > threshold`` (strict)
while every conversion paper fires at ``v >= theta``, and constant inputs such as 0.5*theta hit the threshold
exactly; conversion also needs an initial potential ``v0``, firing at a fraction of theta, negative spikes and
SNM memory, which ``Leaky`` does not have. ``spike_grad`` still supplies the backward pass.
Spikes are binary; what a spike is worth is folded into the next layer's weights (``graph.fold_spike_values``).
Loading this module registers snnTorch's ``SpikingNeuron`` with ``snnconv_ext.core.nodes``.
"""
from __future__ import annotations

import copy
from typing import Optional

import snnconv_ext  # noqa: F401  (thread defaults before torch loads: book/performance.md "Threads and busy machines")
import snntorch as snn
import torch
import torch.nn as nn
from snntorch._neurons.neurons import SpikingNeuron

from snnconv_ext.core import nodes as core_nodes
from snnconv_ext.core.neuron import NeuronParams, NeuronState, heaviside, init_state, step, step_

__all__ = ["Neuron", "Window"]


def _with_grad_of(spike_grad):
    """Forward: Heaviside with H(0) = 1 (v >= theta); backward: snnTorch's ``spike_grad`` surrogate."""
    def sg(u: torch.Tensor) -> torch.Tensor:
        g = spike_grad(u)
        return heaviside(u) + (g - g.detach())
    return sg


class Neuron(snn.Leaky):
    """snnconv neuron family in snnTorch's interface: ``spk = neuron(cur)`` with ``init_hidden=True``,
    else ``spk, mem = neuron(cur, mem)``. ``spk`` is binary (signed: -1/0/+1) times ``graded_spikes_factor``."""

    step_mode = "s"

    def __init__(self, params: Optional[NeuronParams] = None, init_hidden: bool = False, output: bool = False,
                 spike_grad=None, learn_threshold: bool = False, learn_beta: bool = False,
                 graded_spikes_factor: float = 1.0, **knobs) -> None:
        p = params if params is not None else NeuronParams(**knobs)
        super().__init__(beta=torch.as_tensor(p.leak, dtype=torch.float32).clone(),
                         threshold=torch.as_tensor(p.theta, dtype=torch.float32).clone(), spike_grad=spike_grad,
                         init_hidden=init_hidden, output=output, reset_mechanism="subtract", reset_delay=False,
                         learn_threshold=learn_threshold, learn_beta=learn_beta,
                         graded_spikes_factor=graded_spikes_factor)
        self.register_buffer("theta_neg", None if p.theta_neg is None else
                             torch.as_tensor(p.theta_neg, dtype=torch.float32).clone())
        self.register_buffer("v0", torch.as_tensor(p.v0, dtype=torch.float32).clone())
        self.fire_at, self.memory = float(p.fire_at), bool(p.memory)
        self._symmetric = p.theta_neg is not None and not learn_threshold and bool(torch.equal(
            *torch.broadcast_tensors(torch.as_tensor(p.theta), torch.as_tensor(p.theta_neg))))
        self._plain_if = isinstance(p.leak, (int, float)) and float(p.leak) == 1.0 and not learn_beta  # beta = 1: IF
        self.amplitude, self.amplitude_neg = p.amplitude, p.amplitude_neg
        self._written: Optional[torch.Tensor] = None  # the mem tensor we last wrote; anything else means "reset"
        self.m: Optional[torch.Tensor] = None  # SNM memory (DNISNM Eq. 23)

    def params(self, like: torch.Tensor) -> NeuronParams:
        """The neuron's knobs as core ``NeuronParams`` (no validation, no host sync)."""
        return NeuronParams.unchecked(
            theta=self.threshold, fire_at=self.fire_at, theta_neg=self.threshold if self._symmetric else self.theta_neg,
            memory=self.memory, amplitude=self.amplitude, v0=self.v0,
            leak=1.0 if self._plain_if else self.beta.clamp(0, 1), amplitude_neg=self.amplitude_neg).to(like)

    def reset(self) -> None:
        """Forget the state of this neuron only (v = v0 at the next step)."""
        self.mem = torch.zeros(0, device=self.mem.device)
        self._written, self.m = None, None

    def reset_mem(self):
        self.reset()
        return self.mem

    def forward(self, input_: torch.Tensor, mem: Optional[torch.Tensor] = None):
        if self.init_hidden and mem is not None:
            raise TypeError("`mem` should not be passed as an argument while `init_hidden=True`")
        p = self.params(input_)
        cur = self.mem if mem is None else mem
        if cur is not self._written or cur.shape != input_.shape:  # after a reset, or first call: v = v0, m = n = 0
            st = init_state(input_, p)
        else:
            st = NeuronState(cur, self.m)
        if torch.is_grad_enabled() and (input_.requires_grad or any(q.requires_grad for q in self.parameters())):
            spk, st = step(input_, st, p, _with_grad_of(self.spike_grad))
        else:
            st = NeuronState(st.v.clone(), None if st.m is None else st.m.clone())
            spk = step_(input_, st, p)
        self.mem, self.m = st.v, st.m
        self._written = self.mem
        if not (isinstance(self.graded_spikes_factor, float) and self.graded_spikes_factor == 1.0):
            spk = spk * self.graded_spikes_factor
        if self.output or not self.init_hidden:
            return spk, self.mem
        return spk


class Window(nn.Module):
    """A single-step snnTorch neuron stepped over a window ``[T, ...]`` (the calibration simulator's node)."""

    step_mode = "m"  # takes the whole window at once

    def __init__(self, p: NeuronParams) -> None:
        super().__init__()
        self.neuron = Neuron(p, init_hidden=True)

    def reset(self) -> None:
        self.neuron.reset()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.neuron(z[t]) for t in range(z.shape[0])])


core_nodes.register_node_type(SpikingNeuron)
