"""snnTorch adapter: snnconv's neuron as an ``snn.Leaky``-compatible module and a converter to snnTorch nets.

>>> import snntorch.utils
>>> from snnconv_snntorch import convert
>>> net = convert(ann, method="percentile", calib_data=calib)   # nn.Sequential with init_hidden neurons
>>> snntorch.utils.reset(net)
>>> for t in range(T): logits = net(x)                            # accumulated logits after t+1 steps

Why not reuse ``snn.Leaky(beta=1, reset_mechanism="subtract")`` directly: snnTorch fires when
``mem > threshold`` (strict) while every conversion paper fires at ``v >= theta``, and Leaky subtracts the
reset one step late. Constant inputs such as 0.5*theta hit the threshold exactly, so the two differ. Our
``Neuron`` subclasses ``snn.Leaky`` (so ``snntorch.utils.reset`` and ``init_hidden`` work) but calls the
core update ``snnconv_ext.neuron.step_``.
"""
from __future__ import annotations

from typing import Iterable, Optional

import snntorch as snn
import torch
import torch.nn as nn
from torch import fx

from snnconv_ext import graph
from snnconv_ext.calibrate import calibrate
from snnconv_ext.evaluate import as_loader
from snnconv_ext.methods import get as get_method
from snnconv_ext.neuron import NeuronParams, NeuronState, init_state, step_

__all__ = ["Neuron", "Integrator", "convert"]


class Neuron(snn.Leaky):
    """snnconv neuron family in snnTorch's interface: ``spk = neuron(cur)`` with ``init_hidden=True``,
    else ``spk, mem = neuron(cur, mem)``. ``spk`` is the emitted value (``theta``-scaled, signed)."""

    def __init__(self, params: Optional[NeuronParams] = None, init_hidden: bool = False, output: bool = False,
                 **knobs) -> None:
        p = params if params is not None else NeuronParams(**knobs)
        super().__init__(beta=1.0, threshold=torch.as_tensor(p.theta, dtype=torch.float32).clone(),
                         init_hidden=init_hidden, output=output, reset_mechanism="subtract")
        self.register_buffer("theta_neg", None if p.theta_neg is None else
                             torch.as_tensor(p.theta_neg, dtype=torch.float32).clone())
        self.register_buffer("v0", torch.as_tensor(p.v0, dtype=torch.float32).clone())
        self.fire_at, self.memory = float(p.fire_at), bool(p.memory)
        self.amplitude, self.leak, self.amplitude_neg = p.amplitude, p.leak, p.amplitude_neg
        self._written: Optional[torch.Tensor] = None  # the mem tensor we last wrote; anything else means "reset"
        self.m: Optional[torch.Tensor] = None

    def params(self, like: torch.Tensor) -> NeuronParams:
        return NeuronParams(self.threshold, self.fire_at, self.theta_neg, self.memory, self.amplitude, self.v0,
                            self.leak, self.amplitude_neg).to(like)

    def forward(self, input_: torch.Tensor, mem: Optional[torch.Tensor] = None):
        if self.init_hidden and mem is not None:
            raise TypeError("`mem` should not be passed as an argument while `init_hidden=True`")
        p = self.params(input_)
        cur = self.mem if mem is None else mem
        fresh = cur is not self._written or cur.shape != input_.shape
        if fresh:  # after snntorch.utils.reset / reset_mem, or first call: v = v0, memory = 0
            st = init_state(input_, p)
        else:
            st = NeuronState(cur.clone(), None if self.m is None else self.m.clone())
        spk = step_(input_, st, p)
        self.mem, self.m = st.v, st.m
        self._written = self.mem
        if self.output or not self.init_hidden:
            return spk, self.mem
        return spk


class Integrator(snn.Leaky):
    """Integrate-only output layer in snnTorch form: returns the input accumulated so far (the logit)."""

    def __init__(self, init_hidden: bool = True) -> None:
        super().__init__(beta=1.0, init_hidden=init_hidden, reset_mechanism="none")

    def forward(self, input_: torch.Tensor, mem: Optional[torch.Tensor] = None):
        cur = self.mem if mem is None else mem
        if cur.shape != input_.shape:
            cur = torch.zeros_like(input_)
        self.mem = cur + input_
        return self.mem if self.init_hidden else (self.mem, self.mem)


def _as_sequential(gm: fx.GraphModule) -> Optional[nn.Sequential]:
    """A chain of modules (each node feeding only the next) as ``nn.Sequential``, else None."""
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    prev = next(n for n in gm.graph.nodes if n.op == "placeholder")
    for n in nodes:
        if n.op != "call_module" or n.args != (prev,) or n.kwargs or len(prev.users) != 1:
            return None
        prev = n
    return nn.Sequential(*[gm.get_submodule(n.target) for n in nodes])


def convert(model: nn.Module, method: str = "percentile", calib_data: Iterable = None,
            max_batches: Optional[int] = None, progress: bool = True, **options) -> nn.Module:
    """Convert a copy of ``model`` into a single-step snnTorch network (``init_hidden=True`` neurons)."""
    if calib_data is None:
        raise ValueError("convert() needs calib_data: a DataLoader or Dataset of calibration images")
    options.pop("native", None)  # SpikingJelly-only option
    m = get_method(method, **options)
    gm = graph.fold_bn(graph.trace(_copy(model)))
    graph.check_supported(gm, m)
    params = calibrate(gm, m, as_loader(calib_data), max_batches=max_batches, progress=progress)
    gm = graph.replace_activations(gm, params, lambda p: Neuron(p, init_hidden=True))
    gm = graph.append_output(gm, Integrator())
    seq = _as_sequential(gm)
    return seq if seq is not None else gm


def _copy(model: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(model)
