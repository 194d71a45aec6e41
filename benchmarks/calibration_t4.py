"""The calibration chapter's T = 4 comparisons on 2000 test images (Li et al. 2022, Tables 1d-e, Fig. 5's nets,
Table 7's data-free calibration): per zoo BN net (``fmnist-vgg-bn``, ``fmnist-resnet20``) the ANN, channel-wise MMSE
thresholds with ClipRound (``mmse-channel``, "none"), LCP, ACP and SpikingJelly's ``sj-best``; on the ResNet-20 the
other starting thresholds (``mmse``, ``lcp-layer``, ``max+lcp``); on the VGG, ACP calibrated on synthetic images.
The nets are converted exactly as the chapter converts them (same calibration images, budget and seed).

Writes one row per (model, method): the conversion's CPU seconds and one 0/1 per test image (in ``test2k``'s
order), so the chapter computes paired standard errors from the file. The chapter reads it as an external
measurement: about 4 CPU minutes, most of a chapter's budget.

    python benchmarks/calibration_t4.py [--out book/generated/calibration_t4.csv]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import time
from pathlib import Path

import torch

import snnconv_ext as sc
from snnconv_ext import calibrate, data, zoo
from snnconv_ext.app.baselines import sj_convert
from snnconv_ext.core.simulation import ann_hits, hits

COMMAND = "python benchmarks/calibration_t4.py"
T_CAL = 4          # the chapter's T_CAL
N_CAL = 256        # calibration images per pass (the methods' default samples=)
ACP_ITERS = 50     # SGD iterations per layer for ACP's weights (the chapter's ACP_ITERS)
N_FAKE = 128       # synthetic images for the data-free ACP
FIELDS = ["model", "method", "T", "test_images", "convert_cpu_s", "accuracy", "hits"]


def _convert(ann, method, calib):
    """(snn, CPU seconds) for one of our methods at T_CAL with the chapter's budget."""
    t0 = time.process_time()
    opts = {"samples": N_CAL, **({"iters": ACP_ITERS} if method.startswith("acp") else {})} \
        if method in ("lcp", "acp", "lcp-layer", "max+lcp") else {}
    snn = sc.convert(ann, method=method, calib_data=calib, T=T_CAL, progress=False, **opts)
    return snn, time.process_time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="book/generated/calibration_t4.csv")
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0, c0 = time.time(), time.process_time()
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    calib = data.loader(data.subset(train, 1024, seed=0), batch_size=256)   # the chapter's calibration images
    test2k = data.subset(test, args.n_test)
    rows = []

    def add(model, method, ok, cpu=0.0):
        rows.append({"model": model, "method": method, "T": T_CAL, "test_images": len(ok),
                     "convert_cpu_s": round(cpu, 1), "accuracy": round(100 * float(ok.float().mean()), 2),
                     "hits": "".join("1" if v else "0" for v in ok.tolist())})
        print(f"{model:<16} {method:<14} {rows[-1]['accuracy']:6.2f}%  (convert {cpu:.1f} CPU-s)", flush=True)

    extra = {"fmnist-vgg-bn": (), "fmnist-resnet20": ("mmse", "lcp-layer", "max+lcp")}
    for name, more in extra.items():
        ann = zoo.load(name)
        add(name, "ANN", ann_hits(ann, test2k))
        for method in ("mmse-channel", "lcp", "acp", *more):
            snn, cpu = _convert(ann, method, calib)
            add(name, method, hits(snn, test2k, [T_CAL])[T_CAL], cpu)
        snn = sj_convert(ann, "sj-best", calib, progress=False)
        add(name, "sj-best", hits(snn, test2k, [T_CAL])[T_CAL])
        if name == "fmnist-vgg-bn":   # Table 7: ACP on images inverted from the ANN instead of training images
            c1 = time.process_time()
            fake = calibrate.synthesize_inputs(ann, (1, 28, 28), n=N_FAKE, steps=40, lr=0.1, progress=False)
            synth = time.process_time() - c1
            snn, cpu = _convert(ann, "acp", data.loader(fake, batch_size=256))
            add(name, "acp-data-free", hits(snn, test2k, [T_CAL])[T_CAL], synth + cpu)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        f.write(f"# {COMMAND} on {datetime.date.today().isoformat()}, {time.process_time() - c0:.0f} CPU-s "
                f"({time.time() - t0:.0f} s) with {args.threads} thread(s); T={T_CAL}, first {len(test2k)} test "
                f"images of data.subset(test, n), calibration on {N_CAL} of 1024 training images, ACP {ACP_ITERS} "
                f"iterations per layer, data-free ACP on {N_FAKE} synthetic images\n")
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out} ({time.process_time() - c0:.0f} CPU-s)")


if __name__ == "__main__":
    main()
