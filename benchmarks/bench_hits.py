"""``snnconv bench`` with per-image results, for paired standard errors (issue 29's bench tables).

Runs ``snnconv bench`` unchanged (same arguments, same conversions, same table and ``results.csv``), except that
its accuracies come from ``simulation.hits`` / ``ann_hits``, the per-image results whose means ``evaluate`` and
``ann_accuracy`` report (the same simulation, so the same numbers). Writes into ``--out``, beside bench's files:
``hits.pt`` (``{"ANN": bools, (method, T): bools}``, images in test-set order), ``hits.csv`` (the same, one row per
method and T, the bools packed into hex by ``numpy.packbits``) and ``paired.csv`` (bench's rows with ``n_test``
and the paired difference to the ANN, ``minus_ann_pp`` +- ``paired_se_pp``); prints, per T, each row against the
ANN and our best row against each SpikingJelly row (``compare.paired_diff``).

    OMP_NUM_THREADS=1 python benchmarks/bench_hits.py --model fmnist-tv-resnet18 --methods dni+snm,sj-best \\
        --timesteps 1,2,4,8 --n-test 200 --threads 1 --no-progress --out /tmp/r18

One model per run (``--model`` takes one zoo entry). ``python benchmarks/bench_hits.py --tables OUT`` writes
the two CSVs and prints the paired tables again from an earlier run's ``OUT/hits.pt`` and ``OUT/results.csv``.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from snnconv_ext.app import bench, cli
from snnconv_ext.core import simulation
from snnconv_ext.study.compare import paired_diff

HITS: Dict = {}


def _evaluate(snn, data, timesteps, batch_size=128, chunk=4, device=None, progress=True, desc="simulate"):
    """``evaluate`` from ``hits``: records one bool per image under (method, T); ``desc`` is bench's row name."""
    per = simulation.hits(snn, data, timesteps, batch_size, chunk, device, progress)
    method = desc.split(" T=")[0]
    for t, ok in per.items():
        HITS[method, t] = ok
    return {t: 100.0 * int(ok.sum()) / ok.numel() for t, ok in per.items()}   # as evaluate computes it


def _ann_accuracy(model, data, batch_size=512, device=None):
    """``ann_accuracy`` from ``ann_hits``, recorded under "ANN"."""
    if "ANN" in HITS:
        raise SystemExit("bench_hits.py: one model per run (a second ANN was evaluated)")
    HITS["ANN"] = simulation.ann_hits(model, data, batch_size, device)
    return 100.0 * HITS["ANN"].double().mean().item()


def paired_report(hits: Dict) -> str:
    """Every row against the ANN, and the best of our rows against each SpikingJelly row, per T (pp, paired SE)."""
    ann = hits["ANN"]
    rows = [k for k in hits if k != "ANN"]
    ts = sorted({t for _, t in rows})
    lines = [f"paired differences on {ann.numel()} images (pp, +- paired standard error)", "",
             "| method | T | accuracy | minus ANN |", "|---|---|---|---|"]
    for m, t in sorted(rows, key=lambda k: (k[1], k[0])):
        d, se = paired_diff(hits[m, t], ann)
        lines.append(f"| {m} | {t} | {100.0 * hits[m, t].double().mean().item():.2f} | {d:+.2f} +- {se:.2f} |")
    lines.append(f"| ANN | | {100.0 * ann.double().mean().item():.2f} | |")
    sj = sorted({m for m, _ in rows if m.startswith("sj-")})
    ours = sorted({m for m, _ in rows if not m.startswith("sj-")})
    if sj and ours:
        lines += ["", "| T | best of ours | " + " | ".join(f"minus {s}" for s in sj) + " |",
                  "|---|---|" + "---|" * len(sj)]
        for t in ts:
            best = max((m for m in ours if (m, t) in hits), key=lambda m: hits[m, t].sum().item())
            cells = []
            for s in sj:
                d, se = paired_diff(hits[best, t], hits[s, t])
                cells.append(f"{d:+.2f} +- {se:.2f}")
            lines.append(f"| {t} | {best} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(out: Path) -> Dict:
    """``paired.csv`` and ``hits.csv`` in ``out`` from its ``hits.pt`` and bench's ``results.csv``; returns the hits."""
    hits = torch.load(out / "hits.pt", weights_only=True)
    ann = hits["ANN"]
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        d, se = paired_diff(hits[r["method"], int(r["T"])], ann)
        r.update(n_test=ann.numel(), minus_ann_pp=round(d, 4), paired_se_pp=round(se, 4))
    with open(out / "paired.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*bench.FIELDS, "n_test", "minus_ann_pp", "paired_se_pp"])
        w.writeheader()
        w.writerows(rows)
    model = rows[0]["model"]
    with open(out / "hits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "method", "T", "n_test", "hits_hex"])
        for key, ok in hits.items():
            method, t = ("ANN", "") if key == "ANN" else key
            w.writerow([model, method, t, ok.numel(), np.packbits(ok.numpy()).tobytes().hex()])
    return hits


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--tables"] and len(argv) == 2:
        print(paired_report(write_tables(Path(argv[1]))))
        return 0
    model = argv[argv.index("--model") + 1] if "--model" in argv else ""
    if not model or "," in model:
        raise SystemExit(f"bench_hits.py: --model takes one zoo entry, got {model!r}")
    bench.evaluate, bench.ann_accuracy = _evaluate, _ann_accuracy
    rc = cli.main(["bench", *argv])
    if rc:
        return rc
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("bench-out")
    torch.save(HITS, out / "hits.pt")
    write_tables(out)
    print(paired_report(HITS))
    print(f"wrote {out / 'hits.pt'}, {out / 'hits.csv'} and {out / 'paired.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
