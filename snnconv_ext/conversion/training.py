"""Training in the SNN: fine-tuning of any converted network (Datta & Beerel 2022, Sec. III-B "SGL", after Rathi et al.'s DIET-SNN):
backpropagation through the T steps with a surrogate gradient, thresholds, leak and weights trained jointly, direct
input encoding (the analog image is the current at every step).

``finetune(snn, train_data, T=2, epochs=1)`` works on the output of any method (``datta``, ``acp``, ``max``...):
the backend plugin makes each spiking node trainable (:func:`snnconv_ext.core.nodes.make_trainable`) and gives it
Datta's surrogate, dS/dv = 1/theta on 0 <= v <= 2 theta (:class:`DattaSurrogate`; the spike's value theta*S then has
slope 1 there, "ds'/ds ~ 1 for 0 <= s <= 2 alpha mu"). With ``trainable=()`` only the weights train and SpikingJelly's
own ``IFNode``/``TernaryIFNode`` stay; training thresholds or leak (the default) needs a node that holds them as
``nn.Parameter``s, SpikingJelly's ``SnnconvNode``, and the swap is announced (:class:`NodeSwapWarning`).

Loading a fine-tuned ``state_dict`` into a fresh conversion: convert with the knobs that were trained,
``sc.convert(ann, method, calib, trainable=info["trainable"])`` (``[]`` for weights only: a plain conversion), then
``load_state_dict``; the node classes and keys are the same.

Every argument is checked before any work (T, rates, counts, device, data: finite images, integer labels in range,
at least one full batch or ``drop_last=False``). One checkpoint per epoch (atomic) records what it was trained for
(:func:`run_record`: method, options, T, trainable knobs, surrogate); ``resume=True`` continues it and refuses, naming
the difference, a checkpoint written for something else; an existing checkpoint is replaced only with
``overwrite=True``. Under ``torchrun`` the net is wrapped in DistributedDataParallel (gloo on CPU, NCCL on CUDA) with a
``DistributedSampler``, so N processes see the same global batch as one.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm.auto import tqdm

from ..core.checks import (check_count, check_device, check_full_batch, check_input, check_labels, check_out_file,
                           check_rate, check_T, check_trainable, check_training_data)
from ..core.files import save_atomic
from ..core.nodes import FinetuneError, make_trainable, params_of, spiking_modules
from ..core.simulation import run_window

__all__ = ["finetune", "DattaSurrogate", "rect_spike", "prepare", "FinetuneError", "NodeSwapWarning", "logits",
           "distill_loss", "check_distill", "SCHEDULES", "run_record", "read_checkpoint", "check_resume", "SURROGATES", "TRAINABLE_DEFAULT"]

SURROGATES = ("datta", "native")
SCHEDULES = ("constant", "cosine")  # learning rate over the planned batches; cosine: Loshchilov & Hutter 2017, Eq. 5
TRAINABLE_DEFAULT = ("v_threshold", "leak")  # Datta & Beerel Sec. III-B: thresholds and leak train with the weights


class NodeSwapWarning(UserWarning):
    """Fine-tuning replaced spiking nodes by trainable ones (e.g. SpikingJelly's ``IFNode`` by ``SnnconvNode``)."""


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


def prepare(snn: nn.Module, trainable: Sequence[str] = TRAINABLE_DEFAULT, surrogate: str = "datta") -> nn.Module:
    """Make every spiking node of ``snn`` trainable in place (the backend's trainer, registered by its plugin):
    ``trainable`` knobs become ``nn.Parameter``s (``()``: weights only, the nodes stay what they are), and every node
    gets Datta's surrogate (``"datta"``) or keeps its own (``"native"``). A node that has to change class for this
    is announced with a :class:`NodeSwapWarning` naming the layers. Refuses, naming the layer, a network with stateful
    layers it cannot train."""
    _make_trainable(snn, trainable, surrogate)
    return snn


def _make_trainable(snn: nn.Module, trainable: Sequence[str], surrogate: str) -> list:
    """:func:`prepare`; returns the layers whose node was replaced."""
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    trainable = check_trainable(trainable)
    before = spiking_modules(snn)
    make_trainable(snn, trainable, surrogate)
    after = spiking_modules(snn)
    swapped = {n: (type(before[n]).__name__, type(m).__name__) for n, m in after.items() if m is not before.get(n)}
    if swapped:
        kinds = sorted({f"{a} -> {b}" for a, b in swapped.values()})
        warnings.warn(f"fine-tuning replaces {len(swapped)} spiking layer(s) {list(swapped)} ({', '.join(kinds)}) to "
                      f"train {list(trainable)}; trainable=() trains the weights only and keeps the nodes",
                      NodeSwapWarning, stacklevel=3)
    return list(swapped)


def logits(snn: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """Mean readout over ``T`` steps of direct input ``x`` (the network returns each step's output current)."""
    return run_window(snn, x, T).mean(0)


def check_distill(distill, what: str = "finetune: distill") -> Optional[Tuple[nn.Module, float, float]]:
    """``distill``: ``None`` or ``(teacher, temperature, weight)``: an ``nn.Module`` (the ANN), a finite number > 0
    and a weight in [0, 1]; one line naming the part that is wrong otherwise."""
    if distill is None:
        return None
    if not isinstance(distill, (tuple, list)) or len(distill) != 3:
        raise ValueError(f"{what} must be (teacher, temperature, weight), got {distill!r}")
    teacher, tau, w = distill
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"{what}: teacher must be an nn.Module (the ANN), got {type(teacher).__name__}")
    tau = check_rate(tau, f"{what}: temperature")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
        raise ValueError(f"{what}: weight must be a number in [0, 1], got {w!r}")
    return teacher, tau, float(w)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, temperature: float,
                 weight: float) -> torch.Tensor:
    """Knowledge distillation (Hinton, Vinyals & Dean 2015, Sec. 2): (1 - w) CE(student, y)
    + w tau^2 KL(softmax(teacher / tau) || softmax(student / tau)), the tau^2 keeping the soft term's gradient scale."""
    soft = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                    reduction="batchmean", log_target=True)
    return (1.0 - weight) * F.cross_entropy(student, y) + weight * temperature ** 2 * soft


def _plain(v):
    """Tuples as lists, recursively: a record compares equal after a round trip through a checkpoint."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def run_record(snn: Optional[nn.Module], T: int, trainable: Sequence[str] = TRAINABLE_DEFAULT,
               surrogate: str = "datta", record: Optional[Dict] = None) -> Dict:
    """What a fine-tuning checkpoint is for, and what a resumed run must match: the conversion (the method recorded
    in ``snn.meta``, and the caller's ``record``, e.g. ``{"model": ..., "method": ..., "options": {...}}``), ``T``,
    the trained knobs and the surrogate."""
    meta = (getattr(snn, "meta", None) or {}) if snn is not None else {}
    recorded = {"method": "snnconv_method", "model": "snnconv_model", "options": "snnconv_options"}
    out = {k: meta[m] for k, m in recorded.items() if meta.get(m) is not None}  # the conversion record (sc.convert)
    out.update(record or {})
    out.update(T=int(T), trainable=sorted(trainable), surrogate=surrogate)
    return _plain(out)


def read_checkpoint(path: Union[str, Path]) -> Dict:
    """A fine-tuning checkpoint (``weights_only``), checked to hold what :func:`finetune` writes."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types
        raise ValueError(f"cannot read checkpoint {path}: corrupt or not a fine-tuning checkpoint "
                         f"({type(exc).__name__}: {exc})") from None
    need = ("model", "optimizer", "epoch", "loss")
    if not isinstance(state, dict) or any(k not in state for k in need):
        raise ValueError(f"checkpoint {path} is not a fine-tuning checkpoint (it lacks "
                         f"{[k for k in need if not isinstance(state, dict) or k not in state]})")
    if not isinstance(state.get("record"), dict):
        raise ValueError(f"checkpoint {path} records nothing about the run that wrote it (an older snnconv), so it "
                         "cannot be checked against this one: start afresh (overwrite=True, --overwrite)")
    return state


def check_resume(path: Union[str, Path], record: Dict) -> Dict:
    """The checkpoint at ``path`` if it was written for ``record`` (:func:`run_record`); otherwise one line naming
    each difference."""
    state = read_checkpoint(path)
    old, new = state["record"], _plain(record)
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"cannot resume checkpoint {path}: it was written for "
                         f"{', '.join(f'{k}={old.get(k)!r}' for k in diff)}, this run is "
                         f"{', '.join(f'{k}={new.get(k)!r}' for k in diff)}; resume with the same settings, or start "
                         "afresh elsewhere or with overwrite=True (--overwrite)")
    return state


def _classes(snn: nn.Module, ds, device: torch.device) -> int:
    """The number of outputs of ``snn``, from one step of the first training image (which must fit the network)."""
    x0 = ds[0][0]
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"finetune: train_data yields {type(x0).__name__} images; expected tensors")
    check_input(x0.unsqueeze(0), (getattr(snn, "meta", None) or {}).get("input_shape"), "finetune: train_data images")
    try:
        with torch.no_grad():
            return int(logits(snn, x0.unsqueeze(0).to(device), 1).shape[-1])
    except RuntimeError as exc:
        raise ValueError(f"finetune: train_data images of shape {tuple(x0.shape)} do not fit the network: "
                         f"{str(exc).splitlines()[0]}") from None


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
             threshold_lr: Optional[float] = None, trainable: Sequence[str] = TRAINABLE_DEFAULT,
             surrogate: str = "datta", checkpoint: Optional[Union[str, Path]] = None, resume: bool = False,
             overwrite: bool = False, max_batches: Optional[int] = None, max_seconds: Optional[float] = None,
             seed: int = 0, drop_last: bool = True, record: Optional[Dict] = None, progress: bool = True,
             device: Optional[torch.device] = None, distill: Optional[Tuple[nn.Module, float, float]] = None,
             schedule: str = "constant") -> Dict:
    """Fine-tune a converted network in place for ``T`` steps with cross-entropy on the mean readout (Adam, ``lr``;
    thresholds/leak at ``threshold_lr``, default lr; dropout layers stay off).

    ``train_data``: a map-style Dataset of (image, label) or a pair of tensors; labels are integer class indices.
    ``trainable``: the neuron knobs that train with the weights (``()``: weights only, SpikingJelly's own nodes
    stay). ``drop_last=False`` trains on the last, partial batch too (needed when the data is smaller than one batch).
    ``checkpoint``: written after every epoch with :func:`run_record` (``record`` adds e.g. the model name);
    ``resume=True`` continues it (it must exist and match), ``overwrite=True`` replaces an existing one.
    ``max_seconds`` ends training when that much time has passed (the interrupted epoch then counts as done in
    the checkpoint). ``distill=(teacher, temperature, weight)`` adds knowledge distillation from the teacher's
    (the ANN's) logits to the loss (:func:`distill_loss`); ``schedule="cosine"`` anneals both learning rates to 0
    over the planned batches (``epochs`` x batches per epoch). Returns {"loss": [per epoch], "seconds": ..., "trainable": ..., "swapped": [layers], ...}.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes ``batch_size / world`` images of every global batch.
    """
    T = check_T(T, "finetune: T")
    check_count(epochs, "finetune: epochs")
    check_rate(lr, "finetune: lr")
    if threshold_lr is not None:
        check_rate(threshold_lr, "finetune: threshold_lr")
    check_count(batch_size, "finetune: batch_size")
    if max_batches is not None:
        check_count(max_batches, "finetune: max_batches")
    if max_seconds is not None:
        check_rate(max_seconds, "finetune: max_seconds")
    check_count(seed, "finetune: seed", minimum=0)
    if surrogate not in SURROGATES:
        raise ValueError(f"finetune: surrogate must be one of {SURROGATES}, got {surrogate!r}")
    trainable = check_trainable(trainable, "finetune: trainable")
    distill = check_distill(distill)
    if schedule not in SCHEDULES:
        raise ValueError(f"finetune: schedule must be one of {SCHEDULES}, got {schedule!r}")
    first = next(snn.parameters(), None)
    device = check_device(device, "finetune: device") if device is not None else \
        (first.device if first is not None else torch.device("cpu"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if batch_size % world:
        raise ValueError(f"finetune: batch_size {batch_size} must be divisible by the number of processes {world}")
    ds = check_training_data(train_data, "finetune: train_data")
    check_full_batch(len(ds), batch_size, drop_last, "finetune: train_data")
    n_classes = _classes(snn, ds, first.device if first is not None else torch.device("cpu"))
    checked = isinstance(ds, TensorDataset)
    if checked:  # tensors are checked whole before any work; other Datasets batch by batch below
        check_labels(ds.tensors[1], n_classes, "finetune: train_data labels")
    rec = run_record(snn, T, trainable, surrogate, record)
    if distill is not None:  # a resumed run must distil the same way (the teacher itself is not recorded)
        rec["distill"] = {"temperature": distill[1], "weight": distill[2]}
    if schedule != "constant":  # the cosine spans the planned epochs: a resumed run must plan the same
        rec["schedule"] = {"name": schedule, "epochs": int(epochs)}
    ckpt = check_out_file(checkpoint, "finetune: checkpoint") if checkpoint is not None else None
    state = None
    if resume:
        if ckpt is None:
            raise ValueError("finetune: resume=True needs checkpoint=<path of the checkpoint to continue>")
        if not ckpt.is_file():
            raise FileNotFoundError(f"finetune: resume=True, but there is no checkpoint {ckpt} to continue")
        state = check_resume(ckpt, rec)
    elif ckpt is not None and ckpt.exists() and not overwrite:
        raise FileExistsError(f"finetune: checkpoint {ckpt} exists: resume=True continues it, overwrite=True "
                              "replaces it")

    swapped = _make_trainable(snn, trainable, surrogate)
    snn.to(device)
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
    loader = DataLoader(ds, batch_size=batch_size // world, sampler=sampler, drop_last=drop_last)
    nodes = list(spiking_modules(snn).values())
    knob_ids = {id(p) for m in nodes for p in m.parameters(recurse=False)}
    weights = [p for p in snn.parameters() if id(p) not in knob_ids]
    knobs = [p for p in snn.parameters() if id(p) in knob_ids]
    opt = torch.optim.Adam([{"params": weights, "lr": lr},
                            {"params": knobs, "lr": threshold_lr if threshold_lr is not None else lr}])
    per_epoch = len(loader) if max_batches is None else min(len(loader), max_batches)
    planned = max(1, epochs * per_epoch)  # cosine annealing to 0 (Loshchilov & Hutter 2017, Eq. 5, no restarts)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, planned) / planned))) \
        if schedule == "cosine" else None
    start, history = 0, []
    if state is not None:
        try:
            snn.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"checkpoint {ckpt} does not fit this network: {str(exc).splitlines()[0]}") from None
        start, history = int(state["epoch"]), [float(v) for v in state["loss"]]
        if sched is not None:  # continue the cosine where the checkpoint's epochs ended
            sched.last_epoch = start * per_epoch
            for g, f in zip(opt.param_groups, sched.get_lr()):
                g["lr"] = f
    if distill is not None:
        teacher = distill[0].to(device).eval()
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
            if not checked:
                check_input(x, what=f"finetune: train_data batch {i} images")
                check_labels(y, n_classes, f"finetune: train_data batch {i} labels", n=x.shape[0])
            x, y = x.to(device), y.to(device)
            out = logits(model, x, T)
            if distill is None:
                loss = F.cross_entropy(out, y)
            else:
                with torch.no_grad():
                    target = teacher(x)
                loss = distill_loss(out, target, y, distill[1], distill[2])
            if not torch.isfinite(loss):  # refuse before the step: the weights stay finite
                raise ValueError(f"finetune: the loss became {float(loss)} in epoch {epoch + 1}, batch {i} (a "
                                 "learning rate too high?); this batch updated nothing")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            _project(nodes)
            total += loss.item() * len(y)
            seen += len(y)
            batches_done += 1
            bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        history.append(total / max(seen, 1))
        if ckpt is not None and rank == 0:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            save_atomic({"model": snn.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                         "loss": history, "T": T, "record": rec}, ckpt)
        if stopped:
            break
    snn.eval()
    knobs_after = {n: params_of(m) for n, m in spiking_modules(snn).items()}
    return {"loss": history, "seconds": time.perf_counter() - t0, "T": T, "world_size": world,
            "batches": batches_done, "stopped_by_time": stopped, "trainable": list(trainable), "swapped": swapped,
            "record": rec,
            "thresholds": {n: float(torch.as_tensor(p.theta).detach().flatten()[0]) for n, p in knobs_after.items()},
            "leaks": {n: float(torch.as_tensor(p.leak).detach().flatten()[0]) for n, p in knobs_after.items()}}
