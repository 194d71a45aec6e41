"""Pretrained model zoo: the training recipe of every entry (ENTRIES) and checksum-verified loading
of the checkpoints listed in zoo/manifest.json.

Two folders: the shipped zoo (:data:`ZOO_DIR`, read only by default) and your own (:func:`user_dir`:
``$SNNCONV_ZOO``, else ``$XDG_DATA_HOME/snnconv/zoo`` or ``~/.local/share/snnconv/zoo``), where ``snnconv train``
writes unless ``--out`` says otherwise. ``load(name)`` reads a shipped entry from the shipped zoo, and any other
entry from your folder; ``load(name, root=user_dir())`` reads your retrained copy of a shipped entry.

Most entries are ANNs (a state_dict for an ``models.ARCHS`` net). An entry whose manifest says ``"kind": "snn"``
is a converted and trained SNN written by ``sc.save`` (e.g. ``fmnist-net4-snn-t2``, built from ``fmnist-net4`` by
the ``command`` it records). This layer cannot import the loader of such files (``conversion.saving``, a higher
layer), so that module registers it here (:func:`register_reader`) when snnconv is imported, as the plugins
register their nodes with ``core.nodes``; ``load`` checks the sha256 and hands the file to it."""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..core.checks import check_device
from ..core.files import save_atomic, sha256_file
from . import models

ZOO_DIR = Path(__file__).resolve().with_name("zoo")
MANIFEST_NAME = "manifest.json"
SNN_KIND = "snn"  # manifest "kind" of an entry holding a converted SNN (an sc.save file), not an ANN state_dict
#: kind -> reader(file, map_location) of the entries that are not ANN state_dicts (filled by conversion.saving)
_READERS: dict[str, Callable[..., nn.Module]] = {}

__all__ = ["Entry", "ENTRIES", "ZOO_DIR", "user_dir", "names", "path", "load", "load_state", "read_state_dict",
           "read_manifest", "write_manifest_entry", "sha256_file", "save_atomic", "train_command", "SNN_KIND",
           "register_reader", "kind"]


@dataclass(frozen=True)
class Entry:
    """Recipe of one zoo model: what to train (dataset, arch, activation) and the default
    hyper-parameters ``snnconv train --model NAME`` uses."""

    dataset: str
    arch: str
    act: str = "relu"
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    augment: str = "none"
    description: str = ""
    init: str = ""  # stage II (TTRBR): fine-tune from this stage-I entry's weights
    alpha_decay: float = 0.0  # L2 penalty on Clamp alphas
    optimizer: str = ""  # "adam" or "sgd"; "" = sgd for stage II (init), else adam
    init_images: int = 640  # training images whose 99.9th percentile starts each alpha / lambda (with init)
    train_images: int = 0  # train on the first N training images only (0: all); for nets too slow for a full epoch


ENTRIES: dict[str, Entry] = {
    "fmnist-net3": Entry(
        dataset="fashion_mnist", arch="net3", act="relu", epochs=15, lr=1e-3, batch_size=128,
        augment="flip",  # random crops cost this MLP ~2 pp at this budget (87.8% with crop2+flip)
        description="Net3 (784-6400-10) on Fashion-MNIST; paper ANN 89.90%.",
    ),
    "fmnist-net4": Entry(
        dataset="fashion_mnist", arch="net4", act="relu", epochs=15, lr=1e-3, batch_size=128,
        augment="crop2+flip",
        description="Net4 (32c5-p2-64c5-p2-1024-10) on Fashion-MNIST; paper ANN 90.83%.",
    ),
    # stReLU (Han et al. 2023) versions: Table 3's Fashion-MNIST rows are Net3 and Net4.
    "fmnist-net3-strelu": Entry(
        dataset="fashion_mnist", arch="net3", act="strelu", epochs=25, lr=1e-3, batch_size=128, augment="flip",
        description="Net3 with stReLU (Vth=1) on Fashion-MNIST; paper ANN 89.90%, lossless at T=11.",
    ),
    "fmnist-net4-strelu": Entry(
        dataset="fashion_mnist", arch="net4", act="strelu", epochs=22, lr=1e-3, batch_size=128,
        augment="crop2+flip",
        description="Net4 with stReLU (Vth=1) on Fashion-MNIST; paper ANN 90.83%, lossless at T=79.",
    ),
    "fmnist-net1-strelu": Entry(
        dataset="fashion_mnist", arch="net1", act="strelu", epochs=10, lr=1e-3, batch_size=128, augment="flip",
        description="Net1 (1200-1200-10) with stReLU, trained on Fashion-MNIST (the paper uses MNIST).",
    ),
    "fmnist-net2-strelu": Entry(
        dataset="fashion_mnist", arch="net2", act="strelu", epochs=10, lr=1e-3, batch_size=128,
        augment="crop2+flip",
        description="Net2 (12c5-p2-64c5-p2-10) with stReLU, trained on Fashion-MNIST (the paper uses MNIST).",
    ),
    # Net2 with each activation of the stReLU paper's comparison (Sec. 3.3): small enough to keep all four.
    "fmnist-net2": Entry(
        dataset="fashion_mnist", arch="net2", act="relu", epochs=10, lr=1e-3, batch_size=128, augment="crop2+flip",
        description="Net2 (12c5-p2-64c5-p2-10) with ReLU on Fashion-MNIST (the paper uses MNIST).",
    ),
    "fmnist-net2-trelu": Entry(
        dataset="fashion_mnist", arch="net2", act="trelu", epochs=10, lr=1e-3, batch_size=128, augment="crop2+flip",
        description="Net2 with tReLU (Eq. 22) on Fashion-MNIST.",
    ),
    "fmnist-net2-atleakyrelu": Entry(
        dataset="fashion_mnist", arch="net2", act="atleakyrelu", epochs=10, lr=1e-3, batch_size=128,
        augment="crop2+flip",
        description="Net2 with atLeakyReLU (Eq. 21, alpha=0.5) on Fashion-MNIST.",
    ),
    "fmnist-vgg-bn": Entry(
        dataset="fashion_mnist", arch="vgg_bn", act="relu", epochs=6, lr=1e-3, batch_size=128,
        augment="crop2+flip",
        description="Small VGG-style CNN with BN (0.59 M parameters) on Fashion-MNIST, ReLU.",
    ),
    "fmnist-vgg": Entry(
        dataset="fashion_mnist", arch="vgg", act="relu", epochs=6, lr=1e-3, batch_size=128,
        augment="crop2+flip",
        description="fmnist-vgg-bn without BN (calibration paper Table 1c: conversion of a net without vs with BN).",
    ),
    # Datta & Beerel 2022 (Sec. IV-A): threshold ReLU clip(x, 0, mu) with trainable mu, no BN/bias, max pooling.
    "fmnist-net4-datta": Entry(
        dataset="fashion_mnist", arch="net4_datta", act="threshold_relu", epochs=10, lr=1e-3, batch_size=128,
        augment="crop2+flip", alpha_decay=1e-4,
        description="Net4 without bias, with max pooling, dropout and threshold ReLU (Datta & Beerel Sec. IV-A).",
    ),
    "fmnist-vgg-datta": Entry(
        dataset="fashion_mnist", arch="vgg_datta", act="threshold_relu", epochs=6, lr=1e-3, batch_size=128,
        augment="crop2+flip", alpha_decay=1e-4,
        description="Small VGG (16-16-M-32-32-M-64-64-M-256-10) without bias/BN, max pooling, dropout, threshold ReLU.",
    ),
    # BN ResNets for the calibration (Li et al. 2022) and TTRBR (Meng et al. 2022) chapters.
    "fmnist-resnet20": Entry(
        dataset="fashion_mnist", arch="resnet20", act="relu", epochs=5, lr=1e-3, batch_size=128,
        augment="crop2+flip",
        description="ResNet-20 with BN (0.27 M parameters, original blocks) on Fashion-MNIST, ReLU.",
    ),
    "fmnist-resnet20-pre": Entry(
        dataset="fashion_mnist", arch="resnet20_pre", act="relu", epochs=5, lr=1e-3, batch_size=128,
        augment="crop2+flip",
        description="ResNet-20 with TTRBR's restructured blocks (Fig. 6), ReLU: stage-I ANN.",
    ),
    "fmnist-resnet56-w8": Entry(
        dataset="fashion_mnist", arch="resnet56_w8", act="relu", epochs=3, lr=1e-3, batch_size=128,
        augment="crop2+flip",
        description="ResNet-56 at half width (8-16-32, 0.22 M parameters), original blocks, ReLU: stage-I ANN.",
    ),
    "fmnist-resnet56-w8-pre": Entry(
        dataset="fashion_mnist", arch="resnet56_w8_pre", act="relu", epochs=3, lr=1e-3, batch_size=128,
        augment="crop2+flip",
        description="ResNet-56 at half width with restructured blocks, ReLU: stage-I ANN.",
    ),
    # TTRBR stage II (Sec. 4, App. D): fine-tune the stage-I ReLU nets with trainable clamp(x, 0, alpha) by SGD with
    # momentum and the L2 penalty 0.005 * ||alpha||^2 in the loss (one epoch: every alpha ends about 20% below its start).
    "fmnist-resnet20-clamp": Entry(
        dataset="fashion_mnist", arch="resnet20", act="clamp", epochs=1, lr=1e-2, batch_size=128,
        augment="crop2+flip", init="fmnist-resnet20", alpha_decay=5e-3,
        description="ResNet-20, original blocks, clamp activations (TTRBR stage II from fmnist-resnet20).",
    ),
    "fmnist-resnet20-pre-clamp": Entry(
        dataset="fashion_mnist", arch="resnet20_pre", act="clamp", epochs=1, lr=1e-2, batch_size=128,
        augment="crop2+flip", init="fmnist-resnet20-pre", alpha_decay=5e-3,
        description="ResNet-20, restructured blocks, clamp activations (TTRBR stage II).",
    ),
    "fmnist-resnet56-w8-clamp": Entry(
        dataset="fashion_mnist", arch="resnet56_w8", act="clamp", epochs=1, lr=1e-2, batch_size=128,
        augment="crop2+flip", init="fmnist-resnet56-w8", alpha_decay=5e-3,
        description="Half-width ResNet-56, original blocks, clamp activations (TTRBR stage II).",
    ),
    "fmnist-resnet56-w8-pre-clamp": Entry(
        dataset="fashion_mnist", arch="resnet56_w8_pre", act="clamp", epochs=1, lr=1e-2, batch_size=128,
        augment="crop2+flip", init="fmnist-resnet56-w8-pre", alpha_decay=5e-3,
        description="Half-width ResNet-56, restructured blocks, clamp activations (TTRBR stage II).",
    ),
    # QCFS (Bu et al., ICLR 2022): the ReLU zoo nets fine-tuned with quantization clip-floor-shift activations,
    # each lambda starting at the 99.9th percentile of its ReLU input on 1024 training images, Adam, cosine.
    "fmnist-net4-qcfs4": Entry(
        dataset="fashion_mnist", arch="net4", act="qcfs4", epochs=10, lr=1e-3, batch_size=128,
        augment="crop2+flip", init="fmnist-net4", optimizer="adam", init_images=1024,
        description="Net4 with QCFS activations, L = 4 (Bu et al. 2022), fine-tuned from fmnist-net4.",
    ),
    "fmnist-net4-qcfs8": Entry(
        dataset="fashion_mnist", arch="net4", act="qcfs8", epochs=10, lr=1e-3, batch_size=128,
        augment="crop2+flip", init="fmnist-net4", optimizer="adam", init_images=1024,
        description="Net4 with QCFS activations, L = 8 (Bu et al. 2022), fine-tuned from fmnist-net4.",
    ),
    "fmnist-vgg-bn-qcfs4": Entry(
        dataset="fashion_mnist", arch="vgg_bn", act="qcfs4", epochs=2, lr=1e-3, batch_size=128,
        augment="crop2+flip", init="fmnist-vgg-bn", optimizer="adam", init_images=1024,
        description="The BN VGG with QCFS activations, L = 4, fine-tuned from fmnist-vgg-bn through its BatchNorm "
                    "layers (folded into the convs only at conversion).",
    ),
    # Issue 29: torchvision's own classes, unmodified, on Fashion-MNIST at 3x32x32 (resized, channel repeated),
    # each trained within about 10 min on 2 CPU cores: one pass over the first train_images training images.
    "fmnist-tv-resnet18": Entry(
        dataset="fashion_mnist32", arch="tv_resnet18", act="relu", epochs=1, lr=1e-3, batch_size=128,
        augment="flip", train_images=40960,
        description="torchvision.models.resnet18(num_classes=10), unmodified, on Fashion-MNIST 3x32x32.",
    ),
    "fmnist-tv-vgg11-bn": Entry(
        dataset="fashion_mnist32", arch="tv_vgg11_bn", act="relu", epochs=1, lr=1e-4, batch_size=128,
        augment="flip", train_images=10240,
        description="torchvision.models.vgg11_bn(num_classes=10), unmodified, on Fashion-MNIST 3x32x32.",
    ),
}


def names() -> list[str]:
    """Names of all zoo entries (recipes), sorted."""
    return sorted(ENTRIES)


def user_dir() -> Path:
    """Your zoo folder, where ``snnconv train`` writes by default (never the shipped zoo): ``$SNNCONV_ZOO``, else
    ``$XDG_DATA_HOME/snnconv/zoo`` (``~/.local/share/snnconv/zoo``)."""
    if os.environ.get("SNNCONV_ZOO"):
        return Path(os.environ["SNNCONV_ZOO"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser() / "snnconv" / "zoo"


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root) if root is not None else ZOO_DIR


def _find(name: str, root: str | os.PathLike | None) -> Path | None:
    """Where entry ``name`` is looked up: ``root`` when given; else the shipped zoo for its own entries and
    :func:`user_dir` for the rest (entries you trained)."""
    if root is not None or name in read_manifest(ZOO_DIR):
        return root
    mine = user_dir()
    return mine if mine.resolve() != ZOO_DIR and name in read_manifest(mine) else None


def read_manifest(root: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The manifest (name -> entry dict) in ``root`` (default: the package's zoo dir); {} if absent."""
    mpath = _root(root) / MANIFEST_NAME
    if not mpath.exists():
        return {}
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"zoo manifest {mpath} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"zoo manifest {mpath} must be a JSON object (name -> entry)")
    return manifest


def write_manifest_entry(name: str, entry: dict[str, Any],
                         root: str | os.PathLike | None = None) -> Path:
    """Insert/replace ``entry`` under ``name`` in ``root``/manifest.json (atomic write)."""
    rdir = _root(root)
    rdir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(rdir)
    manifest[name] = entry
    mpath = rdir / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(dir=rdir, prefix=".manifest-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(dict(sorted(manifest.items())), f, indent=2, sort_keys=False)
            f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the manifest normal file permissions
        os.replace(tmp, mpath)
    except BaseException:  # an interrupted write leaves the old manifest and no temporary file
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return mpath


def train_command(name: str) -> str:
    """The default ``snnconv train`` command line that (re)creates zoo entry ``name``."""
    e = ENTRIES[name]
    return shlex.join(["snnconv", "train", "--model", name, "--epochs", str(e.epochs),
                       "--lr", repr(e.lr), "--batch-size", str(e.batch_size), "--seed", "0",
                       "--augment", e.augment] + (["--train-images", str(e.train_images)] if e.train_images else []))


def register_reader(kind_name: str, reader: Callable[..., nn.Module]) -> None:
    """Make ``load`` read entries whose manifest ``kind`` is ``kind_name`` with ``reader(file, map_location)``
    (``conversion.saving`` registers ``sc.load`` for :data:`SNN_KIND`)."""
    _READERS[kind_name] = reader


def kind(name: str, root: str | os.PathLike | None = None) -> str:
    """What entry ``name`` holds: ``"ann"`` (a state_dict for ``models.build``) or :data:`SNN_KIND`."""
    manifest = read_manifest(_find(name, root))
    _check_name(name, manifest)
    return manifest.get(name, {}).get("kind", "ann")


def _check_name(name: str, manifest: dict[str, Any]) -> None:
    if name not in ENTRIES and name not in manifest:
        raise ValueError(f"unknown zoo model {name!r}; known: {sorted(set(ENTRIES) | set(manifest))}")


def path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Path of the checkpoint file of zoo entry ``name`` (it may not exist yet)."""
    root = _find(name, root)
    manifest = read_manifest(root)
    _check_name(name, manifest)
    fname = manifest.get(name, {}).get("file", f"{name}.pt")
    return _root(root) / fname


def _check_file(file: str | os.PathLike, expected_sha256: str | None, recreate_hint: str | None) -> Path:
    """``file`` as a Path after checking that it exists and, if given, has sha256 ``expected_sha256``."""
    file = Path(file)
    if not file.is_file():
        hint = f"; recreate it with: {recreate_hint}" if recreate_hint else ""
        raise FileNotFoundError(f"checkpoint file {file} not found{hint}")
    if expected_sha256 is not None:
        actual = sha256_file(file)
        if actual != expected_sha256:
            hint = f" Recreate it with: {recreate_hint}" if recreate_hint else ""
            raise ValueError(f"checksum mismatch for checkpoint {file}: expected sha256 "
                             f"{expected_sha256}, actual {actual}.{hint}")
    return file


def read_state_dict(file: str | os.PathLike, expected_sha256: str | None = None,
                    map_location: str | torch.device = "cpu",
                    recreate_hint: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``file`` safely (weights_only=True), verifying its sha256 if given,
    and cast floating tensors to float32 (zoo files are stored in fp16)."""
    file = _check_file(file, expected_sha256, recreate_hint)
    if isinstance(map_location, (str, torch.device)):
        check_device(map_location, "map_location")  # else torch.load's CUDA error reads as a corrupt file
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle/zip errors come in many types
        raise ValueError(f"cannot read checkpoint {file}: corrupt or not a torch state_dict "
                         f"({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {file} does not hold a state_dict (name -> tensor)")
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            bad = "NaN" if torch.isnan(v).any() else "Inf"
            raise ValueError(f"checkpoint {file}: tensor {k!r} of shape {tuple(v.shape)} contains {bad}")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], file: Path, what: str) -> nn.Module:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {file} does not match {what}: {e}") from None
    return model.float().eval()


def load_state(file: str | os.PathLike, arch: str | nn.Module, act: str = "relu",
               expected_sha256: str | None = None, map_location: str | torch.device = "cpu",
               **arch_kw: Any) -> nn.Module:
    """Load a user checkpoint into ``arch`` (an ARCHS name built with ``act``/``arch_kw``, or a
    module instance) with the zoo's checks; returns the float32 model in eval mode."""
    file = Path(file)
    state = read_state_dict(file, expected_sha256, map_location)
    model = models.build(arch, act, **arch_kw) if isinstance(arch, str) else arch
    what = f"arch {arch!r}" if isinstance(arch, str) else type(arch).__name__
    return _load_into(model.to(map_location), state, file, what)


def load(name: str, map_location: str | torch.device = "cpu",
         root: str | os.PathLike | None = None) -> nn.Module:
    """Zoo model ``name`` with checksum-verified fp32 weights, in eval mode (from ``root``; by default the shipped
    zoo, or :func:`user_dir` for an entry only you trained); ``model.zoo_name`` is ``name`` (``sc.convert`` records
    it in the network's ``meta``, ``sc.save`` in the file). An SNN entry (``kind(name) == "snn"``) comes back as
    the converted network ``sc.load`` rebuilds, ready for ``sc.evaluate`` at the T its manifest records."""
    root = _find(name, root)
    manifest = read_manifest(root)
    _check_name(name, manifest)
    info = manifest.get(name)
    default_cmd = train_command(name) if name in ENTRIES else None
    if info is None:
        raise FileNotFoundError(f"zoo model {name!r} has no manifest entry in "
                                f"{_root(root) / MANIFEST_NAME}; create it with: {default_cmd}")
    file = _root(root) / info["file"]
    if info.get("kind", "ann") != "ann":
        model = _read_other(name, info, file, map_location)
        model.zoo_name = name
        return model
    state = read_state_dict(file, info["sha256"], map_location,
                            recreate_hint=info.get("command", default_cmd))
    model = models.build(info["arch"], info.get("activation", "relu"), **info.get("arch_kwargs", {}))
    model = _load_into(model.to(map_location), state, file, f"zoo model {name!r} ({info['arch']})")
    model.zoo_name = name
    return model


def _read_other(name: str, info: dict[str, Any], file: Path, map_location: str | torch.device) -> nn.Module:
    """An entry of another kind than "ann": checksum first, then the reader its kind registered."""
    what = info["kind"]
    if what not in _READERS:
        raise ValueError(f"zoo model {name!r} is of kind {what!r}, which nothing registered a reader for "
                         f"(known: {sorted(_READERS)}); import snnconv_ext first")
    return _READERS[what](_check_file(file, info["sha256"], info.get("command")), map_location)
