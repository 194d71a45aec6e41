"""Reading ``snnconv bench`` rows side by side: lossless latency, the accuracy-energy Pareto front, best per T.

The comparison chapter uses these on bench's rows (dicts with ``model``, ``method``, ``T``,
``accuracy``, ``ann_accuracy``, ``energy_uj``), so what "lossless" or "best" means is defined once.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

__all__ = ["lossless_latency", "pareto_front", "best_per_T", "curves"]


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
