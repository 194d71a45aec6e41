"""``snnconv`` command line: ``bench`` (our methods vs SpikingJelly), ``demo`` (``make demo``), ``train`` (zoo models),
``finetune``, ``methods``.

Misuse (a bad option, an unknown model or method, a device this machine lacks, an ``--out`` that cannot be written
or holds an earlier run) ends with exit status 2 and one line on stderr, before any work starts; the values are
checked by the package's validators (``snnconv_ext.core.checks``), so the API and the command line say the same.
``SNNCONV_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

from ..assets import zoo
from ..conversion.auto import OPTIONS as AUTO_OPTIONS
from ..conversion.backends import plugin
from ..conversion.registry import get, methods
from ..conversion.training import check_resume
from ..core.checks import (check_count, check_device, check_out_dir, check_rate, check_T, check_timesteps,
                           check_trainable, is_number)
from . import bench, demo, train, tuning
from .baselines import SJ_RECIPES
from .bench import parse_options

__all__ = ["main", "UsageError"]


class UsageError(Exception):
    """A command-line mistake: reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + error and exits; we want one line
        sub = self.prog.split()[1:]  # "snnconv bench" -> ["bench"]
        raise UsageError(f"{' '.join(sub)}: {message}" if sub else message)


def _one_line(exc: BaseException) -> str:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(msg).split()) or type(exc).__name__


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            check_count(v, f"--{name.replace('_', '-')}")


def _rates(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            check_rate(v, f"--{name.replace('_', '-')}")


def parse_timesteps(spec: str) -> list:
    """``"1,4,16"`` -> ``[1, 4, 16]``, checked by the package's one timesteps validator."""
    try:
        return check_timesteps([int(t) for t in spec.split(",")], "--timesteps")
    except ValueError as exc:
        raise UsageError(f"--timesteps must be comma-separated integers >= 1, got {spec!r} ({_one_line(exc)})") \
            from None


def _check_bench(args: argparse.Namespace) -> None:
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    if not models:
        raise UsageError("--model: give at least one zoo entry")
    for m in models:
        if m not in zoo.ENTRIES:
            raise UsageError(f"--model: unknown zoo model {m!r}; known: {', '.join(zoo.names())}")
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not names:
        raise UsageError("--methods: give at least one method")
    for name in names:
        if name not in SJ_RECIPES and name not in methods() and name != "auto":
            raise UsageError(f"--methods: unknown method {name!r}; ours: {', '.join(methods())}; "
                             f"SpikingJelly's: {', '.join(SJ_RECIPES)}")
    parse_timesteps(args.timesteps)
    _positive(args, "n_test", "n_calib", "batch_size", "chunk", "threads")
    if getattr(args, "device", None) is not None:
        check_device(args.device, "--device")
    try:
        options = parse_options(args.method_options)
        method_options = {k: v for k, v in options.items() if k not in AUTO_OPTIONS}
        for name in names:
            if name not in SJ_RECIPES and name != "auto":
                get(name, **method_options)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--method-options: {_one_line(exc)}") from None
    check_out_dir(args.out)


def _check_train(args: argparse.Namespace) -> None:
    _positive(args, "epochs", "batch_size", "threads", "init_images")
    _rates(args, "lr")
    if args.alpha_decay is not None and not (is_number(args.alpha_decay) and args.alpha_decay >= 0):
        raise UsageError(f"--alpha-decay must be a finite number >= 0, got {args.alpha_decay}")
    check_device(args.device, "--device")
    check_out_dir(train.out_folder(args))


def _check_finetune(args: argparse.Namespace) -> None:
    if args.model not in zoo.ENTRIES:
        raise UsageError(f"--model: unknown zoo model {args.model!r}; known: {', '.join(zoo.names())}")
    if args.method not in methods():
        raise UsageError(f"--method: unknown method {args.method!r}; ours: {', '.join(methods())}")
    check_T(args.T, "--T")
    _positive(args, "epochs", "batch_size", "max_batches", "calib", "test", "threads")
    _rates(args, "lr", "threshold_lr", "max_minutes")
    plugin("spikingjelly")  # registers the knobs its nodes can train
    check_trainable(tuning.trainable(args), "--trainable")
    check_device(args.device, "--device")
    check_out_dir(args.out)
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out, --overwrite replaces it: give one")
    ckpt = out / "checkpoint.pt"
    if args.resume:
        if not ckpt.is_file():
            raise UsageError(f"--resume: there is no checkpoint {ckpt} to continue")
        check_resume(ckpt, tuning.record(args))
        return
    earlier = [f for f in tuning.FILES if (out / f).exists()]
    if earlier and not args.overwrite:
        raise UsageError(f"--out {args.out!r} holds {', '.join(earlier)} of an earlier run: --resume continues it, "
                         "--overwrite replaces it, or choose another --out")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``snnconv`` console script."""
    p = _Parser(prog="snnconv", description="ANN-to-SNN conversion: benchmarks, zoo training, methods.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="convert a zoo model with several methods and compare accuracy against T")
    bench.add_arguments(b)
    b.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: one per core; book/performance.md: Threads and busy machines)")
    t = sub.add_parser("train", help="train a zoo entry reproducibly")
    train.add_arguments(t)
    f = sub.add_parser("finetune", help="convert a zoo model and fine-tune the SNN (surrogate gradients, torchrun-able)")
    tuning.add_arguments(f)
    d = sub.add_parser("demo", help="each paper's best method beside SpikingJelly's two strongest recipes "
                                    "(Net4 and a BN net, T = 1..16): marked table, results.csv, demo.png")
    demo.add_arguments(d)
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    sub.add_parser("methods", help="list registered conversion methods")
    try:
        args = p.parse_args(argv)
        if args.cmd == "bench":
            _check_bench(args)
            if args.threads:
                import torch
                torch.set_num_threads(args.threads)
            return bench.run(args)
        if args.cmd == "demo":
            _positive(args, "threads")
            if getattr(args, "device", None) is not None:
                check_device(args.device, "--device")
            check_out_dir(args.out)
            if args.threads:
                import torch
                torch.set_num_threads(args.threads)
            return demo.run(args)
        if args.cmd == "train":
            _check_train(args)
            train.run(args)
            return 0
        if args.cmd == "finetune":
            _check_finetune(args)
            tuning.run(args)
            return 0
        for name in methods():
            print(f"{name:<22} {get(name).description}")
        return 0
    except KeyboardInterrupt:
        print("snnconv: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, KeyError, TypeError, OSError) as exc:
        if os.environ.get("SNNCONV_DEBUG"):
            raise
        print(f"snnconv: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
