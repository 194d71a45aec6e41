"""``make demo`` / ``snnconv demo``: each paper's best method beside SpikingJelly's two strongest recipes.

On the zoo Net4 (every Net4 variant a paper trains, full test set) and the BN VGG, at T = 1, 2, 4, 8, 16: one
``bench.run_bench`` per zoo model (each model loaded once), then a table of accuracy and energy per image with the
best row of each net marked per T, ``results.csv`` (bench's columns) and ``demo.png`` (accuracy vs T; accuracy vs
energy). A zoo checkpoint that is not there yet is skipped with a log line naming the command that trains it.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..assets import data, zoo
from ..conversion.registry import get, methods
from ..study.energy import ann_macs
from .baselines import SJ_RECIPES
from .bench import run_bench, write_outputs

__all__ = ["Part", "PLAN", "TIMESTEPS", "SJ_ROWS", "missing", "run_demo", "best_rows", "margins", "format_demo",
           "format_headline", "write_figure", "add_arguments", "run", "COMMAND"]

SJ_ROWS = ("sj-best", "sj-ltb")  # SpikingJelly's two strongest recipes on our nets: the bar
COMMAND = "snnconv demo --out bench-out --jobs 2"  # what `make demo` runs (Makefile)
SJ_LABELS = {"sj-best": "SpikingJelly RateCodingRecipe (99.9 %, channel-wise, half threshold)",
             "sj-ltb": "SpikingJelly LocalThresholdBalancingRecipe (Bu et al. 2025)"}
TIMESTEPS = (1, 2, 4, 8, 16)   # the few-step regime the papers target; T = 32 doubled the run (book/performance.md)


@dataclass(frozen=True)
class Part:
    """One zoo model of the demo: the methods run on it, the net (table section) its rows are compared within,
    the test images (None: all) and options for our methods (``bench --method-options``)."""

    net: str
    model: str
    methods: Tuple[str, ...]
    n_test: Optional[int] = None
    options: Tuple[Tuple[str, object], ...] = ()


# Best method of each paper (README, Methods): DNISNM dni+snm, TTRBR ttrbr, Li et al. lcp+acp (Algorithm 2), stReLU,
# Datta & Beerel (Algorithm 1 with the absolute loss, datta-abs: the printed signed loss, datta, loses accuracy as T
# grows, book/datta.ipynb) and QCFS on the Net4 they train. To keep the demo within 10 min on 2 cores (README): TTRBR's lambda
# search (21 simulations per T) scores on 128 calibration images instead of 256; the BN net runs on the first 1000
# test images with 128 calibration samples for ACP's weight pass (paper budget 1024), TTRBR left out there.
PLAN: Tuple[Part, ...] = (
    Part("Net4", "fmnist-net4", ("dni+snm",)),
    Part("Net4", "fmnist-net4", ("ttrbr",), options=(("samples", 128),)),
    Part("Net4", "fmnist-net4", ("lcp+acp",) + SJ_ROWS),
    Part("Net4", "fmnist-net4-strelu", ("strelu",)),
    Part("Net4", "fmnist-net4-datta", ("datta-abs",)),
    Part("Net4", "fmnist-net4-qcfs4", ("qcfs",)),
    Part("VGG-BN", "fmnist-vgg-bn", ("dni+snm",), n_test=1000),
    Part("VGG-BN", "fmnist-vgg-bn", ("lcp+acp",), n_test=1000, options=(("samples", 128),)),
    Part("VGG-BN", "fmnist-vgg-bn", SJ_ROWS, n_test=1000),
    Part("VGG-BN", "fmnist-vgg-bn-qcfs4", ("qcfs",), n_test=1000),
)


def missing(model: str) -> str:
    """Why zoo ``model`` cannot be loaded yet ('' if its checkpoint is there)."""
    if model in zoo.read_manifest() and zoo.path(model).is_file():
        return ""
    return f"checkpoint not in the zoo yet; create it with: {zoo.train_command(model)}"


def _bench_one(model: str, method: str, timesteps: Sequence[int], n_test: Optional[int], n_calib: int,
               options: Dict, device: Optional[str], threads: int) -> Tuple[List[Dict], List[str], float]:
    """Worker of a parallel demo: one (model, method) bench in its own process with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    lines: List[str] = []
    t0 = time.perf_counter()
    rows = run_bench(model, [method], timesteps, None, n_test, n_calib, progress=False, log=lines.append,
                     options=options, device=device, table=False)
    return rows, lines, time.perf_counter() - t0


def _cost(part: Part, method: str, timesteps: Sequence[int], macs: float) -> float:
    """A rough relative cost of one (model, method) bench, to start the longest first (only the order uses it):
    the ANN's MACs times the image-steps simulated, with a tuned method's per-T calibration on 1024 images."""
    tuned = method not in SJ_RECIPES and get(method).T is not None
    steps = sum(timesteps) if tuned else max(timesteps)
    work = (part.n_test or 10_000) * steps + (4 * 1024 * sum(timesteps) if tuned else 0)
    return macs * work * (2.0 if "snm" in method else 1.0)


def _macs(model: str) -> float:
    """The ANN's MACs per image of zoo ``model``."""
    shape = tuple(getattr(data, zoo.ENTRIES[model].dataset)("test")[0][0].shape)
    return float(sum(ann_macs(zoo.load(model), shape).values()))


def run_demo(out: Optional[Path], plan: Sequence[Part] = PLAN, timesteps: Sequence[int] = TIMESTEPS,
             n_calib: int = 1024, progress: bool = True, log: Callable[[str], None] = print,
             device: Optional[str] = None, jobs: int = 1) -> List[Dict]:
    """Run every part of ``plan`` (skipping missing checkpoints, logged), log the marked table, write
    ``results.csv``, ``accuracy_vs_T.png`` and ``demo.png`` to ``out``; return bench's rows.

    ``jobs > 1`` runs the (model, method) benches in that many processes, longest first, each with
    ``cores // jobs`` threads: on a small CPU, single-threaded processes side by side finish sooner than one
    process using every core (neuron updates are elementwise and scale poorly with threads). Same rows."""
    t0 = time.perf_counter()
    parts = []
    for part in plan:
        why = missing(part.model)
        if why:
            log(f"skipping {part.model} ({', '.join(part.methods)}): {why}")
        else:
            parts.append(part)
    rows: List[Dict] = []
    if jobs <= 1:
        for part in parts:
            rows += run_bench(part.model, part.methods, timesteps, None, part.n_test, n_calib, progress=progress,
                              log=log, options=dict(part.options), device=device, table=False)
    else:
        rows = _run_parallel(parts, timesteps, n_calib, progress, log, device, jobs)
    if not rows:
        raise SystemExit("demo: no zoo model of the plan could be loaded: nothing to report")
    net_of = {p.model: p.net for p in plan}
    images = {p.model: _test_images(p) for p in plan if any(r["model"] == p.model for r in rows)}
    log(format_demo(rows, net_of, images))
    minutes = (time.perf_counter() - t0) / 60
    if out is not None:
        write_outputs(rows, Path(out))
        write_figure(rows, Path(out) / "demo.png", net_of)
        (Path(out) / "headline.md").write_text(format_headline(rows, net_of, images, minutes, jobs))
        log(f"wrote {Path(out) / 'results.csv'}, {Path(out) / 'demo.png'}, {Path(out) / 'headline.md'} and "
            f"{Path(out) / 'accuracy_vs_T.png'}")
    log(f"demo: {minutes:.1f} min")
    return rows


def _run_parallel(parts: Sequence[Part], timesteps: Sequence[int], n_calib: int, progress: bool,
                  log: Callable[[str], None], device: Optional[str], jobs: int) -> List[Dict]:
    """The benches of ``parts`` in ``jobs`` spawned processes (fork after OpenMP has started can hang);
    rows come back in plan order."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    tasks = [(i, j, part, method) for i, part in enumerate(parts) for j, method in enumerate(part.methods)]
    macs = {part.model: _macs(part.model) for part in parts}
    tasks.sort(key=lambda t: -_cost(t[2], t[3], timesteps, macs[t[2].model]))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    log(f"demo: {len(tasks)} benches in {jobs} processes, {threads} thread(s) each")
    done: Dict[Tuple[int, int], List[Dict]] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_bench_one, part.model, method, tuple(timesteps), part.n_test, n_calib,
                               dict(part.options), device, threads): (i, j) for i, j, part, method in tasks}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="demo", disable=not progress):
            rows, lines, secs = fut.result()
            done[futures[fut]] = rows
            for line in lines:
                log(line)
            i, j = futures[fut]
            log(f"demo: {parts[i].model} {parts[i].methods[j]} took {secs:.0f} s")
    return [r for key in sorted(done) for r in done[key]]


def _test_images(part: Part) -> str:

    n = len(getattr(data, zoo.ENTRIES[part.model].dataset)("test"))
    return f"the first {part.n_test} of {n} test images" if part.n_test and part.n_test < n else f"all {n} test images"


def _net(net_of: Optional[Dict[str, str]]) -> Callable[[Dict], str]:
    return (lambda r: net_of.get(r["model"], r["model"])) if net_of else (lambda r: r["relu_ann"])


def best_rows(rows: Sequence[Dict], net_of: Optional[Dict[str, str]] = None) -> Set[Tuple[str, str, int]]:
    """``(model, method, T)`` of the most accurate rows of each net at each T (all of them on a tie). Nets:
    ``net_of[model]``, or without it the ReLU ANN each row's model started from."""
    net = _net(net_of)
    top: Dict[Tuple[str, int], float] = {}
    for r in rows:
        k = (net(r), r["T"])
        top[k] = max(top.get(k, float("-inf")), r["accuracy"])
    return {(r["model"], r["method"], r["T"]) for r in rows if r["accuracy"] == top[(net(r), r["T"])]}


def margins(rows: Sequence[Dict], net_of: Optional[Dict[str, str]] = None) -> Dict[str, Dict[int, float]]:
    """Per net and T: best accuracy of our rows minus the best SpikingJelly row (nets holding both kinds)."""
    net = _net(net_of)
    best: Dict[Tuple[str, bool, int], float] = {}
    for r in rows:
        k = (net(r), r["method"] in SJ_RECIPES, r["T"])
        best[k] = max(best.get(k, float("-inf")), r["accuracy"])
    out: Dict[str, Dict[int, float]] = {}
    for (n, sj, t), a in best.items():
        if not sj and (n, True, t) in best:
            out.setdefault(n, {})[t] = a - best[(n, True, t)]
    return {n: dict(sorted(m.items())) for n, m in out.items()}


def format_demo(rows: Sequence[Dict], net_of: Optional[Dict[str, str]] = None,
                images: Optional[Dict[str, str]] = None, verdict_T: int = 8) -> str:
    """Per net: accuracy per T (``*`` best of the net at that T), our best minus SpikingJelly's best, energy per
    image per T; then whether our best row beats every SpikingJelly row at each T <= ``verdict_T``.
    ``images``: model -> which test images it ran on (for the section header)."""
    net = _net(net_of)
    ts = sorted({r["T"] for r in rows})
    best, diffs = best_rows(rows, net_of), margins(rows, net_of)
    mw = max([8] + [len(r["method"]) + 2 for r in rows])
    dw = max([8] + [len(r["model"]) + 2 for r in rows])
    starts = {r["model"]: f"{r['relu_ann']} {r['relu_ann_accuracy']:.2f}" for r in rows if r["relu_ann"] != r["model"]}
    fw = max([len("from ReLU ANN") + 2] + [len(s) + 2 for s in starts.values()])
    cols = "".join(f"{'T=' + str(t):>9}" for t in ts)
    lines: List[str] = []
    for n in dict.fromkeys(net(r) for r in rows):
        nrows = [r for r in rows if net(r) == n]
        pairs = list(dict.fromkeys((r["model"], r["method"]) for r in nrows))
        by = {(r["model"], r["method"], r["T"]): r for r in nrows}
        seen = sorted(set((images or {}).get(m, "") for m, _ in pairs) - {""})
        lines += [f"{n}: test accuracy (%){' on ' + ', '.join(seen) if seen else ''}; * = best row of {n} at that T",
                  f"{'method':<{mw}}{'model':<{dw}}{'ANN':>7}  {'from ReLU ANN':<{fw}}{cols}"]
        for model, method in pairs:
            first = next(r for r in nrows if (r["model"], r["method"]) == (model, method))
            lines.append(f"{method:<{mw}}{model:<{dw}}{first['ann_accuracy']:7.2f}  {starts.get(model, ''):<{fw}}"
                         + "".join(f"{by[(model, method, t)]['accuracy']:8.2f}"
                                   f"{'*' if (model, method, t) in best else ' '}" if (model, method, t) in by
                                   else " " * 9 for t in ts))
        if diffs.get(n):
            lines.append(f"{'best ours - best SpikingJelly':<{mw + dw + 9 + fw}}"
                         + "".join(f"{diffs[n][t]:+8.2f} " if t in diffs[n] else " " * 9 for t in ts))
        lines += ["", f"{n}: energy per image (uJ; ANN: the model's ANN)",
                  f"{'method':<{mw}}{'model':<{dw}}{'ANN':>7}  {'':<{fw}}{cols}"]
        for model, method in pairs:
            first = next(r for r in nrows if (r["model"], r["method"]) == (model, method))
            lines.append(f"{method:<{mw}}{model:<{dw}}{first['ann_energy_uj']:7.2f}  {'':<{fw}}"
                         + "".join(f"{by[(model, method, t)]['energy_uj']:8.2f} " if (model, method, t) in by
                                   else " " * 9 for t in ts))
        lines.append("")
    for n, diff in diffs.items():
        checked = [t for t in diff if t <= verdict_T]
        lost = [t for t in checked if diff[t] <= 0]
        if checked:
            lines.append(f"{n}: our best row beats every SpikingJelly row at T = {', '.join(map(str, checked))}: "
                         + ("yes" if not lost else f"NO, not at T = {', '.join(map(str, lost))}"))
    return "\n".join(lines).rstrip()


def format_headline(rows: Sequence[Dict], net_of: Optional[Dict[str, str]] = None,
                    images: Optional[Dict[str, str]] = None, minutes: Optional[float] = None, jobs: int = 1,
                    net: Optional[str] = None) -> str:
    """The book's headline table (markdown): the first net of the demo (Net4), each row of the plan (one method per
    paper, SpikingJelly's two recipes), accuracy per T (best in bold), energy per image at the largest T, the ANN;
    headed by the date, the command and the run time, so the landing page shows a run, not a hand-copied table."""
    import datetime

    netf = _net(net_of)
    net = net or netf(rows[0])
    nrows = [r for r in rows if netf(r) == net]
    ts = sorted({r["T"] for r in nrows})
    best = best_rows(rows, net_of)
    by = {(r["model"], r["method"], r["T"]): r for r in nrows}
    pairs = list(dict.fromkeys((r["model"], r["method"]) for r in nrows))
    seen = sorted(set((images or {}).get(m, "") for m, _ in pairs) - {""})
    took = f", {minutes:.1f} min with {jobs} process(es)" if minutes is not None else ""
    lines = [f"Test accuracy (%) of {net} on Fashion-MNIST ({', '.join(seen) or 'test set'}; 1024 calibration "
             f"images), from `make demo` (`{COMMAND}`) on {datetime.date.today().isoformat()}{took}; **bold**: the "
             f"best row at that T. Energy per image at T = {ts[-1]} (45 nm: 4.6 pJ per MAC, 0.9 pJ per synaptic "
             "operation).", "",
             "| method | paper | model | ANN | " + " | ".join(f"T={t}" for t in ts)
             + f" | energy at T={ts[-1]} (uJ; ANN) |",
             "|---" * (len(ts) + 5) + "|"]
    for model, method in pairs:
        paper = SJ_LABELS.get(method) or (get(method).reference if method in methods() else "")
        first = next(r for r in nrows if (r["model"], r["method"]) == (model, method))
        cells = [(f"**{by[(model, method, t)]['accuracy']:.2f}**" if (model, method, t) in best
                  else f"{by[(model, method, t)]['accuracy']:.2f}") if (model, method, t) in by else "" for t in ts]
        energy = by.get((model, method, ts[-1]), {}).get("energy_uj")
        lines.append(f"| `{method}` | {paper} | `{model}` | {first['ann_accuracy']:.2f} | " + " | ".join(cells)
                     + f" | {'' if energy is None else f'{energy:.1f}'} ({first['ann_energy_uj']:.1f}) |")
    return "\n".join(lines) + "\n"


def write_figure(rows: Sequence[Dict], path: Path, net_of: Optional[Dict[str, str]] = None,
                 floor: float = 40.0) -> None:
    """Two panels: accuracy vs T (log2) and accuracy vs energy per image (log), one line per row (model, method);
    colour per method, marker per net, dashed for SpikingJelly; accuracy axes start at ``floor`` %."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    net = _net(net_of)
    nets = list(dict.fromkeys(net(r) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = plt.get_cmap("tab10")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in rows):
        pts = sorted((r["T"], r["accuracy"], r["energy_uj"]) for r in rows
                     if (r["model"], r["method"]) == (model, method))
        first = next(r for r in rows if r["model"] == model)
        style = dict(color=colors(methods.index(method) % 10), marker="os^Dv"[nets.index(net(first)) % 5],
                     ls="--" if method in SJ_RECIPES else "-", label=f"{method} [{model}]")
        left.plot([p[0] for p in pts], [p[1] for p in pts], **style)
        right.plot([p[2] for p in pts], [p[1] for p in pts], **style)
    for i, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        first = next(r for r in rows if r["model"] == model)
        right.plot(first["ann_energy_uj"], first["ann_accuracy"], marker="*", ms=12, color="k", ls="none",
                   label="ANN (each model)" if i == 0 else None)
    left.set_xscale("log", base=2)
    left.set_xticks(sorted({r["T"] for r in rows}), [str(t) for t in sorted({r["T"] for r in rows})])
    left.set_xlabel("time steps T")
    right.set_xscale("log")
    right.set_xlabel("energy per image (uJ)")
    for ax in (left, right):
        ax.set_ylim(bottom=floor, top=min(100.0, max(max(r["accuracy"], r["ann_accuracy"]) for r in rows) + 2))
        ax.set_ylabel(f"test accuracy (%; axis from {floor:g})")
        ax.grid(alpha=0.3)
    left.set_title("accuracy vs T (" + ", ".join(f"{m} {n}" for m, n in zip("os^Dv", nets)) + ")")
    right.set_title("accuracy vs energy per image (points: T)")
    left.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="bench-out", help="folder for results.csv, demo.png and accuracy_vs_T.png")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--jobs", type=int, default=1,
                   help="benches run at once, each in its own process (make demo: one per core)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """``snnconv demo``."""
    import torch

    torch.manual_seed(0)
    run_demo(Path(args.out), progress=not args.no_progress, device=args.device, jobs=args.jobs)
    return 0
