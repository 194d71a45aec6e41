"""Simulation and accuracy: every T of a list from one pass, multi-step, in time chunks.

A converted network takes ``[T, B, ...]`` and returns accumulated logits ``[T, B, classes]``. Direct
encoding feeds the same analog image at every step: we pass an ``expand`` view, so the analog first
layer is computed once per image (``graph.SeqModule``), and simulate ``chunk`` steps at a time so memory
stays bounded in T.
"""
from __future__ import annotations

import numbers
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

__all__ = ["reset", "simulate_net", "evaluate", "hits", "ann_accuracy", "check_input", "as_loader"]


def reset(net: nn.Module) -> None:
    """Reset every stateful module (SpikingJelly ``functional.reset_net`` semantics, no import needed)."""
    for m in net.modules():
        if m is not net and hasattr(m, "reset") and callable(m.reset):
            m.reset()


def as_loader(data, batch_size: int = 256) -> Iterable:
    """Accept a DataLoader / iterable of batches, or a map-style Dataset (batched here)."""
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


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


def check_T(T, what: str = "T") -> None:
    """Refuse a number of time steps that is not an integer >= 1 (2.5, 0, -1, True, '4')."""
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
        raise ValueError(f"{what}: the number of time steps must be an integer >= 1, got {T!r}")


def _step_mode(snn: nn.Module) -> str:
    """``"s"`` for a single-step network (snnTorch, or SpikingJelly set to ``"s"``), else ``"m"``."""
    mode = getattr(snn, "step_mode", None)
    if mode is None:
        modes = {getattr(m, "step_mode") for m in snn.modules() if isinstance(getattr(m, "step_mode", None), str)}
        mode = "s" if modes == {"s"} else "m"
    return mode


@torch.no_grad()
def simulate_net(snn: nn.Module, x: torch.Tensor, T: int, chunk: int = 4) -> Iterator[torch.Tensor]:
    """Yield the accumulated readout ``[c, B, ...]`` (sum of the output layer's current over the steps so far)
    chunk by chunk for ``T`` steps of direct input ``x``. The network itself returns each step's current, as
    SpikingJelly's recipes do; single-step networks (snnTorch, ``step_mode="s"``) are stepped one by one."""
    check_T(T)
    check_T(chunk, "chunk")
    check_input(x, getattr(snn, "meta", {}).get("input_shape"))
    reset(snn)
    single = _step_mode(snn) == "s"
    total = None
    done = 0
    while done < T:
        c = min(chunk, T - done)
        if single:
            out = torch.stack([snn(x) for _ in range(c)])
        else:
            out = snn(x.unsqueeze(0).expand(c, *x.shape))
        out = out.cumsum(0) if total is None else out.cumsum(0) + total
        total = out[-1]
        yield out
        done += c


def _batches(data, device) -> Iterator:
    for batch in data:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ValueError("evaluation data must yield (images, labels) batches")
        yield batch[0].to(device), batch[1].to(device)


def _timesteps(timesteps) -> List[int]:
    """The distinct T of ``timesteps`` (an int or a list of positive ints), sorted; a clear error otherwise."""
    if isinstance(timesteps, numbers.Integral) and not isinstance(timesteps, bool):
        timesteps = [timesteps]
    if isinstance(timesteps, (str, bytes)) or not isinstance(timesteps, Iterable):
        raise TypeError(f"timesteps must be a list of positive integers, got {timesteps!r}")
    timesteps = list(timesteps)
    if not timesteps:
        raise ValueError("timesteps is empty: give at least one number of time steps T >= 1")
    for t in timesteps:
        check_T(t, "timesteps")
    return sorted(set(int(t) for t in timesteps))


def _batch_hits(snn: nn.Module, data, ts: List[int], batch_size: int, chunk: int, device: Optional[torch.device],
                progress: bool, desc: str) -> Iterator[torch.Tensor]:
    """For every batch, ``[len(ts), B]`` bools: does the readout after ``ts[k]`` steps pick the label? One
    simulation of ``max(ts)`` steps per batch; results stay on the device (no host sync per step)."""
    device = device or next((p.device for p in snn.parameters()), torch.device("cpu"))
    snn.eval()
    loader = as_loader(data, batch_size)
    for x, y in tqdm(_batches(loader, device), desc=desc, disable=not progress, leave=False,
                     total=len(loader) if hasattr(loader, "__len__") else None):
        ok = torch.zeros(len(ts), y.shape[0], dtype=torch.bool, device=y.device)
        t0 = 0
        for out in simulate_net(snn, x, ts[-1], chunk):
            rows = [k for k, t in enumerate(ts) if t0 < t <= t0 + out.shape[0]]
            if rows:
                ok[rows] = out[[ts[k] - t0 - 1 for k in rows]].argmax(-1) == y   # [len(rows), B]
            t0 += out.shape[0]
        yield ok


@torch.no_grad()
def evaluate(snn: nn.Module, data, timesteps: Sequence[int], batch_size: int = 128, chunk: int = 4,
             device: Optional[torch.device] = None, progress: bool = True, desc: str = "simulate") -> Dict[int, float]:
    """Accuracy (%) of the converted ``snn`` at every T in ``timesteps`` from one simulation of max(T) steps."""
    ts = _timesteps(timesteps)
    correct, total = None, 0
    for ok in _batch_hits(snn, data, ts, batch_size, chunk, device, progress, desc):
        correct = ok.sum(-1) if correct is None else correct + ok.sum(-1)   # stays on the device
        total += ok.shape[1]
    if total == 0:
        raise ValueError("evaluation data is empty")
    return {t: 100.0 * c / total for t, c in zip(ts, correct.tolist())}


@torch.no_grad()
def hits(snn: nn.Module, data, timesteps: Sequence[int], batch_size: int = 128, chunk: int = 4,
         device: Optional[torch.device] = None, progress: bool = False) -> Dict[int, torch.Tensor]:
    """Per T in ``timesteps``: one bool per image (on the CPU, in data order), whether the SNN is right after T steps.
    ``evaluate``'s accuracy is their mean; per-image results give paired comparisons (``compare.paired_se``)."""
    ts = _timesteps(timesteps)
    per_batch = [ok.cpu() for ok in _batch_hits(snn, data, ts, batch_size, chunk, device, progress, "simulate")]
    if not per_batch:
        raise ValueError("evaluation data is empty")
    ok = torch.cat(per_batch, dim=1)
    return {t: ok[k] for k, t in enumerate(ts)}


@torch.no_grad()
def ann_accuracy(model: nn.Module, data, batch_size: int = 512, device: Optional[torch.device] = None) -> float:
    """Test accuracy (%) of the source ANN."""
    device = device or next(model.parameters()).device
    model.eval()
    correct = total = 0
    for x, y in _batches(as_loader(data, batch_size), device):
        correct += (model(x).argmax(-1) == y).sum().item()
        total += y.shape[0]
    if total == 0:
        raise ValueError("evaluation data is empty")
    return 100.0 * correct / total
