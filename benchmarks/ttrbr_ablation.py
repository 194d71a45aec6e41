"""TTRBR's Table 7 (Meng et al. 2022) on more test images than the chapter can afford: plain / +A (lambda searched)
/ +B (restructured blocks) / +A+B on the zoo's ResNet-20 and half-width ResNet-56 clamp nets, at T = 8, 16, 32.
Each comparison the paper makes is printed with its difference and two standard errors of that difference
(binomial, the same test images for both rows), and classed as holds / reversed / within noise.

    python benchmarks/ttrbr_ablation.py [--n-test 2000] [--samples 256] [--timesteps 8,16,32]

The chapter runs the same ablation on 200 test images with 64 search images; here the lambda search scores each
candidate of the chapter's grid {0.2, 0.4, ..., 1.6} on ``--samples`` training images. About 15 min on 2 cores.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from tqdm import tqdm

import snnconv_ext as sc
from snnconv_ext import compare, data, zoo

NETS = {("ResNet-20", "original"): "fmnist-resnet20-clamp", ("ResNet-20", "restructured"): "fmnist-resnet20-pre-clamp",
        ("ResNet-56/2", "original"): "fmnist-resnet56-w8-clamp",
        ("ResNet-56/2", "restructured"): "fmnist-resnet56-w8-pre-clamp"}
ROWS = {"plain": ("original", "plain"), "+A": ("original", "lambda"), "+B": ("restructured", "plain"),
        "+A+B": ("restructured", "lambda")}
COMPARISONS = (("+A", "plain"), ("+B", "plain"), ("+A+B", "+A"), ("+A+B", "+B"))   # Table 7's claims
GRID = tuple(round(0.2 + 0.2 * i, 1) for i in range(8))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--samples", type=int, default=256, help="training images that score each lambda")
    p.add_argument("--timesteps", default="8,16,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench-out/ttrbr_ablation.csv")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ts = [int(t) for t in args.timesteps.split(",")]
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    calib = data.loader(data.subset(train, 640, seed=0), batch_size=128)   # five batches, as the chapter
    part = data.subset(test, args.n_test)
    acc, lam, ann_acc, t0 = {}, {}, {}, time.perf_counter()
    for k, name in tqdm(NETS.items(), desc="nets"):
        ann = zoo.load(name)
        ann_acc[k] = sc.ann_accuracy(ann, part)
        acc[k, "plain"] = sc.evaluate(sc.convert(ann, method="ttrbr-plain", calib_data=calib, progress=False),
                                      part, ts, progress=False)
        acc[k, "lambda"] = {}
        for t in ts:
            snn = sc.convert(ann, method="ttrbr", calib_data=calib, T=t, scale_grid=GRID, samples=args.samples,
                             progress=False)
            lam[k, t] = snn.meta["snnconv_calibration"]["scale"]
            acc[k, "lambda"].update(sc.evaluate(snn, part, [t], progress=False))
    get = lambda depth, row, t: acc[(depth, ROWS[row][0]), ROWS[row][1]][t]
    n = len(part)
    print(f"\nTTRBR Table 7 on {n} test images ({time.perf_counter() - t0:.0f} s)")
    print(f"{'':<26}" + "".join(f"{'T=' + str(t):>8}" for t in ts) + f"{'ANN':>8}   lambda at each T")
    rows = []
    for depth in ("ResNet-20", "ResNet-56/2"):
        for row, (struct, part_) in ROWS.items():
            k = (depth, struct)
            lams = [lam[k, t] for t in ts] if part_ == "lambda" else []
            print(f"{depth + ' ' + row:<26}" + "".join(f"{get(depth, row, t):8.2f}" for t in ts)
                  + f"{ann_acc[k]:8.2f}   {lams if lams else ''}")
            rows.append({"net": depth, "row": row, **{f"T={t}": get(depth, row, t) for t in ts},
                         "ann": ann_acc[k], "lambda": " ".join(map(str, lams))})
    print(f"\n{'':<13}{'comparison':<14}" + "".join(f"{'T=' + str(t):>32}" for t in ts))
    for depth in ("ResNet-20", "ResNet-56/2"):
        for hi, lo in COMPARISONS:
            line = f"{depth:<13}{hi + ' > ' + lo:<14}"
            for t in ts:
                a, b = get(depth, hi, t), get(depth, lo, t)
                line += (f"{a - b:+7.2f} (2se {2 * compare.diff_se(a, b, n):4.2f}) "
                         f"{compare.verdict(a, b, n):<12}")
            print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
