"""The one spiking neuron of snnconv: a discrete-time integrate-and-fire update with knobs.

Every paper's neuron is this update with different settings (see ``methods.py``):

* plain IF with soft reset (all papers' baseline),
* firing at a fraction of the threshold (``fire_at=0.5``: ttrbr Eq. 12, ClipRound of calibration Eq. 17),
* a negative threshold (stReLU's signed IF, Sec. 3; DNISNM's SNM, Eq. 21),
* SNM memory: negative spikes only while the net emitted value stays >= 0 (DNISNM Eqs. 19-23),
* spike amplitude beta (Datta & Beerel Eq. 8), initial potential v0 (theta/2 in DNI, T*e in calibration Eq. 22),
* a multiplicative leak (LIF; Datta & Beerel fine-tune it).

Spikes are binary: ``s`` is +1, 0 (or -1 for signed neurons). One step, theta, theta_neg > 0, ``f = fire_at``::

    v <- leak * v + x                                        # charge (DNISNM Eq. 19)
    s <- +1  if v >= f * theta                               # fire (ttrbr Eq. 12 when f = 1/2)
         -1  if v <= -f * theta_neg  (SNM: and the net emitted value stays >= 0, DNISNM Eq. 21)
          0  otherwise
    v <- v - theta * [s = +1] + theta_neg * [s = -1]         # soft reset (DNISNM Eq. 22)

A spike is worth ``amplitude * theta`` (negative: ``amplitude_neg * theta_neg``) to the next layer
(Datta Eq. 8); converters fold that value into the consuming layer's weights (:func:`value` gives it).
An unsigned neuron firing at ``f * theta`` equals IF with threshold ``theta`` started ``(1 - f) * theta``
higher (same spikes, same charge); we store it that way, so SpikingJelly's ``IFNode`` reproduces it bit for bit.

Framework modules (SpikingJelly ``BaseNode``, snnTorch neurons) call :func:`step_` / :func:`step` / :func:`run`;
none re-implements the update.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Optional, Union

import torch

Param = Union[float, torch.Tensor]
Surrogate = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["NeuronParams", "NeuronState", "step_", "step", "init_state", "run", "simulate", "value", "spike_values", "start_potential", "heaviside", "CoreNode"]


def _tensor(p: Param, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(p, dtype=like.dtype, device=like.device)


def _is_one(p: Param) -> bool:
    return isinstance(p, (int, float)) and float(p) == 1.0


@dataclass
class NeuronParams:
    """Knobs of the neuron family; tensors broadcast against one time step ``x[t]`` (scalar, per channel, per neuron).

    Validated once, at construction (never per forward step).
    """

    theta: Param = 1.0
    fire_at: float = 1.0
    theta_neg: Optional[Param] = None
    memory: bool = False
    amplitude: Param = 1.0
    v0: Param = 0.0
    leak: Param = 1.0
    amplitude_neg: Optional[Param] = None  # negative spikes are worth amplitude_neg*theta_neg (None: amplitude)

    def __post_init__(self) -> None:
        def bad(p):
            t = torch.as_tensor(p).detach()
            return not bool(torch.isfinite(t).all()) or bool((t <= 0).any())
        if bad(self.theta):
            raise ValueError(f"theta must be finite and > 0, got {self.theta!r}")
        if self.theta_neg is not None and bad(self.theta_neg):
            raise ValueError(f"theta_neg is a magnitude and must be finite and > 0, got {self.theta_neg!r}")
        if self.memory and self.theta_neg is None:
            raise ValueError("memory=True (SNM) needs a negative threshold theta_neg")
        if not 0.0 < float(self.fire_at) <= 1.0:
            raise ValueError(f"fire_at is a fraction of theta in (0, 1], got {self.fire_at}")
        if not bool(torch.isfinite(torch.as_tensor(self.v0).detach()).all()):
            raise ValueError(f"v0 must be finite, got {self.v0!r}")

    @classmethod
    def unchecked(cls, **knobs) -> "NeuronParams":
        """Parameters without validation (hot paths build them from already validated modules)."""
        p = object.__new__(cls)
        for f in fields(cls):
            object.__setattr__(p, f.name, knobs.get(f.name, f.default))
        return p

    @property
    def signed(self) -> bool:
        return self.theta_neg is not None

    def to(self, like: torch.Tensor) -> "NeuronParams":
        """Copy whose tensors live on ``like``'s device and dtype (no validation, no host sync)."""
        out = object.__new__(NeuronParams)
        same = self.theta_neg is self.theta  # symmetric thresholds stay one object (a faster soft reset)
        for f in fields(self):
            val = getattr(self, f.name)
            if isinstance(val, torch.Tensor) or (f.name in ("theta", "v0") and val is not None):
                val = val.to(like.device, like.dtype) if isinstance(val, torch.Tensor) else _tensor(val, like)
            elif f.name in ("theta_neg", "amplitude_neg") and val is not None:
                val = _tensor(val, like)
            object.__setattr__(out, f.name, val)
        if same:
            object.__setattr__(out, "theta_neg", out.theta)
        return out


@dataclass
class NeuronState:
    """Membrane potential ``v`` (unsigned neurons: stored ``(1 - fire_at) * theta`` higher, see the module doc)
    and, for SNM, the memory ``m``: the net value emitted so far (DNISNM Eq. 23) in units of a positive spike's
    value, i.e. ``n_pos - r * n_neg`` with ``r = value_neg / value_pos`` (1 with symmetric thresholds, where
    ``m`` is an exact integer count)."""

    v: torch.Tensor
    m: Optional[torch.Tensor] = field(default=None)


def _shifted(p: NeuronParams) -> bool:
    """Whether the membrane is stored (1 - fire_at) * theta higher: unsigned, no leak (a leak would decay the
    offset too), firing below theta. Otherwise the neuron compares v with fire_at * theta directly."""
    return p.theta_neg is None and p.fire_at != 1.0 and _is_one(p.leak)


def _shift(p: NeuronParams):
    """(1 - fire_at) * theta where :func:`_shifted`, else 0."""
    return (1.0 - p.fire_at) * p.theta if _shifted(p) else 0.0


def _fire_point(p: NeuronParams):
    """The value of the stored membrane at which an unsigned neuron fires."""
    return p.theta if (p.fire_at == 1.0 or _shifted(p)) else p.theta * p.fire_at


def start_potential(p: NeuronParams) -> Param:
    """The stored initial potential: v0, plus (1 - fire_at) * theta for an unsigned neuron."""
    return p.v0 + _shift(p)


def init_state(x_t: torch.Tensor, p: NeuronParams) -> NeuronState:
    """Fresh state shaped like one time step: v = v0 (+ the fire-point shift), spike counts 0."""
    dtype = torch.promote_types(x_t.dtype, torch.float32)
    v = torch.empty_like(x_t, dtype=dtype)
    v.copy_(torch.as_tensor(start_potential(p), dtype=dtype, device=v.device).expand_as(v))
    return NeuronState(v, torch.zeros_like(v) if p.memory else None)


def spike_values(p: NeuronParams):
    """Value of a positive and of a negative spike (Datta Eq. 8: amplitude * theta)."""
    pos = p.theta if _is_one(p.amplitude) else p.amplitude * p.theta
    if p.theta_neg is None:
        return pos, None
    a_neg = p.amplitude if p.amplitude_neg is None else p.amplitude_neg
    return pos, (p.theta_neg if _is_one(a_neg) else a_neg * p.theta_neg)


def value(s: torch.Tensor, p: NeuronParams) -> torch.Tensor:
    """What binary spikes ``s`` carry to the next layer: +amplitude*theta / -amplitude_neg*theta_neg / 0."""
    pos, neg = spike_values(p.to(s))
    if neg is None:
        return s * pos
    return torch.where(s > 0, s * pos, s * neg)


def _ratio(p: NeuronParams):
    """r = value of a negative spike / value of a positive one (1.0, a float, when they are the same object)."""
    if p.theta_neg is p.theta and p.amplitude_neg is None:
        return 1.0
    pos, neg = spike_values(p)
    return neg / pos


def _points(p: NeuronParams) -> tuple:
    """Fire points (positive, negative) of the stored membrane, computed once per window."""
    if p.theta_neg is None:
        return _fire_point(p), None
    f = p.fire_at
    return (p.theta * f if f != 1.0 else p.theta), (-(p.theta_neg * f) if f != 1.0 else -p.theta_neg)


@torch.no_grad()
def step_(x_t: torch.Tensor, state: NeuronState, p: NeuronParams, out: Optional[torch.Tensor] = None,
          points: Optional[tuple] = None, work: Optional[list] = None) -> torch.Tensor:
    """Advance ``state`` one time step in place with input current ``x_t``; return the binary spikes.

    The fast inference path (no autograd). ``p`` must already be on ``x_t``'s device (``NeuronParams.to``).
    ``out`` may receive the result; ``points`` is ``_points(p)`` and ``work`` two scratch tensors shaped like
    ``v`` when the caller loops over time (no allocation per step).
    """
    pos_at, neg_at = points if points is not None else _points(p)
    v = state.v
    if not _is_one(p.leak):
        v.mul_(p.leak)  # LIF leak; 1.0 is IF
    v.add_(x_t)  # charge, DNISNM Eq. 19 / calibration Eq. 1
    if out is None:
        out = torch.empty_like(v)
    if p.theta_neg is None:
        torch.ge(v, pos_at, out=out)  # fire at v >= fire_at*theta (ttrbr Eq. 12; stored shifted if no leak)
        if isinstance(p.theta, torch.Tensor):
            v.addcmul_(out, p.theta, value=-1)  # soft reset, DNISNM Eq. 22
        else:
            v.sub_(out, alpha=float(p.theta))
        return out
    torch.ge(v, pos_at, out=out)  # positive spike at v >= fire_at*theta (stReLU Sec. 3)
    neg, gate = work if work is not None else (torch.empty_like(v), torch.empty_like(v))
    torch.le(v, neg_at, out=neg)  # negative spike at v <= -fire_at*theta_neg, the same fire point
    r = _ratio(p) if p.memory else None
    unit = p.memory and _is_one(r)  # equal spike values: m is an integer count
    if p.memory:  # SNM (DNISNM Eq. 21): only while the net value stays >= 0 after the spike; a positive
        # spike this step excludes a negative one, so the gate uses m(t-1)
        if unit:
            torch.minimum(neg, state.m, out=neg)  # integer counts m >= 0, neg in {0, 1}: min(neg, m) = neg*[m >= 1]
        else:
            torch.ge(state.m, r, out=gate)
            neg.mul_(gate)
    out.sub_(neg)
    if p.theta_neg is p.theta:  # symmetric: one soft reset v -= theta * s (DNISNM Eq. 22)
        v.addcmul_(out, p.theta, value=-1) if isinstance(p.theta, torch.Tensor) else v.sub_(out, alpha=p.theta)
    else:
        v.addcmul_(out.clamp(min=0), torch.as_tensor(p.theta, dtype=v.dtype, device=v.device), value=-1)
        v.addcmul_(out.clamp(max=0), torch.as_tensor(p.theta_neg, dtype=v.dtype, device=v.device), value=-1)
    if p.memory:  # Eq. 23: m += s (in units of a positive spike's value)
        state.m.add_(out) if unit else state.m.add_(torch.where(out < 0, out * r, out))
    return out


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """1 where x >= 0 (SpikingJelly's convention), as x's dtype; no gradient."""
    return (x >= 0).to(x.dtype)


def step(x_t: torch.Tensor, state: NeuronState, p: NeuronParams, surrogate: Optional[Surrogate] = None,
         detach_reset: bool = False) -> tuple:
    """Functional, differentiable step: returns ``(spikes, new_state)``; inputs are not modified.

    ``surrogate(u)`` is the spike function of ``u = v - fire point``: Heaviside forward, a surrogate gradient
    backward (SpikingJelly's ``surrogate`` functions, snnTorch's ``spike_grad``). Same forward as :func:`step_`.
    """
    sg = surrogate or heaviside
    h = x_t + (state.v if _is_one(p.leak) else p.leak * state.v)  # charge (DNISNM Eq. 19)
    if p.theta_neg is None:
        s = sg(h - _fire_point(p))  # fire (ttrbr Eq. 12, via the stored shift where there is no leak)
        r = s.detach() if detach_reset else s
        return s, NeuronState(h - r * p.theta)  # soft reset (DNISNM Eq. 22)
    f = p.fire_at
    pos = sg(h - p.theta * f)
    neg = sg(-h - p.theta_neg * f)
    m = None
    if p.memory:
        r = _ratio(p)
        neg = neg * (state.m >= r).to(neg.dtype)  # DNISNM Eq. 21
        m = state.m + pos.detach() - r * neg.detach()  # Eq. 23
    rp, rn = (pos.detach(), neg.detach()) if detach_reset else (pos, neg)
    return pos - neg, NeuronState(h - rp * p.theta + rn * p.theta_neg, m)


BLOCK = 1 << 20  # neurons advanced through a whole window at a time: the state stays in cache across steps


def _block_rows(x_seq: torch.Tensor, p: NeuronParams) -> Optional[int]:
    """Batch rows per block for the in-place loop (None: one block). Blocking over the batch keeps each
    block's membrane and scratch in cache for all T steps instead of streaming them from memory T times;
    parameters must broadcast over the batch (no batch dimension of their own) and the state be per sample."""
    if x_seq.dim() < 3 or x_seq.shape[1] < 2 or not x_seq.is_contiguous() or x_seq.device.type != "cpu":
        return None
    per = x_seq[0, 0].numel()
    rows = max(1, BLOCK // max(per, 1))
    if rows >= x_seq.shape[1]:
        return None
    for q in (p.theta, p.theta_neg, p.leak):  # what the loop reads (amplitudes only value the spikes)
        if isinstance(q, torch.Tensor) and q.dim() >= x_seq.dim() - 1 and q.shape[-(x_seq.dim() - 1)] != 1:
            return None  # a parameter with a batch dimension of its own
    return rows


def run(x_seq: torch.Tensor, state: NeuronState, p: NeuronParams, surrogate: Optional[Surrogate] = None,
        detach_reset: bool = False) -> tuple:
    """Run ``x_seq`` ``[T, ...]`` through the neuron; returns ``(spikes [T, ...], final state)``.

    Without autograd (or without a surrogate) the in-place fast path; otherwise the differentiable one.
    """
    if surrogate is None or not torch.is_grad_enabled():
        st = NeuronState(state.v.clone(), None if state.m is None else state.m.clone())
        out = torch.empty(x_seq.shape, dtype=st.v.dtype, device=st.v.device)
        points = _points(p)
        gate = p.memory and p.theta_neg is not None and not _is_one(_ratio(p))  # scratch only for unequal values
        work = [torch.empty_like(st.v), torch.empty_like(st.v) if gate else None] if p.theta_neg is not None else None
        rows = _block_rows(x_seq, p)
        blocks = [()] if rows is None else [(slice(a, a + rows),) for a in range(0, x_seq.shape[1], rows)]
        for b in blocks:  # () indexes the whole state (a view), a slice one block of batch rows
            sub = NeuronState(st.v[b], None if st.m is None else st.m[b])
            w = None if work is None else [None if u is None else u[b] for u in work]
            for t in range(x_seq.shape[0]):
                step_(x_seq[(t,) + b], sub, p, out=out[(t,) + b], points=points, work=w)
        return out, st
    spikes = []
    for t in range(x_seq.shape[0]):
        s, state = step(x_seq[t], state, p, surrogate, detach_reset)
        spikes.append(s)
    return torch.stack(spikes), state


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
    """Binary spikes ``[T, ...]`` (0/1, or -1/0/+1 with ``theta_neg``) of the neuron family for input currents
    ``x`` of shape ``[T, ...]``; the reference every framework node is tested against.

    Positive spike when ``v >= fire_at*theta``, negative when ``v <= -fire_at*theta_neg`` (with ``memory=True``
    only while the net emitted value stays >= 0). Soft reset by ``theta`` / ``theta_neg``. ``v`` starts at
    ``v0``; ``leak`` multiplies ``v`` before each input. ``amplitude``/``amplitude_neg`` only set what a spike is
    worth (:func:`value`), not the spikes. All parameters broadcast against ``x[0]``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"x must be a tensor of shape [T, ...], got {type(x).__name__} {getattr(x, 'shape', '')}")
    if not x.is_floating_point():
        x = x.float()
    p = NeuronParams(theta, fire_at, theta_neg, memory, amplitude, v0, leak, amplitude_neg).to(x[0])
    return run(x, init_state(x[0], p), p)[0]


class CoreNode(torch.nn.Module):
    """A multi-step module around :func:`run` from a fresh state at every call: the default node of the
    backend-neutral calibration simulator (backends pass their own nodes instead)."""

    def __init__(self, params: NeuronParams) -> None:
        super().__init__()
        self.p = params

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        p = self.p.to(z[0])
        return run(z, init_state(z[0], p), p)[0]
