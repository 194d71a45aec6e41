"""Datta & Beerel 2022, "Can deep neural networks be converted to ultra low-latency SNNs?": the alpha/beta search
(Algorithm 1, Eq. 8) as a threshold strategy, and the analysis of Eqs. 5-7 (K(mu), h(T, mu)).

* :func:`compute_loss` is Algorithm 1's ``ComputeLoss`` exactly as printed (a *signed* sum over the percentiles);
  :func:`loss_table` evaluates it for every candidate (alpha, beta) at once and :func:`find_scaling_factors` is
  ``FindScalingFactors`` (first strictly smaller ``abs(loss)`` wins, starting from alpha = beta = 1).
* The ``datta`` threshold strategy records a layer's pre-activations, takes its percentiles up to mu (the trained
  threshold of a threshold-ReLU/clamp layer, or the layer's maximum for a plain ReLU) and returns theta = alpha*mu
  with the knob ``amplitude = beta`` (a spike is worth beta*alpha*mu, Eq. 8).
* :func:`k_mu`, :func:`h_T_mu` estimate Eq. 6-7's K(mu) and h(T, mu) from sampled DNN and SNN pre-activations.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from . import thresholds as thr

__all__ = ["percentiles", "compute_loss", "loss_table", "find_scaling_factors", "snn_activation", "DattaThreshold",
           "k_mu", "h_T_mu", "delta", "layer_percentiles", "preactivations", "spike_counts", "operations", "BETAS", "LOSSES", "E_MAC",
           "E_AC"]

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


def compute_loss(P: Iterable[float], mu: float, alpha: float, beta: float, T: int) -> float:
    """Algorithm 1's ``ComputeLoss`` as printed: for each percentile p, add p minus the SNN output for input p.

    Seg-I (j*alpha*mu/T <= p <= (j+1)*alpha*mu/T, j = 0..T-1): p - j*alpha*beta*mu/T (both bounds inclusive, so a
    p on an inner step edge counts twice, as printed); Seg-II (alpha*mu < p <= mu): p - alpha*beta*mu;
    Seg-III (p > mu): mu*(1 - alpha*beta). The sum is signed: errors of opposite sign cancel.
    """
    loss = 0.0
    a_mu = alpha * mu
    for p in P:
        p = float(p)
        for j in range(T):
            if j * a_mu / T <= p <= (j + 1) * a_mu / T:
                loss += p - j * a_mu * beta / T  # Seg-I
        if a_mu < p <= mu:
            loss += p - a_mu * beta  # Seg-II
        elif p > mu:
            loss += mu * (1.0 - a_mu * beta / mu)  # Seg-III: mu(1 - alpha*beta)
    return loss


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
    ``{"amplitude": beta}`` and :attr:`result` the (mu, alpha, beta, loss) found.
    """

    def __init__(self, T: int = 2, granularity: str = "layer", loss: str = "signed", cap: int = 1 << 20,
                 seed: int = 0) -> None:
        if granularity != "layer":
            raise ValueError("the datta strategy is layer-wise (one alpha, beta per layer, Sec. III-B)")
        if int(T) < 1:
            raise ValueError(f"datta needs T >= 1, got {T}")
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
        alpha, beta, loss = find_scaling_factors(percentiles(a, mu), mu, self.T, loss=self.loss)
        self.result = {"mu": mu, "alpha": alpha, "beta": beta, "loss": loss}
        return torch.tensor(max(alpha * mu, 1e-8))

    def knobs(self) -> Dict[str, float]:
        """Extra neuron knobs beyond theta: the spike amplitude beta (Eq. 8)."""
        return {"amplitude": self.result["beta"]}


# --- analysis: Eqs. 5-7 ------------------------------------------------------------------------------------------

def k_mu(d: torch.Tensor, mu: float) -> float:
    """K(mu) of Eq. 6: (1/mu) * integral_0^mu d f_D(d) dd, estimated from samples d of the DNN pre-activation."""
    d = d.detach().flatten().double()
    inside = (d >= 0) & (d <= mu)
    return float((d * inside).sum() / d.numel() / mu)


def h_T_mu(s: torch.Tensor, mu: float, T: int) -> float:
    """h(T, mu) of Eq. 7: sum_{i=1}^{T-1} (i/T) g_i(T, mu) + integral_{T'}^{mu} f_S(s) ds, with
    g_i = P((i - 1/2) mu/T <= s < (i + 1/2) mu/T) and T' = (T - 1/2) mu/T, from samples s of the SNN pre-activation
    (the mean input current over T steps). Uniform s on [0, mu] gives 1/2."""
    s = s.detach().flatten().double()
    n = s.numel()
    h = 0.0
    for i in range(1, T):
        g = ((s >= (i - 0.5) * mu / T) & (s < (i + 0.5) * mu / T)).sum().item() / n
        h += i / T * g
    return h + ((s >= (T - 0.5) * mu / T) & (s <= mu)).sum().item() / n


def delta(d: torch.Tensor, s: torch.Tensor, mu: float, T: int) -> float:
    """Eq. 7: the expected post-activation difference Delta ~ mu (K(mu) - h(T, mu))."""
    return mu * (k_mu(d, mu) - h_T_mu(s, mu, T))


@torch.no_grad()
def layer_percentiles(ann: nn.Module, x: torch.Tensor, cap: int = 1 << 20) -> Dict[str, Tuple[float, torch.Tensor]]:
    """Per activation layer of ``ann``: (mu, P), mu its trained threshold (or, for ReLU, the largest pre-activation
    on ``x``) and P the percentiles of its ReLU'd pre-activations up to mu (Algorithm 1's input)."""
    from .graph import trace
    from .methods import ACTIVATIONS
    gm = trace(ann)
    acts = [(n, m) for n, m in gm.named_modules() if isinstance(m, tuple(ACTIVATIONS))]
    rec: Dict[str, torch.Tensor] = {}

    def keep(n, z):
        z = z.detach().clamp_min(0).flatten()
        if z.numel() > cap:  # a seeded uniform subsample leaves the percentiles unbiased
            z = z[torch.randperm(z.numel(), generator=torch.Generator().manual_seed(0))[:cap]]
        rec[n] = z
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: keep(n, a[0])) for n, m in acts]
    try:
        gm(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, m in acts:
        mu = float(m.bound) if hasattr(m, "bound") else float(rec[n].max())
        out[n] = (mu, percentiles(rec[n], mu))
    return out


@torch.no_grad()
def preactivations(ann: nn.Module, snn: nn.Module, x: torch.Tensor, T: int) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Per spiking layer: (d, s), the DNN pre-activation (input of the activation module) and the SNN pre-activation
    (the spiking node's input current averaged over ``T`` steps of direct input ``x``), as in Fig. 1(a).
    Layers are matched in order (the converter keeps the activation's place)."""
    from spikingjelly.activation_based import functional, neuron as sj_neuron

    from .graph import trace
    from .methods import ACTIVATIONS
    gm = trace(ann)
    acts = [(n, m) for n, m in gm.named_modules() if isinstance(m, tuple(ACTIVATIONS))]
    nodes = [(n, m) for n, m in snn.named_modules() if isinstance(m, sj_neuron.BaseNode)]
    if len(acts) != len(nodes):
        raise ValueError(f"{len(acts)} ANN activations but {len(nodes)} spiking layers: not the same network")
    d: Dict[str, torch.Tensor] = {}
    s: Dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: d.__setitem__(n, a[0].detach().clone())) for n, m in acts]
    hooks += [m.register_forward_pre_hook(lambda m, a, n=n: s.__setitem__(n, a[0].detach().mean(0)))
              for n, m in nodes]
    try:
        gm(x)
        functional.reset_net(snn)
        snn(x.unsqueeze(0).expand(T, *x.shape))
    finally:
        for h in hooks:
            h.remove()
    return {na: (d[na], s[nn_]) for (na, _), (nn_, _) in zip(acts, nodes)}


def _run_hooked(snn: nn.Module, x: torch.Tensor, T: int, hooks: List) -> None:
    """Reset ``snn``, run ``T`` steps of direct input ``x`` in one multi-step call, then remove ``hooks``."""
    from spikingjelly.activation_based import functional
    try:
        functional.reset_net(snn)
        snn(x.unsqueeze(0).expand(T, *x.shape))
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def spike_counts(snn: nn.Module, x: torch.Tensor, T: int) -> Dict[str, Tuple[float, int]]:
    """Per spiking layer: (average spikes per neuron per image over ``T`` steps, neurons per image), counted as
    nonzero node outputs with hooks (Datta Sec. VI-A, Fig. 4a)."""
    from spikingjelly.activation_based import neuron as sj_neuron
    out: Dict[str, Tuple[float, int]] = {}
    nodes = [(n, m) for n, m in snn.named_modules() if isinstance(m, sj_neuron.BaseNode)]

    def hook(m, a, y, n):
        per_image = y[0].numel() // y.shape[1] if y.dim() > 1 else 1
        out[n] = (float((y != 0).sum()) / (y.shape[1] * per_image), per_image)
    _run_hooked(snn, x, T, [m.register_forward_hook(lambda m, a, y, n=n: hook(m, a, y, n)) for n, m in nodes])
    return out


E_MAC, E_AC = 3.2, 0.1  # pJ, 45 nm CMOS at 0.9 V, 32-bit integers (Datta & Beerel Sec. VI-B, after Horowitz 2014)


def _macs(m: nn.Module, out_shape: Tuple[int, ...]) -> int:
    """Multiply-accumulates of one conv/linear layer for one image with output shape ``out_shape`` ([C, ...])."""
    if isinstance(m, nn.Linear):
        return m.in_features * m.out_features
    k = math.prod(m.kernel_size)
    return math.prod(out_shape) * (m.in_channels // m.groups) * k


@torch.no_grad()
def operations(snn: nn.Module, x: torch.Tensor, T: int, e_mac: float = E_MAC, e_ac: float = E_AC) -> List[Dict]:
    """Per conv/linear layer of a converted network, per image: the DNN's MACs and the SNN's operations for ``T`` steps
    of direct input (Datta Sec. VI-B): the first layer gets the analog image, MACs at every step; a later layer does
    one accumulate per incoming spike and synapse, i.e. its MACs times the average number of spikes per input neuron.
    Energies use E_MAC = 3.2 pJ and E_AC = 0.1 pJ by default."""
    rows: List[Dict] = []
    wrapped = [(n, m) for n, m in snn.named_modules()
               if isinstance(getattr(m, "module", None), (nn.Conv1d, nn.Conv2d, nn.Linear))]
    if not wrapped:
        raise ValueError("operations: no multi-step conv/linear layers found (pass a converted SpikingJelly network)")

    def hook(m, a, y, name):
        inp = a[0]
        macs = _macs(m.module, tuple(y.shape[2:]))  # y is [T, B, C, ...]
        first = not rows
        events = T if first else float((inp != 0).float().mean()) * T  # spikes per input neuron over T steps
        rows.append({"layer": name, "dnn_macs": macs, "snn_ops": macs * events, "kind": "MAC" if first else "AC",
                     "spikes_per_input": None if first else events})
    _run_hooked(snn, x, T, [m.register_forward_hook(lambda m, a, y, n=n: hook(m, a, y, n)) for n, m in wrapped])
    for r in rows:
        r["dnn_energy_pj"] = r["dnn_macs"] * e_mac
        r["snn_energy_pj"] = r["snn_ops"] * (e_mac if r["kind"] == "MAC" else e_ac)
    return rows
