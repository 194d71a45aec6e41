"""snnconv: ANN-to-SNN conversion methods as composable parts (neuron family, thresholds, calibration).

Quick start::

    import snnconv_ext as sc
    ann = sc.zoo.load("fmnist-net4")
    snn = sc.convert(ann, method="percentile", calib_data=sc.data.subset(sc.data.fashion_mnist("train"), 1024))
    acc = sc.evaluate(snn, sc.data.fashion_mnist("test"), timesteps=[8, 16, 32])
    sc.save(snn, "snn.pt"); snn = sc.load("snn.pt")   # weights_only data, bit-identical outputs

The package is layered; each folder imports only from the folders below it:

* ``core/``: the neuron update, simulation (reset + T steps), spiking nodes, activations, argument checks;
* ``assets/``: data, model definitions, the zoo;
* ``conversion/``: method registry, thresholds, graph surgery, calibration, the pipeline, backends, auto,
  training in the SNN, saving and loading a converted network;
* ``study/``: analysis, energy, NIR export, paired comparisons, TTRBR's theory, Datta & Beerel's analysis;
* ``app/``: the ``snnconv`` command line, bench, demo, training recipes, SpikingJelly's own recipes as baselines.

Every module is also reachable as ``snnconv_ext.<name>`` (``sc.calibrate``, ``sc.energy``, ``sc.zoo``...); the
public functions below keep names no module uses.
"""
from . import _malloc, _threads

_threads.apply()  # OMP_WAIT_POLICY=PASSIVE unless set, before torch loads (book/performance.md: Threads and busy machines)
_malloc.apply()  # reuse freed simulation buffers instead of page-faulting them in again (same section)

import importlib as _importlib  # noqa: E402

from .conversion.auto import convert  # noqa: E402
from .conversion.registry import Method, methods  # noqa: E402
from .conversion.saving import load, save  # noqa: E402
from .conversion.training import finetune  # noqa: E402
from .core.neuron import simulate  # noqa: E402
from .core.simulation import ann_accuracy, evaluate, hits  # noqa: E402

__version__ = "0.1.0"
__all__ = ["convert", "evaluate", "hits", "ann_accuracy", "finetune", "methods", "Method", "simulate", "save", "load",
           "__version__"]

#: where each module lives: ``snnconv_ext.<name>`` is ``snnconv_ext.<layer>.<name>``
MODULES = {
    "core": ("neuron", "simulation", "nodes", "activations", "checks", "files", "layers", "pooling"),
    "assets": ("data", "models", "zoo"),
    "conversion": ("registry", "thresholds", "alphabeta", "graph", "normalize", "calibrate", "pipeline", "backends",
                   "auto", "training", "saving"),
    "study": ("analysis", "energy", "forms", "export", "compare", "theory", "datta"),
    "app": ("cli", "bench", "demo", "train", "tuning", "baselines"),
}
_LAYER = {name: layer for layer, names in MODULES.items() for name in names}


def __getattr__(name: str):
    """``snnconv_ext.<module>`` for every module of the layers (imported on first use)."""
    if name in _LAYER:
        return _importlib.import_module(f"{__name__}.{_LAYER[name]}.{name}")
    if name in MODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAYER) + list(MODULES))
