"""``snnconv`` command line: ``bench`` (our methods vs SpikingJelly), ``train`` (zoo models), ``finetune``, ``methods``."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``snnconv`` console script."""
    from . import bench, train
    import importlib
    finetune = importlib.import_module(".finetune", __package__)  # the module (the package exports the function)
    from .methods import get, methods

    p = argparse.ArgumentParser(prog="snnconv", description="ANN-to-SNN conversion: benchmarks, zoo training, methods.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="convert a zoo model with several methods and compare accuracy against T")
    bench.add_arguments(b)
    t = sub.add_parser("train", help="train a zoo entry reproducibly")
    train.add_arguments(t)
    f = sub.add_parser("finetune", help="convert a zoo model and fine-tune the SNN (surrogate gradients, torchrun-able)")
    finetune.add_arguments(f)
    sub.add_parser("methods", help="list registered conversion methods")
    args = p.parse_args(argv)
    if args.cmd == "bench":
        return bench.run(args)
    if args.cmd == "train":
        return train.run(args) or 0
    if args.cmd == "finetune":
        finetune.run(args)
        return 0
    for name in methods():
        print(f"{name:<22} {get(name).description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
