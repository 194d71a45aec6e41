"""Argument validators: one per kind of argument, called at every public entry (API and CLI), so the same bad
value gets the same one-line message everywhere, before any work starts.

* numbers: :func:`is_number`, :func:`positive_int` (T, epochs, batch sizes, grid sizes), :func:`positive_number`
  (learning rates, seconds), :func:`check_T`, :func:`check_timesteps`, :func:`check_count` (epochs, batch sizes),
  :func:`check_rate` (learning rates, time budgets);
* tensors: :func:`check_input` (one batch of images for a converted network), :func:`check_labels` (integer class
  indices in range);
* data: :func:`as_loader` (a Dataset or an iterable of batches), :func:`iter_inputs` (calibration / analysis
  batches: shape, dtype, NaN, consistent sample shape, not empty), :func:`check_reiterable` (data read twice),
  :func:`check_training_data` (images and labels of a training set), :func:`check_full_batch`;
* places: :func:`check_device` (a device this machine has), :func:`check_out_dir`, :func:`check_out_file`;
* fine-tuning: :func:`check_trainable` (knob names a backend can train);
* models: :func:`check_eval` (an ANN, not a converted SNN, with BN statistics and dropout frozen before converting).
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from .nodes import is_spiking, trainable_knobs

__all__ = ["is_number", "positive_number", "positive_int", "check_T", "check_timesteps", "check_count", "check_rate",
           "check_input", "check_labels", "as_loader", "iter_inputs", "check_reiterable", "check_training_data",
           "check_full_batch", "check_device", "check_out_dir", "check_out_file", "check_trainable", "check_eval", "ConversionError"]


class ConversionError(ValueError):
    """The model contains something the method cannot convert faithfully."""


def is_number(v) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def positive_number(v) -> bool:
    """A finite real number > 0 (a learning rate, a bound, seconds)."""
    return is_number(v) and float(v) > 0


def positive_int(v) -> bool:
    """An integer >= 1 (8 counts; 8.0, 2.5, True and '8' do not): counts such as T, epochs, N, batch sizes."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1


def check_T(T, what: str = "T") -> int:
    """Refuse a number of time steps that is not an integer >= 1 (2.5, 8.0, 0, -1, True, '4'); return it as int."""
    if not positive_int(T):
        raise ValueError(f"{what}: the number of time steps must be an integer >= 1, got {T!r}")
    return int(T)


def check_count(v, what: str, minimum: int = 1) -> int:
    """Refuse a count (epochs, batch size, batches, images) that is not an integer >= ``minimum``; return it."""
    if not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum):
        raise ValueError(f"{what} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def check_rate(v, what: str) -> float:
    """Refuse a learning rate (or a time budget) that is not a finite number > 0: nan, inf, 0, -1 or a string."""
    if not positive_number(v):
        raise ValueError(f"{what} must be a finite number > 0, got {v!r}")
    return float(v)


def check_timesteps(timesteps, what: str = "timesteps") -> List[int]:
    """The distinct T of ``timesteps`` (an int or a list of positive ints), sorted; a clear error otherwise."""
    if positive_int(timesteps):
        timesteps = [timesteps]
    if isinstance(timesteps, (str, bytes)) or not isinstance(timesteps, Iterable):
        raise TypeError(f"{what} must be a list of positive integers, got {timesteps!r}")
    timesteps = list(timesteps)
    if not timesteps:
        raise ValueError(f"{what} is empty: give at least one number of time steps T >= 1")
    for t in timesteps:
        check_T(t, what)
    return sorted(set(int(t) for t in timesteps))


def check_input(x: torch.Tensor, expected: Optional[Sequence[int]] = None, what: str = "input") -> None:
    """Refuse wrong shape, non-float dtype or NaN with a message naming what was wrong."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} has dtype {x.dtype}; expected a floating-point image tensor")
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise ValueError(f"{what} has shape {tuple(x.shape)}; the converted model expects [B, {', '.join(map(str, expected))}]")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains {'NaN' if torch.isnan(x).any() else 'Inf'}")


def check_labels(y, n_classes: Optional[int] = None, what: str = "labels", n: Optional[int] = None) -> None:
    """Refuse labels that are not one integer class index per image in ``0 .. n_classes - 1``: one-hot or soft
    labels (float, or ``[B, C]``), labels counted from 1, a count that differs from the ``n`` images."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{what} must be a tensor of integer class indices, got {type(y).__name__}")
    onehot = " (one-hot labels: pass y.argmax(1))" if y.dim() == 2 else ""
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{what} have dtype {y.dtype}; expected integer class indices{onehot}")
    if y.dim() != 1:
        raise ValueError(f"{what} have shape {tuple(y.shape)}; expected one class index per image, shape [B]{onehot}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{what}: {y.shape[0]} labels for {n} images")
    if n_classes is not None and y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            hint = " (labels counted from 1? subtract 1)" if lo >= 1 and hi == n_classes else ""
            raise ValueError(f"{what} range over {lo}..{hi}, but the network has {n_classes} outputs: class indices "
                             f"must be 0..{n_classes - 1}{hint}")


def check_reiterable(data, what: str = "calib_data", why: str = "it is read more than once") -> None:
    """Refuse a one-shot iterator (a generator, ``iter(loader)``) where the data is read more than once: the second
    pass would find it used up. A list, a Dataset or a DataLoader can be read again."""
    if data is not None and not isinstance(data, (Dataset, Sequence)) and iter(data) is data:
        raise ValueError(f"{what} is a one-shot iterator ({type(data).__name__}) and {why}: the second pass would "
                         "find it used up; pass a list of batches, a Dataset or a DataLoader")


def check_training_data(data, what: str = "train_data") -> Dataset:
    """A Dataset of (image, label) from ``data`` (a map-style Dataset or a pair of tensors). Tensor data is checked
    whole here (images floating point and finite, one integer label per image); the caller checks other Datasets
    batch by batch (:func:`check_input`, :func:`check_labels`)."""
    pair = isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
    if not pair and (not isinstance(data, Dataset) or isinstance(data, IterableDataset)):
        raise TypeError(f"{what} must be a map-style Dataset of (image, label) or a pair of tensors (images, labels), "
                        f"got {type(data).__name__}")
    tensors = tuple(data) if pair else getattr(data, "tensors", None) if isinstance(data, TensorDataset) else None
    if tensors is not None:
        if len(tensors) != 2:
            raise ValueError(f"{what} holds {len(tensors)} tensors; expected (images, labels)")
        x, y = tensors
        if x.dim() < 2:
            raise ValueError(f"{what} images have shape {tuple(x.shape)}; expected [N, ...] with one image per row")
        check_input(x, what=f"{what} images")
        check_labels(y, what=f"{what} labels", n=x.shape[0])
    return TensorDataset(*data) if pair else data


def check_full_batch(n: int, batch_size: int, drop_last: bool, what: str = "train_data") -> None:
    """Refuse data that would give no training step: empty, or smaller than one batch while partial batches are
    dropped (``drop_last=True``)."""
    if n == 0:
        raise ValueError(f"{what} is empty")
    if drop_last and n < batch_size:
        raise ValueError(f"{what} holds {n} images, fewer than one batch of {batch_size}: lower batch_size, or pass "
                         "drop_last=False to train on the partial batch")


def check_device(device, what: str = "device") -> torch.device:
    """A ``torch.device`` this machine has: refuses an unknown name, and CUDA where it is not available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{what}: {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {str(device)!r}: CUDA is not available on this machine "
                             "(torch.cuda.is_available() is False); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what} {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_out_dir(out: Union[str, os.PathLike], what: str = "--out") -> None:
    """Refuse an output folder that is a file or cannot be created/written, without creating anything."""
    p = Path(out).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{what} {str(out)!r} is a file, not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"{what} {str(out)!r}: folder is not writable")
        return
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {str(out)!r}: {str(parent)!r} is a file, so the folder cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(out)!r}: cannot create it, {str(parent)!r} is not writable")


def check_out_file(path: Union[str, os.PathLike], what: str = "checkpoint") -> Path:
    """Refuse a file to be written that is a folder, or whose folder cannot be created or written."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder, not a file")
    check_out_dir(p.absolute().parent, f"{what} {str(path)!r}: folder")
    return p


def check_trainable(trainable, what: str = "trainable") -> tuple:
    """Refuse ``trainable`` unless it is a list of knob names a registered trainer knows (a plain string such as
    ``"leak"`` is refused: it would be read letter by letter); return it as a tuple. ``()`` trains weights only."""
    if isinstance(trainable, (str, bytes)) or not isinstance(trainable, (list, tuple, set, frozenset)) \
            or not all(isinstance(k, str) for k in trainable):
        raise TypeError(f"{what} must be a list of knob names (e.g. ['v_threshold', 'leak'], or [] for weights only), "
                        f"got {trainable!r}")
    known = trainable_knobs()
    unknown = sorted(set(trainable) - set(known))
    if known and unknown:
        raise ValueError(f"{what}: cannot train {unknown}; trainable knobs: {known}")
    return tuple(trainable)


def as_loader(data, batch_size: int = 256) -> Iterable:
    """Accept a DataLoader / iterable of batches, or a map-style Dataset (batched here)."""
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


def iter_inputs(data: Iterable, device: torch.device, what: str = "calibration data",
                with_labels: bool = False) -> Iterator:
    """Yield input tensors from a loader of tensors, (x, y) pairs or dicts; refuse empty or bad batches.
    ``with_labels=True`` yields ``(x, y)`` with ``y`` None when a batch carries no integer labels."""
    n = 0
    for batch in data:
        x, y = batch, None
        if isinstance(batch, (list, tuple)):
            if not batch:
                raise ValueError(f"{what}: empty batch")
            if len(batch) > 2:
                raise ValueError(f"{what}: batch {n} is a {type(batch).__name__} of {len(batch)} items; expected "
                                 "images, (images,) or (images, labels)")
            x = batch[0]
            y = batch[1] if len(batch) > 1 else None
        elif isinstance(batch, dict):
            keys = [k for k in ("input", "image", "x") if k in batch]
            if not keys:
                raise ValueError(f"{what}: batch {n} is a dict with keys {sorted(map(str, batch))}; the images must be "
                                 "under 'input', 'image' or 'x'")
            x = batch[keys[0]]
            y = batch.get("label", batch.get("target", batch.get("y")))
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{what}: batch {n} holds {type(x).__name__}, expected a tensor or (tensor, label)")
        if x.dim() < 2:
            raise ValueError(f"{what}: batch {n} has shape {tuple(x.shape)}, expected [B, ...] with a batch dimension")
        if not x.is_floating_point():
            raise ValueError(f"{what}: batch {n} has dtype {x.dtype}, expected floating point")
        if not torch.isfinite(x).all():
            bad = "NaN" if torch.isnan(x).any() else "Inf"
            raise ValueError(f"{what}: batch {n} contains {bad}")
        if n == 0:
            shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != shape:
            raise ValueError(f"{what}: batch {n} has sample shape {tuple(x.shape[1:])}, earlier batches {shape}")
        n += 1
        if not with_labels:
            yield x.to(device)
            continue
        ok = isinstance(y, torch.Tensor) and not y.is_floating_point() and y.shape[:1] == x.shape[:1]
        yield x.to(device), (y.to(device) if ok else None)
    if n == 0:
        raise ValueError(f"{what} is empty: conversion needs at least one batch to set thresholds")


def check_eval(model: nn.Module) -> None:
    """Refuse a converted SNN (it has spiking nodes already), and a model (or submodule) in training mode: BN
    statistics and dropout must be frozen to convert."""
    node = next(((n, m) for n, m in model.named_modules() if is_spiking(m)
                 and not any(is_spiking(c) for c in m.children())), None)
    if node is not None:
        raise ConversionError(f"{type(model).__name__} is already a converted SNN (layer {node[0]!r} is a spiking "
                              f"{type(node[1]).__name__}): convert the ANN it came from, or simulate this network "
                              "as it is")
    for name, mod in model.named_modules():
        if mod.training:
            raise ConversionError(f"{'model' if not name else repr(name)} ({type(mod).__name__}) is in training "
                                  "mode: call model.eval() before converting.")
