"""Save a converted network to a file and load it back: ``sc.save(snn, path)`` / ``sc.load(path)``.

The file is data, not code: ``torch.load(path, weights_only=True)`` reads it (tensors, dicts, lists, strings,
numbers, booleans, None). It holds

* ``format`` / ``version``: :data:`FORMAT` and :data:`FORMAT_VERSION` (another version is refused);
* ``record``: what was converted: the zoo model's name when known, the method, the options that differ from the
  registered method, the T it was tuned for, the backend, and the versions of snnconv, torch, SpikingJelly and
  snnTorch that wrote it;
* ``network``: the fx graph as a list of nodes (op, target, arguments naming other nodes) or the children of an
  ``nn.Sequential``, and every module as a spec: its kind (the name of the :class:`~snnconv_ext.core.nodes.Codec`
  registered for its exact class), its settings, its own parameters and buffers, its wrapped children; the
  network's ``meta`` (method, folding, calibration record) and step mode.

PyTorch's layers, ``graph.SeqModule`` and ``graph.Scale`` are written by this module; the neurons and the
backends' wrappers by their plugins (``snnconv_spikingjelly.saving``, ``snnconv_snntorch.saving``), which
``load`` imports by backend name. A loaded network has the same classes, knobs, weights and step mode, starts
reset, and gives bit-identical outputs. The membrane state of a network in the middle of a run is not saved.
"""
from __future__ import annotations

import importlib.metadata
import operator
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Optional, Set, Tuple

import torch
import torch.nn as nn
from torch import fx

from ..assets import zoo
from ..core.files import save_atomic
from ..core.layers import ChannelAffine, ChannelShuffle, Chunk, Concat, GlobalAvgPool
from ..core.neuron import NeuronParams
from ..core.nodes import Codec, codec_named, codec_names, codec_of, register_codec, spiking_modules
from ..core.pooling import GatedMaxPool
from . import graph
from .backends import BACKENDS, plugin

__all__ = ["save", "load", "read", "record", "FORMAT", "FORMAT_VERSION", "FUNCTIONS", "SaveError", "LoadError",
           "to_data", "from_data", "params_to_data", "params_from_data", "seq_codec"]

FORMAT = "snnconv-network"
FORMAT_VERSION = 1
#: the functions a converted graph may call (``graph.FUNCTIONS``), by the name the file gives them
FUNCTIONS = {"operator.add": operator.add, "operator.iadd": operator.iadd, "torch.add": torch.add,
             "torch.flatten": torch.flatten}
_TUPLE, _ITEMS, _NODE = "__tuple__", "__items__", "__node__"


class SaveError(ValueError):
    """The network holds something ``save`` cannot write as data."""


class LoadError(ValueError):
    """The file is not a network ``load`` can rebuild (another format version, corrupt, not ours)."""


# --- plain data ----------------------------------------------------------------------------------------------

def to_data(value: Any, where: str) -> Any:
    """``value`` as data ``torch.load(weights_only=True)`` reads: tensors (detached, on the CPU), numbers,
    strings, None, lists, dicts with string keys; tuples, other dicts and fx nodes become tagged dicts.
    ``SaveError`` naming ``where`` for anything else (an object, a function)."""
    if value is None:
        return value
    for plain in (bool, int, float, str):  # subclasses (torch's version string, numpy floats) as the plain type
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, fx.Node):
        return {_NODE: value.name}
    if isinstance(value, tuple):  # torch.Size too
        return {_TUPLE: [to_data(v, where) for v in value]}
    if isinstance(value, list):
        return [to_data(v, where) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not {_TUPLE, _ITEMS, _NODE} & set(value):
            return {k: to_data(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {_ITEMS: [[to_data(k, where), to_data(v, f"{where}[{k!r}]")] for k, v in value.items()]}
    raise SaveError(f"{where}: a {type(value).__name__} ({str(value)[:60]}) cannot be saved as data")


def from_data(value: Any, nodes: Optional[Dict[str, fx.Node]] = None) -> Any:
    """Inverse of :func:`to_data`; ``nodes`` maps node names back to the graph's nodes."""
    if isinstance(value, list):
        return [from_data(v, nodes) for v in value]
    if isinstance(value, dict):
        if set(value) == {_TUPLE}:
            return tuple(from_data(v, nodes) for v in value[_TUPLE])
        if set(value) == {_ITEMS}:
            return {from_data(k, nodes): from_data(v, nodes) for k, v in value[_ITEMS]}
        if set(value) == {_NODE}:
            if nodes is None or value[_NODE] not in nodes:
                raise ValueError(f"argument names node {value[_NODE]!r}, which comes later or does not exist")
            return nodes[value[_NODE]]
        return {k: from_data(v, nodes) for k, v in value.items()}
    return value


def params_to_data(p: NeuronParams) -> Dict:
    """A neuron's knobs as a dict (``theta_neg`` that is ``theta`` itself stays one object after loading)."""
    return {"knobs": {k: getattr(p, k) for k in NeuronParams.__dataclass_fields__},
            "theta_neg_is_theta": p.theta_neg is not None and p.theta_neg is p.theta}


def params_from_data(d: Dict) -> NeuronParams:
    """Inverse of :func:`params_to_data` (no validation: the knobs were valid when saved)."""
    p = NeuronParams.unchecked(**d["knobs"])
    if d["theta_neg_is_theta"]:
        object.__setattr__(p, "theta_neg", p.theta)
    return p


# --- codecs of PyTorch's layers and of the graph's wrappers ----------------------------------------------------

def _layer_codec(kind: type, attrs: Tuple[str, ...], bias: bool = False, prefix: str = "torch") -> Codec:
    """A layer rebuilt by calling ``kind(**settings)`` with its constructor arguments read from its attributes."""
    def config(m: nn.Module) -> Dict:
        cfg = {a: getattr(m, a) for a in attrs}
        if bias:
            cfg["bias"] = m.bias is not None
        return cfg
    return Codec(f"{prefix}.{kind.__name__}", kind, config, lambda cfg, tensors, children: kind(**cfg))


def seq_codec(name: str, kind: type, backend: Optional[str] = None, child: str = "module") -> Codec:
    """The codec of a step-mode wrapper ``kind(child, step_mode)`` (``graph.SeqModule`` and its subclasses; the
    gated max pooling ``GatedMaxPool(pool, step_mode)`` with ``child="pool"``)."""
    return Codec(name, kind, lambda m: {"step_mode": m.step_mode},
                 lambda cfg, tensors, children: kind(children[child], cfg["step_mode"]), (child,), backend)


_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
_AVG = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
_MAX = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
for _codec in (_layer_codec(nn.Conv1d, _CONV, bias=True), _layer_codec(nn.Conv2d, _CONV, bias=True),
               _layer_codec(nn.Linear, ("in_features", "out_features"), bias=True),
               _layer_codec(nn.AvgPool1d, _AVG), _layer_codec(nn.AvgPool2d, _AVG + ("divisor_override",)),
               _layer_codec(nn.MaxPool1d, _MAX), _layer_codec(nn.MaxPool2d, _MAX),
               _layer_codec(nn.AdaptiveAvgPool1d, ("output_size",)),
               _layer_codec(nn.AdaptiveAvgPool2d, ("output_size",)),
               _layer_codec(nn.AdaptiveMaxPool2d, ("output_size", "return_indices")),
               _layer_codec(nn.Flatten, ("start_dim", "end_dim")), _layer_codec(nn.Dropout, ("p", "inplace")),
               _layer_codec(nn.Identity, ()),
               Codec("snnconv.Scale", graph.Scale, lambda m: {},
                     lambda cfg, tensors, children: graph.Scale(tensors["factor"], tensors["factor_neg"])),
               seq_codec("snnconv.SeqModule", graph.SeqModule),
               # the layers graph normalisation puts in (core.layers) and the gated max pooling (core.pooling)
               Codec("snnconv.ChannelAffine", ChannelAffine, lambda m: {},
                     lambda cfg, tensors, children: ChannelAffine(tensors["scale"], tensors["shift"])),
               _layer_codec(Concat, ("dim",), prefix="snnconv"),
               _layer_codec(Chunk, ("chunks", "dim", "index"), prefix="snnconv"),
               _layer_codec(ChannelShuffle, ("groups",), prefix="snnconv"),
               _layer_codec(GlobalAvgPool, (), prefix="snnconv"),
               seq_codec("snnconv.GatedMaxPool", GatedMaxPool, child="pool")):
    register_codec(_codec)


# --- save ----------------------------------------------------------------------------------------------------

def _check_target(path: str | os.PathLike) -> Path:
    """The file to write: refuse a folder, a missing folder or a folder that is a file, before any work."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"save: {path} is a folder; give a file name such as {path / 'snn.pt'}")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"save: {parent} is a file, not a folder, so {path} cannot be written")
    if not parent.exists():
        raise FileNotFoundError(f"save: folder {parent} does not exist (create it first) for {path}")
    return path


def _own_tensors(m: nn.Module) -> Tuple[Dict, Dict]:
    buffers = {k: v for k, v in m._buffers.items() if k not in m._non_persistent_buffers_set}
    return dict(m._parameters), buffers


def _dump(m: nn.Module, name: str, backends: Set[str]) -> Dict:
    """One module (and the children its codec names) as a spec."""
    codec = codec_of(m)
    where = f"module {name!r} ({type(m).__name__})"
    if codec is None:
        kinds = sorted({c.split(".", 1)[-1] for c in codec_names()})
        raise SaveError(f"{where} is a kind of layer snnconv cannot save; it saves {kinds}")
    try:
        config = codec.config(m)
    except (ValueError, TypeError, AttributeError) as exc:
        raise SaveError(f"{where}: {exc}") from None
    if codec.backend is not None:
        backends.add(codec.backend)
    params, buffers = _own_tensors(m)
    return {"kind": codec.name, "config": to_data(config, where),
            "parameters": to_data(params, where), "buffers": to_data(buffers, where),
            "requires_grad": [k for k, v in params.items() if v is not None and v.requires_grad],
            "children": {c: _dump(getattr(m, c), f"{name}.{c}", backends) for c in codec.children}}


def _function_name(node: fx.Node) -> str:
    name = next((k for k, f in FUNCTIONS.items() if f is node.target), None)
    if name is None:
        raise SaveError(f"node {node.name!r} calls {getattr(node.target, '__name__', node.target)!r}; "
                        f"snnconv saves graphs that call {sorted(FUNCTIONS)}")
    return name


def _dump_graph(gm: fx.GraphModule, backends: Set[str]) -> Dict:
    nodes, targets = [], []
    for n in gm.graph.nodes:
        target = n.target
        if n.op == "call_function":
            target = _function_name(n)
        elif n.op == "call_method" and n.target not in graph.METHODS:
            raise SaveError(f"node {n.name!r} calls the tensor method .{n.target}(); snnconv saves graphs "
                            f"that call {sorted(graph.METHODS)}")
        elif n.op == "get_attr":
            raise SaveError(f"node {n.name!r} reads the attribute {n.target!r}; snnconv saves graphs of "
                            "modules and functions only")
        elif n.op == "call_module" and n.target not in targets:
            targets.append(n.target)
        nodes.append({"name": n.name, "op": n.op, "target": target,
                      "args": to_data(n.args, f"node {n.name!r}"),
                      "kwargs": to_data(dict(n.kwargs), f"node {n.name!r}")})
    return {"kind": "graph", "class_name": type(gm).__name__, "nodes": nodes,
            "order": [n for n, _ in gm.named_modules() if n],
            "modules": [[t, _dump(gm.get_submodule(t), t, backends)] for t in targets]}


def _versions() -> Dict[str, Optional[str]]:
    out = {"torch": torch.__version__}  # with its build tag (+cu130), which the package metadata lacks
    for dist in ("snnconv", "spikingjelly", "snntorch"):  # read without importing the frameworks
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def save(snn: nn.Module, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the converted network ``snn`` (either backend, fine-tuned or not) to ``path`` as data (see the
    module doc), atomically: an interrupted save leaves the old file or the whole new one. Returns the path.

    Refuses, before any work, a path that is a folder or whose folder is missing, an existing file unless
    ``overwrite=True``, a network that is not a converted one, and a layer, function or setting that cannot be
    written as data (naming it).
    """
    path = _check_target(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"save: {path} exists; pass overwrite=True to replace it")
    if not isinstance(snn, (fx.GraphModule, nn.Sequential)):
        raise TypeError(f"save {path}: snn must be a converted network (the GraphModule or nn.Sequential that "
                        f"sc.convert returns), got {type(snn).__name__}")
    if not spiking_modules(snn):
        raise SaveError(f"save {path}: this {type(snn).__name__} has no spiking layer; convert it first (sc.convert)")
    try:
        state = _dump_network(snn)
    except SaveError as exc:
        raise SaveError(f"save {path}: {exc}") from None
    return save_atomic(state, path)


def _dump_network(snn: nn.Module) -> Dict:
    """The whole file's contents for ``snn`` (nothing is written here)."""
    backends: Set[str] = set()
    if isinstance(snn, fx.GraphModule):
        network = _dump_graph(snn, backends)
    else:
        network = {"kind": "sequential", "modules": [[n, _dump(m, n, backends)] for n, m in snn.named_children()]}
    meta = dict(getattr(snn, "meta", None) or {})
    network.update(meta=to_data(meta, "snn.meta"), backends=sorted(backends),
                   training=[n for n, m in snn.named_modules() if m.training],  # the modes, surrogates' included
                   attributes={k: snn.__dict__[k] for k in ("step_mode",) if k in snn.__dict__})
    rec = {"model": meta.get("snnconv_model"), "method": meta.get("snnconv_method"),
           "options": meta.get("snnconv_options"), "T": meta.get("snnconv_T"),
           "backend": next(iter(backends)) if len(backends) == 1 else None, "versions": _versions()}
    return {"format": FORMAT, "version": FORMAT_VERSION, "record": to_data(rec, "record"), "network": network}


# --- load ----------------------------------------------------------------------------------------------------

def _line(exc: Exception) -> str:
    """``Type: first line of the message`` (one line)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def _reason(exc: Exception) -> str:
    """The line of a (multi-line) torch.load error that says what is wrong, without terminal colour codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln]
    line = next((ln for ln in lines if ln.startswith("WeightsUnpickler error:")), lines[0] if lines else "")
    return line.split(" Please use")[0][:300]  # not torch's advice to allow-list a class


def read(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Dict:
    """The checked contents of a file ``save`` wrote (``torch.load(weights_only=True)``); ``LoadError`` naming the
    file for a corrupt or truncated file, a file that is not ours, or another format version."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"load: {path} is a folder, not a saved network file")
    if not path.is_file():
        raise FileNotFoundError(f"load: no file {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip, pickle and weights_only errors come in many types
        raise LoadError(f"load: cannot read {path}: corrupt, truncated or not a safe torch file "
                        f"({type(exc).__name__}: {_reason(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = f"a dict without format {FORMAT!r}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise LoadError(f"load: {path} is not an snnconv network file (sc.save writes those); it holds {what}")
    if state.get("version") != FORMAT_VERSION:
        raise LoadError(f"load: {path} has format version {state.get('version')!r}; this snnconv reads version "
                        f"{FORMAT_VERSION} (save the network again with this snnconv)")
    if not isinstance(state.get("network"), dict) or not isinstance(state.get("record"), dict):
        raise LoadError(f"load: {path} is corrupt: it lacks the network or the record")
    return state


def record(path: str | os.PathLike) -> Dict:
    """What a saved network records (model, method, options, T, backend, versions), without building it."""
    return from_data(read(path)["record"])


def _put_tensors(m: nn.Module, spec: Dict, where: str) -> None:
    """The saved parameters and buffers into the rebuilt module, after checking it has exactly those."""
    params, buffers = _own_tensors(m)
    if set(params) != set(spec["parameters"]) or set(buffers) != set(spec["buffers"]):
        raise ValueError(f"{where} rebuilt with parameters {sorted(params)} and buffers {sorted(buffers)}, but the "
                         f"file has {sorted(spec['parameters'])} and {sorted(spec['buffers'])}")
    for k, v in spec["parameters"].items():
        m._parameters[k] = None if v is None else nn.Parameter(v, requires_grad=k in spec["requires_grad"])
    for k, v in spec["buffers"].items():
        m._buffers[k] = v


def _check_kinds(spec: Dict, name: str, path: Path) -> None:
    if codec_named(spec.get("kind")) is None:
        raise LoadError(f"load: {path}: module {name!r} has unknown kind {spec.get('kind')!r}; this snnconv loads "
                        f"{codec_names()}")
    for c, s in spec["children"].items():
        _check_kinds(s, f"{name}.{c}", path)


def _build(spec: Dict, name: str) -> nn.Module:
    codec = codec_named(spec["kind"])
    children = {c: _build(s, f"{name}.{c}") for c, s in spec["children"].items()}
    tensors = {**spec["parameters"], **spec["buffers"]}
    try:
        m = codec.build(from_data(spec["config"]), tensors, children)
    except Exception as exc:  # a damaged setting: name the module
        raise ValueError(f"module {name!r} ({codec.name}) cannot be rebuilt: {_line(exc)}") from None
    if type(m) is not codec.kind:
        raise ValueError(f"module {name!r}: codec {codec.name!r} built a {type(m).__name__}")
    _put_tensors(m, spec, f"module {name!r} ({codec.name})")
    return m


def _build_graph(net: Dict, modules: Dict[str, nn.Module], path: Path) -> fx.GraphModule:
    g, env = fx.Graph(), {}
    for nd in net["nodes"]:
        op, target, name = nd["op"], nd["target"], nd["name"]
        if op == "call_function":
            if target not in FUNCTIONS:
                raise LoadError(f"load: {path}: node {name!r} calls unknown function {target!r}; this snnconv "
                                f"loads {sorted(FUNCTIONS)}")
            target = FUNCTIONS[target]
        elif op == "call_method" and target not in graph.METHODS:
            raise LoadError(f"load: {path}: node {name!r} calls unknown tensor method {target!r}")
        elif op == "call_module" and target not in modules:
            raise LoadError(f"load: {path}: node {name!r} calls module {target!r}, which the file does not hold")
        elif op not in ("placeholder", "output", "call_function", "call_method", "call_module"):
            raise LoadError(f"load: {path}: node {name!r} has unknown op {op!r}")
        env[name] = g.create_node(op, target, from_data(nd["args"], env), from_data(nd["kwargs"], env), name=name)
    g.lint()
    gm = fx.GraphModule(modules, g, class_name=str(net["class_name"]))
    # fx adds modules in graph order; put them back in the saved network's order (state_dict, parameters())
    rank = {n: i for i, n in enumerate(net["order"])}
    for prefix, m in gm.named_modules():
        key = lambda item: rank.get(f"{prefix}.{item[0]}" if prefix else item[0], len(rank))  # noqa: E731
        m._modules = OrderedDict(sorted(m._modules.items(), key=key))
    return gm


def _names_zoo_snn(path: str | os.PathLike) -> bool:
    """``path`` is no file but the name of a zoo entry of kind ``snn`` (a file of that name wins)."""
    if not isinstance(path, str) or Path(path).exists():
        return False
    try:
        return zoo.kind(path) == zoo.SNN_KIND
    except ValueError:  # not a zoo name: load reports the missing file
        return False


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network ``save`` wrote to ``path``: the same classes (SpikingJelly's own ``IFNode`` /
    ``TernaryIFNode`` where they were, ``SnnconvNode`` elsewhere, snnTorch's ``Neuron``), weights, thresholds and
    knobs, step mode and ``meta``, reset. Tensors go to ``map_location``. The backend's plugin is imported by name.

    ``LoadError`` naming the file for another format version, a corrupt or truncated file, a file that is not
    ours, or a module kind this snnconv does not know.

    ``path`` may also name an SNN entry of the zoo (``sc.load("fmnist-net4-snn-t2")``, the same as ``zoo.load``)
    when no file of that name exists.
    """
    if _names_zoo_snn(path):
        return zoo.load(str(path), map_location)
    path = Path(path)
    net = read(path, map_location)["network"]
    try:
        for backend in net["backends"]:
            if backend not in BACKENDS:
                raise LoadError(f"load: {path} needs backend {backend!r}; this snnconv has {sorted(BACKENDS)}")
            try:
                plugin(backend)
            except ImportError as exc:
                raise LoadError(f"load: {path} needs backend {backend!r}, whose plugin cannot be imported: "
                                f"{_line(exc)}") from None
        specs = OrderedDict((n, s) for n, s in net["modules"])
        for n, s in specs.items():
            _check_kinds(s, n, path)
        modules = OrderedDict((n, _build(s, n)) for n, s in specs.items())
        if net["kind"] == "graph":
            snn = _build_graph(net, modules, path)
        elif net["kind"] == "sequential":
            snn = nn.Sequential(modules)
        else:
            raise LoadError(f"load: {path}: unknown network kind {net['kind']!r}")
        training = set(net["training"])
        for n, m in snn.named_modules():
            m.training = n in training
        for k, v in net["attributes"].items():
            if k != "step_mode":
                raise LoadError(f"load: {path}: unknown network attribute {k!r}")
            setattr(snn, k, v)
        snn.meta = from_data(net["meta"])
    except LoadError:
        raise
    except Exception as exc:  # whatever a damaged description makes the builders raise (SpikingJelly asserts)
        raise LoadError(f"load: {path} is corrupt: {_line(exc)}") from None
    return snn


zoo.register_reader(zoo.SNN_KIND, load)  # zoo.load reads SNN entries with this (assets cannot import us)
