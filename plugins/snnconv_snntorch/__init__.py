"""snnTorch adapter: snnconv's neuron as an ``snn.Leaky`` subclass and a converter to snnTorch networks.

>>> import snntorch.utils
>>> from snnconv_snntorch import convert
>>> net = convert(ann, method="percentile", calib_data=calib)   # nn.Sequential with init_hidden neurons
>>> snntorch.utils.reset(net)
>>> logits = sum(net(x) for _ in range(T))                      # each call: one step's output current

Modules: :mod:`.nodes` (the neuron, registered with ``snnconv_ext.core.nodes``), :mod:`.converter` (``convert``),
:mod:`.saving` (how the neuron is saved and loaded: ``sc.save`` / ``sc.load``).
"""
import snnconv_ext  # noqa: F401  (thread defaults before torch loads: book/performance.md "Threads and busy machines")

from . import saving  # noqa: F401  (registers the neuron's codec for sc.save / sc.load)
from .converter import convert
from .nodes import Neuron, Window

__all__ = ["Neuron", "Window", "convert"]
