"""Li et al. 2022, Table 6 (how many calibration images) on the zoo ResNet-20 at T = 4: LCP with 32, 128 and 512
images and ACP with 128 and 512, each with three random subsets of the training set (seeds 0-2), evaluated on the
same first 2000 test images (``data.subset(test, 2000)``, the calibration chapter's ``test2k``). Writes one row per
(method, images, seed) with the accuracy; the calibration chapter reads the file as an external measurement.

    python benchmarks/calibration_table6.py [--out book/generated/calibration_table6.csv]

Fifteen conversions and simulations (1226 s on one thread of a busy machine on 2026-12-07): too much for a chapter that should run in a few
minutes, so the chapter shows this table instead of running it.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import time
from pathlib import Path

import torch

import snnconv_ext as sc
from snnconv_ext import data, zoo

SIZES = {"lcp": (32, 128, 512), "acp": (128, 512)}
SEEDS = (0, 1, 2)
COMMAND = "python benchmarks/calibration_table6.py"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="book/generated/calibration_table6.csv")
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    test6 = data.subset(test, args.n_test)
    ann = zoo.load("fmnist-resnet20")
    rows = []
    for method, sizes in SIZES.items():
        for n in sizes:
            for seed in SEEDS:
                sub = data.loader(data.subset(train, n, seed=seed), batch_size=256)
                snn = sc.convert(ann, method=method, calib_data=sub, T=4, progress=False)
                acc = sc.evaluate(snn, test6, [4], progress=False)[4]
                rows.append({"method": method, "images": n, "seed": seed, "T": 4, "accuracy": round(acc, 4),
                             "test_images": len(test6)})
                print(f"{method} {n:4d} images seed {seed}: {acc:.2f}%", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        f.write(f"# {COMMAND} on {datetime.date.today().isoformat()}, {time.time() - t0:.0f} s with "
                f"{args.threads} thread(s); model fmnist-resnet20, T=4\n")
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
