"""``snnconv finetune``: convert a zoo model, evaluate it, fine-tune the SNN for ``--T`` steps (surrogate gradients,
``torchrun``-able), evaluate again and write ``result.json`` (:func:`snnconv_ext.conversion.training.finetune`).

``--out`` holds one run: ``checkpoint.pt`` (it records the model, method, options, T and trained knobs) and
``result.json``. An ``--out`` with files of an earlier run is refused unless ``--resume`` continues that run (with the
same settings: a difference is named) or ``--overwrite`` replaces it."""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.distributed as dist

from ..assets import data, zoo
from ..conversion.auto import convert
from ..conversion.registry import get as get_method
from ..conversion.training import TRAINABLE_DEFAULT, NodeSwapWarning, finetune, run_record
from ..core.simulation import ann_accuracy, evaluate

__all__ = ["add_arguments", "run", "record", "trainable", "FILES"]

FILES = ("checkpoint.pt", "result.json")  # what one run writes into --out


def add_arguments(parser) -> None:
    """Add the ``snnconv finetune`` options to ``parser``."""
    parser.add_argument("--model", required=True, help="zoo entry (e.g. fmnist-net4)")
    parser.add_argument("--method", default="datta", help="conversion method (snnconv methods)")
    parser.add_argument("--T", type=int, default=2, help="time steps for conversion, training and evaluation")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the weights")
    parser.add_argument("--threshold-lr", type=float, default=None, help="of thresholds and leak (default: --lr)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (split over torchrun processes)")
    parser.add_argument("--max-batches", type=int, default=None, help="batches per epoch (default: all)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop fine-tuning after this many minutes")
    parser.add_argument("--calib", type=int, default=1024, help="calibration images (training set)")
    parser.add_argument("--test", type=int, default=None, help="test images to evaluate (default: all)")
    parser.add_argument("--out", default="finetune-out", help="directory for checkpoint.pt and result.json")
    parser.add_argument("--trainable", default=",".join(TRAINABLE_DEFAULT),
                        help="neuron knobs trained with the weights, comma-separated; 'none': weights only (SpikingJelly's "
                             "own IFNodes stay)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (same settings)")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")


def trainable(args) -> Tuple[str, ...]:
    """``--trainable`` as knob names (``none`` or empty: weights only)."""
    spec = args.trainable.strip()
    return () if spec in ("", "none") else tuple(k.strip() for k in spec.split(",") if k.strip())


def record(args) -> Dict:
    """What ``checkpoint.pt`` records and a ``--resume`` must match (``training.run_record``)."""
    options = {"calib": args.calib, **({"T": args.T} if _method_fields(args.method) else {})}
    return run_record(None, args.T, trainable(args), "datta",
                      {"model": args.model, "method": args.method, "options": options})


def run(args) -> Dict:
    """Convert a zoo model, evaluate, fine-tune for ``--T`` steps, evaluate again; write ``result.json``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    out = Path(args.out)
    rank = int(os.environ.get("RANK", "0"))
    show = not args.no_progress and rank == 0
    if args.overwrite and rank == 0 and (out / "result.json").exists():
        (out / "result.json").unlink()  # no result of the old run beside the new checkpoint
    ann = zoo.load(args.model, map_location=device)
    train = data.fashion_mnist("train")
    test = data.fashion_mnist("test")
    if args.test is not None:
        test = data.subset(test, args.test)
    calib = data.loader(data.subset(train, args.calib), batch_size=256)
    t0 = time.perf_counter()
    snn = convert(ann, method=args.method, calib_data=calib, T=args.T, progress=show, device=device) \
        if "T" in _method_fields(args.method) else convert(ann, method=args.method, calib_data=calib, progress=show,
                                                           device=device)
    t_convert = time.perf_counter() - t0
    res: Dict = {"model": args.model, "method": args.method, "T": args.T, "convert_seconds": t_convert}
    if rank == 0:
        res["ann_accuracy"] = ann_accuracy(ann, test)
        res["accuracy_converted"] = evaluate(snn, test, timesteps=[args.T], progress=show)[args.T]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", NodeSwapWarning)
        info = finetune(snn, train, T=args.T, epochs=args.epochs, lr=args.lr, threshold_lr=args.threshold_lr,
                        batch_size=args.batch_size, trainable=trainable(args), checkpoint=out / "checkpoint.pt",
                        resume=args.resume, overwrite=args.overwrite, record=record(args),
                        max_batches=args.max_batches, seed=args.seed, progress=show, device=device,
                        max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    for w in said:  # the node swap as one line of the command's output; anything else as Python shows it
        if issubclass(w.category, NodeSwapWarning):
            if rank == 0:
                print(f"note: {w.message} (--trainable none)")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    res.update(record=info["record"], trainable=info["trainable"], swapped=info["swapped"],
               finetune_seconds=info["seconds"], loss=info["loss"], world_size=info["world_size"],
               batches=info["batches"], batch_size=args.batch_size, lr=args.lr, stopped_by_time=info["stopped_by_time"],
               thresholds=info["thresholds"], leaks=info["leaks"])
    if rank == 0:
        res["accuracy_finetuned"] = evaluate(snn, test, timesteps=[args.T], progress=show)[args.T]
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(res, indent=1))
        print(f"{args.model} {args.method} T={args.T}: ANN {res['ann_accuracy']:.2f}%, converted "
              f"{res['accuracy_converted']:.2f}%, fine-tuned {res['accuracy_finetuned']:.2f}% "
              f"({info['seconds']:.0f} s of fine-tuning, {info['world_size']} process(es))")
    if dist.is_initialized():
        dist.destroy_process_group()
    return res


def _method_fields(name: str) -> Tuple[str, ...]:
    """``("T",)`` when the method is tuned for a number of time steps."""
    return ("T",) if get_method(name).T is not None else ()
