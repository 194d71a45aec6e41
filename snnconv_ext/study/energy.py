"""Operation counts and energy estimates: the ANN's MACs against the SNN's measured synaptic operations.

Per weighted layer (conv / linear) of a converted network:

* ``macs``: the ANN's multiply-accumulates per image, k*k*c_in/groups*c_out*h_out*w_out (conv) or
  f_in*f_out (linear) (DNISNM Eq. 24).
* ``synops``: the SNN's synaptic operations (accumulates) per image over T steps, counted exactly: every
  spike (nonzero output of a spiking module, so signed -1 spikes count too) costs one accumulate per
  connection it has into the layer. Connections are counted per input position by probing the layer
  (and the pooling / flatten / scaling modules in between) with one-hot inputs, so borders and
  avg-pool-then-conv are exact. DNISNM Eq. 25 / TTRBR Eq. 15 approximate this by spikes per neuron times
  the ANN's MACs; ``synops_rate`` gives that approximation for comparison.
* layers fed by the analog input (direct encoding) cost MACs in the SNN too (DNISNM Eq. 26, Datta & Beerel
  Sec. VI-B), ``T`` times by default (the current is recomputed every step; our simulator computes it once).

SpikingJelly's ``SynOpCounter`` counts a conv / matmul only when its input is exactly 0/1, so on a converted
network it misses every layer fed through average pooling, a ``Scale`` or signed spikes; on
:func:`snnconv_ext.study.forms.synaptic_form` of the network it counts what ``synops`` counts here.

Energy (pJ per op, :data:`CONSTANTS`): E_ANN = e_mac * MACs; E_SNN = e_mac * analog MACs + e_ac * synops
(DNISNM Eq. 26; Datta & Beerel Sec. VI-B; stReLU Eqs. 23-24 with e_ac = 77 fJ per SOP).
"""
from __future__ import annotations

import math
import operator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..core.checks import as_loader
from ..core.layers import ChannelShuffle, Chunk, Concat
from ..core.nodes import (POOLS, WEIGHTED, first_output, graph_of, is_multistep, is_spiking, is_stateful,
                          spike_hooks, spiking_modules, unwrap)
from ..core.simulation import evaluate, reset, run_window
from .forms import sample_shapes

__all__ = ["Constants", "CONSTANTS", "constants", "Report", "SpikeMeter", "measure",
           "ann_macs"]


@dataclass(frozen=True)
class Constants:
    """Energy per operation in picojoules: one MAC (ANN, analog first layer) and one AC / synaptic op."""

    name: str
    e_mac: float
    e_ac: float
    source: str = ""


CONSTANTS: Dict[str, Constants] = {
    # 45 nm CMOS (Horowitz 2014) as used in TTRBR Eq. 15, DNISNM Eq. 26 and Li et al. Sec. 6
    "45nm": Constants("45nm", 4.6, 0.9, "45 nm CMOS, 32-bit float (TTRBR Eq. 15, DNISNM Eq. 26, Li et al.)"),
    # Datta & Beerel Sec. VI-B: 45 nm, 0.9 V, 32-bit integer: E_MAC = 3.2 pJ, E_AC = 0.1 pJ
    "datta": Constants("datta", 3.2, 0.1, "45 nm CMOS, 32-bit int (Datta & Beerel Sec. VI-B)"),
    # stReLU Eqs. 23-24: 4.6 pJ per MAC, 77 fJ per synaptic operation
    "strelu": Constants("strelu", 4.6, 0.077, "4.6 pJ/MAC, 77 fJ/SOP (stReLU Eqs. 23-24)"),
}


def constants(spec: Union[str, Constants, Tuple[float, float]]) -> Constants:
    """A named set (``"45nm"``, ``"datta"``, ``"strelu"``), a :class:`Constants`, or ``(e_mac, e_ac)`` in pJ."""
    if isinstance(spec, Constants):
        return spec
    if isinstance(spec, str):
        if spec in CONSTANTS:
            return CONSTANTS[spec]
        try:
            mac, ac = (float(v) for v in spec.split(":"))
        except ValueError:
            raise KeyError(f"unknown energy constants {spec!r}; named sets: {sorted(CONSTANTS)}, "
                           "or 'E_MAC:E_AC' in pJ") from None
        return Constants(spec, mac, ac, "user")
    mac, ac = spec
    return Constants(f"{mac}:{ac}", float(mac), float(ac), "user")


# ---------------------------------------------------------------------------------------------- structure

# channel-wise (or channel-moving) layers a spike passes unchanged in where it reaches: a probe of one channel
# counts the same through them (a concatenation only renumbers channels; an affine scales the current)
_IDENTITY_NAMES = {"Scale", "VoltageScaler", "ChannelVoltageScaler", "Identity", "Dropout", "Dropout2d",
                   "BatchNorm1d", "BatchNorm2d", "ChannelAffine"}


def _sj_flatten(mod: nn.Module) -> bool:
    """SpikingJelly 2.0's converter wraps ``torch.flatten(x, 1)`` as a ``_StepModeTensorOp("flatten")`` (by name: no
    framework import here)."""
    return type(mod).__name__ == "_StepModeTensorOp" and getattr(mod, "op_name", None) == "flatten" and \
        getattr(mod, "op_kwargs", {}) in ({"start_dim": 1, "end_dim": -1},)


def _plain(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply ``mod`` as its torch.nn base class (bypassing a framework's step-mode forward)."""
    for cls in type(mod).__mro__:
        if cls.__module__.startswith("torch.nn.modules") and "forward" in cls.__dict__:
            return cls.forward(mod, x)
    return mod(x)  # pragma: no cover


def _connections(mod: nn.Module, x: torch.Tensor, where: str) -> torch.Tensor:
    """Connections per probe from the (one-channel) probe ``x`` [P, 1, ...] into weighted layer ``mod``."""
    if isinstance(mod, nn.Linear):
        return mod.out_features * (x.flatten(1) != 0).any(1).long()  # every input reaches every output
    if getattr(mod, "padding_mode", "zeros") != "zeros":
        raise ValueError(f"{where}: padding_mode {mod.padding_mode!r}: connection counting handles zero padding")
    conv = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
    ones = torch.ones((1, 1, *mod.kernel_size), dtype=x.dtype, device=x.device)
    y = conv(x, ones, None, mod.stride, mod.padding, mod.dilation)
    # a spike in one input channel reaches out_channels/groups output channels at each reached position
    return (y.flatten(1) != 0).sum(1) * (mod.out_channels // mod.groups)


@torch.no_grad()
def _fanout(gm: fx.GraphModule, src: fx.Node, shape: Sequence[int],
            shapes: Optional[Callable[[], Dict[str, Tuple[int, ...]]]] = None) -> Dict[str, torch.Tensor]:
    """Per consumer, the connections of each neuron of ``src`` (a map of the layer's ``shape``).

    Probes one channel at every spatial position; every pass-through op handled treats channels alike and so
    does every weighted layer, so the spatial count does not depend on the channel. Which channels reach a
    consumer, and how often, is tracked beside the probe as a channel map: per channel of a node's output, the
    channel of ``src`` it carries (-1: none), which ``Chunk``, ``ChannelShuffle`` and ``Concat`` move like the
    values themselves. ``shapes()``: per node the one-image output shape (a ``Concat`` input not fed by ``src``
    needs its channel count).
    """
    spatial = tuple(shape[1:])
    channels = int(shape[0]) if shape else 1
    P = math.prod(spatial) if spatial else 1
    probes = torch.eye(P).view(P, 1, *spatial)
    env: Dict[fx.Node, Tuple[torch.Tensor, torch.Tensor]] = {src: (probes, torch.arange(channels))}
    counts: Dict[str, torch.Tensor] = {}

    def record(key: str, c: torch.Tensor, chan: torch.Tensor) -> None:
        # every channel of the input reaches the consumer alike: src channel k counts once per input channel it fills
        reach = torch.bincount(chan[chan >= 0], minlength=channels).to(c.dtype)
        counts[key] = counts.get(key, 0) + reach[:, None] * c[None, :]

    def same(where: str, items: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
        if any(not torch.equal(c, items[0][1]) for _, c in items[1:]):
            raise ValueError(f"{where}: cannot count synaptic operations where channels of one spiking layer "
                             "meet in another order")
        return items[0]

    seen = False
    for node in gm.graph.nodes:
        if node is src:
            seen = True
            continue
        if not seen:
            continue
        ins = [env[a] for a in node.all_input_nodes if a in env]
        if not ins:
            continue
        where = f"node {node.name!r}"
        x, chan = ins[0]
        if node.op == "output":
            record("output", (x.flatten(1) != 0).sum(1), chan)
        elif node.op == "call_module":
            mod = gm.get_submodule(node.target)
            inner = unwrap(mod)
            where = f"module {node.target!r} ({type(inner).__name__})"
            if isinstance(inner, Concat):
                if inner.dim % x.dim() != 1:
                    raise ValueError(f"{where}: counts synaptic operations of a concatenation along channels only, "
                                     f"not dim={inner.dim}")
                if any(not torch.equal(i[0], x) for i in ins[1:]):
                    raise ValueError(f"{where}: cannot count synaptic operations where one spiking layer reaches a "
                                     "concatenation along paths of different spatial reach")
                parts = [env[a][1] if a in env else torch.full((shapes()[a.name][0],), -1) for a in node.args]
                env[node] = (x, torch.cat(parts))
            elif isinstance(inner, Chunk):
                if inner.dim % x.dim() != 1:
                    raise ValueError(f"{where}: counts synaptic operations of a split along channels only, "
                                     f"not dim={inner.dim}")
                env[node] = (x, chan.chunk(inner.chunks)[inner.index])
            elif isinstance(inner, ChannelShuffle):
                env[node] = (x, chan.view(inner.groups, -1).t().reshape(-1))  # as ChannelShuffle moves channels
            elif isinstance(inner, WEIGHTED):
                record(node.target, _connections(inner, x, where), chan)
            elif type(inner).__name__ == "GatedMaxPool":  # core's or a backend's: reaches what its window reaches
                env[node] = (_plain(inner.pool, x.abs()), chan)
            elif is_spiking(mod) or is_stateful(mod):
                record(node.target, (x.flatten(1) != 0).sum(1), chan)  # identity synapses (residual path)
            elif isinstance(inner, POOLS):
                env[node] = (_plain(inner, x.abs()), chan)
            elif isinstance(inner, nn.Flatten) or _sj_flatten(inner):
                env[node] = (x.flatten(1), chan)
            elif type(inner).__name__ in _IDENTITY_NAMES or isinstance(inner, (nn.Identity, nn.Dropout)):
                env[node] = (x, chan)
            else:
                raise ValueError(f"{where}: cannot count synaptic operations through this layer")
        elif node.op in ("call_function", "call_method"):
            name = getattr(node.target, "__name__", str(node.target))
            if node.target in (torch.flatten, "flatten"):
                env[node] = (x.flatten(1), chan)
            elif node.target in (operator.add, operator.iadd, torch.add, "add") or name in ("add", "iadd"):
                env[node] = (x.abs() if len(ins) == 1 else sum(i[0].abs() for i in ins), same(where, ins)[1])
            elif node.target in (operator.mul, torch.mul, "mul"):
                env[node] = (x, chan)
            else:
                raise ValueError(f"{where}: cannot count synaptic operations through {name!r}")
    return {k: v.view(channels, *spatial).float() for k, v in counts.items()}


def ann_macs(net: nn.Module, input_shape: Sequence[int]) -> Dict[str, int]:
    """MACs per image of every conv / linear layer (DNISNM Eq. 24), from one forward pass of shape
    ``[1, *input_shape]`` (or ``[1, 1, *input_shape]`` for a multi-step network)."""
    gm = graph_of(net)
    return _dry_run(net, gm, input_shape)[0]


@torch.no_grad()
def _dry_run(net: nn.Module, gm: fx.GraphModule, input_shape: Sequence[int]):
    """MACs per weighted layer and the per-image shape of every spiking layer, from a one-image pass."""
    macs: Dict[str, int] = {}
    shapes: Dict[str, Tuple[int, ...]] = {}
    hooks = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        inner = unwrap(mod)
        if isinstance(inner, WEIGHTED):
            def hook(m, i, o, t=node.target):
                per = first_output(o).numel()  # outputs of one image and one step
                fan_in = m.in_features if isinstance(m, nn.Linear) else \
                    m.in_channels // m.groups * math.prod(m.kernel_size)
                macs[t] = per * fan_in
            hooks.append(inner.register_forward_hook(hook))
        elif is_spiking(mod):
            multi = is_multistep(mod)
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, t=node.target, k=2 if multi else 1:
                    shapes.__setitem__(t, tuple(first_output(o).shape[k:]))))
    dev = next((p.device for p in net.parameters()), torch.device("cpu"))
    x = torch.zeros((1, *input_shape), device=dev)
    try:
        if is_spiking(net):
            run_window(net, x, 1)
        else:
            net(x)  # an ANN: one plain forward pass
    finally:
        for h in hooks:
            h.remove()
        reset(net)
    return macs, shapes


# ---------------------------------------------------------------------------------------------- measuring


@dataclass
class Report:
    """Counts per image over the first ``T`` steps of ``images`` images, per layer, and energy."""

    T: int
    images: int
    macs: Dict[str, int]                 # ANN MACs per image, per weighted layer
    analog: List[str]                    # weighted layers fed by the analog input (MACs in the SNN too)
    synops: Dict[str, float]             # SNN synaptic ops per image, per consuming layer
    spikes: Dict[str, float]             # spikes per image, per spiking layer
    neurons: Dict[str, int]              # neurons per spiking layer
    analog_per_step: bool = True
    rate_ops: Dict[str, float] = field(default_factory=dict)  # DNISNM Eq. 25 approximation per layer

    @property
    def ann_macs(self) -> int:
        return sum(self.macs.values())

    @property
    def snn_macs(self) -> float:
        return sum(self.macs[k] for k in self.analog) * (self.T if self.analog_per_step else 1)

    @property
    def total_synops(self) -> float:
        return sum(self.synops.values())

    @property
    def spikes_per_image(self) -> float:
        return sum(self.spikes.values())

    def spikes_per_neuron(self) -> Dict[str, float]:
        """Average spikes per neuron and image over T steps, per spiking layer (TTRBR Table 10)."""
        return {k: self.spikes[k] / self.neurons[k] for k in self.spikes}

    def energy_uj(self, const: Union[str, Constants] = "45nm") -> Tuple[float, float]:
        """(ANN, SNN) energy per image in microjoules (DNISNM Eq. 26; stReLU Eqs. 23-24)."""
        c = constants(const)
        ann = c.e_mac * self.ann_macs
        snn = c.e_mac * self.snn_macs + c.e_ac * self.total_synops
        return ann * 1e-6, snn * 1e-6

    def table(self, const: Union[str, Constants] = "45nm") -> str:
        """Per-layer MACs / synaptic ops and the energy totals as text."""
        lines = [f"{'layer':<24}{'ANN MACs':>14}{'SNN MACs':>14}{'SNN synops':>14}"]
        for k in self.macs:
            snn_mac = self.macs[k] * (self.T if self.analog_per_step else 1) if k in self.analog else 0
            lines.append(f"{k:<24}{self.macs[k]:>14,}{snn_mac:>14,.0f}{self.synops.get(k, 0.0):>14,.0f}")
        for k, v in self.synops.items():
            if k not in self.macs:
                lines.append(f"{k + ' (identity)':<24}{0:>14}{0:>14}{v:>14,.0f}")
        for k, r in self.spikes_per_neuron().items():
            lines.append(f"  spikes/neuron {k:<16}{r:8.3f}")
        a, s = self.energy_uj(const)
        lines.append(f"energy per image ({constants(const).name}): ANN {a:.3f} uJ, SNN {s:.3f} uJ at T={self.T}")
        return "\n".join(lines)


class SpikeMeter:
    """Forward hooks that count spikes and synaptic operations per step while a network runs.

    Use as a context manager around any simulation (``evaluate``, ``simulate_net``, a single-step loop).
    Every simulated sequence must have the same length (``steps``): counts are summed per step index.
    """

    def __init__(self, net: nn.Module, input_shape: Sequence[int], analog_per_step: bool = True) -> None:
        self.net, self.gm = net, graph_of(net)
        self.macs, shapes = _dry_run(net, self.gm, input_shape)
        self.analog_per_step = analog_per_step
        self.neurons = {k: math.prod(s) for k, s in shapes.items()}
        self.fanout: Dict[str, Dict[str, torch.Tensor]] = {}
        nodes = {n.target: n for n in self.gm.graph.nodes if n.op == "call_module"}
        all_shapes: Dict[str, Dict[str, Tuple[int, ...]]] = {}  # one more one-image pass, only for a Concat

        def node_shapes() -> Dict[str, Tuple[int, ...]]:
            if not all_shapes:
                all_shapes.update(sample_shapes(net, input_shape))
            return all_shapes
        for t, s in shapes.items():
            self.fanout[t] = _fanout(self.gm, nodes[t], s, node_shapes)
        fed = {c for f in self.fanout.values() for c in f}
        self.analog = [k for k in self.macs if k not in fed]
        self._spikes: Dict[str, List[torch.Tensor]] = {t: [] for t in shapes}
        self._ops: Dict[Tuple[str, str], List[torch.Tensor]] = {(t, c): [] for t in shapes for c in self.fanout[t]}
        self.images = 0

    def __enter__(self) -> "SpikeMeter":
        self._ctx = spike_hooks(self.gm, self._record, targets=list(self._spikes))
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    def _record(self, target: str, per_pos: torch.Tensor) -> None:
        """Spikes of one call (``[steps, *neuron shape]``, summed over the batch) and the synaptic operations they
        cause in each layer they feed (their fan-out maps)."""
        self._spikes[target].append(per_pos.flatten(1).sum(1))
        for c, fan in self.fanout[target].items():
            if fan.device != per_pos.device:
                fan = self.fanout[target][c] = fan.to(per_pos.device)
            self._ops[(target, c)].append((per_pos * fan).flatten(1).sum(1, dtype=torch.float64))

    def report(self, timesteps: Sequence[int], images: int) -> Dict[int, Report]:
        """Per-image reports at every T in ``timesteps`` (all sequences must have run max(T) steps)."""
        T = max(timesteps)

        def per_step(chunks: List[torch.Tensor]) -> torch.Tensor:
            v = torch.cat(chunks).double() if chunks else torch.zeros(T, dtype=torch.float64)
            if v.numel() % T:
                raise ValueError(f"recorded {v.numel()} steps, not a multiple of T={T}: every simulated "
                                 "sequence must run max(timesteps) steps")
            return v.view(-1, T).sum(0).cumsum(0).cpu()  # one host sync

        spikes = {k: per_step(v) for k, v in self._spikes.items()}
        ops: Dict[str, torch.Tensor] = {}
        for (src, c), v in self._ops.items():
            ops[c] = ops.get(c, 0) + per_step(v)
        out = {}
        for t in sorted(set(int(t) for t in timesteps)):
            sp = {k: float(v[t - 1]) / images for k, v in spikes.items()}
            rate = {}
            for src, f in self.fanout.items():
                for c in f:
                    if c in self.macs:  # DNISNM Eq. 25: spikes per neuron x ANN MACs
                        rate[c] = rate.get(c, 0.0) + sp[src] / self.neurons[src] * self.macs[c]
            out[t] = Report(t, images, dict(self.macs), list(self.analog),
                            {k: float(v[t - 1]) / images for k, v in ops.items()}, sp, dict(self.neurons),
                            self.analog_per_step, rate)
        return out


def _input_shape(net: nn.Module, data) -> Tuple[int, ...]:
    shape = getattr(net, "meta", {}).get("input_shape") if hasattr(net, "meta") else None
    if shape:
        return tuple(shape)
    batch = next(iter(as_loader(data, 1)))
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    return tuple(x.shape[1:])


@torch.no_grad()
def measure(snn: nn.Module, data, timesteps: Sequence[int], batch_size: int = 128, chunk: int = 4,
            device: Optional[torch.device] = None, progress: bool = False,
            analog_per_step: bool = True) -> Tuple[Dict[int, float], Dict[int, Report]]:
    """Simulate a converted (multi-step) network on ``data``: accuracy and a :class:`Report` per T."""
    meter = SpikeMeter(snn, _input_shape(snn, data), analog_per_step)
    with meter:
        acc = evaluate(snn, data, timesteps, batch_size=batch_size, chunk=chunk, device=device,
                       progress=progress, desc="energy")
    return acc, meter.report(timesteps, _count(data))


def _count(data) -> int:
    """Number of images in a Dataset or DataLoader."""
    if isinstance(data, torch.utils.data.DataLoader):
        return len(data.dataset)
    return len(data)
