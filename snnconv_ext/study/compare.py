"""Reading ``snnconv bench`` rows side by side: lossless latency, the accuracy-energy Pareto front, best per T, and
whether a difference of two accuracies is more than noise.

The comparison chapter uses these on bench's rows (dicts with ``model``, ``method``, ``T``,
``accuracy``, ``ann_accuracy``, ``energy_uj``), so what "lossless" or "best" means is defined once.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = ["lossless_latency", "pareto_front", "best_per_T", "curves", "diff_se", "paired_se", "accuracy",
           "paired_diff", "verdict"]


def lossless_latency(acc: Mapping[int, float], ann: float, tol: float = 1.0) -> Optional[int]:
    """The smallest measured T from which the SNN *stays* within ``tol`` pp of the ANN at every larger measured T
    (stReLU's lossless latency, Table 3, made robust to a curve that dips again); None if it never does."""
    if not acc:
        raise ValueError("lossless_latency: no accuracies given")
    latency = None
    for t in sorted(acc, reverse=True):
        if acc[t] < ann - tol:
            break
        latency = t
    return latency


def pareto_front(rows: Iterable[Mapping], x: str = "energy_uj", y: str = "accuracy") -> List[Mapping]:
    """The rows no other row beats on both axes (lower ``x`` and higher ``y``, one of them strictly), sorted by
    ``x``: the best accuracy for each energy budget."""
    pts = sorted(rows, key=lambda r: (r[x], -r[y]))
    front, best = [], float("-inf")
    for r in pts:
        if r[y] > best:
            front.append(r)
            best = r[y]
    return front


def best_per_T(rows: Iterable[Mapping], exclude: Sequence[str] = ()) -> Dict[int, Mapping]:
    """For every T, the row with the highest accuracy (ties: the first row given), skipping methods whose name
    starts with one of ``exclude`` (e.g. ``("sj-",)`` for our best)."""
    best: Dict[int, Mapping] = {}
    for r in rows:
        if any(r["method"].startswith(p) for p in exclude):
            continue
        if r["T"] not in best or r["accuracy"] > best[r["T"]]["accuracy"]:
            best[r["T"]] = r
    return best


def curves(rows: Iterable[Mapping]) -> Dict[Tuple[str, str], Dict[int, float]]:
    """``{(model, method): {T: accuracy}}`` from bench rows."""
    out: Dict[Tuple[str, str], Dict[int, float]] = {}
    for r in rows:
        out.setdefault((r["model"], r["method"]), {})[int(r["T"])] = float(r["accuracy"])
    return out


def diff_se(a: float, b: float, n: int) -> float:
    """Standard error (pp) of the difference of two accuracies ``a`` and ``b`` (%) measured on ``n`` images each,
    as independent binomial proportions (an upper bound when both rows saw the same images and mostly agree)."""
    if n < 1:
        raise ValueError(f"diff_se: need n >= 1 images, got {n}")
    pa, pb = a / 100, b / 100
    return 100 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n)


def paired_se(a: torch.Tensor, b: torch.Tensor) -> float:
    """Standard error (pp) of the difference of two accuracies measured on the same images, from per-image
    results ``a`` and ``b`` (bools, as ``evaluate.hits`` gives): smaller than ``diff_se`` when the two agree."""
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"paired_se: need two per-image results of one shape, >= 2 images; got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    d = a.float() - b.float()
    return 100 * d.std().item() / d.numel() ** 0.5


def accuracy(hits: torch.Tensor) -> float:
    """Accuracy (%) from per-image results (bools, as ``simulation.hits`` gives)."""
    if hits.numel() == 0:
        raise ValueError("accuracy: no images")
    return 100.0 * hits.float().mean().item()


def paired_diff(a: torch.Tensor, b: torch.Tensor) -> Tuple[float, float]:
    """``(accuracy(a) - accuracy(b), paired_se(a, b))`` in pp: a difference measured on the same images and its
    standard error."""
    return accuracy(a) - accuracy(b), paired_se(a, b)


def verdict(a: float, b: float, n: int, k: float = 2.0) -> str:
    """"holds" if ``a`` exceeds ``b`` by more than ``k`` standard errors of the difference (``diff_se``),
    "reversed" if it falls below by as much, else "within noise": how the chapters class a paper's "a beats b"."""
    d, m = a - b, k * diff_se(a, b, n)
    return "holds" if d > m else "reversed" if d < -m else "within noise"
