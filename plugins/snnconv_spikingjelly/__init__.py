"""SpikingJelly adapter: snnconv's neurons as SpikingJelly nodes and every snnconv method as an ``FXConversionRecipe``.

>>> from spikingjelly.activation_based import ann2snn, functional
>>> from snnconv_spikingjelly import recipes
>>> snn = ann2snn.FXConverter(recipe=recipes.PercentileRecipe(dataloader=calib)).convert(ann)
>>> functional.reset_net(snn); out = snn(x.unsqueeze(0).expand(T, *x.shape))   # [T, B, classes]
>>> logits = out.sum(0)                                                          # the readout over T

Like SpikingJelly's own recipes, the converted network returns the output layer's current at every step;
summing (or averaging) over time is the user's (``snnconv_ext.simulation.simulate_net`` yields the running sum).
Spikes between layers are binary (0/1, signed -1/0/+1); what a spike is worth (``amplitude * theta``) is
folded into the weights of the layer that consumes it, or kept in an explicit ``graph.Scale`` where folding
is not exact. Networks work in both step modes (``functional.set_step_mode(snn, "s")``).

Modules: :mod:`.nodes` (the neurons), :mod:`.recipes` (the recipes and ``convert``), :mod:`.training` (fine-tuning's
SpikingJelly side), :mod:`.saving` (how its nodes are saved and loaded: ``sc.save`` / ``sc.load``). Importing the package registers its node types and trainer with ``snnconv_ext.core.nodes``.
"""
import snnconv_ext  # noqa: F401  (thread defaults before torch loads: book/performance.md "Threads and busy machines")

from . import recipes, saving, training  # noqa: F401  (training registers the trainer, saving the codecs)
from .nodes import (STATEFUL, TRAINABLE, GatedMaxPool, IFNode, SeqModule, SnnconvNode, TernaryIFNode, node_params,
                    spikingjelly_node)
from .recipes import QCFSRecipe, SnnconvRecipe, convert, recipe_class

__all__ = ["SnnconvNode", "IFNode", "TernaryIFNode", "SeqModule", "GatedMaxPool", "SnnconvRecipe", "QCFSRecipe", "recipe_class",
           "recipes", "convert", "spikingjelly_node", "node_params", "STATEFUL", "TRAINABLE"]
