"""SNN fine-tuning of any converted network (Datta & Beerel 2022, Sec. III-B "SGL", after Rathi et al.'s DIET-SNN):
backpropagation through the T steps with a surrogate gradient, thresholds, leak and weights trained jointly, direct
input encoding (the analog image is the current at every step).

``finetune(snn, train_data, T=2, epochs=1)`` works on the output of any method (``datta``, ``acp``, ``max``...):
each spiking node is swapped for a trainable ``SnnconvNode`` with the same knobs (threshold and leak as
``nn.Parameter``s) and Datta's surrogate, dS/dv = 1/theta on 0 <= v <= 2 theta (:class:`DattaSurrogate`; the spike's
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

__all__ = ["finetune", "DattaSurrogate", "rect_spike", "prepare", "spiking_nodes", "FinetuneError", "logits"]


class FinetuneError(ValueError):
    """The network has a spiking layer that cannot be trained."""


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


def spiking_nodes(net: nn.Module) -> Dict[str, nn.Module]:
    """The spiking modules of a converted network (SpikingJelly ``BaseNode`` subclasses), by name, in order."""
    from spikingjelly.activation_based import neuron as sj_neuron
    return {n: m for n, m in net.named_modules() if isinstance(m, sj_neuron.BaseNode)}


def _set(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, module)


def prepare(snn: nn.Module, trainable: Sequence[str] = ("v_threshold", "leak"), surrogate: str = "datta") -> nn.Module:
    """Make every spiking node of ``snn`` trainable in place: the same neuron (``node_params``) as an ``SnnconvNode``
    whose ``trainable`` knobs are ``nn.Parameter``s, with Datta's surrogate (``surrogate="datta"``) or the node's own
    (``"native"``). Refuses, naming the layer, a network with stateful layers that are not such nodes."""
    from spikingjelly.activation_based import base
    try:
        from snnconv_spikingjelly import SnnconvNode, node_params
    except ImportError as exc:  # pragma: no cover - needs the trainable-neuron plugin
        raise FinetuneError(f"the SpikingJelly plugin has no trainable nodes ({exc})") from None
    if surrogate not in ("datta", "native"):
        raise ValueError(f"surrogate must be 'datta' or 'native', got {surrogate!r}")
    nodes = spiking_nodes(snn)
    for name, m in snn.named_modules():
        if isinstance(m, base.MemoryModule) and name not in nodes and not hasattr(m, "surrogate_function") \
                and any(True for _ in m.parameters(recurse=False)):
            raise FinetuneError(f"layer {name!r} ({type(m).__name__}) is stateful but not a spiking node snnconv "
                                "can train")
    if not nodes:
        raise FinetuneError(f"{type(snn).__name__} has no SpikingJelly spiking nodes to fine-tune (convert it with "
                            "the spikingjelly backend)")
    for name, m in nodes.items():
        if not hasattr(m, "surrogate_function"):
            raise FinetuneError(f"layer {name!r} ({type(m).__name__}) has no surrogate_function: its spikes have no "
                                "gradient")
        try:
            p = node_params(m)
        except TypeError as exc:
            raise FinetuneError(f"layer {name!r} ({type(m).__name__}) cannot be trained: {exc}") from None
        new = SnnconvNode(p, step_mode=getattr(m, "step_mode", "m"), surrogate_function=m.surrogate_function,
                          trainable=trainable)
        if surrogate == "datta":
            new.surrogate_function = DattaSurrogate(new)
        _set(snn, name, new.to(next(iter(m.buffers()), torch.empty(0)).device))
    return snn


def logits(snn: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """Mean readout over ``T`` steps of direct input ``x`` (the network returns each step's output current)."""
    from spikingjelly.activation_based import functional
    functional.reset_net(snn)
    out = snn(x.unsqueeze(0).expand(T, *x.shape))
    return out.mean(0)


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


def _save_atomic(state: dict, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash leaves the previous checkpoint intact


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
    if T < 1 or epochs < 0:
        raise ValueError(f"finetune needs T >= 1 and epochs >= 0, got T={T}, epochs={epochs}")
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
    nodes = list(spiking_nodes(snn).values())
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
            _save_atomic({"model": snn.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                          "loss": history, "T": T}, ckpt)
        if stopped:
            break
    snn.eval()
    return {"loss": history, "seconds": time.perf_counter() - t0, "T": T, "world_size": world,
            "batches": batches_done, "stopped_by_time": stopped,
            "thresholds": {n: m.v_threshold.detach().flatten()[:1].item() for n, m in spiking_nodes(snn).items()},
            "leaks": {n: float(torch.as_tensor(m.leak).detach().flatten()[0]) for n, m in spiking_nodes(snn).items()}}


# --- ``snnconv finetune`` ------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    """Add the ``snnconv finetune`` options to ``parser``."""
    parser.add_argument("--model", required=True, help="zoo entry (e.g. fmnist-net4)")
    parser.add_argument("--method", default="datta", help="conversion method (snnconv methods)")
    parser.add_argument("--T", type=int, default=2, help="time steps for conversion, training and evaluation")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the weights")
    parser.add_argument("--threshold-lr", type=float, default=None, help="of thresholds and leak (default: --lr)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (split over torchrun processes)")
    parser.add_argument("--max-batches", type=int, default=None, help="batches per epoch (default: all)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop fine-tuning after this many minutes")
    parser.add_argument("--calib", type=int, default=1024, help="calibration images (training set)")
    parser.add_argument("--test", type=int, default=None, help="test images to evaluate (default: all)")
    parser.add_argument("--out", default="finetune-out", help="directory for checkpoint.pt and result.json")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> Dict:
    """Convert a zoo model, evaluate, fine-tune for ``--T`` steps, evaluate again; write ``result.json``."""
    import json

    from . import data, zoo
    from .convert import convert
    from .evaluate import ann_accuracy, evaluate
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    out = Path(args.out)
    rank = int(os.environ.get("RANK", "0"))
    show = not args.no_progress and rank == 0
    ann = zoo.load(args.model, map_location=device)
    train = data.fashion_mnist("train")
    test = data.fashion_mnist("test")
    if args.test is not None:
        test = data.subset(test, args.test)
    calib = data.loader(data.subset(train, args.calib), batch_size=256)
    t0 = time.perf_counter()
    snn = convert(ann, method=args.method, calib_data=calib, T=args.T, progress=show, device=device) \
        if "T" in _method_fields(args.method) else convert(ann, method=args.method, calib_data=calib, progress=show,
                                                           device=device)
    t_convert = time.perf_counter() - t0
    res: Dict = {"model": args.model, "method": args.method, "T": args.T, "convert_seconds": t_convert}
    if rank == 0:
        res["ann_accuracy"] = ann_accuracy(ann, test)
        res["accuracy_converted"] = evaluate(snn, test, timesteps=[args.T], progress=show)[args.T]
    info = finetune(snn, train, T=args.T, epochs=args.epochs, lr=args.lr, threshold_lr=args.threshold_lr,
                    batch_size=args.batch_size, checkpoint=out / "checkpoint.pt", resume=args.resume,
                    max_batches=args.max_batches, seed=args.seed, progress=show, device=device,
                    max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    res.update(finetune_seconds=info["seconds"], loss=info["loss"], world_size=info["world_size"],
               batches=info["batches"], batch_size=args.batch_size, lr=args.lr, stopped_by_time=info["stopped_by_time"],
               thresholds=info["thresholds"], leaks=info["leaks"])
    if rank == 0:
        res["accuracy_finetuned"] = evaluate(snn, test, timesteps=[args.T], progress=show)[args.T]
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(res, indent=1))
        print(f"{args.model} {args.method} T={args.T}: ANN {res['ann_accuracy']:.2f}%, converted "
              f"{res['accuracy_converted']:.2f}%, fine-tuned {res['accuracy_finetuned']:.2f}% "
              f"({info['seconds']:.0f} s of fine-tuning, {info['world_size']} process(es))")
    if dist.is_initialized():
        dist.destroy_process_group()
    return res


def _method_fields(name: str) -> Tuple[str, ...]:
    """``("T",)`` when the method is tuned for a number of time steps."""
    from .methods import get
    return ("T",) if get(name).T is not None else ()
