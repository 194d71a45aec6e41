"""Lossless at T = 1 and 2 (issue 28): training compositions for a T budget on zoo Net4, each a recorded recipe,
measured on the full Fashion-MNIST test set against the ReLU ANN (paired on the same images).

Recipes (``--recipe``; the conversion is tuned for ``--T``, then ``sc.finetune`` at that T):
  ft       lcp+acp conversion, fine-tuning with cross-entropy (thresholds and leak train with the weights)
  kd       ft with knowledge distillation from the ANN's logits (``--kd-temp``, ``--kd-weight``)
  kd-cos   kd with a cosine learning rate over the planned batches
  qcfs     QCFS warm start with L = T (``--qcfs-epochs`` of ANN training), ``qcfs`` conversion, then kd-cos
  kd-cos-t1to2  warm start at T = 1: lcp+acp tuned for T = 1, kd-cos at T = 1 for ``--t1-epochs``, then kd-cos at
           ``--T`` for ``--epochs`` (a fresh cosine); the recipe's seconds count both phases

    python benchmarks/lossless.py --T 2 --recipe kd-cos --epochs 3 --lr 5e-4 --save snn-t2.pt

Appends one row per run to ``--out`` (CSV): accuracy, paired difference to the ANN and its SE (pp), wall and CPU
seconds of the whole recipe (ANN-side training + conversion + SNN training; evaluation not counted), the load
average, threads and the command. ``--save`` writes the trained SNN with ``sc.save``; ``--zoo NAME`` also writes
it into the shipped zoo as SNN entry NAME (``zoo.load(NAME)``), its manifest entry holding the sha256, the
accuracy and hits on the full test set at T, the hits on the first 1000 test images (the tests' reference), the
training seconds (CPU and wall), the threads and the command. ``--register FILE --zoo NAME`` does that for a file
an earlier run saved with ``--save FILE``, taking seconds and command from that run's CSV row:

    python benchmarks/lossless.py --register bench-out/snn-t2.pt --zoo fmnist-net4-snn-t2
"""
from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

import snnconv_ext as sc
from snnconv_ext import data, zoo
from snnconv_ext.core.files import sha256_file
from snnconv_ext.app.train import qcfs
from snnconv_ext.conversion.training import TRAINABLE_DEFAULT, NodeSwapWarning
from snnconv_ext.study.compare import paired_diff

RECIPES = ("ft", "kd", "kd-cos", "qcfs", "kd-cos-t1to2")
COSINE = ("kd-cos", "qcfs", "kd-cos-t1to2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist-net4")
    p.add_argument("--T", type=int, default=2)
    p.add_argument("--recipe", choices=RECIPES, default="kd-cos")
    p.add_argument("--epochs", type=int, default=2, help="SNN fine-tuning epochs")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threshold-lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--kd-temp", type=float, default=4.0)
    p.add_argument("--kd-weight", type=float, default=0.5)
    p.add_argument("--qcfs-epochs", type=int, default=2)
    p.add_argument("--t1-epochs", type=int, default=1, help="kd-cos-t1to2: epochs at T = 1 before --T")
    p.add_argument("--calib", type=int, default=1024)
    p.add_argument("--train-images", type=int, default=None,
                   help="fine-tune on a random N of the training images (seed 0; default all): an epoch that fits")
    p.add_argument("--test-images", type=int, default=None, help="evaluate on the first N test images (default all)")
    p.add_argument("--budget", type=float, default=900.0, help="seconds for the whole recipe (fine-tuning stops)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, help="write the trained SNN here (sc.save)")
    p.add_argument("--out", default="bench-out/lossless.csv")
    p.add_argument("--zoo", default=None, help="also write the trained SNN into the shipped zoo under this name")
    p.add_argument("--register", default=None, help="put this --save file of an earlier run into the zoo (--zoo)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    if a.register:
        if not a.zoo:
            p.error("--register needs --zoo NAME")
        return register(Path(a.register), a.zoo, Path(a.out), p)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    show = not a.no_progress
    ann = zoo.load(a.model)
    train, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    if a.test_images is not None:
        test = data.subset(test, a.test_images, seed=None)  # the first N, the same for every row
    tune = train if a.train_images is None else data.subset(train, a.train_images, seed=0)
    calib = data.loader(data.subset(train, a.calib, seed=0), batch_size=256)

    w0, c0 = time.perf_counter(), time.process_time()
    phases = {}
    if a.recipe == "qcfs":
        start, method = qcfs(ann, a.T, train, epochs=a.qcfs_epochs, seed=a.seed, progress=show), "qcfs"
    else:
        start, method = ann, "lcp+acp"
    phases["ann_s"] = time.perf_counter() - w0
    first_T = 1 if a.recipe == "kd-cos-t1to2" else a.T  # the T the conversion is tuned for and training starts at
    tuned = {} if method == "qcfs" else {"T": first_T}  # qcfs's thresholds (lambda) do not depend on T
    snn = sc.convert(start, method=method, calib_data=calib, progress=show, **tuned)
    phases["convert_s"] = time.perf_counter() - w0 - phases["ann_s"]
    distill = (ann, a.kd_temp, a.kd_weight) if a.recipe != "ft" else None
    stages = [(1, a.t1_epochs), (a.T, a.epochs)] if a.recipe == "kd-cos-t1to2" else [(a.T, a.epochs)]
    batches, stopped = 0, False
    for stage_T, stage_epochs in stages:
        left = a.budget - (time.perf_counter() - w0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NodeSwapWarning)  # thresholds and leak train: the swap is intended
            info = sc.finetune(snn, tune, T=stage_T, epochs=stage_epochs, lr=a.lr, threshold_lr=a.threshold_lr,
                               batch_size=a.batch_size, distill=distill, seed=a.seed, max_seconds=max(left, 1.0),
                               schedule="cosine" if a.recipe in COSINE else "constant",
                               record={"model": a.model, "recipe": a.recipe}, progress=show)
        batches, stopped = batches + info["batches"], stopped or info["stopped_by_time"]
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0

    ok_snn = sc.hits(snn, test, timesteps=[a.T])[a.T]
    with torch.no_grad():
        ok_ann = torch.cat([ann(x).argmax(1) == y for x, y in data.loader(test, batch_size=1000)])
    diff, se = paired_diff(ok_snn, ok_ann)
    row = {"model": a.model, "T": a.T, "recipe": a.recipe, "epochs": a.epochs, "lr": a.lr, "kd_temp": a.kd_temp,
           "kd_weight": a.kd_weight, "qcfs_epochs": a.qcfs_epochs if a.recipe == "qcfs" else 0,
           "accuracy": round(100.0 * ok_snn.float().mean().item(), 2),
           "ann_accuracy": round(100.0 * ok_ann.float().mean().item(), 2), "diff_pp": round(diff, 2),
           "se_pp": round(se, 2), "test_images": len(test), "train_images": len(tune), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
           **{k: round(v, 1) for k, v in phases.items()}, "batches": batches, "stopped_by_time": stopped,
           "t1_epochs": a.t1_epochs if a.recipe == "kd-cos-t1to2" else 0,
           "load1": round(os.getloadavg()[0], 2), "threads": a.threads,
           "command": "python " + " ".join(shlex.quote(s) for s in sys.argv)}
    print(row)
    if a.save:
        sc.save(snn, a.save)
    if a.zoo:
        sc.save(snn, zoo.ZOO_DIR / f"{a.zoo}.pt", overwrite=True)
        write_entry(a.zoo, row, a, ok_snn, test_images=len(test))
    append_row(Path(a.out), row)


def append_row(out: Path, row: dict) -> None:
    """Append ``row`` to the CSV ``out``; a column the file lacks is added (older rows leave it empty)."""
    rows = list(csv.DictReader(out.open(newline=""))) if out.exists() else []
    fields = list(dict.fromkeys([*(rows[0] if rows else {}), *row]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows([*rows, row])



def write_entry(name: str, row: dict, a: argparse.Namespace, ok_snn: torch.Tensor, test_images: int,
                registered_with: str | None = None) -> None:
    """The manifest entry of SNN zoo entry ``name`` (its file ``name.pt`` is written): the run's row and arguments
    ``a`` plus the sha256, size and the hits that the zoo's tests recompute from the file."""
    file = zoo.ZOO_DIR / f"{name}.pt"
    entry = {"kind": zoo.SNN_KIND, "file": file.name, "sha256": sha256_file(file), "size_bytes": file.stat().st_size,
             "from": row["model"], "dataset": "fashion_mnist", "T": int(row["T"]),
             "method": "qcfs" if a.recipe == "qcfs" else "lcp+acp", "recipe": row["recipe"],
             "trainable": list(TRAINABLE_DEFAULT), "epochs": int(row["epochs"]), "lr": float(row["lr"]),
             "threshold_lr": a.threshold_lr, "batch_size": a.batch_size, "seed": a.seed, "calib_images": a.calib,
             "distill": None if row["recipe"] == "ft" else {"temperature": float(row["kd_temp"]),
                                                             "weight": float(row["kd_weight"])},
             "schedule": "cosine" if row["recipe"] in COSINE else "constant",
             "t1_epochs": int(row.get("t1_epochs") or 0),
             "convert_T": 1 if row["recipe"] == "kd-cos-t1to2" else int(row["T"]),  # the T lcp+acp was tuned for
             "qcfs_epochs": int(row["qcfs_epochs"]),
             "test_accuracy": round(100.0 * ok_snn.float().mean().item(), 2), "test_hits": int(ok_snn.sum()),
             "test_images": test_images, "hits_first_1000": int(ok_snn[:1000].sum()),
             "ann_accuracy": float(row["ann_accuracy"]), "diff_pp": float(row["diff_pp"]), "se_pp": float(row["se_pp"]),
             "train_cpu_s": float(row["cpu_s"]), "train_wall_s": float(row["wall_s"]), "threads": int(row["threads"]),
             "load1": float(row["load1"]), "budget": "whole recipe <= 15 min on 2 cores (about 900 CPU s)",
             "torch": torch.__version__, "command": row["command"]}
    if registered_with:  # the run saved the file (--save); this command put it into the zoo
        entry["register_command"] = registered_with
    zoo.write_manifest_entry(name, entry)
    print(f"zoo entry {name}: {entry['test_accuracy']} % at T = {entry['T']}, sha256 {entry['sha256'][:12]}")


def register(file: Path, name: str, csv_path: Path, p: argparse.ArgumentParser) -> None:
    """Put the SNN an earlier run saved to ``file`` into the zoo as ``name``: the run's CSV row gives its seconds
    and command (parsed again for its settings); its accuracy is measured again on the full test set (and must
    match the row's)."""
    rows = [r for r in csv.DictReader(csv_path.open()) if f"--save {file}" in r["command"]]
    if not rows:
        raise SystemExit(f"--register: no row of {csv_path} saved {file} (its command has no '--save {file}')")
    row = rows[-1]
    snn = sc.load(file)
    test = data.fashion_mnist("test")
    ok = sc.hits(snn, test, timesteps=[int(row["T"])])[int(row["T"])]
    acc = round(100.0 * ok.float().mean().item(), 2)
    if acc != float(row["accuracy"]):
        raise SystemExit(f"--register: {file} gives {acc} % at T = {row['T']}, its row says {row['accuracy']} %")
    sc.save(snn, zoo.ZOO_DIR / f"{name}.pt", overwrite=True)
    write_entry(name, row, p.parse_args(shlex.split(row["command"])[2:]), ok, test_images=len(test),
                registered_with="python " + " ".join(shlex.quote(s) for s in sys.argv))


if __name__ == "__main__":
    main()
