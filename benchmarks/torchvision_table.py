"""Issue 29's table: the 13 torchvision architectures, randomly initialised with BN statistics from 256 Fashion-MNIST
images at 3x32x32 (``tests/helpers.torchvision_model``, the models of ``tests/conversion/test_normalize.py``),
converted with our ``max`` method (or each of ``--methods``) and with SpikingJelly 2.0's own
``RateCodingRecipe(mode="Max")`` (``sj-max``),
each SNN's mean readout compared with the ANN's logits: relative error ||snn_mean - ann|| / ||ann|| at every T of
``--timesteps`` on ``--n-test`` further images.

    python benchmarks/torchvision_table.py [--archs resnet18,vgg11_bn] [--timesteps 32,256] [--n-test 8]
                                           [--methods max,clipround]

Prints a markdown table and writes ``--out`` (JSON). About 40 min on 2 cores for all 13 at T = 256.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import snnconv_ext as sc
from snnconv_ext.app.baselines import sj_convert
from snnconv_ext.core.simulation import simulate_net

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import TORCHVISION_ARCHS, fmnist32, torchvision_model  # noqa: E402


def errors(snn, ann, x, timesteps):
    """Relative error of the mean readout after each T."""
    with torch.no_grad():
        want = ann(x)
        out = torch.cat(list(simulate_net(snn, x, max(timesteps), chunk=32)))
    return {T: float((out[T - 1] / T - want).norm() / want.norm()) for T in timesteps}


def row(name, calib, xt, timesteps, methods=("max",)):
    """One architecture: each of our ``methods`` (key "ours" for ``max``, as before, else the method's name) and
    SpikingJelly's ``sj-max`` (key "sj")."""
    ann = torchvision_model(name, calib)
    result = {"arch": name}
    ours = [("ours" if m == "max" else m, lambda m=m: sc.convert(ann, m, [calib], progress=False)) for m in methods]
    for who, make in (*ours, ("sj", lambda: sj_convert(ann, "sj-max", DataLoader(TensorDataset(calib), batch_size=64),
                                                       progress=False))):
        t0 = time.perf_counter()
        try:
            snn = make()
        except Exception as exc:  # the refusal is the result
            result[who] = {"converts": False, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            continue
        try:
            err = errors(snn, ann, xt, timesteps)
        except Exception as exc:
            result[who] = {"converts": False, "reason": f"simulation failed: {type(exc).__name__}: "
                                                        f"{str(exc).splitlines()[0][:300]}"}
            continue
        result[who] = {"converts": True, "error": err, "seconds": round(time.perf_counter() - t0, 1),
                       "rewrites": len(getattr(snn, "meta", {}).get("snnconv_rewrites", []) or [])}
    return result


def cell(r, timesteps):
    if not r["converts"]:
        return "refused: " + r["reason"], *["" for _ in timesteps]
    return "converts", *[f"{r['error'][T]:.3f}" for T in timesteps]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=",".join(TORCHVISION_ARCHS))
    p.add_argument("--timesteps", default="32,256")
    p.add_argument("--n-test", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", default="max", help="our methods, comma-separated (each a column group)")
    p.add_argument("--out", default="bench-out/torchvision_table.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    timesteps = [int(t) for t in args.timesteps.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in sc.methods()]
    if not methods or unknown:
        raise SystemExit(f"--methods: unknown {unknown or args.methods!r}; ours: {', '.join(sc.methods())}")
    calib, xt = fmnist32(256, args.n_test)
    rows = []
    for name in args.archs.split(","):
        rows.append(row(name, calib, xt, timesteps, methods))
        print(json.dumps(rows[-1]), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    ts = " | ".join(f"T={T}" for T in timesteps)
    keys = ["ours" if m == "max" else m for m in methods]
    print("\n| architecture | " + "".join(f"ours ({m}) | {ts} | " for m in methods) + f"SpikingJelly sj-max | {ts} |")
    print("|---|" + ("---|" + "---|" * len(timesteps)) * (len(methods) + 1))
    for r in rows:
        cells = [c for k in [*keys, "sj"] for c in cell(r[k], timesteps)]
        print("| " + " | ".join([r["arch"], *cells]) + " |")


if __name__ == "__main__":
    main()
