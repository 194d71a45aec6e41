"""Every snnconv method as a SpikingJelly ``FXConversionRecipe``.

>>> from spikingjelly.activation_based import ann2snn, functional
>>> from snnconv_spikingjelly import recipes
>>> snn = ann2snn.FXConverter(recipe=recipes.PercentileRecipe(dataloader=calib)).convert(ann)
>>> functional.reset_net(snn); out = snn(x.unsqueeze(0).expand(T, *x.shape))   # [T, B, classes]

The recipe's lifecycle hooks run the conversion pipeline's stages (``snnconv_ext.conversion.pipeline``):
``after_trace`` prepares the graph, ``calibrate`` sets every neuron's parameters, ``replace`` folds spike values and
puts the nodes in; ``finalize`` makes the graph step-mode aware.
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn as nn
from spikingjelly.activation_based import surrogate
from spikingjelly.activation_based.ann2snn import FXConverter, FXConversionRecipe
from torch import fx

from snnconv_ext.conversion import graph, pipeline
from snnconv_ext.conversion.registry import get as get_method, methods as method_names
from snnconv_ext.core.checks import check_eval
from snnconv_ext.core.neuron import NeuronParams

from .nodes import STATEFUL, GatedMaxPool, SeqModule, spikingjelly_node

__all__ = ["SnnconvRecipe", "QCFSRecipe", "recipe_class", "convert"]


class SnnconvRecipe(FXConversionRecipe):
    """Convert with a registered snnconv method through SpikingJelly's ``FXConverter`` lifecycle.

    ``dataloader``: calibration batches (tensors or (x, y) pairs). ``native``: SpikingJelly's own ``IFNode`` /
    ``TernaryIFNode`` wherever they are exact (default, on every device). ``surrogate_function`` and
    ``trainable`` (knob names, see :data:`TRAINABLE`; non-empty means :class:`SnnconvNode` everywhere) prepare
    the network for fine-tuning. Extra keyword options override the method's fields (``p=99.99``, ``T=4``...).
    """

    method_name: Optional[str] = None

    def __init__(self, dataloader: Iterable, method: Optional[str] = None, native: bool = True,
                 max_batches: Optional[int] = None, progress: bool = True,
                 surrogate_function: Optional[surrogate.SurrogateFunctionBase] = None, trainable: Sequence[str] = (),
                 **options) -> None:
        name = method if method is not None else self.method_name
        if name is None:
            raise ValueError("SnnconvRecipe needs a method name (see snnconv_ext.conversion.registry())")
        if "weight_norm" in options:
            raise TypeError("weight_norm was removed: spikes are always binary now and each layer's spike value "
                            "(amplitude * theta) is folded into the next layer's weights (DNISNM Eq. 18)")
        self.method = get_method(name, **options)
        self.dataloader = dataloader
        self.native, self.max_batches, self.progress = bool(native), max_batches, progress
        self.surrogate_function, self.trainable = surrogate_function, tuple(trainable)
        self.params: Optional[Dict[str, NeuronParams]] = None
        self.folding: Dict[str, str] = {}

    def validate(self, converter) -> None:
        if self.dataloader is None:
            raise ValueError(f"{type(self).__name__} needs calibration data (dataloader=...)")

    def before_trace(self, converter, ann: nn.Module) -> nn.Module:
        check_eval(ann)
        return ann

    def after_trace(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        return pipeline.prepare(fx_model, self.method)  # stage 1 of the conversion order

    def node(self, p: NeuronParams, step_mode: str = "m") -> nn.Module:
        """The spiking module for one layer (:func:`spikingjelly_node` with this recipe's settings)."""
        return spikingjelly_node(p, step_mode, self.native, self.surrogate_function, self.trainable)

    def calibrate(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        # stage 2: thresholds, then (per method) lambda search and Li et al.'s calibration, simulated with self.node
        self.params = pipeline.set_parameters(fx_model, self.method, self.dataloader, self.node, self.max_batches,
                                              self.progress)
        return fx_model

    def replace(self, converter, fx_model: fx.GraphModule) -> fx.GraphModule:
        fx_model = pipeline.finish(fx_model, self.method, self.params, self.node, GatedMaxPool)  # stage 3
        self.folding = dict(fx_model.meta["snnconv_folding"])
        return fx_model

    def finalize(self, converter, fx_model: fx.GraphModule) -> nn.Module:
        return graph.to_multistep(fx_model, STATEFUL, seq=SeqModule).to(converter.device)


class QCFSRecipe(SnnconvRecipe):
    """QCFS conversion (Bu et al., ICLR 2022): an ANN trained with ``QCFS`` activations (Eq. 15) becomes IF neurons
    with soft reset, theta = the trained lambda and v0 = theta/2 (Theorem 2's shift), SpikingJelly's own ``IFNode``
    with binary spikes (lambda folded into the next layer). SpikingJelly 2.0 has no recipe for it."""

    method_name = "qcfs"


def recipe_class(name: str) -> type:
    """An ``FXConversionRecipe`` subclass bound to the registered method ``name`` (e.g. ``PercentileRecipe``)."""
    get_method(name)
    parts = name.replace("+", "-").replace("_", "-").split("-")
    cls_name = "".join(part.replace(".", "_").capitalize() for part in parts) + "Recipe"  # percentile-99.99 -> Percentile99_99Recipe
    return type(cls_name, (SnnconvRecipe,), {"method_name": name, "__doc__": get_method(name).description})


def __getattr__(attr: str) -> type:
    """A recipe class per registered method: ``recipes.PercentileChannelRecipe`` (module attribute access)."""
    for name in method_names():
        cls = recipe_class(name)
        if cls.__name__ == attr:
            return cls
    raise AttributeError(f"no recipe {attr!r}; methods: {method_names()}")


def __dir__():
    return sorted(list(globals()) + [recipe_class(n).__name__ for n in method_names()])


def convert(model: nn.Module, method: str = "percentile", calib_data: Iterable = None,
            device: Optional[torch.device] = None, **options) -> fx.GraphModule:
    """Convert a copy of ``model`` with SpikingJelly's ``FXConverter`` and an snnconv recipe."""
    if calib_data is None:
        raise ValueError("convert() needs calib_data: a DataLoader or Dataset of calibration images")
    recipe = SnnconvRecipe(calib_data, method=method, **options)
    return FXConverter(recipe=recipe, device=device).convert(copy.deepcopy(model))
