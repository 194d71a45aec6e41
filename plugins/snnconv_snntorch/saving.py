"""snnTorch's side of ``sc.save`` / ``sc.load``: how :class:`~snnconv_snntorch.nodes.Neuron` is written as data
and rebuilt (a codec registered with ``snnconv_ext.core.nodes``). Its thresholds, ``beta``, ``v0`` and
``graded_spikes_factor`` are buffers or parameters (written by the saver); ``spike_grad`` is saved as the name and
arguments of the ``snntorch.surrogate`` function that made it (``atan(alpha=2.0)``, snnTorch's default)."""
from __future__ import annotations

import inspect
from typing import Callable, Dict

import snntorch.surrogate as st_surrogate

from snnconv_ext.core.neuron import NeuronParams
from snnconv_ext.core.nodes import Codec, register_codec

from .nodes import Neuron

__all__ = ["spike_grad_to_data", "spike_grad_from_data"]


def spike_grad_to_data(fn: Callable) -> Dict:
    """``snntorch.surrogate.<name>(**args)`` as ``{"name", "args"}``, read from the function it returned."""
    qual = getattr(fn, "__qualname__", "")
    name = qual.split(".")[0]
    factory = getattr(st_surrogate, name, None)
    if getattr(fn, "__module__", None) == st_surrogate.__name__ and qual == f"{name}.<locals>.inner" \
            and callable(factory):
        args = {v: c.cell_contents for v, c in zip(fn.__code__.co_freevars, fn.__closure__ or ())}
        if set(args) <= set(inspect.signature(factory).parameters) and \
                all(isinstance(a, (int, float)) for a in args.values()):
            return {"name": name, "args": args}
    raise ValueError(f"spike_grad {qual or fn!r} is not made by one of snntorch.surrogate's functions with numeric "
                     "arguments, so it cannot be saved as data")


def spike_grad_from_data(d: Dict) -> Callable:
    """Inverse of :func:`spike_grad_to_data`."""
    factory = getattr(st_surrogate, d["name"], None)
    if not inspect.isfunction(factory):
        raise ValueError(f"unknown snntorch.surrogate function {d['name']!r}")
    return factory(**d["args"])


def _config(n: Neuron) -> Dict:
    return {"fire_at": n.fire_at, "memory": n.memory, "symmetric": n._symmetric, "plain_if": n._plain_if,
            "amplitude": n.amplitude, "amplitude_neg": n.amplitude_neg, "init_hidden": n.init_hidden,
            "output": n.output, "spike_grad": spike_grad_to_data(n.spike_grad),
            "learn_threshold": "threshold" in n._parameters, "learn_beta": "beta" in n._parameters}


def _build(cfg: Dict, tensors: Dict, children) -> Neuron:
    p = NeuronParams.unchecked(theta=tensors["threshold"], fire_at=cfg["fire_at"], theta_neg=tensors["theta_neg"],
                               memory=cfg["memory"], amplitude=cfg["amplitude"], v0=tensors["v0"],
                               leak=1.0 if cfg["plain_if"] else tensors["beta"], amplitude_neg=cfg["amplitude_neg"])
    n = Neuron(p, init_hidden=cfg["init_hidden"], output=cfg["output"],
               spike_grad=spike_grad_from_data(cfg["spike_grad"]), learn_threshold=cfg["learn_threshold"],
               learn_beta=cfg["learn_beta"])
    n._symmetric, n._plain_if = cfg["symmetric"], cfg["plain_if"]
    return n


register_codec(Codec("snntorch.Neuron", Neuron, _config, _build, backend="snntorch"))
