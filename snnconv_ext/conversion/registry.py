"""The method registry: a conversion method is a named composition of parts.

A :class:`Method` says which ANN activations it converts, which threshold strategy sets theta, which
knobs the neuron family gets (``neuron.NeuronParams``) and which calibration passes run afterwards.
Adding a paper means adding entries here, not a new pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Dict, List, Optional, Tuple, Type, Union

import torch.nn as nn

__all__ = ["Method", "register", "get", "methods", "changed_options", "CALIBRATION_OPTIONS", "CALIBRATION_PASSES",
           "MAXPOOL_MODES"]

from ..core.activations import QCFS, AtLeakyReLU, Clamp, ClippedReLU, StReLU, ThresholdReLU, TReLU
from ..core.checks import is_number, positive_int, positive_number
from . import alphabeta  # noqa: F401  (registers the 'datta' threshold strategy, Datta & Beerel Algorithm 1)
from . import thresholds


@dataclass(frozen=True)
class Method:
    """A named composition of converter parts."""

    name: str
    description: str
    threshold: str = "max"  # name in thresholds registry
    threshold_options: Dict = field(default_factory=dict)  # e.g. {"p": 99.9, "granularity": "channel"}
    fire_at: float = 1.0  # 0.5: fire at theta/2 (ttrbr Eq. 12 / ClipRound, calibration Eq. 17)
    v0: str = "zero"  # "zero" or "half" (theta/2, DNISNM Sec. 4.1)
    signed: bool = False  # negative threshold theta_neg = theta (stReLU Sec. 3, SNM Eq. 21)
    memory: bool = False  # SNM memory (DNISNM Eqs. 19-23)
    amplitude: float = 1.0  # spike carries amplitude*theta (Datta Eq. 8)
    leak: float = 1.0
    # ReLU and the fixed clips ReLU6 / Hardtanh(0, b) become (graph normalisation), threshold capped at the clip
    activations: Tuple[Type[nn.Module], ...] = (nn.ReLU, ClippedReLU)
    calibration: Tuple[str, ...] = ()  # passes of calibrate.calibrate_layers: "bias", "weights", "potential"
    calibration_options: Dict = field(default_factory=dict)  # samples, iters, lr, bias_iters, ...
    T: Optional[int] = None  # time steps the conversion is tuned for (MMSE, lambda search, calibration)
    scale: Union[float, str] = 1.0  # lambda: thresholds times lambda (TTRBR Sec. 4); "search": pick from scale_grid
    scale_grid: Tuple[float, ...] = tuple(round(0.60 + 0.05 * i, 2) for i in range(21))  # {0.60, ..., 1.60}
    # max pooling: "gated", Rueckauer et al. 2017 Sec. 2.3 (core.pooling); "spikes", the plain max of binary spikes
    # (Datta & Beerel Sec. IV-A, SpikingJelly's MaxPool2d over spikes)
    maxpool: str = "gated"
    reference: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse option values the converter would misread, naming the method, the option and the value."""
        def bad(option: str, value, want: str) -> ValueError:
            return ValueError(f"method {self.name!r}: option {option}={value!r} is invalid; {want}")

        if self.threshold not in thresholds.names():
            raise bad("threshold", self.threshold, f"registered threshold strategies: {thresholds.names()}")
        if not isinstance(self.fire_at, (int, float)) or isinstance(self.fire_at, bool) \
                or not 0.0 < float(self.fire_at) <= 1.0:
            raise bad("fire_at", self.fire_at, "it is a fraction of theta in (0, 1]")
        if self.v0 not in ("zero", "half"):
            raise bad("v0", self.v0, "use 'zero' or 'half' (theta/2, DNISNM Sec. 4.1)")
        for flag in ("signed", "memory"):
            if not isinstance(getattr(self, flag), bool):
                raise bad(flag, getattr(self, flag), "use True or False")
        if self.maxpool not in MAXPOOL_MODES:
            raise bad("maxpool", self.maxpool, f"use one of {MAXPOOL_MODES}: 'gated' (Rueckauer et al. 2017 Sec. 2.3) "
                      "or 'spikes' (the max of binary spikes, Datta & Beerel Sec. IV-A)")
        if self.memory and not self.signed:
            raise bad("memory", self.memory, "SNM memory needs a signed neuron (signed=True)")
        if not positive_number(self.amplitude):
            raise bad("amplitude", self.amplitude, "the spike amplitude must be a finite number > 0")
        if not positive_number(self.leak) or float(self.leak) > 1.0:
            raise bad("leak", self.leak, "the leak factor must be in (0, 1]")
        if self.T is not None and not positive_int(self.T):
            raise bad("T", self.T, "T (time steps) must be a positive integer")
        if not (self.scale == "search" or (positive_number(self.scale))):
            raise bad("scale", self.scale, "lambda must be a finite number > 0 or 'search'")
        unknown = set(self.calibration) - set(CALIBRATION_PASSES)
        if unknown:
            raise bad("calibration", self.calibration, f"passes are a subset of {CALIBRATION_PASSES}")
        topts = self.threshold_options
        if "granularity" in topts and topts["granularity"] not in thresholds.GRANULARITIES:
            raise bad("granularity", topts["granularity"], f"use one of {thresholds.GRANULARITIES}")
        if "p" in topts and not (is_number(topts["p"]) and 0.0 < float(topts["p"]) <= 100.0):
            raise bad("p", topts["p"], "the percentile must be in (0, 100]")
        for key in ("T", "N", "cap"):
            if key in topts and not positive_int(topts[key]):
                raise bad(key, topts[key], f"{key} must be a positive integer")
        if "rounding" in topts and topts["rounding"] not in ("round", "floor"):
            raise bad("rounding", topts["rounding"], "use 'round' (ClipRound, Eq. 18) or 'floor' (ClipFloor)")
        for key in ("samples", "iters", "batch", "bias_iters"):
            if key in self.calibration_options and not positive_int(self.calibration_options[key]):
                raise bad(key, self.calibration_options[key], f"{key} must be a positive integer")
        for key in ("lr", "ridge"):
            if key in self.calibration_options and not positive_number(self.calibration_options[key]):
                raise bad(key, self.calibration_options[key], f"{key} must be a finite number > 0")

    def with_options(self, **options) -> "Method":
        """Copy with fields overridden; ``p``/``granularity``/... go to the threshold strategy, ``samples``/
        ``iters``/``lr``/... to the calibration passes, ``T`` to both the method and a strategy tuned for T (MMSE,
        Datta). Refuses options the method would ignore: ``T`` on a method whose thresholds do not depend on T, a
        threshold option its strategy does not take. With ``threshold=`` changed, the method's own threshold
        options carry over where the new strategy takes them."""
        if "allow_maxpool" in options:
            raise TypeError(f"method {self.name!r}: allow_maxpool was replaced by maxpool=: 'spikes' is the max of binary "
                            "spikes (what allow_maxpool=True did), 'gated' the default (Rueckauer et al. 2017 Sec. 2.3)")
        threshold = options.get("threshold", self.threshold)
        accepted = thresholds.options(threshold) if threshold in thresholds.names() else None
        topts = dict(self.threshold_options)
        if accepted is not None and threshold != self.threshold:
            topts = {k: v for k, v in topts.items() if k in accepted}
        given = {key: options.pop(key) for key in THRESHOLD_OPTIONS if key in options}
        topts.update(given)
        copts = dict(self.calibration_options)
        cgiven = {key: options.pop(key) for key in CALIBRATION_OPTIONS if key in options}
        copts.update(cgiven)
        if "T" in options and options["T"] is not None:
            if not positive_int(options["T"]):
                raise ValueError(f"method {self.name!r}: option T={options['T']!r} is invalid; T (time steps) "
                                 "must be a positive integer")
            takes_T = accepted is not None and "T" in accepted
            tuned = self.T is not None or takes_T or options.get("scale", self.scale) == "search" \
                or bool(options.get("calibration", self.calibration))
            if not tuned:
                raise ValueError(f"method {self.name!r}: option T={options['T']!r} would be ignored: its thresholds do "
                                 "not depend on T, so convert without T and simulate at any T (methods tuned for T: "
                                 f"{', '.join(n for n in methods() if _REGISTRY[n].T is not None)})")
            if takes_T:
                topts["T"] = options["T"]
        unknown = set(options) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"method {self.name!r} has no option(s) {sorted(unknown)}")
        ignored = sorted(set(given) - set(accepted)) if accepted is not None else []
        if ignored:
            raise TypeError(f"method {self.name!r}: option(s) {ignored} do not apply to its {threshold!r} thresholds "
                            f"(their options: {sorted(set(accepted) - {'seed'})})")
        method = replace(self, threshold_options=topts, calibration_options=copts, **options)
        # calibrate.calibrate reads them: samples for the lambda search and the passes, the rest for the passes
        search = method.scale == "search"
        unused = sorted(set(cgiven) - (set(CALIBRATION_OPTIONS) if method.calibration else {"samples"} if search
                                       else set()))
        if unused:
            raise TypeError(f"method {self.name!r}: option(s) {unused} would be ignored: it has no calibration passes"
                            f"{' (its lambda search reads samples only)' if search else ' and no lambda search'}")
        return method


# options forwarded to the threshold strategy (thresholds.get)
THRESHOLD_OPTIONS = ("p", "granularity", "cap", "N", "rounding", "loss")
MAXPOOL_MODES = ("gated", "spikes")
# options forwarded to calibrate.calibrate_layers (Li et al. 2022, Algorithm 2)
CALIBRATION_OPTIONS = ("samples", "iters", "lr", "batch", "momentum", "bias_iters", "seed", "ridge")
CALIBRATION_PASSES = ("bias", "weights", "potential", "readout")  # calibrate.PASSES


_REGISTRY: Dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (names are unique)."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def get(name: str, **options) -> Method:
    """Look up a registered method, optionally overriding its fields."""
    if isinstance(name, Method):
        return name.with_options(**options) if options else name
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered methods: {methods()}")
    m = _REGISTRY[name]
    return m.with_options(**options) if options else m


def methods() -> List[str]:
    """Names of all registered methods."""
    return sorted(_REGISTRY)


def changed_options(method: Method) -> Dict:
    """The fields of ``method`` that differ from the registered method of its name (every field of an unregistered
    one), activations by class name: the options a conversion was given (recorded in ``snn.meta``)."""
    base = _REGISTRY.get(method.name)
    out = {}
    for f in fields(Method):
        value = getattr(method, f.name)
        if f.name not in ("name", "description", "reference") and (base is None or value != getattr(base, f.name)):
            out[f.name] = [a.__name__ for a in value] if f.name == "activations" else value
    return out


# --- baseline methods (foundation) -------------------------------------------------------------
register(Method("max", "Layer-wise maximum activation as threshold, IF with soft reset.",
                threshold="max", reference="Diehl et al. 2015; Rueckauer et al. 2017"))
register(Method("max-channel", "Channel-wise maximum activation as threshold, IF with soft reset.",
                threshold="max", threshold_options={"granularity": "channel"}))
register(Method("percentile", "Layer-wise 99.9th percentile of activations (robust norm), IF with soft reset.",
                threshold="percentile", threshold_options={"p": 99.9}, reference="Rueckauer et al. 2017"))
register(Method("percentile-channel", "Channel-wise 99.9th percentile, IF with soft reset.",
                threshold="percentile", threshold_options={"p": 99.9, "granularity": "channel"}))

# --- signed neurons: stReLU (Han et al. 2023) and DNI + SNM (Wang et al. 2024) -------------------

register(Method("strelu", "stReLU ANN (clip(x, -Vth, Vth), Eq. 7) to signed IF with thresholds +-Vth, v0 = 0.",
                threshold="activation", signed=True, activations=(StReLU,),
                reference="Han et al. 2023, Sec. 3"))
register(Method("trelu", "tReLU ANN (clip(x, 0, Vth), Eq. 22) to IF with threshold Vth.",
                threshold="activation", activations=(TReLU,), reference="Han et al. 2023, Eq. 22"))
register(Method("atleakyrelu", "atLeakyReLU ANN (Eq. 21) to signed IF: +1 threshold, -1/alpha^2 negative threshold, "
                "negative spikes worth 1/alpha.", threshold="activation", signed=True, activations=(AtLeakyReLU,),
                reference="Han et al. 2023, Eq. 21"))
register(Method("dni", "DNI: per-neuron maximum activation as threshold, v0 = theta/2 (Algorithm 1).",
                threshold="max", threshold_options={"granularity": "neuron"}, v0="half",
                reference="Wang et al. 2024, Sec. 4.1"))
register(Method("dni-percentile", "DNI with a robust per-neuron threshold: each neuron's p-th percentile over the "
                "calibration images (option p=, default 99; beyond 2048 images, over a seeded uniform subsample of 2048) "
                "instead of its maximum, v0 = theta/2.",
                threshold="percentile", threshold_options={"p": 99.0, "granularity": "neuron", "cap": 2048}, v0="half",
                reference="Wang et al. 2024, Sec. 4.1 (percentile: snnconv)"))
register(Method("snm", "SNM: signed neuron with memory, thresholds +-layer max (Eqs. 19-23).",
                threshold="max", signed=True, memory=True, activations=(nn.ReLU,), reference="Wang et al. 2024, Sec. 4.2"))
register(Method("dni+snm", "DNISNM: per-neuron max thresholds, signed neuron with memory firing at +-theta/2 (the "
                "theta/2 start of Algorithm 1 applied to both signs, so the leftover window is [-theta/2, theta/2)).",
                threshold="max", threshold_options={"granularity": "neuron"}, fire_at=0.5, signed=True, memory=True,
                activations=(nn.ReLU,), reference="Wang et al. 2024, Algorithm 1"))


# --- Li et al. 2022 parameter calibration: thresholds (calibration passes come with their issue) ------
register(Method("clipround", "Layer-wise max threshold with ClipRound: fire at theta/2 (Eq. 17).",
                threshold="max", fire_at=0.5, reference="Li et al. 2022, Eq. 17"))
register(Method("mmse", "MMSE threshold for the given T (option T=...), layer-wise, with ClipRound (Eq. 18, Algorithm 1).",
                threshold="mmse", threshold_options={"T": 8, "N": 100}, fire_at=0.5, T=8,
                reference="Li et al. 2022, Eq. 18, Algorithm 1"))
register(Method("mmse-channel", "Channel-wise MMSE threshold for the given T (option T=...), with ClipRound.",
                threshold="mmse", threshold_options={"T": 8, "N": 100, "granularity": "channel"}, fire_at=0.5, T=8,
                reference="Li et al. 2022, Sec. 4.3"))
register(Method("percentile-99.99", "Layer-wise 99.99th percentile, IF with soft reset.",
                threshold="percentile", threshold_options={"p": 99.99}, reference="Li et al. 2022, Sec. 5.2"))
# LCP/ACP start from channel-wise MMSE thresholds ("MMSE*"), the paper's baseline in Tables 2-3 ("channel-wise
# MMSE and ClipRound") and its better start in Table 1d-e; the "-layer" entries start from layer-wise MMSE.
# Budget: calibrate.calibrate_layers defaults to 256 images and 200 SGD iterations per layer for the weights
# (Sec. 5.1: 1024 images and 5000 iterations; 128 images for bias and potential) -- options samples=, iters=.
_MMSE_STAR = {"T": 8, "N": 100, "granularity": "channel"}
for _star, _suffix, _what in ((True, "", "channel-wise MMSE thresholds (MMSE*)"),
                              (False, "-layer", "layer-wise MMSE thresholds")):
    _topts = dict(_MMSE_STAR) if _star else {"T": 8, "N": 100}
    register(Method("lcp" + _suffix, f"Light calibration pipeline: {_what}, ClipRound, then layer-wise bias "
                    "calibration b += mu_c(e) for the given T (Algorithm 2).", threshold="mmse",
                    threshold_options=dict(_topts), fire_at=0.5, T=8, calibration=("bias",),
                    reference="Li et al. 2022, Sec. 4.4, Eqs. 19-20, Table 1d"))
    register(Method("acp" + _suffix, f"Advanced calibration pipeline: {_what}, ClipRound, then layer-wise weight "
                    "calibration (SGD, STE) and potential calibration v0 = T*e for the given T (Algorithm 2).",
                    threshold="mmse", threshold_options=dict(_topts), fire_at=0.5, T=8,
                    calibration=("weights", "potential"), reference="Li et al. 2022, Sec. 4.4, Eqs. 21-24, Table 1e"))
register(Method("lcp+acp", "Bias, weight and potential calibration after channel-wise MMSE thresholds and ClipRound.",
                threshold="mmse", threshold_options=dict(_MMSE_STAR), fire_at=0.5, T=8,
                calibration=("bias", "weights", "potential"), reference="Li et al. 2022, Algorithm 2"))
register(Method("acp+readout", "ACP, then the linear readout fitted to the ANN's logits by ridge regression on the SNN's "
                "mean input (snnconv's extension: Algorithm 2 stops at the last IF layer; option ridge=).",
                threshold="mmse", threshold_options=dict(_MMSE_STAR), fire_at=0.5, T=8,
                calibration=("weights", "potential", "readout"), reference="Li et al. 2022, Algorithm 2 + readout"))
register(Method("max+lcp", "Layer max thresholds with ClipRound and bias calibration (LCP on the MaxAct baseline).",
                threshold="max", fire_at=0.5, T=8, calibration=("bias",), reference="Li et al. 2022, Table 1"))
register(Method("max+acp", "Layer max thresholds with ClipRound, weight and potential calibration.",
                threshold="max", fire_at=0.5, T=8, calibration=("weights", "potential"),
                reference="Li et al. 2022, Table 1"))

# --- TTRBR (Meng et al. 2022) ------------------------------------------------------------------------
register(Method("ttrbr", "TTRBR: 99.9th percentile of each clamp/ReLU pre-activation times lambda (searched over "
                "{0.60, ..., 1.60} for the given T), half-threshold IF (Eq. 12).", threshold="percentile",
                threshold_options={"p": 99.9}, fire_at=0.5, scale="search", T=16, activations=(Clamp, nn.ReLU),
                reference="Meng et al. 2022, Sec. 4"))
register(Method("ttrbr-plain", "TTRBR ablation without lambda: 99.9th percentile thresholds, half-threshold IF.",
                threshold="percentile", threshold_options={"p": 99.9}, fire_at=0.5, activations=(Clamp, nn.ReLU),
                reference="Meng et al. 2022, Table 7"))

# --- Datta & Beerel 2022: alpha/beta search (Algorithm 1, Eq. 8); max pooling kept (Sec. IV-A) -------------------
_DATTA_ACTS = (Clamp, ThresholdReLU, TReLU, nn.ReLU)
register(Method("datta", "Threshold alpha*mu and spikes worth beta*alpha*mu from Algorithm 1's percentile search for the "
                "given T (option T=...) with its signed loss as printed, IF with soft reset, max pooling of binary spikes.",
                threshold="datta", threshold_options={"T": 2}, T=2, activations=_DATTA_ACTS,
                maxpool="spikes", reference="Datta & Beerel 2022, Sec. III-B, Algorithm 1, Eq. 8"))
register(Method("datta-abs", "Algorithm 1 with the absolute loss (sum of abs(DNN - SNN) over the percentiles instead of the "
                "printed signed sum, which any alpha with beta = A/B <= 2 zeroes) for the given T (option T=...), IF "
                "with soft reset, max pooling of binary spikes.", threshold="datta", threshold_options={"T": 2, "loss": "abs"},
                T=2, activations=_DATTA_ACTS, maxpool="spikes",
                reference="Datta & Beerel 2022, Algorithm 1 (snnconv's unsigned loss), Eq. 8"))
register(Method("datta-mu", "Threshold = the trained threshold-ReLU level mu (alpha = beta = 1, Algorithm 1's start), "
                "IF with soft reset, max pooling of binary spikes.", threshold="activation", activations=(Clamp, ThresholdReLU, TReLU),
                maxpool="spikes", reference="Datta & Beerel 2022, Sec. II-B, Fig. 2"))

# --- QCFS (Bu et al., ICLR 2022): an ANN trained with quantization clip-floor-shift activations -------------------
register(Method("qcfs", "QCFS ANN (Eq. 15) to IF with soft reset: theta = the trained lambda, v0 = theta/2 (the shift "
                "phi = 1/2 of Theorem 2 as the initial potential).", threshold="activation", v0="half",
                activations=(QCFS,), reference="Bu et al. 2022, Sec. 4.2, Eq. 15, Theorem 2"))
register(Method("qcfs+snm", "QCFS ANN to signed neurons with memory (DNISNM Eqs. 19-23): thresholds +-lambda, firing at "
                "+-lambda/2 (the QCFS shift on both signs), so an early excess spike can be taken back.",
                threshold="activation", fire_at=0.5, signed=True, memory=True, activations=(QCFS,),
                reference="Bu et al. 2022, Eq. 15 + Wang et al. 2024, Sec. 4.2"))
register(Method("qcfs+lcp", "QCFS conversion (theta = lambda, v0 = theta/2), then Li et al.'s bias calibration "
                "b += mu_c(e) for the given T (option T=...).", threshold="activation", v0="half", T=8,
                calibration=("bias",), activations=(QCFS,), reference="Bu et al. 2022, Eq. 15 + Li et al. 2022, Eqs. 19-20"))
