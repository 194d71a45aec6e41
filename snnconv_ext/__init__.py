"""snnconv: ANN-to-SNN conversion methods as composable parts (neuron family, thresholds, calibration).

Quick start::

    import snnconv_ext as sc
    ann = sc.zoo.load("fmnist-net4")
    snn = sc.convert(ann, method="percentile", calib_data=sc.data.subset(sc.data.fashion_mnist("train"), 1024))
    acc = sc.evaluate(snn, sc.data.fashion_mnist("test"), timesteps=[8, 16, 32])
"""
from . import _malloc, _threads

_threads.apply()  # OMP_WAIT_POLICY=PASSIVE unless set, before torch loads (README: Threads and busy machines)
_malloc.apply()  # reuse freed simulation buffers instead of page-faulting them in again (README: same section)

from . import activations  # noqa: F401  (registers stReLU, tReLU, atLeakyReLU)
from .convert import convert
from .evaluate import ann_accuracy, evaluate
from .finetune import finetune
from .methods import Method
from .methods import methods
from .neuron import simulate

__version__ = "0.1.0"
__all__ = ["convert", "evaluate", "ann_accuracy", "finetune", "methods", "Method", "simulate", "__version__"]


def __getattr__(name):  # lazy submodules: data, models, zoo, thresholds, graph, neuron
    import importlib
    if name in {"data", "models", "zoo", "thresholds", "graph", "neuron", "bench", "train", "energy", "analysis", "export", "datta", "auto"}:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)
