"""Datta & Beerel 2022, Algorithm 1: the alpha/beta search for a few time steps, as the ``datta`` threshold strategy.

* :func:`compute_loss` is Algorithm 1's ``ComputeLoss`` exactly as printed (a *signed* sum over the percentiles);
  :func:`loss_table` evaluates it for every candidate (alpha, beta) at once and :func:`find_scaling_factors` is
  ``FindScalingFactors`` (first strictly smaller ``abs(loss)`` wins, starting from alpha = beta = 1).
* The signed loss is linear in beta, A(alpha) - beta*B(alpha): every alpha whose zero :func:`zero_loss_beta` A/B lies
  in the beta range [0, 2] reaches (nearly) zero loss, and the search keeps whichever lands nearest the 0.01 grid,
  not the alpha whose staircase follows the DNN. ``loss="abs"`` (method ``datta-abs``, our variant) sums
  ``abs(term)`` instead, so errors of opposite sign no longer cancel.
* The ``datta`` threshold strategy records a layer's pre-activations, takes its percentiles up to mu (the trained
  threshold of a threshold-ReLU/clamp layer, or the layer's maximum for a plain ReLU) and returns theta = alpha*mu
  with the knob ``amplitude = beta`` (a spike is worth beta*alpha*mu, Eq. 8).

The paper's analysis (Eqs. 5-7) is in :mod:`snnconv_ext.study.datta`.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn

from ..core.checks import check_T
from . import thresholds as thr

__all__ = ["percentiles", "compute_loss", "loss_table", "find_scaling_factors", "zero_loss_beta", "snn_activation",
           "DattaThreshold", "BETAS", "LOSSES"]

BETAS = tuple(round(0.01 * i, 2) for i in range(201))  # beta from 0 to 2 in steps of 0.01 (Algorithm 1, line 22)
LOSSES = ("signed", "abs")


def percentiles(a: torch.Tensor, mu: float) -> torch.Tensor:
    """P[0..M]: the integer percentiles 0, 1, ..., 100 of ``a`` with M the largest index such that P[M] <= mu
    (Algorithm 1, line 1). Linear interpolation between order statistics (``torch.quantile``)."""
    a = a.detach().flatten().double()
    if a.numel() == 0:
        raise ValueError("percentiles: no activations")
    if a.numel() > (1 << 24):  # torch.quantile's size limit: a seeded uniform subsample keeps it unbiased
        a = a[torch.randperm(a.numel(), generator=torch.Generator().manual_seed(0))[: 1 << 24]]
    P = torch.quantile(a, torch.arange(101, dtype=torch.float64) / 100.0)
    return P[P <= mu]


def compute_loss(P: Iterable[float], mu: float, alpha: float, beta: float, T: int, loss: str = "signed") -> float:
    """Algorithm 1's ``ComputeLoss`` as printed: for each percentile p, add p minus the SNN output for input p.

    Seg-I (j*alpha*mu/T <= p <= (j+1)*alpha*mu/T, j = 0..T-1): p - j*alpha*beta*mu/T (both bounds inclusive, so a
    p on an inner step edge counts twice, as printed); Seg-II (alpha*mu < p <= mu): p - alpha*beta*mu;
    Seg-III (p > mu): mu*(1 - alpha*beta). The sum is signed: errors of opposite sign cancel. ``loss="abs"`` adds
    each term's magnitude instead (our variant, not the paper's).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    mag = abs if loss == "abs" else (lambda v: v)
    total = 0.0
    a_mu = alpha * mu
    for p in P:
        p = float(p)
        for j in range(T):
            if j * a_mu / T <= p <= (j + 1) * a_mu / T:
                total += mag(p - j * a_mu * beta / T)  # Seg-I
        if a_mu < p <= mu:
            total += mag(p - a_mu * beta)  # Seg-II
        elif p > mu:
            total += mag(mu * (1.0 - a_mu * beta / mu))  # Seg-III: mu(1 - alpha*beta)
    return total


def loss_table(P: torch.Tensor, mu: float, alphas: torch.Tensor, T: int, betas: Iterable[float] = BETAS,
               loss: str = "signed") -> torch.Tensor:
    """``ComputeLoss`` for every (alpha, beta): a ``[len(alphas), len(betas)]`` table, the same arithmetic as
    :func:`compute_loss` (float64). ``loss="abs"`` sums ``abs(term)`` instead (our variant, not the paper's)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    p = torch.as_tensor(P, dtype=torch.float64)[None, None, :]  # [1, 1, n]
    a_mu = (torch.as_tensor(alphas, dtype=torch.float64) * mu)[:, None, None]  # [A, 1, 1]
    b = torch.as_tensor(list(betas), dtype=torch.float64)[None, :, None]  # [1, B, 1]
    terms = torch.zeros(a_mu.shape[0], b.shape[1], p.shape[2], dtype=torch.float64)
    for j in range(T):
        hit = (j * a_mu / T <= p) & (p <= (j + 1) * a_mu / T)
        terms = terms + torch.where(hit, p - j * a_mu * b / T, 0.0)  # Seg-I
    seg2 = (a_mu < p) & (p <= mu)
    terms = terms + torch.where(seg2, p - a_mu * b, 0.0)  # Seg-II
    seg3 = p > mu
    terms = terms + torch.where(seg3, mu * (1.0 - a_mu * b / mu), 0.0)  # Seg-III
    return terms.sum(-1) if loss == "signed" else terms.abs().sum(-1)


def find_scaling_factors(P: torch.Tensor, mu: float, T: int, betas: Iterable[float] = BETAS,
                         loss: str = "signed") -> Tuple[float, float, float]:
    """Algorithm 1's ``FindScalingFactors``: alpha = p/mu for each percentile p > 0, beta over ``betas``; keep the
    pair of smallest ``abs(loss)`` (the first one found on ties), starting from alpha = beta = 1. Returns (alpha, beta, loss)."""
    P = torch.as_tensor(P, dtype=torch.float64)
    betas = list(betas)
    alpha, beta = 1.0, 1.0
    best = float(loss_table(P, mu, torch.tensor([1.0]), T, [1.0], loss)[0, 0])
    cand = P[P > 0]  # alpha = 0 would be a zero threshold; negative p are no threshold at all
    if cand.numel():
        tab = loss_table(P, mu, cand / mu, T, betas, loss).abs()
        k = int(torch.argmin(tab.flatten()))  # argmin returns the first minimum: the scan order of lines 21-22
        if float(tab.flatten()[k]) < abs(best):
            i, j = divmod(k, len(betas))
            alpha, beta = float(cand[i] / mu), float(betas[j])
            best = float(loss_table(P, mu, cand[i:i + 1] / mu, T, [beta], loss)[0, 0])
    return alpha, beta, best


def zero_loss_beta(P: torch.Tensor, mu: float, alphas: torch.Tensor, T: int) -> torch.Tensor:
    """Per alpha, the beta at which Algorithm 1's signed loss is zero.

    Every term of ``ComputeLoss`` is p - c*beta with c independent of beta, so the loss is A(alpha) - beta*B(alpha)
    with A = loss(beta = 0) and B = loss(0) - loss(1) >= 0; it is zero at beta = A/B (inf where B = 0: no percentile
    reaches the first step). An alpha with A/B in [0, 2] can be brought to abs(loss) <= B*0.005 on the 0.01 grid."""
    tab = loss_table(P, mu, alphas, T, (0.0, 1.0))
    A, B = tab[:, 0], tab[:, 0] - tab[:, 1]
    return torch.where(B > 0, A / B.where(B > 0, torch.ones_like(B)), torch.full_like(A, math.inf))


def snn_activation(d: torch.Tensor, mu: float, alpha: float, beta: float, T: int) -> torch.Tensor:
    """The scaled SNN activation of Fig. 1(b) for constant input d: (beta*alpha*mu/T) * clip(floor(T d/(alpha*mu)), 0, T)
    (Eq. 5 with V^th = alpha*mu, no bias shift, spikes worth beta*V^th, Eq. 8)."""
    a_mu = alpha * mu
    return beta * a_mu / T * torch.clamp(torch.floor(T * d / a_mu), 0, T)


@thr.register("datta")
class DattaThreshold(thr.PercentileThreshold):
    """Threshold alpha*mu and spike amplitude beta from Algorithm 1 for ``T`` steps (Datta & Beerel Sec. III-B).

    mu is the layer's trained threshold (``bound`` of a threshold-ReLU / clamp / tReLU layer) or, for a plain ReLU,
    the largest pre-activation seen (the d_max of Sec. II-B). After :meth:`compute`, :meth:`knobs` gives
    ``{"amplitude": beta}`` and :attr:`result` the (mu, alpha, beta, loss) found, with the number of candidate
    alphas and how many of them reach zero signed loss within beta in [0, 2] (:func:`zero_loss_beta`).
    """

    def __init__(self, T: int = 2, granularity: str = "layer", loss: str = "signed", cap: int = 1 << 20,
                 seed: int = 0) -> None:
        if granularity != "layer":
            raise ValueError("the datta strategy is layer-wise (one alpha, beta per layer, Sec. III-B)")
        check_T(T, "datta: T")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        super().__init__(p=100.0, granularity="layer", cap=cap, seed=seed)
        self.T, self.loss = int(T), loss
        self.mu: Optional[float] = None
        self.result: Dict[str, float] = {}

    def bind(self, module: nn.Module) -> None:
        self.mu = float(module.bound) if hasattr(module, "bound") else None

    def compute(self) -> torch.Tensor:
        self._check_ready()
        if self.n > self.cap:
            self._shrink()
        a = torch.cat(self.values, dim=1)[0]  # ReLU'd pre-activations (zeros included)
        mu = self.mu if self.mu is not None else float(a.max())
        if not mu > 0:
            mu = 1e-8  # a dead layer: never reaches any threshold
        P = percentiles(a, mu)
        alpha, beta, loss = find_scaling_factors(P, mu, self.T, loss=self.loss)
        cand = P[P > 0] / mu
        zb = zero_loss_beta(P, mu, cand, self.T)
        # how many candidate alphas the signed loss can bring to zero within the beta range (whatever the loss used)
        self.result = {"mu": mu, "alpha": alpha, "beta": beta, "loss": loss, "candidates": int(cand.numel()),
                       "zero_loss": int(((zb >= BETAS[0]) & (zb <= BETAS[-1])).sum())}
        return torch.tensor(max(alpha * mu, 1e-8))

    def knobs(self) -> Dict[str, float]:
        """Extra neuron knobs beyond theta: the spike amplitude beta (Eq. 8)."""
        return {"amplitude": self.result["beta"]}
