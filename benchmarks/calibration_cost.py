"""Wall-clock cost of Li et al.'s calibration on the zoo Net4 (issue target: LCP <= 5 s, ACP <= 2 min on
2 CPU cores), with the accuracy each reaches. Prints one table; times are one run on a possibly busy machine.

    python benchmarks/calibration_cost.py [--model fmnist-net4] [--timesteps 4,8] [--n-test 2000] [--device cuda]
"""
import argparse
import time

import torch

import snnconv_ext as sc
from snnconv_ext import data, zoo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="fmnist-net4")
    p.add_argument("--timesteps", default="4,8")
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    args = p.parse_args()
    dev = torch.device(args.device)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    ann = zoo.load(args.model, map_location=dev)
    calib = data.loader(data.subset(data.fashion_mnist("train"), 1024, seed=0), batch_size=256)
    test = data.subset(data.fashion_mnist("test"), args.n_test)
    ann_acc = sc.ann_accuracy(ann, test, device=dev)
    print(f"{args.model}: ANN {ann_acc:.2f}% on {len(test)} test images; conversion = thresholds + calibration")
    print(f"{'method':<10}{'T':>4}{'convert (s)':>14}{'calibration (s)':>17}{'accuracy':>10}")
    for T in [int(t) for t in args.timesteps.split(",")]:
        for method in ("mmse", "lcp", "acp"):
            t0 = time.perf_counter()
            snn = sc.convert(ann, method=method, calib_data=calib, T=T, progress=False, device=dev)
            total = time.perf_counter() - t0
            cal_s = snn.meta.get("snnconv_calibration", {}).get("seconds", 0.0)
            acc = sc.evaluate(snn, test, [T], progress=False, device=dev)[T]
            print(f"{method:<10}{T:>4}{total:>14.1f}{cal_s:>17.1f}{acc:>10.2f}")


if __name__ == "__main__":
    main()
