"""The conversion order, written once: ANN -> normalise -> fold BN -> check -> thresholds -> calibration passes ->
fold spike values -> neurons (and max pooling in its spiking form).

Three stages, each one function, run in this order by :func:`convert_graph` (the snnTorch plugin, ``auto`` through
the backends) and by SpikingJelly's ``FXConverter`` lifecycle, whose hooks call the same three functions
(``after_trace`` -> :func:`prepare`, ``calibrate`` -> :func:`set_parameters`, ``replace`` -> :func:`finish`):

1. :func:`prepare`: the graph normalised (``normalize.normalize``: one module per activation call, clipped
   activations, BatchNorm anywhere, data-movement idioms; each rewrite in ``gm.meta["snnconv_rewrites"]``),
   BatchNorm folded into the layer before it (methods.md "Common ground"), and every node checked (refused by name
   if the method cannot convert it);
2. :func:`set_parameters`: thresholds from the calibration data, then the method's lambda scaling/search and
   calibration passes, simulated with the backend's own nodes (``calibrate.calibrate``);
3. :func:`finish`: what each spike is worth folded into the next layer's weights (DNISNM Eq. 18), activations
   replaced by the backend's neurons, max pooling by its gated spiking form (``core.pooling``, unless the method
   pools spikes plainly, ``maxpool="spikes"``); ``gm.meta`` records the method, its options, its T and the folding.

A backend supplies two factories: ``sim_node(params)``, a module that runs one layer over a window ``[T, ...]``
during calibration, and ``neuron(params)``, the neuron the converted network keeps; optionally ``pool(maxpool)``,
the gated max pooling the converted network keeps (default ``core.pooling.GatedMaxPool``, multi-step).
"""
from __future__ import annotations

import copy
import re
from typing import Callable, Dict, Iterable, Optional

import torch.nn as nn
from torch import fx

from ..core.checks import as_loader, check_eval
from ..core.neuron import NeuronParams, spike_values
from ..core.pooling import GatedMaxPool
from . import graph, normalize
from .calibrate import calibrate
from .registry import Method, changed_options

__all__ = ["prepare", "set_parameters", "finish", "convert_graph", "convert_model", "STAGES"]

NodeFactory = Callable[[NeuronParams], nn.Module]
PoolFactory = Callable[[nn.Module], nn.Module]
STAGES = ("prepare", "set_parameters", "finish")


def prepare(gm: fx.GraphModule, method: Method) -> fx.GraphModule:
    """Stage 1: normalise the graph, fold BN, refuse what ``method`` cannot convert (naming it)."""
    gm = graph.fold_bn(normalize.normalize(gm))
    graph.check_supported(gm, method)
    gm.meta["snnconv_maxpool"] = method.maxpool  # calibration simulates max pooling in the form the network keeps
    return gm


def set_parameters(gm: fx.GraphModule, method: Method, data: Iterable, sim_node: Optional[NodeFactory] = None,
                   max_batches: Optional[int] = None, progress: bool = True) -> Dict[str, NeuronParams]:
    """Stage 2: the neuron parameters of every activation (thresholds, then the method's calibration)."""
    return calibrate(gm, method, as_loader(data), max_batches=max_batches, progress=progress, node=sim_node)


def finish(gm: fx.GraphModule, method: Method, params: Dict[str, NeuronParams], neuron: NodeFactory,
           pool: Optional[PoolFactory] = None) -> fx.GraphModule:
    """Stage 3: binary spikes (spike values folded into weights, or a ``Scale`` where not exact), neurons in place,
    max pooling in its spiking form. Max pooling is gated (Rueckauer et al. 2017, Sec. 2.3) unless
    ``method.maxpool == "spikes"`` (the plain max of binary spikes)."""
    folding = graph.fold_spike_values(gm, {t: spike_values(p) for t, p in params.items()})
    gm = graph.replace_activations(gm, params, neuron)
    if method.maxpool == "gated":
        graph.replace_maxpools(gm, pool or GatedMaxPool)
    gm.meta["snnconv_method"] = method.name
    gm.meta["snnconv_folding"] = dict(folding)
    gm.meta["snnconv_options"] = changed_options(method)
    gm.meta["snnconv_T"] = method.T
    return gm


def convert_graph(gm: fx.GraphModule, method: Method, data: Iterable, neuron: NodeFactory,
                  sim_node: Optional[NodeFactory] = None, max_batches: Optional[int] = None,
                  progress: bool = True, pool: Optional[PoolFactory] = None) -> fx.GraphModule:
    """The three stages in order on a traced ANN ``gm`` (edited in place)."""
    gm = prepare(gm, method)
    params = set_parameters(gm, method, data, sim_node or neuron, max_batches, progress)
    return finish(gm, method, params, neuron, pool)


def convert_model(model: nn.Module, method: Method, data: Iterable, neuron: NodeFactory,
                  sim_node: Optional[NodeFactory] = None, max_batches: Optional[int] = None,
                  progress: bool = True, pool: Optional[PoolFactory] = None) -> fx.GraphModule:
    """Trace a copy of ``model`` (eval mode) and convert it with :func:`convert_graph`."""
    if data is None:
        raise ValueError("convert() needs calib_data: a DataLoader or Dataset of calibration images")
    check_eval(model)
    return convert_graph(graph.trace(copy.deepcopy(model)), method, data, neuron, sim_node, max_batches, progress, pool)


def _calls(fn: Callable) -> list:
    """The conversion functions ``fn`` calls (graph surgery, calibration: modules of ``conversion`` other than the
    registry), in the order they run (an inner call before the outer one), as (dotted name, function); read from
    its source."""
    import ast
    import inspect
    import textwrap

    out = []
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
        if not isinstance(node, ast.Call):
            continue
        f, parts = node.func, []
        while isinstance(f, ast.Attribute):
            parts.insert(0, f.attr)
            f = f.value
        if not isinstance(f, ast.Name):
            continue
        obj = fn.__globals__.get(f.id)
        for p in parts:
            obj = getattr(obj, p, None)
        mod = getattr(obj, "__module__", "") or ""
        if callable(obj) and mod.startswith("snnconv_ext.conversion.") and not mod.endswith(".registry") \
                and obj is not fn:
            out.append((node.end_lineno, node.end_col_offset, ".".join([f.id] + parts), obj))
    return [(name, obj) for _, _, name, obj in sorted(out, key=lambda c: (c[0], c[1]))]


def figure() -> str:
    """The conversion pipeline as text, each box naming the functions a stage calls and their modules, read from
    the stage functions' source (one level deeper for the calibration engine), so the picture in the README
    (tests/test_readme.py) stays true."""
    from ..core import simulation

    def where(obj) -> str:
        mod = obj.__module__ if obj.__module__ != "__main__" else __spec__.name  # run as python -m
        return mod.replace("snnconv_ext.", "").replace(".", "/") + ".py"

    def summary(obj) -> str:
        doc = " ".join((obj.__doc__ or "").replace("``", "").split())
        return re.sub(r"^Stage \d: ", "", doc.split(". ")[0].rstrip("."))

    lines = ["ANN (eval mode), traced by torch.fx (graph.trace, or SpikingJelly's FXConverter)", "  │"]
    for i, name in enumerate(STAGES, 1):
        fn = globals()[name]
        lines += [f"  ▼  [{i}] {name} ({where(fn)})", f"  │    {summary(fn)}"]
        for called, obj in _calls(fn):
            lines.append(f"  │      {called:<36} {where(obj)}")
            if obj.__module__.endswith(".calibrate"):
                inner = dict.fromkeys((c, o) for c, o in _calls(obj) if not c.startswith("_"))
                lines += [f"  │        {c:<34} {where(o)}" for c, o in inner]
        lines.append("  │")
    run = (simulation.run_window, simulation.simulate_net, simulation.evaluate)
    lines += ["  ▼", "SNN ──► " + " / ".join(f.__name__ for f in run) + f" ({where(run[0])}): reset, then T steps"]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m snnconv_ext.conversion.pipeline: the README's figure
    print(figure())
