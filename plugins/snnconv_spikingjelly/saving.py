"""SpikingJelly's side of ``sc.save`` / ``sc.load``: how its nodes, the step-mode wrapper and the surrogate
functions are written as data and rebuilt (codecs registered with ``snnconv_ext.core.nodes``).

* SpikingJelly's own ``IFNode`` / ``TernaryIFNode`` (our subclasses): ``v_threshold``, ``v_reset``, the reset value
  of ``v`` (the theta/2 start), ``detach_reset``, ``step_mode``, and the ``snnconv_params`` they carry;
* :class:`~snnconv_spikingjelly.nodes.SnnconvNode`: its knobs (buffers, or ``nn.Parameter``s after fine-tuning),
  ``fire_at``, SNM memory, whether the thresholds are one tensor;
* surrogate functions: SpikingJelly's by class name and parameters, Datta's (fine-tuning) by name.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
from spikingjelly.activation_based import surrogate as sj_surrogate

from snnconv_ext.conversion.saving import params_from_data, params_to_data, seq_codec
from snnconv_ext.conversion.training import DattaSurrogate
from snnconv_ext.core.neuron import NeuronParams
from snnconv_ext.core.nodes import Codec, register_codec

from .nodes import _STORED, TRAINABLE, GatedMaxPool, IFNode, SeqModule, SnnconvNode, TernaryIFNode

__all__ = ["surrogate_to_data", "surrogate_from_data"]

BACKEND = "spikingjelly"


def surrogate_to_data(sg: nn.Module) -> Dict:
    """A node's surrogate function as data: Datta's by name, SpikingJelly's by class and parameters."""
    if isinstance(sg, DattaSurrogate):
        return {"name": "datta"}
    cls = type(sg)
    if getattr(sj_surrogate, cls.__name__, None) is not cls:
        raise ValueError(f"surrogate function {cls.__name__} is not one of spikingjelly.activation_based.surrogate's "
                         "nor Datta's, so it cannot be saved as data")
    return {"name": cls.__name__, "params": dict(sg._sg_params), "spiking": sg.spiking}


def surrogate_from_data(d: Dict, node: nn.Module) -> nn.Module:
    """Inverse of :func:`surrogate_to_data` (Datta's follows ``node``'s threshold)."""
    if d["name"] == "datta":
        return DattaSurrogate(node)
    cls = getattr(sj_surrogate, d["name"], None)
    if not (isinstance(cls, type) and issubclass(cls, sj_surrogate.SurrogateFunctionBase)):
        raise ValueError(f"unknown SpikingJelly surrogate function {d['name']!r}")
    return cls(spiking=d["spiking"], **d["params"])


def _base_config(node: nn.Module) -> Dict:
    return {"step_mode": node.step_mode, "detach_reset": node.detach_reset, "store_v_seq": node.store_v_seq,
            "surrogate": surrogate_to_data(node.surrogate_function)}


def _finish(node: nn.Module, cfg: Dict) -> nn.Module:
    node.surrogate_function = surrogate_from_data(cfg["surrogate"], node)
    node.store_v_seq = cfg["store_v_seq"]
    return node


def _if_codec(kind: type) -> Codec:
    """SpikingJelly's IF nodes: their float settings, the reset value of ``v`` and the snnconv knobs they carry."""
    def config(node: nn.Module) -> Dict:
        params = getattr(node, "snnconv_params", None)
        return {**_base_config(node), "v_threshold": node.v_threshold, "v_reset": node.v_reset,
                "v_start": node.get_reset_value("v"), "params": None if params is None else params_to_data(params)}

    def build(cfg: Dict, tensors, children) -> nn.Module:
        node = kind(v_threshold=cfg["v_threshold"], v_reset=cfg["v_reset"], detach_reset=cfg["detach_reset"],
                    step_mode=cfg["step_mode"])
        node.set_reset_value("v", cfg["v_start"])
        node.v = cfg["v_start"]
        if cfg["params"] is not None:
            node.snnconv_params = params_from_data(cfg["params"])
        return _finish(node, cfg)
    return Codec(f"spikingjelly.{kind.__name__}", kind, config, build, backend=BACKEND)


def _snnconv_config(node: SnnconvNode) -> Dict:
    """Knobs held as tensors are the node's buffers/parameters (written by the saver); plain floats go here."""
    stored = {name: getattr(node, _STORED.get(name, name)) for name in TRAINABLE}
    return {**_base_config(node), "fire_at": node.fire_at, "memory": node.memory, "symmetric": node.symmetric,
            "signed": node.v_threshold_neg is not None, "amplitude_neg": node.amplitude_neg,
            "floats": {k: v for k, v in stored.items() if v is not None and not isinstance(v, torch.Tensor)},
            "trainable": [k for k, v in stored.items() if isinstance(v, nn.Parameter)]}


def _snnconv_build(cfg: Dict, tensors: Dict, children) -> SnnconvNode:
    def knob(name):
        attr = _STORED.get(name, name)
        return tensors[attr] if tensors.get(attr) is not None else cfg["floats"].get(name)
    theta = tensors["v_threshold"]
    theta_neg = None if not cfg["signed"] else theta if cfg["symmetric"] else tensors["_theta_neg"]
    p = NeuronParams.unchecked(theta=theta, fire_at=cfg["fire_at"], theta_neg=theta_neg, memory=cfg["memory"],
                               amplitude=knob("amplitude"), v0=tensors["v0"], leak=knob("leak"),
                               amplitude_neg=cfg["amplitude_neg"])
    node = SnnconvNode(p, step_mode=cfg["step_mode"], detach_reset=cfg["detach_reset"], trainable=cfg["trainable"])
    if node.symmetric and not cfg["symmetric"]:  # equal thresholds that the saved node kept as two tensors
        node.symmetric = False
        del node._theta_neg
        node.register_buffer("_theta_neg", tensors["_theta_neg"])
    return _finish(node, cfg)


for _codec in (_if_codec(IFNode), _if_codec(TernaryIFNode),
               Codec("spikingjelly.SnnconvNode", SnnconvNode, _snnconv_config, _snnconv_build, backend=BACKEND),
               seq_codec("spikingjelly.SeqModule", SeqModule, BACKEND),
               seq_codec("spikingjelly.GatedMaxPool", GatedMaxPool, BACKEND, child="pool")):
    register_codec(_codec)
