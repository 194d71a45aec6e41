"""The one spiking neuron of snnconv: a discrete-time integrate-and-fire update with knobs.

Every paper's neuron is this update with different settings (see ``methods.py``):

* plain IF with soft reset (all papers' baseline),
* firing at a fraction of the threshold (``fire_at=0.5``: ttrbr Eq. 12, ClipRound of calibration Eq. 17),
* a negative threshold (stReLU's signed IF, Sec. 3; DNISNM's SNM, Eq. 21),
* SNM memory: negative spikes only while the running sum of emitted spikes is positive (DNISNM Eqs. 19-23),
* spike amplitude beta (Datta & Beerel Eq. 8), initial potential v0 (theta/2 in DNI, T*e in calibration Eq. 20),
* a multiplicative leak (LIF; Datta & Beerel fine-tune it).

One step, with theta, theta_neg > 0 and ``a`` the amplitude::

    v <- leak * v + x                                   # charge (DNISNM Eq. 19)
    s <- +a*theta      if v >= fire_at * theta
         -a*theta_neg  if v <= -theta_neg (and m > 0 when memory=True)   # (DNISNM Eq. 21)
         0             otherwise
    v <- v - s / a                                       # soft reset (DNISNM Eq. 22)
    m <- m + s / theta                                   # memory (DNISNM Eq. 23, in units of theta)

``s`` is what the next layer receives. Framework modules (SpikingJelly ``BaseNode``, snnTorch
``SpikingNeuron``) call :func:`step_`; none re-implements it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch

Param = Union[float, torch.Tensor]

__all__ = ["NeuronParams", "NeuronState", "step_", "init_state", "run", "simulate"]


def _tensor(p: Param, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(p, dtype=like.dtype, device=like.device)


@dataclass
class NeuronParams:
    """Knobs of the neuron family; tensors broadcast against one time step ``x[t]`` (scalar, per channel, per neuron)."""

    theta: Param = 1.0
    fire_at: float = 1.0
    theta_neg: Optional[Param] = None
    memory: bool = False
    amplitude: Param = 1.0
    v0: Param = 0.0
    leak: Param = 1.0
    amplitude_neg: Optional[Param] = None  # negative spikes carry amplitude_neg*theta_neg (None: amplitude)

    def __post_init__(self) -> None:
        theta = torch.as_tensor(self.theta)
        if not torch.isfinite(theta).all() or (theta <= 0).any():
            raise ValueError(f"theta must be finite and > 0, got {self.theta!r}")
        if self.theta_neg is not None:
            tn = torch.as_tensor(self.theta_neg)
            if not torch.isfinite(tn).all() or (tn <= 0).any():
                raise ValueError(f"theta_neg is a magnitude and must be finite and > 0, got {self.theta_neg!r}")
        if self.memory and self.theta_neg is None:
            raise ValueError("memory=True (SNM) needs a negative threshold theta_neg")
        if not 0.0 < float(self.fire_at) <= 1.0:
            raise ValueError(f"fire_at is a fraction of theta in (0, 1], got {self.fire_at}")

    def to(self, like: torch.Tensor) -> "NeuronParams":
        """Return a copy whose tensors live on ``like``'s device and dtype."""
        return NeuronParams(
            theta=_tensor(self.theta, like),
            fire_at=float(self.fire_at),
            theta_neg=None if self.theta_neg is None else _tensor(self.theta_neg, like),
            memory=self.memory,
            amplitude=self.amplitude if isinstance(self.amplitude, float) else _tensor(self.amplitude, like),
            v0=_tensor(self.v0, like),
            leak=self.leak if isinstance(self.leak, float) else _tensor(self.leak, like),
            amplitude_neg=None if self.amplitude_neg is None else _tensor(self.amplitude_neg, like),
        )


@dataclass
class NeuronState:
    """Membrane potential ``v`` and SNM memory ``m``.

    ``m`` is the running sum of emitted spikes (DNISNM Eq. 23) divided by theta > 0: +1 per positive spike,
    -theta_neg/theta per negative one. Dividing by a positive number keeps Eq. 21's test ``m > 0``, and
    with symmetric thresholds the sum is an exact integer, so float rounding cannot let a neuron whose
    spikes cancel out fire one more negative spike.
    """

    v: torch.Tensor
    m: Optional[torch.Tensor] = field(default=None)


def init_state(x_t: torch.Tensor, p: NeuronParams) -> NeuronState:
    """Fresh state shaped like one time step: v = v0, m = 0."""
    v = torch.empty_like(x_t, dtype=torch.promote_types(x_t.dtype, torch.float32))
    v.copy_(torch.as_tensor(p.v0, dtype=v.dtype, device=v.device).expand_as(v))
    m = torch.zeros_like(v) if p.memory else None
    return NeuronState(v, m)


def step_(x_t: torch.Tensor, state: NeuronState, p: NeuronParams, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Advance ``state`` one time step in place with input current ``x_t``; return the emitted values.

    ``p`` must already be on ``x_t``'s device (``NeuronParams.to``). ``out`` may receive the result.
    """
    v = state.v
    if not (isinstance(p.leak, float) and p.leak == 1.0):
        v.mul_(p.leak)  # LIF leak; 1.0 is IF
    v.add_(x_t)  # charge, DNISNM Eq. 19 / calibration Eq. 1
    if out is None:
        out = torch.empty_like(v)
    # fire: 1.0 where v >= fire_at*theta (ttrbr Eq. 12 when fire_at=1/2); a float compare into `out`
    # is about twice as fast on CPU as building a bool mask and multiplying it.
    torch.ge(v, p.theta * p.fire_at if p.fire_at != 1.0 else p.theta, out=out)
    if p.memory:
        state.m.add_(out)  # memory, DNISNM Eq. 23, kept in units of theta (see NeuronState)
    out.mul_(p.theta)
    if p.theta_neg is not None:
        neg = torch.empty_like(v)
        torch.le(v, -p.theta_neg, out=neg)  # signed IF (stReLU Sec. 3) / SNM (DNISNM Eq. 21), as 0/1 floats
        if p.memory:
            neg.mul_(state.m > 0)  # SNM: only while memory is positive (Eq. 21); a positive spike this
            # step excludes a negative one, so adding it first leaves the gate as m(t-1) > 0
            state.m.sub_(neg * (p.theta_neg / p.theta))
        out.addcmul_(neg, p.theta_neg, value=-1)
    v.sub_(out)  # soft reset by theta (or +theta_neg), DNISNM Eq. 22
    if p.amplitude_neg is not None:  # asymmetric amplitudes (atLeakyReLU's slope-alpha branch, stReLU Eq. 21)
        out.mul_(torch.where(out < 0, p.amplitude_neg, p.amplitude))
    elif not (isinstance(p.amplitude, float) and p.amplitude == 1.0):
        out.mul_(p.amplitude)  # spike carries amplitude*theta, Datta Eq. 8
    return out


def run(x_seq: torch.Tensor, state: NeuronState, p: NeuronParams) -> torch.Tensor:
    """Run ``x_seq`` of shape ``[T, ...]`` through the neuron, updating ``state`` in place; returns ``[T, ...]``."""
    out = torch.empty(x_seq.shape, dtype=state.v.dtype, device=state.v.device)
    for t in range(x_seq.shape[0]):
        step_(x_seq[t], state, p, out=out[t])
    return out


def simulate(
    x: torch.Tensor,
    theta: Param = 1.0,
    fire_at: float = 1.0,
    theta_neg: Optional[Param] = None,
    memory: bool = False,
    amplitude: Param = 1.0,
    v0: Param = 0.0,
    leak: Param = 1.0,
    amplitude_neg: Optional[Param] = None,
) -> torch.Tensor:
    """Emitted values ``[T, ...]`` of the neuron family for input currents ``x`` of shape ``[T, ...]``.

    A positive spike carries ``+amplitude*theta`` (when ``v >= fire_at*theta``), a negative one
    ``-amplitude*theta_neg`` (when ``v <= -theta_neg``, and with ``memory=True`` only while the running
    sum of emitted values is positive). The membrane loses the emitted value divided by ``amplitude``
    (soft reset). ``v`` starts at ``v0``; ``leak`` multiplies ``v`` before each input is added.
    All parameters broadcast against ``x[0]``. ``amplitude_neg`` (default: ``amplitude``) lets negative
    spikes carry a different amplitude.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"x must be a tensor of shape [T, ...], got {type(x).__name__} {getattr(x, 'shape', '')}")
    if not x.is_floating_point():
        x = x.float()
    p = NeuronParams(theta, fire_at, theta_neg, memory, amplitude, v0, leak, amplitude_neg).to(x[0])
    return run(x, init_state(x[0], p), p)
