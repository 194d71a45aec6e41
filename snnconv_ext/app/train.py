"""``snnconv train``: train a zoo model (ReLU ANN) with a recorded, seeded recipe and store the
weights plus a manifest entry, so ``zoo.load`` can verify and reuse them. The files go to your zoo folder
(``zoo.user_dir()``) or ``--out``, never into the shipped zoo unless ``--out`` names it."""

from __future__ import annotations

import argparse
import copy
import math
import platform
import shlex
import time
from pathlib import Path
from typing import Any, Callable, List, Sequence

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset
from tqdm import tqdm

from ..conversion import thresholds
from ..core.activations import QCFS, Clamp
from ..core.checks import check_count, check_labels, check_rate, check_training_data, is_number
from ..assets import data, models, zoo

__all__ = ["add_arguments", "out_folder", "run", "main", "augment_batch", "evaluate", "fit", "init_levels", "swap_relus", "qcfs",
           "DATASETS"]


def _fashion_mnist(split: str, root: str | None) -> TensorDataset:
    return data.fashion_mnist(split, root=root)


def _digits(split: str, root: str | None) -> TensorDataset:
    return data.digits(split)


def _fashion_mnist32(split: str, root: str | None) -> TensorDataset:
    return data.fashion_mnist32(split, root=root)


def _cifar10(split: str, root: str | None) -> TensorDataset:
    return data.cifar10(root, split)


# dataset name -> loader(split, root) returning a TensorDataset (images [N,C,H,W] in [0,1], labels).
DATASETS: dict[str, Callable[[str, str | None], TensorDataset]] = {
    "fashion_mnist": _fashion_mnist, "fashion_mnist32": _fashion_mnist32, "digits": _digits, "cifar10": _cifar10,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``snnconv train`` options to ``parser``."""
    parser.add_argument("--model", required=True,
                        help=f"zoo entry to train ({', '.join(zoo.names())}) or a new name "
                             "together with --arch and --dataset")
    parser.add_argument("--epochs", type=int, default=None, help="default: the entry's recipe")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (cosine decay to 0)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", default=None,
                        help="'none' or '+'-joined of cropN (zero-pad N, random crop) and flip "
                             "(horizontal); default: the entry's recipe")
    parser.add_argument("--arch", default=None, choices=sorted(models.ARCHS),
                        help="override the entry's architecture")
    parser.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                        help="override the entry's dataset")
    parser.add_argument("--act", default=None, help="activation name (activations.BY_NAME)")
    parser.add_argument("--data-root", default=None, help="dataset directory (default: auto)")
    parser.add_argument("--out", default=None,
                        help="directory for <model>.pt and manifest.json (default: your zoo folder, $SNNCONV_ZOO or "
                             "~/.local/share/snnconv/zoo; the shipped zoo only when named here)")
    parser.add_argument("--init", default=None,
                        help="stage II (TTRBR Sec. 4): start from this stage-I checkpoint (zoo name, looked up in "
                             "--out then the zoo, or a .pt path); default: the entry's recipe")
    parser.add_argument("--alpha-decay", type=float, default=None,
                        help="L2 penalty on the Clamp upper levels alpha (TTRBR Sec. 4); default: the entry's recipe")
    parser.add_argument("--optimizer", default=None, choices=("adam", "sgd"),
                        help="adam (weight decay on alpha: (wd/2)*||alpha||^2) or sgd (momentum 0.9, TTRBR App. D; "
                             "alpha-decay*||alpha||^2 added to the loss); default: sgd for stage II, else adam")
    parser.add_argument("--init-images", type=int, default=None,
                        help="with --init: training images whose 99.9th percentile starts each alpha/lambda; "
                             "default: the entry's recipe (640)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="train on the first N training images only (0: all); default: the entry's recipe")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads while training")
    parser.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")


def _parse_augment(spec: str) -> tuple[int, bool]:
    """'none' | 'crop2' | 'flip' | 'crop2+flip' -> (crop padding, flip)."""
    pad, flip = 0, False
    if spec in ("", "none"):
        return pad, flip
    for tok in spec.split("+"):
        if tok == "flip":
            flip = True
        elif tok.startswith("crop") and tok[4:].isdigit():
            pad = int(tok[4:])
        else:
            raise ValueError(f"unknown augmentation {tok!r} in {spec!r}; use none, cropN, flip")
    return pad, flip


def augment_batch(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop (after zero padding by ``pad``) and random horizontal flip of a [B,C,H,W] batch."""
    b, c, h, w = x.shape
    if pad > 0:
        xp = nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
        x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        m = torch.rand(b, generator=gen) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    return x


@torch.no_grad()
def evaluate(model: nn.Module, ds: TensorDataset, batch_size: int = 1000) -> float:
    """Top-1 accuracy (%) of ``model`` on ``ds`` (on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    x_all, y_all = ds.tensors[0], ds.tensors[1]
    correct = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, len(y_all), batch_size):
        yb = y_all[i:i + batch_size].to(device)
        correct += (model(x_all[i:i + batch_size].to(device)).argmax(1) == yb).sum()
    return 100.0 * int(correct) / max(len(y_all), 1)


def out_folder(args: argparse.Namespace) -> Path:
    """Where ``snnconv train`` writes: ``--out``, else your zoo folder (``zoo.user_dir()``), never the shipped zoo."""
    return Path(args.out).expanduser() if args.out is not None else zoo.user_dir()


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Merge command-line options with the zoo entry's recipe."""
    entry = zoo.ENTRIES.get(args.model)
    if entry is None and (args.arch is None or args.dataset is None):
        raise ValueError(f"{args.model!r} is not a zoo entry ({', '.join(zoo.names())}); "
                         "give --arch and --dataset to train a new model")
    pick = lambda v, attr, dflt: v if v is not None else (getattr(entry, attr) if entry else dflt)
    r = {
        "model": args.model,
        "arch": pick(args.arch, "arch", None),
        "dataset": pick(args.dataset, "dataset", None),
        "act": pick(args.act, "act", "relu"),
        "epochs": pick(args.epochs, "epochs", 10),
        "lr": pick(args.lr, "lr", 1e-3),
        "batch_size": pick(args.batch_size, "batch_size", 128),
        "augment": pick(args.augment, "augment", "none"),
        "init": pick(getattr(args, "init", None), "init", ""),
        "alpha_decay": pick(getattr(args, "alpha_decay", None), "alpha_decay", 0.0),
        "optimizer": getattr(args, "optimizer", None) or (entry.optimizer if entry else None) or None,
        "init_images": pick(getattr(args, "init_images", None), "init_images", 640),
        "train_images": pick(getattr(args, "train_images", None), "train_images", 0),
        "seed": args.seed,
        "data_root": args.data_root,
        "out": out_folder(args),
        "device": torch.device(getattr(args, "device", None) or "cpu"),
    }
    if r["optimizer"] is None:  # TTRBR App. D: stage II by SGD with momentum; stage I as before
        r["optimizer"] = "sgd" if r["init"] else "adam"
    if r["train_images"] < 0:
        raise ValueError(f"train: --train-images must be >= 0, got {r['train_images']}")
    if r["dataset"] not in DATASETS:
        raise ValueError(f"unknown dataset {r['dataset']!r}; known: {sorted(DATASETS)}")
    _parse_augment(r["augment"])
    return r


def _command(r: dict[str, Any]) -> str:
    """The explicit ``snnconv train`` command line that reproduces this run."""
    argv = ["snnconv", "train", "--model", r["model"], "--epochs", str(r["epochs"]),
            "--lr", repr(r["lr"]), "--batch-size", str(r["batch_size"]), "--seed", str(r["seed"]),
            "--augment", r["augment"]]
    entry = zoo.ENTRIES.get(r["model"])
    for key in ("arch", "dataset", "act"):
        if entry is None or getattr(entry, key) != r[key]:
            argv += [f"--{key}", r[key]]
    if r["init"] and (entry is None or entry.init != r["init"]):
        argv += ["--init", r["init"]]
    if r["alpha_decay"] and (entry is None or entry.alpha_decay != r["alpha_decay"]):
        argv += ["--alpha-decay", repr(r["alpha_decay"])]
    if r["optimizer"] != ((entry.optimizer if entry else "") or ("sgd" if r["init"] else "adam")):
        argv += ["--optimizer", r["optimizer"]]
    if r["init"] and r["init_images"] != (entry.init_images if entry else 640):
        argv += ["--init-images", str(r["init_images"])]
    if r["train_images"]:
        argv += ["--train-images", str(r["train_images"])]
    if r["data_root"] is not None:
        argv += ["--data-root", str(r["data_root"])]
    if Path(r["out"]).resolve() not in (zoo.ZOO_DIR, zoo.user_dir().resolve()):  # where, not what: no --out
        argv += ["--out", str(r["out"])]
    return shlex.join(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate, save ``<out>/<model>.pt`` (fp16 when lossless) and update the manifest;
    returns the manifest entry."""
    r = _resolve(args)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return _train(r, show=not getattr(args, "no_progress", False))
    finally:
        torch.set_num_threads(prev_threads)


def _init_from(model: nn.Module, r: dict[str, Any], train_ds: TensorDataset) -> None:
    """Stage II of TTRBR (Sec. 4), and QCFS's warm start: load the ReLU net's weights; each Clamp's alpha (QCFS's
    lambda) starts at the 99.9th percentile of its input on the first ``init_images`` training images, so
    fine-tuning starts close to the ReLU net's function."""
    init = r["init"]
    if init.endswith(".pt"):
        state = zoo.read_state_dict(init)
    else:
        root = r["out"] if init in zoo.read_manifest(r["out"]) else None  # --out first, then the zoo
        info = zoo.read_manifest(root).get(init)
        if info is None:
            raise FileNotFoundError(f"stage-I model {init!r} is not in {r['out']} or {zoo.ZOO_DIR}; train it first: "
                                    f"snnconv train --model {init} --out {r['out']}")
        state = zoo.read_state_dict(zoo.path(init, root), info["sha256"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("alpha") for k in missing):
        raise ValueError(f"stage-I checkpoint {init!r} does not match {r['arch']}: missing {missing}, "
                         f"unexpected {unexpected}")
    n = r.get("init_images", 640)
    init_levels(model, train_ds.tensors[0][:n], r["batch_size"])


@torch.no_grad()
def init_levels(model: nn.Module, images: torch.Tensor, batch_size: int = 128, p: float = 99.9) -> list[float]:
    """Set each Clamp's alpha (QCFS's lambda) to the ``p``-th percentile of its input while every clamp acts as a
    ReLU (TTRBR Sec. 4; Bu et al. 2022 Sec. 5's lambda initialisation); returns the levels, in module order."""
    clamps = [m for m in model.modules() if isinstance(m, Clamp)]
    if not clamps:
        raise ValueError(f"{type(model).__name__} has no Clamp/QCFS activation whose level could be initialised")
    levels = {id(m): thresholds.get("percentile", p=p, cap=1 << 20) for m in clamps}
    hooks = [m.register_forward_pre_hook(lambda m, a: levels[id(m)].observe(a[0])) for m in clamps]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for m in clamps:  # measure the ReLU net: every clamp (QCFS: every quantiser) acts as a ReLU meanwhile
        m.forward = torch.relu
    try:
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size].to(device))
    finally:
        for m in clamps:
            del m.forward
        for h in hooks:
            h.remove()
        model.train(was_training)
    for m in clamps:
        m.alpha.fill_(max(float(levels[id(m)].compute()), 1e-2))
    return [float(m.alpha) for m in clamps]


def swap_relus(model: nn.Module, make: Callable[[], nn.Module]) -> int:
    """Replace every ``nn.ReLU`` module of ``model`` in place by ``make()``; returns how many (0 is an error:
    a functional ``F.relu`` cannot be swapped)."""
    count = 0
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if type(child) is nn.ReLU:
                setattr(mod, child_name, make())
                count += 1
    if count == 0:
        raise ValueError(f"{type(model).__name__} has no nn.ReLU module to replace (functional relu calls cannot "
                         "be swapped: use nn.ReLU modules)")
    return count


def qcfs(ann: nn.Module, levels: int, train_data: TensorDataset, epochs: int = 10, lr: float = 1e-3,
         batch_size: int = 128, init_images: int = 1024, augment: str = "none", seed: int = 0,
         device: torch.device | str = "cpu", checkpoint: str | Path | None = None, progress: bool = True) -> nn.Module:
    """QCFS warm start (Bu et al. 2022): a copy of the ReLU ``ann`` with every ReLU replaced by a QCFS activation
    with ``levels`` levels, each lambda at the 99.9th percentile of its ReLU input on the first ``init_images``
    training images, fine-tuned (Adam, cosine) for ``epochs``; saved to ``checkpoint`` if given. Convert the
    result with ``method="qcfs"``."""

    _check_fit(ann, train_data, epochs, lr, batch_size, 0.0)
    check_count(init_images, "qcfs: init_images")
    model = copy.deepcopy(ann).cpu()
    swap_relus(model, lambda: QCFS(levels=levels))
    torch.manual_seed(seed)
    init_levels(model, train_data.tensors[0][:init_images], batch_size)
    fit(model, train_data, epochs, lr, batch_size, augment, seed, "adam", 0.0, device, progress, f"qcfs L={levels}")
    if checkpoint is not None:
        zoo.save_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()}, checkpoint)
    return model.eval()


def stage2_start(arch: str, init: str, train_ds: TensorDataset, batch_size: int = 128) -> nn.Module:
    """The model stage II starts from: ``arch`` with clamp activations, the zoo's stage-I weights ``init``, and each
    alpha at the 99.9th percentile of its input on the first five training batches (what ``--init`` does)."""
    x0 = train_ds.tensors[0]
    model = models.build(arch, "clamp", in_channels=int(x0.shape[1]), image_size=int(x0.shape[2]),
                         num_classes=int(train_ds.tensors[1].max()) + 1)
    _init_from(model, {"init": init, "out": zoo.ZOO_DIR, "arch": arch, "batch_size": batch_size}, train_ds)
    return model.eval()


SGD_MOMENTUM = 0.9  # TTRBR App. D: stage II by SGD with momentum 0.9


def cosine_lr(lr: float, steps: int) -> List[float]:
    """The learning rate of each of ``steps`` batches under ``fit``'s schedule (cosine annealing to 0, stepped per
    batch; ``CosineAnnealingLR``'s closed form)."""
    return [lr * 0.5 * (1 + math.cos(math.pi * i / steps)) for i in range(steps)]


def penalty_shrink(lr: float, alpha_decay: float, steps: int) -> float:
    """Relative change of an alpha that only the L2 term ``alpha_decay * alpha^2`` moves, over ``steps`` batches of
    ``fit``'s SGD stage II (momentum ``SGD_MOMENTUM``, ``cosine_lr``): the recursion run exactly on one scalar. The
    regularizer's own share of how far stage II moves alpha; the loss moves it by the rest."""
    a, buf = 1.0, 0.0
    for eta in cosine_lr(lr, steps):
        buf = SGD_MOMENTUM * buf + 2 * alpha_decay * a   # torch.optim.SGD, dampening 0
        a -= eta * buf
    return a - 1.0


def _check_fit(model: nn.Module, train_ds: TensorDataset, epochs: int, lr: float, batch_size: int,
               alpha_decay: float) -> None:
    """Refuse, before any work, counts and rates out of range and training data with non-finite images or labels
    that are not class indices of ``model``'s outputs."""
    check_count(epochs, "train: epochs")
    check_rate(lr, "train: lr")
    check_count(batch_size, "train: batch_size")
    if not (is_number(alpha_decay) and alpha_decay >= 0):
        raise ValueError(f"train: alpha_decay must be a finite number >= 0, got {alpha_decay!r}")
    ds = check_training_data(train_ds, "train: train_data")
    if len(ds) == 0:
        raise ValueError("train: train_data is empty")
    was_training = model.training
    model.eval()  # one image, BN statistics untouched
    with torch.no_grad():
        n_classes = model(ds[0][0].unsqueeze(0).to(next(model.parameters()).device)).shape[-1]
    model.train(was_training)
    if isinstance(ds, TensorDataset):
        check_labels(ds.tensors[1], n_classes, "train: train_data labels")


def fit(model: nn.Module, train_ds: TensorDataset, epochs: int, lr: float = 1e-3, batch_size: int = 128,
        augment: str = "none", seed: int = 0, optimizer: str = "adam", alpha_decay: float = 0.0,
        device: torch.device | str = "cpu", show: bool = True, desc: str = "train") -> float:
    """Train ``model`` in place with cross-entropy and a cosine learning rate stepped per batch; Clamp/QCFS levels
    get their own weight-decay group (Adam) or an L2 term (SGD, TTRBR App. D) and stay positive. Returns seconds."""
    _check_fit(model, train_ds, epochs, lr, batch_size, alpha_decay)
    model.to(device)
    sampler_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    pad, flip = _parse_augment(augment)
    # BatchSampler + batch_size=None: one tensor-index per batch (fast on a TensorDataset).
    sampler = BatchSampler(RandomSampler(train_ds, generator=sampler_gen), batch_size, drop_last=False)
    loader = DataLoader(train_ds, sampler=sampler, batch_size=None)
    clamps = [m for m in model.modules() if isinstance(m, Clamp)]
    alphas = [m.alpha for m in clamps]
    others = [p for p in model.parameters() if all(p is not a for a in alphas)]
    if optimizer == "adam":
        # weight_decay wd adds wd*alpha to alpha's gradient: the penalty (wd/2)*||alpha||^2
        groups = [{"params": others}] + ([{"params": alphas, "weight_decay": alpha_decay}] if alphas else [])
        opt = torch.optim.Adam(groups, lr=lr)
        penalty = 0.0
    elif optimizer == "sgd":
        # TTRBR Sec. 4 / App. D: SGD with momentum 0.9, an L2 regularizer on alpha in the loss
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=SGD_MOMENTUM)
        penalty = alpha_decay
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam' or 'sgd'")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * len(sampler), 1))
    loss_fn = nn.CrossEntropyLoss()

    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        bar = tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", disable=not show, leave=True, unit="batch")
        tot_loss, tot_ok, seen = 0.0, 0, 0
        for xb, yb in bar:
            xb = augment_batch(xb, pad, flip, aug_gen).to(device)
            yb = yb.to(device)
            out = model(xb)
            loss = loss_fn(out, yb)
            if penalty and alphas:
                loss = loss + penalty * sum(a.pow(2).sum() for a in alphas)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for m in clamps:
                m.project_()  # alpha stays > 0
            tot_loss += loss.item() * len(yb)
            tot_ok += (out.argmax(1) == yb).sum().item()
            seen += len(yb)
            bar.set_postfix(loss=f"{tot_loss / seen:.4f}", acc=f"{100 * tot_ok / seen:.2f}", refresh=False)
        if not math.isfinite(tot_loss):
            raise RuntimeError(f"training {desc} diverged (loss {tot_loss}) in epoch {epoch + 1}")
    model.eval()
    return time.perf_counter() - t0


def _train(r: dict[str, Any], show: bool) -> dict[str, Any]:
    train_ds = DATASETS[r["dataset"]]("train", r["data_root"])
    test_ds = DATASETS[r["dataset"]]("test", r["data_root"])
    if r["train_images"]:
        if r["train_images"] > len(train_ds):
            raise ValueError(f"train: --train-images {r['train_images']} exceeds the {len(train_ds)} training images")
        train_ds = TensorDataset(*(t[:r["train_images"]] for t in train_ds.tensors))
    x0 = train_ds.tensors[0]
    num_classes = int(max(train_ds.tensors[1].max(), test_ds.tensors[1].max()).item()) + 1
    arch_kwargs = {"in_channels": int(x0.shape[1]), "image_size": int(x0.shape[2]),
                   "num_classes": num_classes}

    torch.manual_seed(r["seed"])
    model = models.build(r["arch"], r["act"], **arch_kwargs)
    if r["init"]:
        _init_from(model, r, train_ds)
    n_params = sum(p.numel() for p in model.parameters())
    alphas = [m.alpha for m in model.modules() if isinstance(m, Clamp)]
    alpha0 = [float(a.detach()) for a in alphas]
    train_time = fit(model, train_ds, r["epochs"], r["lr"], r["batch_size"], r["augment"], r["seed"], r["optimizer"],
                     r["alpha_decay"], r["device"], show, r["model"])

    model.eval()
    acc32 = evaluate(model, test_ds)
    state32 = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    state16 = {k: (v.half() if v.is_floating_point() else v) for k, v in state32.items()}
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state16.items()})  # copies to device
    acc16 = evaluate(model, test_ds)
    use16 = abs(acc16 - acc32) <= 0.02 + 1e-9
    state, acc = (state16, acc16) if use16 else (state32, acc32)

    out_dir = Path(r["out"])
    out_dir.mkdir(parents=True, exist_ok=True)
    file = out_dir / f"{r['model']}.pt"
    zoo.save_atomic(state, file)  # temp file + rename: an interrupt never leaves a half-written checkpoint
    entry = {
        "file": file.name,
        "sha256": zoo.sha256_file(file),
        "size_bytes": file.stat().st_size,
        "dtype": "float16" if use16 else "float32",
        "arch": r["arch"],
        "arch_kwargs": arch_kwargs,
        "n_params": n_params,
        "dataset": r["dataset"],
        "activation": r["act"],
        "test_accuracy": round(acc, 2),
        "test_accuracy_fp32": round(acc32, 2),
        "command": _command(r),
        "seed": r["seed"],
        "epochs": r["epochs"],
        "optimizer": "Adam" if r["optimizer"] == "adam" else "SGD (momentum 0.9)",
        "lr": r["lr"],
        "lr_schedule": "cosine annealing to 0, stepped per batch",
        "batch_size": r["batch_size"],
        "augmentation": r["augment"],
        **({"train_images": r["train_images"]} if r["train_images"] else {}),
        "loss": "cross-entropy" + ((f" + {r['alpha_decay'] / 2:g} * ||alpha||^2 (Adam weight_decay={r['alpha_decay']:g} "
                                   "on alpha)" if r["optimizer"] == "adam" else
                                   f" + {r['alpha_decay']:g} * ||alpha||^2") if alphas else ""),
        **({"alpha_init": [round(a, 4) for a in alpha0], "alpha_final": [round(float(a.detach()), 4) for a in alphas]}
           if alphas else {}),
        **({"init": r["init"]} if r["init"] else {}),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.machine(),
        "train_time_s": round(train_time, 1),
    }
    zoo.write_manifest_entry(r["model"], entry, out_dir)
    if show:
        print(f"{r['model']}: test accuracy {acc:.2f}% ({entry['dtype']}; fp32 {acc32:.2f}%), "
              f"saved {file} ({entry['size_bytes'] / 1e6:.2f} MB) in {train_time:.0f}s of training; "
              f"zoo.load({r['model']!r}, root={str(out_dir)!r}) reads it")
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``snnconv train`` / ``python -m snnconv_ext.app.train``."""
    parser = argparse.ArgumentParser(prog="snnconv train", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
