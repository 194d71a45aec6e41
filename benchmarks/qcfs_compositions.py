"""QCFS against our compositions on the full Fashion-MNIST test set (issue 17): accuracy at T = 1..16 of the
`qcfs` conversion of the zoo's QCFS nets, of compositions that need no training (registered methods such as
`qcfs+snm`, `qcfs+lcp`), and of SNN fine-tuning from the `qcfs` conversion at each T within a time budget.

    python benchmarks/qcfs_compositions.py                       # conversions only (about 10 min on 2 cores)
    python benchmarks/qcfs_compositions.py --finetune 4,8 --budget 400

Prints one table (rows: net and method, columns: T) and writes it as CSV with the seconds each row took.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

import snnconv_ext as sc
from snnconv_ext import data, zoo
from snnconv_ext.core.simulation import evaluate
from snnconv_ext.conversion.registry import get as get_method


# compositions measured here that did not win anything and so are not registered methods
EXTRA = {"qcfs+acp": lambda: get_method("qcfs").with_options(name="qcfs+acp", calibration=("weights", "potential"), T=8)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="fmnist-net4-qcfs4,fmnist-net4-qcfs8")
    p.add_argument("--methods", default="qcfs,qcfs+snm,qcfs+lcp")
    p.add_argument("--timesteps", default="1,2,4,8,16")
    p.add_argument("--finetune", default="", help="T values at which to fine-tune the qcfs conversion (empty: none)")
    p.add_argument("--budget", type=float, default=None,
                   help="fine-tuning seconds per T (default: the QCFS net's own training time from the manifest)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench-out/qcfs_compositions.csv")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ts = [int(t) for t in args.timesteps.split(",")]
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    calib = data.loader(data.subset(train, 1024, seed=0), batch_size=256)
    manifest = zoo.read_manifest()
    rows = []
    for model in args.models.split(","):
        ann = zoo.load(model)
        for name in args.methods.split(","):
            method, t0 = EXTRA[name]() if name in EXTRA else get_method(name), time.perf_counter()
            if method.T is None:  # one conversion, evaluated at every T from one simulation
                acc = evaluate(sc.convert(ann, method=method, calib_data=calib, progress=False), test, ts, progress=False)
            else:  # calibrated again for every T
                acc = {}
                for t in ts:
                    snn = sc.convert(ann, method=method, calib_data=calib, progress=False, T=t)
                    acc.update(evaluate(snn, test, [t], progress=False))
            rows.append({"model": model, "method": name, **acc, "seconds": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
        for t in [int(v) for v in args.finetune.split(",") if v]:
            budget = args.budget if args.budget is not None else manifest[model]["train_time_s"]
            t0 = time.perf_counter()
            snn = sc.convert(ann, method="qcfs", calib_data=calib, progress=False)
            info = sc.finetune(snn, train, T=t, epochs=1, lr=args.lr, batch_size=64, max_seconds=budget, progress=False)
            acc = evaluate(snn, test, [t], progress=False)
            rows.append({"model": model, "method": f"qcfs+finetune(T={t})", **acc,
                         "seconds": round(time.perf_counter() - t0, 1), "finetune_s": round(info["seconds"], 1)})
            print(rows[-1], flush=True)
    head = f"{'model':<22}{'method':<22}" + "".join(f"{'T=' + str(t):>8}" for t in ts) + f"{'seconds':>9}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['model']:<22}{r['method']:<22}" + "".join(f"{r[t]:8.2f}" if t in r else f"{'':>8}" for t in ts)
              + f"{r['seconds']:9.0f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "method", *ts, "seconds", "finetune_s"])
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
