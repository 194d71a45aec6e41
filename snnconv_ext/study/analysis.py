"""Where a converted network loses accuracy, layer by layer.

For every spiking layer of a converted (multi-step) network and its ANN activation, on the same images:

* relative error ``||x - s_bar||^2 / ||x||^2`` between the ANN activation ``x`` and the SNN's mean output
  ``s_bar`` (Li et al. 2022, Figs. 2 and 5), per layer and per channel;
* TTRBR's split of the error at the neuron (Meng et al. 2022, Eq. 10): with ``x_bar`` the neuron's mean input
  current, ``y'`` its output for the constant current ``x_bar`` (Eqs. 11/13) and ``y`` its actual mean output,
  quantization error ``e_q = clamp(x_bar, 0, theta) - y'`` and deviation error ``e_d = y' - y``;
* the sample variance over time of each neuron's input current (TTRBR Fig. 7), median and maximum.

Works on every network our converter made (any backend): its spiking layers are found with
``nodes.spiking_modules`` and their knobs read with ``nodes.params_of``.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import torch
import torch.nn as nn

from ..conversion import graph
from ..conversion.calibrate import ann_activations, quantize
from ..core.activations import ACTIVATIONS
from ..core.checks import as_loader, iter_inputs
from ..core.neuron import NeuronParams, value
from ..core.nodes import params_of, spiking_modules
from ..core.simulation import simulate_net

__all__ = ["layer_report", "spiking_layers", "plot_layers"]


def _params_of(mod: nn.Module, like: torch.Tensor) -> Optional[NeuronParams]:
    """``nodes.params_of``, or None for a node that carries no snnconv parameters."""
    try:
        return params_of(mod, like)
    except TypeError:
        return None


def spiking_layers(snn: nn.Module, names: Iterable[str]) -> Dict[str, nn.Module]:
    """The spiking layers of ``snn`` (``nodes.spiking_modules``) at the ANN activations' names; refuses names it
    cannot find."""
    found = spiking_modules(snn)
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"the converted network has no spiking layer {missing[0]!r}: was it converted from this ANN?")
    return {n: found[n] for n in names}


def _valued(mod: nn.Module, s: torch.Tensor) -> torch.Tensor:
    return value(s, params_of(mod, s))


class _Acc:
    """Streaming sums over time of one layer's input current and output, per element of the batch."""

    def __init__(self) -> None:
        self.z = self.z2 = self.s = None
        self.steps = 0

    def add(self, z: torch.Tensor, s: torch.Tensor) -> None:
        z = z.detach().float()
        zs, z2s, ss = z.sum(0), z.pow(2).sum(0), s.detach().float().sum(0)
        if self.z is None:
            self.z, self.z2, self.s = zs, z2s, ss
        else:
            self.z += zs
            self.z2 += z2s
            self.s += ss
        self.steps += z.shape[0]


@torch.no_grad()
def layer_report(ann: nn.Module, snn: nn.Module, data, T: int, max_images: int = 256, batch_size: int = 64,
                 chunk: int = 8, per_channel: bool = False) -> List[Dict]:
    """One row per spiking layer: ``rel_error``, ``quantization_error`` and ``deviation_error`` (mean absolute
    values), ``input_var_median``/``input_var_max``, ``input_var_theta2_median`` (variance / theta^2) and, with
    ``per_channel``, ``rel_error_channels``.

    ``ann`` is the source ANN (eval mode); ``snn`` its conversion; ``data`` yields images or (images, labels).
    """
    gm = graph.fold_bn(graph.trace(ann))
    acts = [n.target for n in gm.graph.nodes if n.op == "call_module"
            and isinstance(gm.get_submodule(n.target), tuple(ACTIVATIONS))]
    if not acts:
        raise ValueError(f"{type(ann).__name__} has no activation the converter knows")
    layers = spiking_layers(snn, acts)
    device = next(snn.parameters(), torch.zeros(())).device
    sums = {t: dict(err=0.0, norm=0.0, eq=0.0, ed=0.0, n=0, var=[], vmax=0.0, cerr=0.0, cnorm=0.0) for t in acts}
    seen = 0
    for x in iter_inputs(as_loader(data, batch_size), device, "analysis data"):
        x = x[: max_images - seen]
        ann_out, _ = ann_activations(gm, acts, x)
        accs = {t: _Acc() for t in acts}
        # what each layer hands on: its binary spikes times their value (amplitude * theta)
        hooks = [layers[t].register_forward_hook(lambda m, i, o, t=t: accs[t].add(i[0], _valued(m, o)))
                 for t in acts]
        for _ in simulate_net(snn, x, T, chunk):
            pass
        for h in hooks:
            h.remove()
        for t in acts:
            a, s = accs[t], sums[t]
            if a.steps != T:
                raise RuntimeError(f"layer {t!r} ran {a.steps} steps, expected {T}")
            xa = ann_out[t].float()
            zbar, sbar = a.z / T, a.s / T
            p = _params_of(layers[t], zbar)
            err = (xa - sbar).pow(2)
            s["err"] += float(err.sum())
            s["norm"] += float(xa.pow(2).sum())
            if per_channel:
                dims = [0] + list(range(2, xa.dim()))
                s["cerr"] = s["cerr"] + err.sum(dims)
                s["cnorm"] = s["cnorm"] + xa.pow(2).sum(dims)
            if p is not None and p.theta_neg is None:
                theta = torch.as_tensor(p.theta, device=zbar.device)
                y_const = quantize(zbar, p, T)  # constant-current output (Eq. 11, or Eq. 13 at fire_at = 1/2)
                ideal = torch.minimum(zbar.clamp_min(0), theta.expand_as(zbar))  # clamp(x, 0, theta), Eq. 9
                s["eq"] += float((ideal - y_const).abs().sum())  # quantization error (Eq. 10)
                s["ed"] += float((y_const - sbar).abs().sum())  # deviation error (Eq. 10)
            var = (a.z2 / T - zbar.pow(2)).clamp_min(0) * T / max(T - 1, 1)  # sample variance over time
            s["vmax"] = max(s["vmax"], float(var.max()))
            flat = var.flatten()
            gen = torch.Generator().manual_seed(len(s["var"]))  # a reproducible subsample of the variances
            pick = torch.randperm(flat.numel(), generator=gen)[:50000]
            s["var"].append(flat.cpu()[pick])
            if p is not None:  # the same variances in units of each neuron's theta^2 (layers comparable)
                th2 = torch.as_tensor(p.theta, dtype=var.dtype, device=var.device).expand_as(var).pow(2)
                s.setdefault("var_rel", []).append((var / th2).flatten().cpu()[pick])
            s["n"] += xa.numel()
        seen += x.shape[0]
        if seen >= max_images:
            break
    rows = []
    for i, t in enumerate(acts):
        s = sums[t]
        row = {"layer": t, "index": i, "rel_error": s["err"] / max(s["norm"], 1e-12),
               "quantization_error": s["eq"] / max(s["n"], 1), "deviation_error": s["ed"] / max(s["n"], 1),
               "input_var_median": float(torch.cat(s["var"]).median()), "input_var_max": s["vmax"]}
        if "var_rel" in s:  # TTRBR Fig. 7 in units of theta^2: median over neurons of var / theta^2
            row["input_var_theta2_median"] = float(torch.cat(s["var_rel"]).median())
        if per_channel:
            row["rel_error_channels"] = (s["cerr"] / s["cnorm"].clamp_min(1e-12)).tolist()
        rows.append(row)
    return rows


def plot_layers(reports: Dict[str, List[Dict]], key: str = "rel_error", ax=None, log: bool = True):
    """Plot ``key`` against layer index for several labelled reports (e.g. before / after calibration)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for label, rows in reports.items():
        ax.plot([r["index"] for r in rows], [r[key] for r in rows], marker="o", label=label)
    ax.set_xlabel("spiking layer")
    ax.set_ylabel(key.replace("_", " "))
    if log:
        ax.set_yscale("log")
    ax.legend()
    return ax
