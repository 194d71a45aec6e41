"""The front door :func:`convert` (one named method, or ``method="auto"``) and ``auto`` itself: pick the registered
method that converts a model best for a given T.

The calibration images are split once, deterministically (seeded permutation), into a conversion part (thresholds,
lambda search, calibration passes) and a held-out part used only to score each candidate by the SNN's accuracy at
T (ties: fewer spikes per image, then the cheaper method). Candidates are the registered methods whose ANN
activations match the model, cheap first; once ``budget_s`` is spent the remaining ones are skipped and reported.
No test data is involved: everything comes from ``calib_data``.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ..core.activations import ACTIVATIONS, ClippedReLU
from ..core.checks import ConversionError, as_loader, check_eval, check_T
from ..core.nodes import spike_hooks
from ..core.simulation import evaluate
from .backends import convert_method, plugin
from .calibrate import collect
from .registry import Method, get as get_method, methods as method_names

__all__ = ["convert", "convert_auto", "candidates", "applies_to", "cost_rank", "split", "ABLATIONS", "OPTIONS",
           "format_report"]

#: registry entries that reproduce a paper's ablation, not methods of their own: not tried unless asked for
ABLATIONS = ("ttrbr-plain", "lcp-layer", "acp-layer", "max+lcp", "max+acp")
# keyword options of convert_auto itself (the rest go to every candidate); `snnconv bench` keeps them from other rows
OPTIONS = ("candidates", "budget_s", "heldout", "split_seed", "batch_size", "log")
_GRANULARITY = {"layer": 0, "channel": 1, "neuron": 2}


def applies_to(method: Union[str, Method], model: nn.Module) -> str:
    """Why ``method`` cannot convert ``model``'s activations ('' if it can); the check ``snnconv bench`` makes."""
    m = get_method(method)
    # ReLU6 / Hardtanh(0, b) reach the methods as ClippedReLU (graph normalisation, normalize.py)
    kinds = {ClippedReLU if isinstance(mod, nn.Hardtanh) else type(mod) for mod in model.modules()}
    acts = {k for k in kinds if k in ACTIVATIONS}
    wanted = set(m.activations)
    return "" if acts <= wanted else (f"method converts {sorted(t.__name__ for t in wanted)}, the model uses "
                                      f"{sorted(t.__name__ for t in acts)}")


def cost_rank(method: Union[str, Method]) -> int:
    """Rough conversion cost: 0 plain statistics, 1 threshold search (MMSE, Datta), 2 lambda search (21 simulations),
    3 bias calibration (LCP), 4 weight calibration by SGD (ACP)."""
    m = get_method(method)
    if {"weights", "readout"} & set(m.calibration):
        return 4
    if m.calibration:
        return 3
    if m.scale == "search":
        return 2
    return 1 if m.threshold in ("mmse", "datta") else 0


def candidates(model: nn.Module, names: Optional[Sequence[str]] = None) -> Tuple[List[str], List[Dict]]:
    """Candidate methods for ``model``, cheap first, and the registered ones that do not apply (with why).

    ``names=None``: every registered method except :data:`ABLATIONS`; explicit ``names`` must all be registered and
    applicable (``ValueError`` otherwise) and keep the cost order."""
    if names is not None:
        names = list(names)
        if not names:
            raise ValueError("candidates is empty: give at least one method name or None for all")
        for n in names:
            if n == "auto" or n not in method_names():
                raise ValueError(f"auto: unknown candidate method {n!r}; registered methods: {method_names()}")
            why = applies_to(n, model)
            if why:
                raise ValueError(f"auto: candidate {n!r} does not apply to this model: {why}")
        pool, not_applicable = list(dict.fromkeys(names)), []
    else:
        pool, not_applicable = [], []
        for n in method_names():
            if n in ABLATIONS:
                continue
            why = applies_to(n, model)
            if why:
                not_applicable.append({"method": n, "reason": why})
            else:
                pool.append(n)

    def key(n: str):
        m = get_method(n)
        return cost_rank(m), _GRANULARITY.get(m.threshold_options.get("granularity", "layer"), 0), n
    return sorted(pool, key=key), not_applicable


def split(data: Iterable, heldout: Optional[Union[int, float]] = None, seed: int = 0
          ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """All images (and labels, or None) of ``data`` plus a deterministic split of their indices:
    ``(x, y, conversion_idx, heldout_idx)``. ``heldout``: a count, a fraction in (0, 1), or None for
    min(512, 25%)."""
    x, y = collect(as_loader(data), sys.maxsize, torch.device("cpu"))
    n = x.shape[0]
    if heldout is None:
        k = min(512, n // 4)
    elif isinstance(heldout, float) and 0.0 < heldout < 1.0:
        k = int(round(heldout * n))
    elif isinstance(heldout, int) and not isinstance(heldout, bool) and heldout >= 1:
        k = heldout
    else:
        raise ValueError(f"auto: heldout={heldout!r} must be an image count >= 1, a fraction in (0, 1) or None")
    if not 1 <= k <= n - 2:
        raise ValueError(f"auto: calibration data holds {n} images; holding out {k} leaves {n - k} for conversion "
                         "(need at least 1 held out and 2 to convert; give a few hundred images)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return x, y, perm[k:].sort().values, perm[:k].sort().values


def convert_auto(model: nn.Module, calib_data: Iterable, T: Optional[int] = None, backend: str = "spikingjelly",
                 candidates: Optional[Sequence[str]] = None, budget_s: float = 120.0,
                 heldout: Optional[Union[int, float]] = None, split_seed: int = 0, batch_size: int = 256,
                 device: Optional[Union[str, torch.device]] = None, progress: bool = True,
                 log: Callable[[str], None] = print, **options) -> nn.Module:
    """Convert ``model`` with every applicable candidate (cheap first, within ``budget_s`` seconds), score each on
    held-out calibration images at ``T``, return the best network with the report in ``net.meta["snnconv_auto"]``.

    ``options`` go to every candidate's conversion (method fields such as ``samples=``, backend options such as
    ``native=``). The budget is checked before each candidate starts; the first always runs, and a started one
    finishes. Without labels in ``calib_data`` the ANN's predictions are the held-out labels.
    """
    if T is None:
        raise ValueError("method 'auto' picks the best method for a number of time steps: pass T=... (e.g. T=4)")
    check_T(T, "auto: T")
    plugin(backend)  # an unknown backend is refused before any work
    if calib_data is None:
        raise ValueError("convert() needs calib_data: a DataLoader or Dataset of calibration images")
    if not (isinstance(budget_s, (int, float)) and not isinstance(budget_s, bool) and budget_s >= 0):
        raise ValueError(f"auto: budget_s={budget_s!r} must be a number of seconds >= 0")
    check_eval(model)  # the held-out labels may come from the ANN: a BN layer in training mode would update its stats
    names, not_applicable = _candidates(model, candidates)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    start = time.perf_counter()

    x, y, conv_idx, held_idx = split(calib_data, heldout, split_seed)
    labels = "given"
    if y is None:
        with torch.no_grad():
            y = torch.cat([model(x[i:i + batch_size].to(dev)).argmax(-1).cpu() for i in range(0, len(x), batch_size)])
        labels = "ann predictions"
    conv_data = DataLoader(TensorDataset(x[conv_idx], y[conv_idx]), batch_size=batch_size, shuffle=False)
    held = TensorDataset(x[held_idx], y[held_idx])
    extra = {"device": dev} if backend == "spikingjelly" else {}

    tried, skipped, best, best_key, chosen = [], [], None, None, ""
    for name in tqdm(names, desc=f"auto T={T}", disable=not progress, leave=False):
        spent = time.perf_counter() - start
        if tried and spent >= budget_s:
            skipped.append({"method": name, "reason": f"time budget spent ({spent:.1f} s of {budget_s:g} s)"})
            continue
        t0 = time.perf_counter()
        tuned = {"T": int(T)} if get_method(name).T is not None else {}
        try:
            snn = convert_method(model, name, conv_data, backend=backend, progress=False, **extra, **tuned,
                                 **options).to(dev)
        except ConversionError as exc:
            skipped.append({"method": name, "reason": f"conversion refused: {exc}"})
            continue
        acc, spikes = _score(snn, held, int(T), dev)
        tried.append({"method": name, "heldout_accuracy": round(acc, 4), "spikes_per_image": round(spikes, 2),
                      "seconds": round(time.perf_counter() - t0, 2)})
        key = (-acc, spikes, cost_rank(name), len(tried))  # best accuracy, then fewer spikes, then cheaper/earlier
        if best_key is None or key < best_key:
            best, best_key, chosen = snn, key, name
        del snn
    if best is None:
        raise ConversionError(f"auto: no candidate could convert the model: {skipped}")
    report = {"T": int(T), "chosen": chosen, "tried": tried, "skipped": skipped,
              "not_applicable": not_applicable, "budget_s": float(budget_s),
              "seconds": round(time.perf_counter() - start, 2), "labels": labels,
              "conversion_images": len(conv_idx), "heldout_images": len(held_idx),
              "heldout_indices": held_idx.tolist(), "split_seed": split_seed}
    if not hasattr(best, "meta") or not isinstance(best.meta, dict):
        best.meta = {}
    best.meta["snnconv_auto"] = report
    if progress:
        log(format_report(report))
    return best


def _score(snn: nn.Module, held: TensorDataset, T: int, device: torch.device) -> Tuple[float, float]:
    """Held-out accuracy (%) at ``T`` and spikes per image (every nonzero node output), from one simulation."""
    counts = []
    with spike_hooks(snn, lambda target, events: counts.append(events.sum(dtype=torch.float64))):
        acc = evaluate(snn, held, [T], batch_size=128, device=device, progress=False)[T]
    return acc, float(sum(counts)) / len(held)


def convert(model: nn.Module, method: str = "percentile", calib_data: Optional[Iterable] = None,
            backend: str = "spikingjelly", **options) -> nn.Module:
    """Convert ``model`` (eval mode) with a registered ``method`` using ``calib_data`` to set thresholds.

    ``options`` override the method's fields (``p=99.99``, ``granularity="channel"``, ``fire_at=0.5`` ...)
    or are backend options (``native=False``, ``max_batches=4``, ``progress=False``). ``method="auto"`` (needs
    ``T=``) picks the best applicable method on held-out calibration images (:func:`convert_auto`).
    ``snn.meta["snnconv_model"]`` names the zoo model converted (``model.zoo_name``; None for others).
    """
    plugin(backend)  # an unknown backend is refused before any work
    if method == "auto":
        snn = convert_auto(model, calib_data, backend=backend, **options)
    else:
        snn = convert_method(model, method, calib_data, backend=backend, **options)
    snn.meta["snnconv_model"] = getattr(model, "zoo_name", None)
    return snn


def _candidates(model: nn.Module, names: Optional[Sequence[str]]) -> Tuple[List[str], List[Dict]]:
    if isinstance(names, str):  # "percentile/dni" (bench's --method-options splits on commas) or "percentile,dni"
        names = [n.strip() for n in names.replace("/", ",").split(",") if n.strip()]
    return candidates(model, names)


def format_report(report: Dict) -> str:
    """A short table of what ``method="auto"`` tried (held-out accuracy, spikes, seconds), chose and skipped."""
    lines = [f"auto, T={report['T']}: {report['heldout_images']} held-out / {report['conversion_images']} conversion "
             f"images (labels: {report['labels']}), {report['seconds']:.1f} s of a {report['budget_s']:g} s budget",
             f"  {'method':<20}{'held-out acc %':>15}{'spikes/img':>12}{'seconds':>9}"]
    for r in report["tried"]:
        mark = "*" if r["method"] == report["chosen"] else " "
        lines.append(f"{mark} {r['method']:<20}{r['heldout_accuracy']:>15.2f}{r['spikes_per_image']:>12.0f}"
                     f"{r['seconds']:>9.1f}")
    if report["skipped"]:
        lines.append("  skipped: " + "; ".join(f"{s['method']} ({s['reason']})" for s in report["skipped"]))
    lines.append(f"  chosen: {report['chosen']}")
    return "\n".join(lines)
