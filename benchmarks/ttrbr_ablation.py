"""TTRBR's Table 7 and Table 8 (Meng et al. 2022) on more test images than the chapter can afford: plain / +A (lambda
searched) / +B (restructured blocks) / +A+B on the zoo's ResNet-20 and half-width ResNet-56 clamp nets, at T = 8, 16,
32, and the lambda each search picks with the score of every candidate.

    python benchmarks/ttrbr_ablation.py [--n-test 2000] [--samples 256] [--timesteps 8,16,32]

Every row sees the same test images, so each comparison the paper makes (+A over plain, +B over plain, +A+B over +A
and over +B) is printed with its paired standard error (``compare.paired_diff``, from per-image results). The lambda
search scores each candidate of the grid {0.2, 0.4, ..., 1.6} on ``--samples`` training images (the method's
default is 256). Writes three files that the TTRBR chapter reads as an external measurement (each file's first
line names the command, the date and the run time):

* ``<prefix>.csv``: net, row, T, accuracy, ANN accuracy, chosen lambda;
* ``<prefix>_comparisons.csv``: net, comparison, T, difference and its paired standard error (pp);
* ``<prefix>_scores.csv``: net, blocks, T, lambda, score (% right on the search images), whether chosen.

Sixteen simulations on 2000 test images and 96 lambda candidates: far beyond a chapter's few minutes.
"""
from __future__ import annotations

import argparse
import csv
import datetime
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
COMMAND = "python benchmarks/ttrbr_ablation.py"


def _write(path: Path, header: str, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(f"# {header}\n")
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--samples", type=int, default=256, help="training images that score each lambda")
    p.add_argument("--timesteps", default="8,16,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="book/generated/ttrbr_ablation", help="prefix of the three CSV files")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ts = [int(t) for t in args.timesteps.split(",")]
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    calib = data.loader(data.subset(train, 640, seed=0), batch_size=128)   # five batches, as the chapter
    part = data.subset(test, args.n_test)
    hit, lam, scores, ann_acc, t0 = {}, {}, {}, {}, time.perf_counter()
    for k, name in tqdm(NETS.items(), desc="nets"):
        ann = zoo.load(name)
        ann_acc[k] = sc.ann_accuracy(ann, part)
        hit[k, "plain"] = sc.hits(sc.convert(ann, method="ttrbr-plain", calib_data=calib, progress=False), part, ts)
        hit[k, "lambda"] = {}
        for t in ts:
            snn = sc.convert(ann, method="ttrbr", calib_data=calib, T=t, scale_grid=GRID, samples=args.samples,
                             progress=False)
            lam[k, t] = snn.meta["snnconv_calibration"]["scale"]
            scores[k, t] = snn.meta["snnconv_calibration"]["scale_scores"]
            hit[k, "lambda"].update(sc.hits(snn, part, [t]))
    get = lambda depth, row, t: hit[(depth, ROWS[row][0]), ROWS[row][1]][t]
    n, secs = len(part), time.perf_counter() - t0
    header = (f"{COMMAND} on {datetime.date.today().isoformat()}, {secs:.0f} s with {args.threads} thread(s); "
              f"{n} test images, {args.samples} search images per lambda")
    print(f"\nTTRBR Table 7 on {n} test images ({secs:.0f} s)")
    print(f"{'':<26}" + "".join(f"{'T=' + str(t):>8}" for t in ts) + f"{'ANN':>8}   lambda at each T")
    rows, comps, score_rows = [], [], []
    for depth in ("ResNet-20", "ResNet-56/2"):
        for row, (struct, part_) in ROWS.items():
            k = (depth, struct)
            accs = {t: compare.accuracy(get(depth, row, t)) for t in ts}
            lams = {t: lam[k, t] for t in ts} if part_ == "lambda" else {}
            print(f"{depth + ' ' + row:<26}" + "".join(f"{accs[t]:8.2f}" for t in ts)
                  + f"{ann_acc[k]:8.2f}   {list(lams.values()) if lams else ''}")
            rows += [{"net": depth, "row": row, "T": t, "accuracy": round(accs[t], 2), "ann": round(ann_acc[k], 2),
                      "lambda": lams.get(t, ""), "test_images": n, "search_images": args.samples} for t in ts]
    print(f"\n{'':<13}{'comparison':<14}" + "".join(f"{'T=' + str(t):>24}" for t in ts))
    for depth in ("ResNet-20", "ResNet-56/2"):
        for hi, lo in COMPARISONS:
            line = f"{depth:<13}{hi + ' > ' + lo:<14}"
            for t in ts:
                d, se = compare.paired_diff(get(depth, hi, t), get(depth, lo, t))
                line += f"{d:+7.2f} (paired SE {se:4.2f})"
                comps.append({"net": depth, "comparison": f"{hi} > {lo}", "T": t, "diff": round(d, 2),
                              "paired_se": round(se, 3)})
            print(line)
    for (k, t), v in scores.items():
        score_rows += [{"net": k[0], "blocks": k[1], "T": t, "lambda": l, "score": round(a, 2),
                        "chosen": int(l == lam[k, t])} for l, a in sorted(v.items())]
    prefix = Path(args.out)
    _write(prefix.with_name(prefix.name + ".csv"), header, rows)
    _write(prefix.with_name(prefix.name + "_comparisons.csv"), header, comps)
    _write(prefix.with_name(prefix.name + "_scores.csv"), header, score_rows)


if __name__ == "__main__":
    main()
