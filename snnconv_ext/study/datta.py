"""Datta & Beerel 2022, "Can deep neural networks be converted to ultra low-latency SNNs?": the paper's analysis.

* :func:`k_mu`, :func:`h_T_mu`, :func:`delta` estimate Eqs. 6-7's K(mu), h(T, mu) and Delta from sampled DNN and
  SNN pre-activations (:func:`preactivations`), :func:`layer_percentiles` gives Algorithm 1's input per layer;
* :func:`spike_counts` and :func:`operations`: spikes per neuron (Fig. 4a) and the operation counts of Sec. VI-B;
* :func:`limit_ann`: the ANN a converted network tends to as T grows, beta*clip(x, 0, alpha*mu) per layer.

Algorithm 1 itself (the alpha/beta search, the ``datta`` threshold strategy) is
:mod:`snnconv_ext.conversion.alphabeta`; its functions are re-exported here under the paper's name.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from ..conversion.alphabeta import (BETAS, LOSSES, DattaThreshold, compute_loss, find_scaling_factors, loss_table,
                                    percentiles, snn_activation, zero_loss_beta)
from ..conversion.graph import trace
from ..core.activations import ACTIVATIONS
from ..core.nodes import spiking_modules
from ..core.simulation import run_window

__all__ = ["percentiles", "compute_loss", "loss_table", "find_scaling_factors", "zero_loss_beta", "snn_activation",
           "DattaThreshold", "k_mu", "h_T_mu", "delta", "layer_percentiles", "preactivations", "spike_counts",
           "operations", "limit_ann", "ScaledClip", "BETAS", "LOSSES", "E_MAC", "E_AC"]


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
    gm = trace(ann)
    acts = [(n, m) for n, m in gm.named_modules() if isinstance(m, tuple(ACTIVATIONS))]
    nodes = list(spiking_modules(snn).items())
    if len(acts) != len(nodes):
        raise ValueError(f"{len(acts)} ANN activations but {len(nodes)} spiking layers: not the same network")
    d: Dict[str, torch.Tensor] = {}
    s: Dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: d.__setitem__(n, a[0].detach().clone())) for n, m in acts]
    hooks += [m.register_forward_pre_hook(lambda m, a, n=n: s.__setitem__(n, a[0].detach().mean(0)))
              for n, m in nodes]
    try:
        gm(x)
        run_window(snn, x, T)
    finally:
        for h in hooks:
            h.remove()
    return {na: (d[na], s[nn_]) for (na, _), (nn_, _) in zip(acts, nodes)}


def _run_hooked(snn: nn.Module, x: torch.Tensor, T: int, hooks: List) -> None:
    """Run ``T`` steps of direct input ``x`` from a fresh state, then remove ``hooks``."""
    try:
        run_window(snn, x, T)
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def spike_counts(snn: nn.Module, x: torch.Tensor, T: int) -> Dict[str, Tuple[float, int]]:
    """Per spiking layer: (average spikes per neuron per image over ``T`` steps, neurons per image), counted as
    nonzero node outputs with hooks (Datta Sec. VI-A, Fig. 4a)."""
    out: Dict[str, Tuple[float, int]] = {}
    nodes = list(spiking_modules(snn).items())

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


# --- the T -> infinity limit of a converted network ---------------------------------------------------------------

class ScaledClip(nn.Module):
    """beta * clip(x, 0, top): the mean output of an IF neuron with threshold ``top`` = alpha*mu whose spikes are
    worth beta*top, as T grows (Eq. 5 with V^th = alpha*mu, steps of alpha*mu/T, and Eq. 8's beta)."""

    def __init__(self, top: float, beta: float) -> None:
        super().__init__()
        if not (top > 0 and beta > 0):
            raise ValueError(f"ScaledClip: top and beta must be > 0, got top={top}, beta={beta}")
        self.top, self.beta = float(top), float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta * x.clamp(0.0, self.top)

    def extra_repr(self) -> str:
        return f"top={self.top:.4g}, beta={self.beta:.4g}"


def limit_ann(ann: nn.Module, found: Dict[str, Dict[str, float]]) -> nn.Module:
    """The traced ``ann`` with each activation named in ``found`` (a converted network's
    ``meta["snnconv_thresholds"]``: layer -> {"mu", "alpha", "beta"}) replaced by beta*clip(x, 0, alpha*mu), the
    function its SNN computes as T grows. With alpha = beta = 1 on a threshold-ReLU net this is the ANN itself;
    any other pair is a different network, and a converted SNN can at best approach its accuracy."""
    gm = trace(ann)
    acts = {n for n, m in gm.named_modules() if isinstance(m, tuple(ACTIVATIONS))}
    unknown = sorted(set(found) - acts)
    if unknown:
        raise ValueError(f"limit_ann: layers {unknown} are not activations of this network (it has {sorted(acts)})")
    for name, r in found.items():
        gm.add_submodule(name, ScaledClip(r["alpha"] * r["mu"], r["beta"]))
    return gm
