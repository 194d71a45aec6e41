"""The calibration engine: thresholds, TTRBR's lambda search, and Li et al.'s layer-wise calibration passes.

* :func:`calibrate_thresholds` runs calibration data through the ANN and asks each layer's threshold strategy
  for theta (the ``thresholds`` registry);
* :func:`calibrate` runs everything a :class:`~snnconv_ext.conversion.registry.Method` asks for on the BN-folded fx graph
  of the ANN and returns the neuron parameters per activation; backends then only build their neurons.
* :func:`search_scale`: thresholds times lambda, lambda chosen from {0.60, ..., 1.60} by accuracy on a few
  calibration batches (Meng et al. 2022, Sec. 4 and 5.5, Tables 8-9).
* :func:`calibrate_layers`: Algorithm 2 of Li et al. 2022, first layer to last, each layer calibrated on the
  spikes of the already-calibrated layers below it. All layers are done in ONE multi-step pass: in
  multi-step mode a neuron receives its whole input window ``[T, B, ...]`` before any later layer runs, so it
  can fix its own parameters and hand the corrected spikes on. Passes:

  - ``bias`` (LCP, Eqs. 19-20): ``b += mu_c(e)``, the per-channel spatial (and batch) mean of the error
    ``e = x_ann - s_bar`` between the ANN activation and the SNN's mean output;
  - ``weights`` (ACP, Eqs. 23-24): SGD (momentum, cosine schedule) on ``||x_ann - ClipRound(W s_bar + r)||^2``
    with a straight-through floor, ``s_bar`` the SNN's mean input and ``r`` the rest of the current (a
    residual branch);
  - ``potential`` (ACP, Eq. 22): ``v(0) += T * e`` per neuron (batch mean).

  A layer whose bias/weights also reach other nodes (the skip path of TTRBR's restructured blocks) is copied
  for the activation it drives (:func:`_owner`), so no correction leaks into the residual stream.

  We run ``weights`` before ``potential``: the closed-form potential fix then corrects the error that remains
  with the final weights (Algorithm 2 lists them the other way round; the paper's own code does potential
  only for CIFAR).
* :func:`synthesize_inputs`: data-free calibration images inverted from the ANN's BN statistics (Sec. 5.7).

Every simulation here runs the backend's own spiking modules (the ``node`` factory a recipe passes: the nodes
of the converted network, default :class:`~snnconv_ext.core.neuron.CoreNode`), each followed by a ``graph.Scale`` by
what its spikes are worth; no backend is imported and there is no second neuron loop.
"""
from __future__ import annotations

import copy
import operator
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx
from tqdm.auto import tqdm

from ..core.checks import check_reiterable, iter_inputs
from ..core.activations import ClippedReLU
from ..core.neuron import CoreNode, NeuronParams, spike_values, value
from ..core.pooling import GatedMaxPool
from ..core.simulation import run_window
from . import graph
from . import thresholds as thr
from .registry import Method

NodeFactory = Callable[[NeuronParams], nn.Module]

__all__ = ["calibrate", "calibrate_thresholds", "run_ann", "calibrate_layers", "search_scale", "simulator", "valued_node", "LayerReport",
           "collect", "quantize", "synthesize_inputs", "ann_activations", "PASSES"]

PASSES = ("bias", "weights", "potential", "readout")
_ADD = {operator.add, torch.add, operator.iadd}


def valued_node(p: NeuronParams, node: Optional[NodeFactory] = None) -> nn.Module:
    """The backend's spiking module for ``p`` followed by what its spikes are worth (the theta-scaled form)."""
    return nn.Sequential((node or CoreNode)(p), graph.Scale(*spike_values(p)))


def _run(z: torch.Tensor, p: NeuronParams, node: Optional[NodeFactory] = None) -> torch.Tensor:
    """Binary spikes of the backend's node for ``p`` over a whole window ``z`` ``[T, ...]`` from a fresh state."""
    return run_window((node or CoreNode)(p).to(z.device), z)


def _multistep_copy(gm: fx.GraphModule, replace_by: Dict[str, nn.Module]) -> fx.GraphModule:
    """A multi-step copy of ``gm`` sharing its weights, with the modules at ``replace_by``'s targets swapped."""
    sim = fx.GraphModule(gm, copy.deepcopy(gm.graph))  # submodules by reference: weights are shared
    if gm.meta.get("snnconv_maxpool") == "gated":  # max pooling in the spiking form the network keeps
        replace_by = {**{t: GatedMaxPool(sim.get_submodule(t)) for t in graph.maxpool_targets(sim)}, **replace_by}
    for target, module in replace_by.items():
        graph.set_module(sim, target, module)
    sim.recompile()
    return graph.to_multistep(sim, tuple({type(m) for m in replace_by.values()}))


def simulator(gm: fx.GraphModule, params: Dict[str, NeuronParams], node: Optional[NodeFactory] = None
              ) -> fx.GraphModule:
    """A multi-step copy of ``gm`` (sharing its weights) with each activation replaced by the backend's node
    and its spike value. It maps ``[T, B, ...]`` to the per-step outputs ``[T, B, classes]`` (sum over T for
    the logits); run it with ``simulation.run_window``, which resets it first."""
    return _multistep_copy(gm, {t: valued_node(p, node) for t, p in params.items()})


def run_ann(gm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``gm(x)``, turning a shape mismatch inside the model into an error that names the data's shape."""
    try:
        return gm(x)
    except RuntimeError as exc:
        raise ValueError(f"calibration data of shape {tuple(x.shape)} does not fit the model: {exc}") from None


@torch.no_grad()
def calibrate_thresholds(gm: fx.GraphModule, method: Method, data: Iterable, max_batches: Optional[int] = None,
                         progress: bool = True) -> Dict[str, NeuronParams]:
    """Run calibration data through the ANN, feed each activation's input to its threshold strategy,
    and return the neuron parameters for every activation module (keyed by module target)."""
    nodes = graph.activation_nodes(gm, method)
    if not nodes:
        raise graph.ConversionError(f"no {[a.__name__ for a in method.activations]} activation found to convert")
    strategies = {n.target: thr.get(method.threshold, **method.threshold_options) for n in nodes}
    for t, s in strategies.items():
        s.bind(gm.get_submodule(t))
    hooks = [gm.get_submodule(t).register_forward_pre_hook(lambda m, a, t=t: strategies[t].observe(a[0]))
             for t in strategies]
    device = next(gm.parameters()).device
    shape = None
    images = 0
    try:
        it = iter_inputs(data, device)
        for i, x in enumerate(tqdm(it, desc=f"calibrate {method.name}", disable=not progress, leave=False)):
            shape = tuple(x.shape[1:])
            images += x.shape[0]
            run_ann(gm, x)
            if max_batches is not None and i + 1 >= max_batches:
                break
    finally:
        for h in hooks:
            h.remove()
    if images < 2:
        raise ValueError(f"calibration data holds {images} image; thresholds are statistics of the activations and "
                         "need at least 2 images (use a few hundred)")
    params = {}
    for t, s in strategies.items():
        try:
            theta = s.compute()
        except ValueError as exc:
            raise ValueError(f"layer {t!r}: {exc}") from None
        act = gm.get_submodule(t)
        if isinstance(act, ClippedReLU):  # a fixed clip at b: IF with theta <= b emits clamp(x, 0, theta) (TTRBR Eq. 7)
            theta = torch.clamp(torch.as_tensor(theta), max=act.bound)
        knobs = dict(theta=theta, fire_at=method.fire_at, theta_neg=theta if method.signed else None,
                     memory=method.memory, amplitude=method.amplitude,
                     v0=theta / 2 if method.v0 == "half" else 0.0, leak=method.leak)
        # an activation may define the neuron it becomes (atLeakyReLU: its own negative threshold/amplitude)
        knobs.update(getattr(act, "neuron_knobs", dict)())
        knobs.update(getattr(s, "knobs", dict)())  # a strategy may set more knobs (datta: amplitude beta, Eq. 8)
        if getattr(s, "result", None):
            gm.meta.setdefault("snnconv_thresholds", {})[t] = dict(s.result)
        params[t] = NeuronParams(**knobs)
    gm.meta["input_shape"] = shape
    return params


def collect(data: Iterable, n: int, device: torch.device, what: str = "calibration data"
            ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The first ``n`` images (and labels, when the batches carry them) of ``data``, checked for shape and NaN."""
    xs, ys, have = [], [], 0
    for x, y in iter_inputs(data, device, what, with_labels=True):
        xs.append(x)
        ys.append(y)
        have += x.shape[0]
        if have >= n:
            break
    x = torch.cat(xs)[:n]
    y = None if any(v is None for v in ys) else torch.cat(ys)[:n].to(device)
    return x, y


# --- TTRBR: lambda-scaled thresholds --------------------------------------------------------------------------

def _scaled(params: Dict[str, NeuronParams], lam: float) -> Dict[str, NeuronParams]:
    """Thresholds times lambda (TTRBR Sec. 4), and the initial potentials with them.

    ``v0`` is an absolute potential everywhere (``neuron.init_state`` starts the membrane at it); it is scaled
    too so that a start set relative to theta (DNI's v0 = theta/2) stays at the same fraction of the new
    threshold: the scaled neuron on input ``lambda*x`` then fires exactly as the original on ``x``."""
    out = {}
    for t, p in params.items():
        out[t] = replace(p, theta=torch.as_tensor(p.theta) * lam,
                         theta_neg=None if p.theta_neg is None else torch.as_tensor(p.theta_neg) * lam,
                         v0=torch.as_tensor(p.v0) * lam)
    return out


@torch.no_grad()
def _snn_accuracy(sim: nn.Module, x: torch.Tensor, labels: torch.Tensor, T: int, batch: int = 128) -> float:
    ok = 0
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch]
        out = run_window(sim, xb, T).sum(0)
        ok += (out.argmax(-1) == labels[i:i + batch]).sum().item()
    return 100.0 * ok / x.shape[0]


@torch.no_grad()
def search_scale(gm: fx.GraphModule, params: Dict[str, NeuronParams], x: torch.Tensor, labels: Optional[torch.Tensor],
                 T: int, grid: Iterable[float], progress: bool = False, node: Optional[NodeFactory] = None
                 ) -> Tuple[float, Dict[float, float]]:
    """Pick lambda from ``grid`` by the SNN's accuracy at ``T`` on ``x`` (TTRBR Sec. 5.5: "several batches").

    Without labels the ANN's own predictions are the labels (agreement with the ANN). Ties go to the lambda
    nearest 1. Returns (lambda, {lambda: accuracy}).
    """
    if labels is None:
        labels = run_ann(gm, x).argmax(-1)
    scores = {}
    for lam in tqdm(list(grid), desc=f"lambda search T={T}", disable=not progress, leave=False):
        sim = simulator(gm, _scaled(params, float(lam)), node)
        scores[float(lam)] = _snn_accuracy(sim, x, labels, T)
    best = max(scores.values())
    lam = min((l for l, a in scores.items() if a == best), key=lambda l: (abs(l - 1.0), l))
    return lam, scores


# --- Li et al. 2022: layer-wise parameter calibration --------------------------------------------------------

def quantize(u: torch.Tensor, p: NeuronParams, T: int, ste: bool = False) -> torch.Tensor:
    """T-step mean output of the neuron for constant input current ``u`` (Li et al. Eqs. 17 and 21):
    theta/T * clip(floor(T u/theta + (1 - fire_at) + v0/theta), 0, T); ClipRound when fire_at = 1/2.
    ``ste=True`` passes the gradient straight through the floor (Eq. 24). Exact for constant input when
    u >= 0 or v0 < fire_at*theta; otherwise (an early spike the input then takes back) it is Eq. 22's
    approximation."""
    theta = torch.as_tensor(p.theta, dtype=u.dtype, device=u.device)
    v0 = torch.as_tensor(p.v0, dtype=u.dtype, device=u.device)
    a = T * u / theta + (1.0 - p.fire_at) + v0 / theta
    f = torch.floor(a)
    if ste:
        f = a + (f - a).detach()
    return theta / T * torch.clamp(f, 0, T)


def _passthrough(gm: fx.GraphModule, node: fx.Node) -> bool:
    """An nn.Identity / nn.Dropout node (a no-op in eval mode) that calibration may look through."""
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), (nn.Identity, nn.Dropout))


def _owner(gm: fx.GraphModule, act: fx.Node) -> str:
    """The conv/linear layer whose bias and weights drive ``act``'s input current, and only it: its direct
    producer, or the first conv/linear operand of a residual sum (the branch; the shortcut stays fixed).

    When that layer's output also reaches other nodes (a conv feeding several layers, or, in TTRBR's
    restructured ResNets, a sum that flows on along the skip path as well as into the next block's
    activation), a correction made for ``act`` would leak into them and pile up along the residual stream.
    Then ``act`` gets its own copy of the layer (and of the sum): the graph computes the same function, the
    skip path keeps the original layer, and calibration changes only the copy. ``gm`` is edited in place."""
    modules = dict(gm.named_modules())
    node, path = act.args[0], []
    while isinstance(node, fx.Node) and _passthrough(gm, node):
        path.append(node)
        node = node.args[0]
    conv, add = None, None
    if isinstance(node, fx.Node) and node.op == "call_module" and isinstance(modules[node.target], graph.LINEAR):
        conv = node
    elif isinstance(node, fx.Node) and node.op == "call_function" and node.target in _ADD:
        add = node
        conv = next((a for a in add.args if isinstance(a, fx.Node) and a.op == "call_module"
                     and isinstance(modules[a.target], graph.LINEAR)), None)
    if conv is None:
        raise graph.ConversionError(f"{graph.describe(act)}: calibration needs this activation's input to come from a "
                                    "conv/linear layer (or a residual sum with one); found "
                                    f"{getattr(node, 'name', node)!r}")
    chain = path + ([add] if add is not None else []) + [conv]
    if all(len(n.users) == 1 for n in chain):
        return conv.target
    # shared driver: give act its own copy of the layer (and of the sum), so the correction reaches act only
    name = "calib_" + act.target.replace(".", "_")
    while hasattr(gm, name):
        name += "_"
    gm.add_submodule(name, copy.deepcopy(modules[conv.target]))
    with gm.graph.inserting_after(add if add is not None else conv):
        own = gm.graph.call_module(name, conv.args, conv.kwargs)
    if add is not None:
        with gm.graph.inserting_after(own):
            own = gm.graph.call_function(add.target, tuple(own if a is conv else a for a in add.args), add.kwargs)
    act.replace_input_with(act.args[0], own)
    gm.graph.lint()
    gm.recompile()
    return name


@dataclass
class LayerReport:
    """What calibration did to one spiking layer (errors on the calibration images, relative error
    ||x - s_bar||^2 / ||x||^2 as in Li et al. Figs. 2 and 5)."""

    layer: str
    owner: str
    rel_error_before: float
    rel_error_after: float
    mean_error_before: float  # mean over channels of |mu_c(e)|
    mean_error_after: float
    loss_before: Optional[float] = None  # weight calibration objective (Eq. 23), before and after SGD
    loss_after: Optional[float] = None
    seconds: float = 0.0


def _channel_mean(e: torch.Tensor) -> torch.Tensor:
    """mu_c (Eq. 19) also averaged over the batch: ``[B, C, ...]`` -> ``[C]``."""
    return e.transpose(0, 1).reshape(e.shape[1], -1).mean(1)


def _rel(x: torch.Tensor, s: torch.Tensor) -> float:
    return float((x - s).pow(2).sum() / x.pow(2).sum().clamp_min(1e-12))


class _Calibrating(nn.Module):
    """Stand-in for one spiking layer during the calibration pass: calibrates, then emits its spikes."""

    def __init__(self, target: str, engine: "_Engine") -> None:
        super().__init__()
        self.target, self.engine = target, engine

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.engine.layer(self.target, z)


class _Capture(nn.Module):
    """Wraps an owner layer in the calibration graph to keep its multi-step input and output."""

    def __init__(self, target: str, inner: nn.Module, store: Dict) -> None:
        super().__init__()
        self.target, self.inner, self.store = target, graph.SeqModule(inner), store

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        y = self.inner(s)
        self.store[self.target] = (s, y)
        return y


class _Engine:
    def __init__(self, gm, params, ann_out, owners, passes, T, opts, progress, node=None):
        self.gm, self.params, self.ann, self.owners, self.node = gm, params, ann_out, owners, node
        self.passes, self.T, self.opts = passes, T, opts
        self.store: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.reports: List[LayerReport] = []
        self.bar = tqdm(total=len(params), desc=f"calibrate {'+'.join(passes)} T={T}", disable=not progress,
                        leave=False)

    def layer(self, target: str, z: torch.Tensor) -> torch.Tensor:
        if target not in self.owners:  # readout-only calibration: the layer just runs
            self.bar.update(1)
            return self.run(z, self.params[target])
        t0 = time.perf_counter()
        p, x = self.params[target], self.ann[target]
        owner_t = self.owners[target]
        owner = self.gm.get_submodule(owner_t)
        s_bar = self.run(z, p).mean(0)
        rel0, mean0 = _rel(x, s_bar), float(_channel_mean(x - s_bar).abs().mean())
        loss0 = loss1 = None
        z0 = z
        if "bias" in self.passes:  # LCP: b += mu_c(e) (Algorithm 2; Eq. 20)
            if owner.bias is None:
                owner.bias = nn.Parameter(torch.zeros(owner.weight.shape[0], device=z.device, dtype=z.dtype))
            for _ in range(int(self.opts.get("bias_iters", 1))):
                d = _channel_mean(x - s_bar)
                owner.bias.data += d
                z = z + thr.as_channel(d, x.dim() - 1)
                s_bar = self.run(z, p).mean(0)
        if "weights" in self.passes:  # ACP weight calibration (Eqs. 23-24)
            s_in, y = self.store.pop(owner_t)
            rest = z0 - y  # current not produced by the owner (a residual shortcut), per step
            loss0, loss1 = self._fit_weights(owner, s_in.mean(0), rest.mean(0), x, p)
            z = graph.SeqModule(owner)(s_in) + rest
            s_bar = self.run(z, p).mean(0)
        if "potential" in self.passes:  # ACP potential calibration: v(0) := T * e (Eq. 22), batch mean
            e = (x - s_bar).mean(0)
            p = replace(p, v0=torch.as_tensor(p.v0, dtype=e.dtype, device=e.device) + self.T * e)
            self.params[target] = p
        out = self.run(z, p)
        s_bar = out.mean(0)
        self.reports.append(LayerReport(target, owner_t, rel0, _rel(x, s_bar), mean0,
                                        float(_channel_mean(x - s_bar).abs().mean()), loss0, loss1,
                                        time.perf_counter() - t0))
        self.store.pop(owner_t, None)
        self.bar.update(1)
        return out

    def run(self, z: torch.Tensor, p: NeuronParams) -> torch.Tensor:
        """What the backend's node for ``p`` hands on over the window ``z``: spikes times their value."""
        return value(_run(z, p, self.node), p)

    def _fit_weights(self, owner: nn.Module, s_bar: torch.Tensor, rest: torch.Tensor, x: torch.Tensor,
                     p: NeuronParams) -> Tuple[float, float]:
        """min_W ||x - ClipRound(W s_bar + b + rest)||^2 by SGD with a straight-through floor (Eqs. 23-24)."""
        T, o = self.T, self.opts
        iters, batch = int(o.get("iters", 200)), int(o.get("batch", 32))
        w = owner.weight.detach().clone().requires_grad_(True)
        b = None if owner.bias is None else owner.bias.detach()
        pp = p.to(x)

        def loss_of(weight, idx=None):
            inp, r, tgt = (s_bar, rest, x) if idx is None else (s_bar[idx], rest[idx], x[idx])
            u = torch.func.functional_call(owner, {"weight": weight, "bias": b} if b is not None else
                                           {"weight": weight}, (inp,)) + r
            return F.mse_loss(quantize(u, pp, T, ste=idx is not None), tgt)

        with torch.no_grad():
            before = float(loss_of(w))
        # gradients of a mean squared error are tiny; scale the step by the layer's input energy so one
        # default learning rate suits every layer (SGD with momentum 0.9 and cosine decay, as the paper)
        scale = 1.0 / float(s_bar.pow(2).mean().clamp_min(1e-8))
        opt = torch.optim.SGD([w], lr=float(o.get("lr", 0.01)) * scale, momentum=float(o.get("momentum", 0.9)))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(iters, 1))
        gen = torch.Generator().manual_seed(int(o.get("seed", 0)))
        n = s_bar.shape[0]
        with torch.enable_grad():
            for _ in range(iters):
                idx = torch.randperm(n, generator=gen)[:batch].to(x.device)
                opt.zero_grad(set_to_none=True)
                loss = loss_of(w, idx)
                loss.backward()
                opt.step()
                sched.step()
        with torch.no_grad():
            after = float(loss_of(w))
            if after < before:  # keep the calibrated weights only when they fit better
                owner.weight.data.copy_(w.detach())
            else:
                after = before
        return before, after


def ann_activations(gm: fx.GraphModule, targets: Iterable[str], x: torch.Tensor
                    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """The outputs of the modules at ``targets`` and the network's output, from one forward pass of ``x``."""
    out = {}
    hooks = [gm.get_submodule(t).register_forward_hook(lambda m, i, o, t=t: out.__setitem__(t, o.detach()))
             for t in targets]
    try:
        logits = run_ann(gm, x)
    finally:
        for h in hooks:
            h.remove()
    return out, logits


@torch.no_grad()
def calibrate_layers(gm: fx.GraphModule, params: Dict[str, NeuronParams], x: torch.Tensor, T: int,
                     passes: Tuple[str, ...] = ("bias",), progress: bool = False, node: Optional[NodeFactory] = None,
                     **opts
                     ) -> Tuple[Dict[str, NeuronParams], List[LayerReport]]:
    """Li et al. 2022, Algorithm 2 on the BN-folded ANN graph ``gm`` with calibration images ``x``.

    Updates the biases/weights of ``gm``'s conv/linear layers in place (they are copied first, so a model
    shared with the caller is left alone) and returns the neuron parameters (``v0`` after ``potential``)
    and one :class:`LayerReport` per spiking layer. ``opts``: ``iters``, ``batch``, ``lr``, ``momentum``,
    ``seed`` (weights), ``bias_iters`` (bias; 1 as in the paper).
    """
    unknown = set(passes) - set(PASSES)
    if unknown or not passes:
        raise ValueError(f"calibration passes must be a non-empty subset of {PASSES}, got {passes}")
    if T < 1:
        raise ValueError(f"calibration needs T >= 1, got {T}")
    for t, p in params.items():
        if p.theta_neg is not None or p.memory:
            raise graph.ConversionError(f"layer {t!r}: parameter calibration is defined for unsigned IF neurons "
                                        "(Li et al. 2022); this method's neurons are signed")
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module" and n.target in params}
    layer_passes = set(passes) - {"readout"}
    owners = {t: _owner(gm, nodes[t]) for t in params} if layer_passes else {}
    seen = {}
    for t, o in owners.items():
        if o in seen:
            raise graph.ConversionError(f"layers {seen[o]!r} and {t!r} are both driven by {o!r}")
        seen[o] = t
        graph.set_module(gm, o, copy.deepcopy(gm.get_submodule(o)))  # never touch the caller's module
    params = dict(params)
    ann_out, logits = ann_activations(gm, params, x)  # targets from the ANN before any calibration
    engine = _Engine(gm, params, ann_out, owners, tuple(passes), int(T), opts, progress, node)
    replace_by: Dict[str, nn.Module] = {t: _Calibrating(t, engine) for t in params}
    if "weights" in passes:
        replace_by.update({o: _Capture(o, gm.get_submodule(o), engine.store) for o in owners.values()})
    readout = _readout(gm) if "readout" in passes else None
    if readout is not None:
        graph.set_module(gm, readout, copy.deepcopy(gm.get_submodule(readout)))
        replace_by[readout] = _Capture(readout, gm.get_submodule(readout), engine.store)
    sim = _multistep_copy(gm, replace_by)
    try:
        sim(x.unsqueeze(0).expand(int(T), *x.shape))
    finally:
        engine.bar.close()
    if readout is not None:
        engine.reports.append(_fit_readout(gm, readout, engine.store.pop(readout)[0].mean(0), logits,
                                           float(opts.get("ridge", 0.1))))
    return engine.params, engine.reports


def _readout(gm: fx.GraphModule) -> str:
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if not (isinstance(out, fx.Node) and out.op == "call_module" and isinstance(gm.get_submodule(out.target), nn.Linear)):
        raise graph.ConversionError("readout calibration needs the network to end in an nn.Linear layer")
    return out.target


def _fit_readout(gm: fx.GraphModule, target: str, s_bar: torch.Tensor, logits: torch.Tensor, ridge: float
                 ) -> LayerReport:
    """snnconv's extension of Algorithm 2 (not in the paper, which stops at the last IF layer): fit the linear
    readout to the ANN's logits on the SNN's mean input, by ridge regression towards the ANN's weights:
    min ||[s_bar 1] W' - logits||^2 + ridge * mean(diag(X^T X)) * ||W' - W||^2."""
    t0 = time.perf_counter()
    lin = gm.get_submodule(target)
    xa = torch.cat([s_bar, torch.ones_like(s_bar[:, :1])], 1).double()
    w0 = torch.cat([lin.weight, (lin.bias if lin.bias is not None else torch.zeros(lin.out_features,
                                  device=s_bar.device))[:, None]], 1).T.double()
    y = logits.double()
    gram = xa.T @ xa
    lam = ridge * float(gram.diagonal().mean())
    w = w0 + torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device),
                                xa.T @ (y - xa @ w0))
    before = float((xa @ w0 - y).pow(2).sum() / y.pow(2).sum())
    after = float((xa @ w - y).pow(2).sum() / y.pow(2).sum())
    lin.weight.data.copy_(w[:-1].T.to(lin.weight.dtype))
    if lin.bias is None:
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, device=s_bar.device, dtype=lin.weight.dtype))
    lin.bias.data.copy_(w[-1].to(lin.weight.dtype))
    return LayerReport(target, target, before, after, 0.0, 0.0, None, None, time.perf_counter() - t0)


# --- the whole calibrate step of a recipe -------------------------------------------------------------------

def calibrate(gm: fx.GraphModule, method: Method, data: Iterable, max_batches: Optional[int] = None,
              progress: bool = True, node: Optional[NodeFactory] = None) -> Dict[str, NeuronParams]:
    """Thresholds from ``data`` (:func:`calibrate_thresholds`), then lambda scaling or search, then the
    method's calibration passes, simulated with the backend's ``node`` factory. Records what it chose in
    ``gm.meta["snnconv_calibration"]``."""
    needs_data = method.scale == "search" or bool(method.calibration)
    if needs_data:
        if method.T is None:
            raise ValueError(f"method {method.name!r} tunes for a number of time steps: pass T=...")
        check_reiterable(data, "calib_data", f"method {method.name!r} reads it twice (thresholds, then "
                         f"{'the lambda search' if method.scale == 'search' else 'calibration'})")
    params = calibrate_thresholds(gm, method, data, max_batches=max_batches, progress=progress)
    info: Dict = {"method": method.name}
    if needs_data:
        device = next(gm.parameters()).device
        copts = dict(method.calibration_options)
        x, labels = collect(data, int(copts.pop("samples", 256)), device)
    if method.scale == "search":
        lam, scores = search_scale(gm, params, x, labels, method.T, method.scale_grid, progress, node)
        params = _scaled(params, lam)
        info.update(scale=lam, scale_scores=scores)
    elif float(method.scale) != 1.0:
        params = _scaled(params, float(method.scale))
        info.update(scale=float(method.scale))
    if method.calibration:
        t0 = time.perf_counter()
        params, reports = calibrate_layers(gm, params, x, method.T, method.calibration, progress, node, **copts)
        info.update(passes=method.calibration, T=method.T, seconds=time.perf_counter() - t0,
                    layers=[asdict(r) for r in reports])
    gm.meta["snnconv_calibration"] = info
    return params


# --- data-free calibration (Li et al. Sec. 5.7) --------------------------------------------------------------

def synthesize_inputs(model: nn.Module, shape: Tuple[int, ...], n: int = 256, steps: int = 200, lr: float = 0.05,
                      batch: int = 128, seed: int = 0, progress: bool = True) -> torch.utils.data.TensorDataset:
    """Calibration images without training data: optimise noise of ``shape`` (C, H, W) so every BatchNorm
    layer sees its running mean and variance and the ANN predicts a chosen class (DeepInversion-style; the
    paper uses MixMix [80]). Returns a TensorDataset of ``n`` images and the classes they were made for."""
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    if not bns:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer: its statistics are what data-free "
                         "synthesis matches")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out_x, out_y = [], []
    stats: List[torch.Tensor] = []

    def hook(m, inp, _out):
        a = inp[0]
        dims = [0] + list(range(2, a.dim()))
        mu, var = a.mean(dims), a.var(dims, unbiased=False)
        stats.append((mu - m.running_mean).norm() + (var - m.running_var).norm())

    hooks = [m.register_forward_hook(hook) for m in bns]
    num_classes = None
    try:
        for start in tqdm(range(0, n, batch), desc="synthesize", disable=not progress, leave=False):
            b = min(batch, n - start)
            img = torch.randn(b, *shape, generator=gen).to(device).mul_(0.2).add_(0.5).requires_grad_(True)
            with torch.no_grad():
                stats.clear()
                num_classes = num_classes or model(img[:1]).shape[-1]
            y = torch.randint(num_classes, (b,), generator=gen).to(device)
            opt = torch.optim.Adam([img], lr=lr)
            with torch.enable_grad():
                for _ in range(steps):
                    stats.clear()
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(img), y) + sum(stats)
                    loss.backward()
                    opt.step()
            out_x.append(img.detach().clamp_(0, 1).cpu())
            out_y.append(y.cpu())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return torch.utils.data.TensorDataset(torch.cat(out_x), torch.cat(out_y))
