"""Argument validators: one per kind of argument, called at every public entry (API and CLI), so the same bad
value gets the same one-line message everywhere, before any work starts.

* numbers: :func:`is_number`, :func:`positive_int` (T, epochs, batch sizes, grid sizes), :func:`positive_number`
  (learning rates, seconds), :func:`check_T`, :func:`check_timesteps`;
* tensors: :func:`check_input` (one batch of images for a converted network);
* data: :func:`as_loader` (a Dataset or an iterable of batches), :func:`iter_inputs` (calibration / analysis
  batches: shape, dtype, NaN, consistent sample shape, not empty);
* models: :func:`check_eval` (BN statistics and dropout frozen before converting).
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["is_number", "positive_number", "positive_int", "check_T", "check_timesteps", "check_input",
           "as_loader", "iter_inputs", "check_eval", "ConversionError"]


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
    """Refuse a model (or submodule) in training mode: BN statistics and dropout must be frozen to convert."""
    for name, mod in model.named_modules():
        if mod.training:
            raise ConversionError(f"{'model' if not name else repr(name)} ({type(mod).__name__}) is in training "
                                  "mode: call model.eval() before converting.")
