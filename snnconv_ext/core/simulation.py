"""Simulation: "reset, then run T steps" (:func:`run_window`), chunked simulation with a cumulative readout
(:func:`simulate_net`), and accuracy for every T of a list from one pass (:func:`evaluate`, :func:`hits`).

A converted network takes ``[T, B, ...]`` and returns the output layer's current at every step. Direct
encoding feeds the same analog image at every step: we pass an ``expand`` view, so the analog first
layer is computed once per image (``graph.SeqModule``), and simulate ``chunk`` steps at a time so memory
stays bounded in T. Single-step networks (snnTorch, SpikingJelly set to ``"s"``) are stepped one by one.
This module is the only place that resets a network and feeds it time steps; calibration, evaluation,
Datta's analysis, fine-tuning, energy, analysis and export all call it.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checks import as_loader, check_input, check_labels, check_T, check_timesteps

__all__ = ["reset", "run_window", "simulate_net", "evaluate", "hits", "ann_hits", "ann_accuracy"]


def reset(net: nn.Module) -> None:
    """Reset every stateful module, ``net`` included (SpikingJelly ``functional.reset_net`` semantics, no import)."""
    for m in net.modules():
        if callable(getattr(m, "reset", None)):
            m.reset()


def _step_mode(snn: nn.Module) -> str:
    """``"s"`` for a single-step network (snnTorch, or SpikingJelly set to ``"s"``), else ``"m"``."""
    mode = getattr(snn, "step_mode", None)
    if mode is None:
        modes = {getattr(m, "step_mode") for m in snn.modules() if isinstance(getattr(m, "step_mode", None), str)}
        mode = "s" if modes == {"s"} else "m"
    return mode


def _steps(net: nn.Module, x: torch.Tensor, n: Optional[int], single: bool) -> torch.Tensor:
    """The next ``n`` per-step outputs ``[n, B, ...]`` for constant input ``x``, or for the sequence ``x``
    ``[T, B, ...]`` when ``n`` is None, continuing from the network's current state."""
    if n is not None:
        if single:
            return torch.stack([net(x) for _ in range(n)])
        return net(x.unsqueeze(0).expand(n, *x.shape))
    return torch.stack([net(x_t) for x_t in x]) if single else net(x)


def run_window(net: nn.Module, x: torch.Tensor, T: Optional[int] = None) -> torch.Tensor:
    """Reset ``net``, then run it for ``T`` steps of direct input ``x`` ``[B, ...]`` (or, with ``T=None``, over
    the sequence ``x`` ``[T, B, ...]``); return the per-step outputs ``[T, B, ...]``. Autograd follows the
    caller's mode (fine-tuning differentiates through it)."""
    reset(net)
    return _steps(net, x, None if T is None else check_T(T), _step_mode(net) == "s")


@torch.no_grad()
def simulate_net(snn: nn.Module, x: torch.Tensor, T: int, chunk: int = 4) -> Iterator[torch.Tensor]:
    """Yield the accumulated readout ``[c, B, ...]`` (sum of the output layer's current over the steps so far)
    chunk by chunk for ``T`` steps of direct input ``x``. The network itself returns each step's current, as
    SpikingJelly's recipes do; single-step networks (snnTorch, ``step_mode="s"``) are stepped one by one."""
    check_T(T)
    check_T(chunk, "chunk")
    check_input(x, getattr(snn, "meta", {}).get("input_shape"))
    single = _step_mode(snn) == "s"
    total = None
    done = 0
    while done < T:
        c = min(chunk, T - done)
        out = run_window(snn, x, c) if total is None else _steps(snn, x, c, single)
        out = out.cumsum(0) if total is None else out.cumsum(0) + total
        total = out[-1]
        yield out
        done += c


def _batches(data, device) -> Iterator:
    """(images, labels) batches on ``device``; labels checked to be one integer class index per image."""
    for i, batch in enumerate(data):
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ValueError("evaluation data must yield (images, labels) batches")
        n = batch[0].shape[0] if isinstance(batch[0], torch.Tensor) and batch[0].dim() else None
        check_labels(batch[1], what=f"evaluation labels (batch {i})", n=n)
        yield batch[0].to(device), batch[1].to(device)


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
            if t0 == 0:  # labels counted from 1 would be compared with argmax silently
                check_labels(y, out.shape[-1], "evaluation labels")
            rows = [k for k, t in enumerate(ts) if t0 < t <= t0 + out.shape[0]]
            if rows:
                ok[rows] = out[[ts[k] - t0 - 1 for k in rows]].argmax(-1) == y   # [len(rows), B]
            t0 += out.shape[0]
        yield ok


@torch.no_grad()
def evaluate(snn: nn.Module, data, timesteps: Sequence[int], batch_size: int = 128, chunk: int = 4,
             device: Optional[torch.device] = None, progress: bool = True, desc: str = "simulate") -> Dict[int, float]:
    """Accuracy (%) of the converted ``snn`` at every T in ``timesteps`` from one simulation of max(T) steps."""
    ts = check_timesteps(timesteps)
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
    ts = check_timesteps(timesteps)
    per_batch = [ok.cpu() for ok in _batch_hits(snn, data, ts, batch_size, chunk, device, progress, "simulate")]
    if not per_batch:
        raise ValueError("evaluation data is empty")
    ok = torch.cat(per_batch, dim=1)
    return {t: ok[k] for k, t in enumerate(ts)}


@torch.no_grad()
def ann_hits(model: nn.Module, data, batch_size: int = 512, device: Optional[torch.device] = None) -> torch.Tensor:
    """One bool per image (on the CPU, in data order): whether the ANN ``model`` is right; pairs with :func:`hits`
    for paired comparisons of an SNN with an ANN."""
    device = device or next(model.parameters()).device
    model.eval()
    ok = []
    for x, y in _batches(as_loader(data, batch_size), device):
        out = model(x)
        check_labels(y, out.shape[-1], "evaluation labels")
        ok.append((out.argmax(-1) == y).cpu())
    if not ok:
        raise ValueError("evaluation data is empty")
    return torch.cat(ok)


def ann_accuracy(model: nn.Module, data, batch_size: int = 512, device: Optional[torch.device] = None) -> float:
    """Test accuracy (%) of the source ANN."""
    return 100.0 * ann_hits(model, data, batch_size, device).double().mean().item()
