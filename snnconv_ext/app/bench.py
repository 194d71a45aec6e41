"""``snnconv bench``: our methods against SpikingJelly's own ``RateCodingRecipe`` in one run.

Every method converts the same zoo ANN with the same calibration images and is evaluated on the same
test images for every T from a single simulation (methods tuned for one T, such as MMSE, calibration and
TTRBR's lambda search, are converted again for every T). ``sj-*`` rows are SpikingJelly's recipes run unchanged
(only stepped in its multi-step mode, which gives identical outputs): they are the bar. ``sj-ltb`` is its
``LocalThresholdBalancingRecipe`` (Bu et al., CVPR 2025), read out from the first step like every other row.
Beside accuracy every row reports spikes, synaptic operations and energy per image (``snnconv_ext.energy``).
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..assets import data as data_mod
from ..assets import zoo
from ..conversion.auto import OPTIONS as AUTO_OPTIONS, applies_to, convert
from ..conversion.registry import get as get_method, methods as method_names
from ..core.activations import ACTIVATIONS
from ..core.simulation import ann_accuracy, evaluate
from ..study.energy import SpikeMeter, constants
from .baselines import SJ_BATCH, SJ_RECIPES, sj_convert

__all__ = ["run_bench", "add_arguments", "run", "format_table", "write_outputs", "parse_options", "FIELDS"]

FIELDS = ["model", "method", "T", "accuracy", "ann_accuracy", "relu_ann", "relu_ann_accuracy", "spikes_per_image",
          "synops", "energy_uj", "ann_energy_uj"]


def _test_set(dataset: str, n_test: Optional[int]):
    ds = getattr(data_mod, dataset)("test")
    return ds if not n_test or n_test >= len(ds) else data_mod.subset(ds, n_test, seed=None)


def run_bench(model_name: str, method_list: Sequence[str], timesteps: Sequence[int], out: Optional[Path] = None,
              n_test: Optional[int] = None, n_calib: int = 1024, batch_size: int = 128, chunk: int = 4,
              progress: bool = True, log: Callable[[str], None] = print, options: Optional[Dict] = None,
              device: Optional[str] = None, energy_constants: str = "45nm", backend: str = "spikingjelly",
              table: bool = True) -> List[Dict]:
    """Convert ``model_name`` with each method, evaluate at every T (accuracy, spikes, synaptic operations and
    energy per image), write CSV + plot to ``out``. ``backend``: where our methods' networks live
    (``spikingjelly`` or ``snntorch``); SpikingJelly's own recipes always run in SpikingJelly. ``table``: log the
    accuracy table at the end. Rows also carry ``convert_s``, the wall-clock seconds of the conversion that
    row was simulated with (not written to the CSV, which stays identical from run to run)."""
    if model_name not in zoo.ENTRIES:
        raise KeyError(f"unknown zoo model {model_name!r}; available: {zoo.names()}")
    const = constants(energy_constants)
    dev = torch.device(device or "cpu")
    dataset = zoo.ENTRIES[model_name].dataset
    ann = zoo.load(model_name, map_location=dev)
    test = _test_set(dataset, n_test)
    train = getattr(data_mod, dataset)("train")
    calib = data_mod.loader(data_mod.subset(train, n_calib, seed=0), batch_size=256)
    t0 = time.perf_counter()
    ann_acc = ann_accuracy(ann, test, device=dev)
    log(f"{model_name}: ANN accuracy {ann_acc:.2f}% on {len(test)} test images "
        f"({time.perf_counter() - t0:.1f} s); calibration on {n_calib} training images")
    # the ReLU ANN a fine-tuned entry (QCFS, TTRBR stage II) started from, so rows on different ANNs stay comparable
    relu_name = zoo.ENTRIES[model_name].init or model_name
    relu_acc = ann_acc if relu_name == model_name else ann_accuracy(zoo.load(relu_name, map_location=dev), test,
                                                                    device=dev)
    if relu_name != model_name:
        log(f"  started from the ReLU ANN {relu_name}: {relu_acc:.2f}% on the same images")
    rows = []
    for name in method_list:
        why = _not_applicable(name, ann)
        if why:
            log(f"  {name:<22} n/a on {model_name}: {why}")
            continue
        tuned = name == "auto" or (name not in SJ_RECIPES and get_method(name).T is not None)
        opts = {k: v for k, v in (options or {}).items() if name == "auto" or k not in AUTO_OPTIONS}
        # a method tuned for one T (MMSE, lambda search, calibration) is converted again for every T;
        # the others once, evaluated at every T from one simulation
        groups = [[t] for t in sorted(set(int(v) for v in timesteps))] if tuned else [list(timesteps)]
        acc, reports, t_conv, t_sim, conv_s = {}, {}, 0.0, 0.0, {}
        for ts in groups:
            t0 = time.perf_counter()
            if name in SJ_RECIPES:
                snn = sj_convert(ann, name, calib, device=dev, progress=progress)
            else:
                extra = {"device": dev} if backend == "spikingjelly" else {}
                snn = convert(ann, method=name, calib_data=calib, progress=False, backend=backend, **extra,
                              **({"T": ts[0]} if tuned else {}), **opts).to(dev)
            conv_s.update({t: time.perf_counter() - t0 for t in ts})
            t_conv += conv_s[ts[0]]
            if name == "auto":  # method="auto": which method won on held-out calibration images at this T
                rep = snn.meta["snnconv_auto"]
                log(f"  auto T={ts[0]}: chose {rep['chosen']} of {len(rep['tried'])} tried ({len(rep['skipped'])} "
                    f"skipped) in {rep['seconds']:.1f} s")
            t0 = time.perf_counter()
            meter = SpikeMeter(snn, tuple(test[0][0].shape))
            # SpikingJelly's multi-step IFNode ran 25 % faster on CPU at batch 64 than at 128 (1 thread, Net4);
            # the batch size does not change any result
            bs = min(batch_size, SJ_BATCH) if name in SJ_RECIPES and dev.type == "cpu" else batch_size
            with meter:
                acc.update(evaluate(snn, test, ts, batch_size=bs, chunk=chunk, progress=progress,
                                    device=dev, desc=f"{name} T={ts[0]}" if tuned else name))
            reports.update(meter.report(ts, len(test)))
            t_sim += time.perf_counter() - t0
        log(f"  {name:<22} converted{' for each T' if tuned else ''} in {t_conv:5.1f} s, "
            f"simulated T<={max(timesteps)} in {t_sim:6.1f} s")
        rows += [{"model": model_name, "method": name, "T": t, "accuracy": round(a, 4),
                  "ann_accuracy": round(ann_acc, 4), "relu_ann": relu_name, "relu_ann_accuracy": round(relu_acc, 4),
                  "spikes_per_image": round(reports[t].spikes_per_image, 2),
                  "synops": round(reports[t].total_synops), "energy_uj": round(reports[t].energy_uj(const)[1], 4),
                  "ann_energy_uj": round(reports[t].energy_uj(const)[0], 4), "convert_s": round(conv_s[t], 2)}
                 for t, a in acc.items()]
    if table:
        log(format_table(rows))
    if out is not None:
        write_outputs(rows, Path(out))
        log(f"wrote {Path(out) / 'results.csv'} and {Path(out) / 'accuracy_vs_T.png'}")
    return rows


def _not_applicable(name: str, model: nn.Module) -> str:
    """Why ``name`` cannot convert ``model`` ('' if it can): SpikingJelly's recipes convert ReLU only; ours as
    :func:`snnconv_ext.conversion.auto.applies_to` says."""
    acts = {type(m) for m in model.modules() if type(m) in ACTIVATIONS}
    if name == "auto":  # picks among the applicable methods itself
        return ""
    if name in SJ_RECIPES:
        return "" if acts <= {nn.ReLU} else f"SpikingJelly's RateCodingRecipe converts ReLU, the model uses " \
                                            f"{sorted(t.__name__ for t in acts)}"
    if name not in method_names():
        raise KeyError(f"unknown method {name!r}: ours {method_names()}, SpikingJelly's {sorted(SJ_RECIPES)}")
    return applies_to(name, model)


def format_table(rows: List[Dict]) -> str:
    """Accuracy table: one line per method (per model and method when rows span models), one column per T, plus
    the ANN line of each model and the ReLU ANN a fine-tuned model started from."""
    ts = sorted({r["T"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    label = (lambda r: r["method"]) if len(models) == 1 else (lambda r: f"{r['method']} [{r['model']}]")
    width = max([22] + [len(label(r)) + 2 for r in rows])
    acc = {(label(r), r["T"]): r["accuracy"] for r in rows}
    head = f"{'method':<{width}}" + "".join(f"{'T=' + str(t):>8}" for t in ts)
    lines = [head, "-" * len(head)]
    for m in dict.fromkeys(label(r) for r in rows):
        lines.append(f"{m:<{width}}" + "".join(f"{acc[(m, t)]:8.2f}" if (m, t) in acc else f"{'':>8}" for t in ts))
    for model in models:
        first = next(r for r in rows if r["model"] == model)
        name = "ANN" if len(models) == 1 else f"ANN [{model}]"
        lines.append(f"{name:<{width}}" + "".join(f"{first['ann_accuracy']:8.2f}" for _ in ts))
        if first.get("relu_ann", model) != model:
            name = f"ReLU ANN [{first['relu_ann']}]"
            lines.append(f"{name:<{width}}" + "".join(f"{first['relu_ann_accuracy']:8.2f}" for _ in ts))
    if rows and "energy_uj" in rows[0]:
        t = ts[-1]
        lines += ["", f"{'per image at T=' + str(t):<{width}}{'spikes':>10}{'synops':>14}{'energy (uJ)':>13}"]
        for r in (r for r in rows if r["T"] == t):
            lines.append(f"{label(r):<{width}}{r['spikes_per_image']:>10,.0f}{r['synops']:>14,}{r['energy_uj']:>13.3f}")
        for model in models:
            name = "ANN" if len(models) == 1 else f"ANN [{model}]"
            first = next(r for r in rows if r["model"] == model)
            lines.append(f"{name:<{width}}{'':>10}{'':>14}{first['ann_energy_uj']:>13.3f}")
    return "\n".join(lines)


def write_outputs(rows: List[Dict], out: Path) -> None:
    """``results.csv`` (:data:`FIELDS`: accuracy, spikes, synaptic ops and energy per image) and ``accuracy_vs_T.png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")   # convert_s: timing, not in the CSV
        w.writeheader()
        w.writerows(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        mrows = [r for r in rows if r["model"] == model]
        for m in dict.fromkeys(r["method"] for r in mrows):
            pts = [(r["T"], r["accuracy"]) for r in mrows if r["method"] == m]
            ax.plot(*zip(*pts), marker="o", ls="--" if m.startswith("sj-") else "-", label=m)
        ax.axhline(mrows[0]["ann_accuracy"], color="k", lw=0.8, label="ANN")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("time steps T")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(model)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_T.png", dpi=120)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="fmnist-net4",
                   help="zoo entry or comma-separated entries (snnconv_ext.zoo.names()); methods that cannot "
                        "convert a model's activations are reported as n/a")
    p.add_argument("--methods", default="max,percentile,sj-max,sj-99.9,sj-best",
                   help=f"comma-separated; ours: {', '.join(method_names())}; SpikingJelly: {', '.join(SJ_RECIPES)}; "
                        "auto: the best of ours on held-out calibration images, chosen per T (options budget_s=, "
                        "candidates=a/b/c, heldout=)")
    p.add_argument("--timesteps", default="1,2,4,8,16,32,64,128")
    p.add_argument("--out", default="bench-out", help="directory for results.csv and accuracy_vs_T.png")
    p.add_argument("--n-test", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--n-calib", type=int, default=1024, help="training images used for calibration")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--chunk", type=int, default=4, help="time steps simulated at once; batch*chunk of about 512 images is fastest on CPU")
    p.add_argument("--method-options", default="",
                   help="options for our methods, comma-separated key=value (e.g. samples=128,iters=400)")
    p.add_argument("--backend", default="spikingjelly", choices=["spikingjelly", "snntorch"],
                   help="framework our methods convert into (SpikingJelly's recipes always run in SpikingJelly)")
    p.add_argument("--device", default="cpu", help="torch device to convert and simulate on (cpu, cuda, cuda:1, ...)")
    p.add_argument("--energy", default="45nm",
                   help="energy constants for energy_uj: 45nm (4.6/0.9 pJ per MAC/AC), datta (3.2/0.1), "
                        "strelu (4.6 pJ/MAC, 77 fJ/SOP) or E_MAC:E_AC in pJ")
    p.add_argument("--no-progress", action="store_true")


def parse_options(spec: str) -> Dict:
    """``"samples=128,ridge=0.1"`` -> ``{"samples": 128, "ridge": 0.1}`` (ints, floats, else strings)."""
    out: Dict = {}
    for item in filter(None, (i.strip() for i in spec.split(","))):
        key, sep, val = item.partition("=")
        if not sep:
            raise ValueError(f"method option {item!r} is not key=value")
        for cast in (int, float):
            try:
                out[key.strip()] = cast(val)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = val.strip()
    return out


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    rows = []
    for model in [m.strip() for m in args.model.split(",") if m.strip()]:
        rows += run_bench(model, [m.strip() for m in args.methods.split(",") if m.strip()],
                          [int(t) for t in args.timesteps.split(",")], None, args.n_test, args.n_calib,
                          args.batch_size, args.chunk, progress=not args.no_progress,
                          options=parse_options(args.method_options), device=args.device,
                          energy_constants=args.energy, backend=args.backend)
    if not rows:
        raise SystemExit("no method applied to any model: nothing to report")
    if len({r["model"] for r in rows}) > 1:
        print(format_table(rows))
    write_outputs(rows, Path(args.out))
    print(f"wrote {Path(args.out) / 'results.csv'} and {Path(args.out) / 'accuracy_vs_T.png'}")
    return 0
