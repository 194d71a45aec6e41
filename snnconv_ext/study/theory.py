"""Closed forms of TTRBR's Theorems 1 and 2 (Meng et al. 2022, Sec. 3.2, Appendices A and B) and Monte Carlo.

Setting (Sec. 3.2): an IF neuron without leak, with soft reset and threshold ``theta``, integrates the noisy
current ``x(t) = u + sigma * xi(t)`` (``xi``: standard Gaussian white noise). Without firing the membrane is
the Brownian motion with drift ``V(t) = u t + sigma B(t)`` (Eq. A.1). With soft reset the n-th spike comes
exactly when ``V`` first reaches ``n * theta``, so the spike count is ``N(T) = floor(max_{t<=T} V(t) / theta)``
and the n-th arrival time ``S_n`` is the first-passage time of level ``n * theta``: an inverse Gaussian
variable with density Eq. A.7 (Eq. A.3 for n = 1). Hence

    P(N(T) = n) = P(S_n <= T) - P(S_{n+1} <= T)                       (Eq. A.8, with S_0 = 0)

* Theorem 1 / Eq. A.10 evaluates this at the particular horizon ``T = (n + 1/2) theta / u`` (``u > 0``),
  mid-way between the deterministic n-th and (n+1)-th spikes; it depends on ``u, sigma, theta`` only through
  ``z = theta u / sigma^2``. :func:`spike_count_pmf` is Eq. A.10, :func:`spike_count_pmf_at` the whole law
  of ``N(T)`` for any ``T`` (and any sign of ``u``).
* Theorem 2 / Eq. B.3: for ``u < 0`` the all-time maximum ``M = sup_{t>=0} V(t)`` of the free (non-spiking)
  membrane is exponential with rate ``2|u|/sigma^2``, so ``P(M >= theta) = exp(-2|u| theta / sigma^2)``, which
  is the probability that the neuron ever fires (Eq. B.4). :func:`prob_max_exceeds`.

A.10 agrees with A.8/A.9 (we re-derived it: ``Phi_n(t)`` of Eq. A.9 is ``2 P(S_n > t)``); it is evaluated here
in an algebraically identical form that does not overflow: the paper's ``exp(2 u n theta / sigma^2) *
(erf(.) - 1)`` products are ``inf * 0`` for ``z`` above a few hundred, and cancel catastrophically well before.

Monte Carlo (:func:`simulate_if_noisy`, :func:`simulate_running_max`) discretises with step ``dt``
(Euler-Maruyama, exact in law for a constant drift). A walk observed only on the grid misses crossings
between grid points, which biases first-passage quantities by O(sigma sqrt(dt)); ``correction`` removes it:

* ``"bridge"`` (default): between grid points the path is a Brownian bridge whose maximum is sampled exactly
  (``m = (a + b + sqrt((b - a)^2 - 2 sigma^2 dt log U)) / 2``), so the simulation is exact for any ``dt``;
* ``"shift"``: the Broadie-Glasserman-Kou continuity correction (a discretely monitored barrier behaves like
  the continuous one moved by ``beta sigma sqrt(dt)``, ``beta = -zeta(1/2)/sqrt(2 pi) ~ 0.5826``): the
  library neuron (:func:`snnconv_ext.core.neuron.step_`) starts at ``v0 = beta sigma sqrt(dt)``;
  residual bias o(sqrt(dt));
* ``"none"``: the plain discrete neuron, biased towards fewer spikes / smaller maxima.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from ..core.neuron import NeuronParams, init_state, step_

__all__ = [
    "BGK_BETA",
    "first_passage_cdf",
    "spike_count_pmf",
    "spike_count_pmf_at",
    "prob_max_exceeds",
    "simulate_if_noisy",
    "simulate_running_max",
    "total_variation",
]

ArrayLike = Union[float, int, Sequence[float], torch.Tensor]

# Broadie, Glasserman & Kou (1997): beta = -zeta(1/2) / sqrt(2 pi); zeta(1/2) = -1.4603545088095868
BGK_BETA: float = 1.4603545088095868 / math.sqrt(2.0 * math.pi)

_CORRECTIONS = ("bridge", "shift", "none")
_CHUNK = 64  # time steps of noise drawn per torch.randn call


def _f64(x: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _check_positive(**kw: float) -> None:
    for name, v in kw.items():
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be finite and > 0, got {v!r}")


def first_passage_cdf(t: ArrayLike, level: ArrayLike, u: float, sigma: float) -> torch.Tensor:
    """``P(tau <= t)`` for the first time ``tau`` that ``V(s) = u s + sigma B(s)`` reaches ``level >= 0``.

    This is the CDF of the inverse Gaussian density of Eqs. A.3 / A.7 (``level = n theta`` gives ``S_n``),
    the integral behind Eqs. A.8-A.9 (``Phi_n(t) = 2 (1 - first_passage_cdf(t, n theta, u, sigma))``).
    Valid for any sign of ``u``: for ``u < 0`` the law is defective, ``P(tau < inf) = exp(2 u level / sigma^2)``
    (Eq. B.3). ``t`` and ``level`` broadcast; ``level = 0`` gives 1 (``S_0 = 0``). Returns float64.
    """
    _check_positive(sigma=float(sigma))
    t, a = torch.broadcast_tensors(_f64(t), _f64(level))
    if (a < 0).any() or (t < 0).any():
        raise ValueError("level and t must be >= 0")
    ts = torch.where(t > 0, t, torch.ones_like(t))  # t = 0 handled below
    s = sigma * torch.sqrt(2.0 * ts)
    A = (a - u * ts) / s
    B = (a + u * ts) / s
    # Eq. A.9: P(tau <= t) = 1/2 erfc(A) + 1/2 exp(2 u a / sigma^2) erfc(B)
    # exp(2ua/sigma^2) erfc(B) = erfcx(B) exp(-A^2) (exact identity, no overflow) when B >= 0; when B < 0 we
    # have u < 0, so exp(2ua/sigma^2) <= 1 and the direct product is safe.
    second = torch.where(
        B >= 0,
        torch.special.erfcx(B.clamp(min=0.0)) * torch.exp(-A * A),
        torch.exp(2.0 * u * a / sigma**2) * torch.erfc(B),
    )
    cdf = 0.5 * torch.erfc(A) + 0.5 * second
    cdf = torch.where(t > 0, cdf, (a == 0).to(cdf.dtype))
    return torch.where(a == 0, torch.ones_like(cdf), cdf).clamp(0.0, 1.0)


def spike_count_pmf(n: Union[int, Sequence[int], torch.Tensor], u: float, sigma: float, theta: float) -> torch.Tensor:
    """Theorem 1 / Eq. A.10: ``P(N(T) = n)`` at ``T = (n + 1/2) theta / u``, for ``u > 0``.

    ``N(T)`` is the spike count of the soft-reset IF neuron with input ``u + sigma * xi(t)`` on ``[0, T]``.
    Note that ``T`` depends on ``n``: entry ``k`` of the result is the probability that the neuron fires
    exactly its deterministic count ``k`` at its own horizon ``(k + 1/2) theta / u``; the entries are not a
    distribution over ``n`` (for the law of ``N(T)`` at one ``T`` use :func:`spike_count_pmf_at`).
    The value depends on the parameters only through ``z = theta u / sigma^2`` (Appendix C.2, Fig. C.12).
    ``n`` may be an int or a sequence/tensor of non-negative ints; returns float64 of ``n``'s shape.
    """
    _check_positive(u=float(u), sigma=float(sigma), theta=float(theta))
    n = _f64(n)
    if (n < 0).any() or (n != torch.round(n)).any():
        raise ValueError("n must be non-negative integers")
    z = theta * u / sigma**2
    c = torch.sqrt(z / (2.0 * (n + 0.5)))  # sqrt(theta u / (2 (n + 0.5) sigma^2)), Eq. A.10
    b1, b0 = (2.0 * n + 1.5) * c, (2.0 * n + 0.5) * c
    # Eq. A.10: 1/2 [ 2 erf(c/2) + e^{2(n+1)z} (erf(b1) - 1) - e^{2nz} (erf(b0) - 1) ], written with
    # e^{2(n+1)z} (1 - erf(b1)) = erfcx(b1) e^{-c^2/4}  and  e^{2nz} (1 - erf(b0)) = erfcx(b0) e^{-c^2/4}
    # (2(n+1)z - b1^2 = 2nz - b0^2 = -c^2/4), i.e. the same numbers without inf * 0.
    return torch.erf(0.5 * c) + 0.5 * torch.exp(-0.25 * c * c) * (torch.special.erfcx(b0) - torch.special.erfcx(b1))


def spike_count_pmf_at(T: float, u: float, sigma: float, theta: float, n_max: int) -> torch.Tensor:
    """Law of the spike count ``N(T)``: ``[P(N(T) = 0), ..., P(N(T) = n_max)]`` for any ``T > 0`` and real ``u``.

    Eq. A.8 with the arrival times' CDF (Eqs. A.7, A.9): ``P(N(T) = n) = P(S_n <= T) - P(S_{n+1} <= T)``,
    ``S_0 = 0``. The mass above ``n_max`` is ``1 - result.sum()``. At ``T = (n + 1/2) theta / u`` entry ``n``
    equals :func:`spike_count_pmf` (Eq. A.10). For ``u <= 0`` the arrival laws are defective and the same
    expression holds.
    """
    _check_positive(T=float(T), sigma=float(sigma), theta=float(theta))
    if int(n_max) < 0:
        raise ValueError(f"n_max must be >= 0, got {n_max}")
    levels = theta * torch.arange(int(n_max) + 2, dtype=torch.float64)
    cdf = first_passage_cdf(T, levels, u, sigma)  # P(S_n <= T), n = 0..n_max+1 (Eqs. A.7/A.9)
    return (cdf[:-1] - cdf[1:]).clamp(min=0.0)  # Eq. A.8


def prob_max_exceeds(theta: ArrayLike, u: float, sigma: float, horizon: Optional[float] = None) -> torch.Tensor:
    """Theorem 2 / Eq. B.3: ``P(M >= theta) = exp(-2 |u| theta / sigma^2)`` with ``M = sup_{t >= 0} (u t + sigma B(t))``.

    ``M`` is the all-time maximum of the free membrane (no spiking, Eq. B.2); ``P(M >= theta)`` is the
    probability that the IF neuron ever fires (Eq. B.4). Eq. B.3 holds for ``u < 0`` only: for ``u >= 0`` the
    supremum is ``+inf`` almost surely and the probability is 1 (returned as such; the paper's ``|u|`` would
    wrongly give a value below 1 for ``u > 0``). ``theta >= 0`` may be an array.

    With ``horizon`` set, returns the finite-horizon ``P(max_{0<=t<=horizon} V(t) >= theta)`` instead (the
    first-passage CDF, Eq. A.9, any sign of ``u``), which increases to Eq. B.3 as ``horizon -> inf``.
    """
    _check_positive(sigma=float(sigma))
    theta = _f64(theta)
    if (theta < 0).any():
        raise ValueError("theta must be >= 0")
    if horizon is not None:
        _check_positive(horizon=float(horizon))
        return first_passage_cdf(horizon, theta, u, sigma)
    if u >= 0:
        return torch.ones_like(theta)
    return torch.exp(-2.0 * abs(u) * theta / sigma**2)  # Eq. B.3


def _steps(T: float, dt: float) -> tuple[int, float]:
    _check_positive(T=float(T), dt=float(dt))
    k = max(1, round(T / dt))
    return k, T / k


def _grid(correction: str, sigma: float, T: float, dt: float, **positive: float) -> tuple[int, float, float]:
    """Check a Monte Carlo's arguments; its step count, step and noise scale sigma sqrt(dt) over ``[0, T]``."""
    if correction not in _CORRECTIONS:
        raise ValueError(f"correction must be one of {_CORRECTIONS}, got {correction!r}")
    _check_positive(sigma=float(sigma), **positive)
    k, dt = _steps(T, dt)
    return k, dt, sigma * math.sqrt(dt)


def _noise_chunks(k: int, n_samples: int, generator: Optional[torch.Generator]):
    for start in range(0, k, _CHUNK):
        yield torch.randn(min(_CHUNK, k - start), n_samples, dtype=torch.float64, generator=generator)


def _bridge_max(a: torch.Tensor, b: torch.Tensor, var: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Exact sample of the maximum of a Brownian bridge from ``a`` to ``b`` with variance ``var`` = sigma^2 dt."""
    uni = 1.0 - torch.rand(a.shape, dtype=torch.float64, generator=generator)  # in (0, 1]
    return 0.5 * (a + b + torch.sqrt((b - a) ** 2 - 2.0 * var * torch.log(uni)))


def simulate_if_noisy(
    u: float,
    sigma: float,
    theta: float,
    T: float,
    dt: float,
    n_samples: int,
    generator: Optional[torch.Generator] = None,
    correction: str = "bridge",
) -> torch.Tensor:
    """Monte Carlo spike counts ``N(T)`` of the IF neuron of Theorem 1 (no leak, soft reset by ``theta``, ``v(0) = 0``).

    The input ``x(t) = u + sigma * xi(t)`` is integrated with Euler-Maruyama steps
    ``v += u dt + sigma sqrt(dt) Z`` (exact in law for constant drift) over ``round(T / dt)`` steps (``dt`` is
    adjusted so they cover exactly ``[0, T]``), vectorised over ``n_samples`` independent neurons and looping
    over time, with memory ``O(n_samples)``. ``correction`` (see the module docstring):

    * ``"bridge"``: a spike whenever the exactly sampled maximum of the path between grid points reaches
      ``theta`` (``floor`` of it over ``theta`` spikes per step; the continuous-time neuron, exact for any dt);
    * ``"shift"``: the library neuron :func:`snnconv_ext.core.neuron.step_` with ``v0 = BGK_BETA sigma sqrt(dt)``;
    * ``"none"``: the library neuron as is (fires when the grid value reaches ``theta``).

    ``"shift"``/``"none"`` fire at most one spike per step, so they need ``u dt, sigma sqrt(dt) << theta``.
    Returns int64 counts of shape ``[n_samples]``.
    """
    k, dt, sd = _grid(correction, sigma, T, dt, theta=float(theta))
    counts = torch.zeros(n_samples, dtype=torch.float64)
    if correction == "bridge":
        v = torch.zeros(n_samples, dtype=torch.float64)
        for z in _noise_chunks(k, n_samples, generator):
            for row in z:
                v_new = v + (u * dt + sd * row)
                m = _bridge_max(v, v_new, sd * sd, generator)
                spikes = torch.floor(m / theta).clamp_(min=0.0)  # v < theta before the step, so m >= v
                counts += spikes
                v = v_new - theta * spikes  # soft reset
        return counts.to(torch.int64)
    x0 = torch.zeros(n_samples, dtype=torch.float64)
    p = NeuronParams(theta=theta, v0=BGK_BETA * sd if correction == "shift" else 0.0).to(x0)
    state = init_state(x0, p)
    out = torch.empty_like(x0)
    for z in _noise_chunks(k, n_samples, generator):
        for row in z:
            step_(u * dt + sd * row, state, p, out=out)  # charge, fire at v >= theta, soft reset
            counts += out
    return counts.to(torch.int64)  # binary spikes: the count


def simulate_running_max(
    u: float,
    sigma: float,
    horizon: float,
    dt: float,
    n_samples: int,
    generator: Optional[torch.Generator] = None,
    correction: str = "bridge",
) -> torch.Tensor:
    """Monte Carlo of ``max_{0 <= t <= horizon} V(t)``, ``V(t) = u t + sigma B(t)`` (Theorem 2's ``M`` on a finite horizon).

    The free membrane of Eq. B.1 (no spiking), Euler-Maruyama steps as in :func:`simulate_if_noisy`.
    ``correction``: ``"bridge"`` takes the exactly sampled maximum of the Brownian bridge in each step (exact
    for any ``dt``); ``"shift"`` adds ``BGK_BETA sigma sqrt(dt)`` to the maximum over the grid (only meant for
    tail probabilities ``P(M >= theta)`` with ``theta >> sigma sqrt(dt)``); ``"none"`` returns the maximum over
    the grid. ``M(infinity)`` (Eq. B.2, ``u < 0``) exceeds the result with probability
    ``prob_max_exceeds(theta, u, sigma) - prob_max_exceeds(theta, u, sigma, horizon)``, negligible once
    ``horizon >> (theta + sigma^2 / |u|) / |u|``. Returns float64 of shape ``[n_samples]``.
    """
    k, dt, sd = _grid(correction, sigma, horizon, dt)
    v = torch.zeros(n_samples, dtype=torch.float64)
    mx = torch.zeros(n_samples, dtype=torch.float64)
    for z in _noise_chunks(k, n_samples, generator):
        for row in z:
            v_new = v + (u * dt + sd * row)
            torch.maximum(mx, _bridge_max(v, v_new, sd * sd, generator) if correction == "bridge" else v_new, out=mx)
            v = v_new
    return mx + BGK_BETA * sd if correction == "shift" else mx


def total_variation(p: ArrayLike, q: ArrayLike) -> float:
    """Total-variation distance ``1/2 sum |p - q|`` between two probability vectors on the same support."""
    p, q = _f64(p), _f64(q)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    return 0.5 * float((p - q).abs().sum())
