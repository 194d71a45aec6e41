"""Training in the SNN: fine-tuning of any converted network (Datta & Beerel 2022, Sec. III-B "SGL", after Rathi et al.'s DIET-SNN):
backpropagation through the T steps with a surrogate gradient, thresholds, leak and weights trained jointly, direct
input encoding (the analog image is the current at every step).

``finetune(snn, train_data, T=2, epochs=1)`` works on the output of any method (``datta``, ``acp``, ``max``...):
the backend plugin makes each spiking node trainable with the same knobs (SpikingJelly: an ``SnnconvNode`` with
threshold and leak as ``nn.Parameter``s, :func:`snnconv_ext.core.nodes.make_trainable`) and Datta's surrogate, dS/dv = 1/theta on 0 <= v <= 2 theta (:class:`DattaSurrogate`; the spike's
value theta*S then has slope 1 there, "ds'/ds ~ 1 for 0 <= s <= 2 alpha mu"). One checkpoint per epoch (atomic),
``resume=True`` continues from it; under ``torchrun`` the net is wrapped in DistributedDataParallel (gloo on CPU,
NCCL on CUDA) with a ``DistributedSampler``, so N processes see the same global batch as one.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from tqdm.auto import tqdm

from ..core.checks import check_T, positive_int, positive_number
from ..core.files import save_atomic
from ..core.nodes import FinetuneError, make_trainable, params_of, spiking_modules
from ..core.simulation import run_window

__all__ = ["finetune", "DattaSurrogate", "rect_spike", "prepare", "FinetuneError", "logits", "SURROGATES"]

SURROGATES = ("datta", "native")


class _Rect(torch.autograd.Function):
    """Heaviside forward; backward 1/w on |x| <= w (a rectangle of area 2)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        return g * (x.abs() <= w).to(g.dtype) / w, None


def rect_spike(x: torch.Tensor, theta: Union[float, torch.Tensor]) -> torch.Tensor:
    """Spike S = H(x) for x = v - theta with Datta's surrogate (Sec. III-B): dS/dx = 1/theta for -theta <= x <= theta,
    i.e. for 0 <= v <= 2 theta, else 0, so a spike's value theta*S has slope 1 on that window."""
    w = torch.as_tensor(theta, dtype=x.dtype, device=x.device).detach()
    return _Rect.apply(x, w)


class DattaSurrogate(nn.Module):
    """SpikingJelly-style surrogate function (called with ``x = v - v_threshold``) whose window follows the current
    threshold of ``node`` (held by reference, not as a submodule)."""

    def __init__(self, node: nn.Module) -> None:
        super().__init__()
        self._node = [node]
        self.spiking = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rect_spike(x, self._node[0].v_threshold)

    def extra_repr(self) -> str:
        return "dS/dv = 1/theta on [0, 2 theta] (Datta & Beerel Sec. III-B)"


def prepare(snn: nn.Module, trainable: Sequence[str] = ("v_threshold", "leak"), surrogate: str = "datta") -> nn.Module:
    """Make every spiking node of ``snn`` trainable in place (the backend's trainer, registered by its plugin):
    the same neuron with its ``trainable`` knobs as ``nn.Parameter``s, with Datta's surrogate (``"datta"``) or the
    node's own (``"native"``). Refuses, naming the layer, a network with stateful layers it cannot train."""
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    return make_trainable(snn, trainable, surrogate)


def logits(snn: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """Mean readout over ``T`` steps of direct input ``x`` (the network returns each step's output current)."""
    return run_window(snn, x, T).mean(0)


def _dataset(data) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return TensorDataset(*data)
    raise TypeError(f"train_data must be a Dataset of (image, label) or a pair of tensors, got {type(data).__name__}")


def _project(nodes: Iterable[nn.Module]) -> None:
    """Keep thresholds > 0 and leaks in [0, 1] after each step (projected gradient)."""
    with torch.no_grad():
        for m in nodes:
            th = getattr(m, "v_threshold", None)
            if isinstance(th, nn.Parameter):
                th.clamp_(min=1e-4)
            lk = getattr(m, "leak", None)
            if isinstance(lk, nn.Parameter):
                lk.clamp_(0.0, 1.0)


def _elapsed(t0: float, distributed: bool, device: torch.device) -> float:
    """Seconds since ``t0``; under DDP rank 0's clock, so every process stops at the same batch."""
    el = torch.tensor([time.perf_counter() - t0], dtype=torch.float64,
                      device=device if device.type == "cuda" else "cpu")
    if distributed:
        dist.broadcast(el, 0)
    return float(el)


def finetune(snn: nn.Module, train_data, T: int = 2, epochs: int = 1, lr: float = 1e-4, batch_size: int = 64,
             threshold_lr: Optional[float] = None, trainable: Sequence[str] = ("v_threshold", "leak"),
             surrogate: str = "datta", checkpoint: Optional[Union[str, Path]] = None, resume: bool = False,
             max_batches: Optional[int] = None, max_seconds: Optional[float] = None, seed: int = 0,
             progress: bool = True, device: Optional[torch.device] = None) -> Dict:
    """Fine-tune a converted network in place for ``T`` steps with cross-entropy on the mean readout (Adam, ``lr``;
    thresholds/leak at ``threshold_lr``, default lr; dropout layers stay off). ``max_seconds`` ends training when that much time has passed
    (the interrupted epoch then counts as done in the checkpoint). Returns {"loss": [per epoch], "seconds": ..., ...}.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes ``batch_size / world`` images of every global batch.
    """
    check_T(T, "finetune: T")
    if not (positive_int(epochs) or epochs == 0) or isinstance(epochs, bool):
        raise ValueError(f"finetune: epochs must be an integer >= 0, got {epochs!r}")
    for name, rate in (("lr", lr), ("threshold_lr", threshold_lr)):
        if rate is not None and not positive_number(rate):
            raise ValueError(f"finetune: {name} must be a finite number > 0, got {rate!r}")
    if not positive_int(batch_size):
        raise ValueError(f"finetune: batch_size must be an integer >= 1, got {batch_size!r}")
    ds = _dataset(train_data)
    prepare(snn, trainable, surrogate)
    device = torch.device(device) if device is not None else next(snn.parameters()).device
    snn.to(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes {world}")
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(ds, batch_size=batch_size // world, sampler=sampler, drop_last=True)
    nodes = list(spiking_modules(snn).values())
    knob_ids = {id(p) for m in nodes for p in m.parameters(recurse=False)}
    weights = [p for p in snn.parameters() if id(p) not in knob_ids]
    knobs = [p for p in snn.parameters() if id(p) in knob_ids]
    opt = torch.optim.Adam([{"params": weights, "lr": lr},
                            {"params": knobs, "lr": threshold_lr if threshold_lr is not None else lr}])
    start, history = 0, []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        snn.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["epoch"]), [float(v) for v in state["loss"]]
    model = snn
    if distributed:
        model = nn.parallel.DistributedDataParallel(snn, device_ids=[device.index] if device.type == "cuda" else None,
                                                    broadcast_buffers=False)
    t0 = time.perf_counter()
    snn.train()
    for m in snn.modules():  # dropout stays off: SeqModule would draw a new mask at every step
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    batches_done, stopped = 0, False
    for epoch in range(start, epochs):
        sampler.set_epoch(epoch)
        total, seen = 0.0, 0
        n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
        bar = tqdm(loader, total=n_batches, desc=f"finetune T={T} epoch {epoch + 1}/{epochs}",
                   disable=not progress or rank != 0, leave=False)
        for i, (x, y) in enumerate(bar):
            if max_batches is not None and i >= max_batches:
                break
            if max_seconds is not None and _elapsed(t0, distributed, device) > max_seconds:
                stopped = True
                break
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(logits(model, x, T), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _project(nodes)
            total += loss.item() * len(y)
            seen += len(y)
            batches_done += 1
            bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        history.append(total / max(seen, 1))
        if ckpt is not None and rank == 0:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            save_atomic({"model": snn.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                          "loss": history, "T": T}, ckpt)
        if stopped:
            break
    snn.eval()
    knobs_after = {n: params_of(m) for n, m in spiking_modules(snn).items()}
    return {"loss": history, "seconds": time.perf_counter() - t0, "T": T, "world_size": world,
            "batches": batches_done, "stopped_by_time": stopped,
            "thresholds": {n: float(torch.as_tensor(p.theta).detach().flatten()[0]) for n, p in knobs_after.items()},
            "leaks": {n: float(torch.as_tensor(p.leak).detach().flatten()[0]) for n, p in knobs_after.items()}}
