"""Threshold strategies: turn recorded pre-activations of one layer into a threshold tensor.

A strategy observes batches of the ANN activation's *input* ``z`` (shape ``[B, C, ...]``) and returns
theta at one of three granularities, shaped to broadcast against one sample ``[C, ...]``:

* ``layer``   -> shape ``[]``
* ``channel`` -> shape ``[C, 1, 1]`` for conv maps, ``[C]`` for vectors
* ``neuron``  -> shape ``[C, ...]`` (one threshold per channel and position, as DNI, DNISNM Sec. 4.1)

Strategies are registered by name (:func:`register`) and built with :func:`get`; later papers add entries
(lambda-scaled percentile, MMSE, alpha/beta search) to the same registry.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Dict, List, Optional

import torch

__all__ = ["ThresholdStrategy", "MaxThreshold", "PercentileThreshold", "register", "get", "names", "GRANULARITIES"]

GRANULARITIES = ("layer", "channel", "neuron")
_REGISTRY: Dict[str, Callable[..., "ThresholdStrategy"]] = {}


def register(name: str) -> Callable:
    """Class decorator adding a strategy factory to the registry under ``name``."""

    def deco(factory: Callable[..., "ThresholdStrategy"]) -> Callable[..., "ThresholdStrategy"]:
        if name in _REGISTRY:
            raise ValueError(f"threshold strategy {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def get(name: str, **kwargs) -> "ThresholdStrategy":
    """Build a fresh strategy (one per layer) from its registered name and options."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown threshold strategy {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def names() -> List[str]:
    """Registered strategy names."""
    return sorted(_REGISTRY)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _is_count(v) -> bool:
    """An integer >= 1 (8.0 counts, 2.5 and True do not)."""
    return _is_number(v) and float(v) >= 1 and float(v) == int(v)


def _channels_first(z: torch.Tensor) -> torch.Tensor:
    """``[B, C, ...]`` -> ``[C, B*...]`` (per-channel value lists)."""
    return z.transpose(0, 1).reshape(z.shape[1], -1)


def _shape_channel(v: torch.Tensor, sample_dim: int) -> torch.Tensor:
    return v.reshape(v.shape[0], *([1] * (sample_dim - 1)))


class ThresholdStrategy:
    """Base class: ``observe`` batches of pre-activations, then ``compute`` the threshold."""

    granularity: str = "layer"

    def __init__(self, granularity: str = "layer") -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.granularity = granularity
        self.count = 0

    def bind(self, module: torch.nn.Module) -> None:
        """Called once with the activation module this strategy serves (most strategies ignore it)."""

    def observe(self, z: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> torch.Tensor:
        raise NotImplementedError

    def _check_ready(self) -> None:
        if self.count == 0:
            raise RuntimeError(f"{type(self).__name__}: no activations observed (empty calibration data?)")

    def _check_finite(self, theta: torch.Tensor) -> torch.Tensor:
        """Refuse a threshold computed from NaN/Inf activations (non-finite weights or calibration inputs)."""
        if not torch.isfinite(theta).all():
            raise ValueError(f"{type(self).__name__}: the recorded activations contain NaN or Inf, so the threshold "
                             "is not finite; check the layer's weights and the calibration data")
        return theta

    @staticmethod
    def _positive(theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        # A dead channel (never positive) would get theta=0: give it a tiny positive threshold instead;
        # its input never reaches it, so it stays silent, as in the ANN.
        return theta.clamp_min(eps)


@register("max")
class MaxThreshold(ThresholdStrategy):
    """Largest activation seen (Diehl et al. 2015 "max-norm"); ``neuron`` granularity is DNI's per-neuron max."""

    def __init__(self, granularity: str = "layer") -> None:
        super().__init__(granularity)
        self.value: Optional[torch.Tensor] = None

    def observe(self, z: torch.Tensor) -> None:
        z = z.detach().float()
        if self.granularity == "layer":
            m = z.max()
        elif self.granularity == "channel":
            m = _channels_first(z).max(dim=1).values
        else:
            m = z.max(dim=0).values
        self.value = m if self.value is None else torch.maximum(self.value, m)
        self.count += z.shape[0]
        self._sample_dim = z.dim() - 1

    def compute(self) -> torch.Tensor:
        self._check_ready()
        theta = self._positive(self._check_finite(self.value))
        return _shape_channel(theta, self._sample_dim) if self.granularity == "channel" else theta


@register("percentile")
class PercentileThreshold(ThresholdStrategy):
    """p-th percentile of the ReLU output (zeros included), "robust norm" of Rueckauer et al. 2017.

    Values are kept exactly up to ``cap`` per layer (or per channel); beyond that a seeded uniform
    subsample of ``cap`` values is kept, which leaves the percentile unbiased.
    """

    def __init__(self, p: float = 99.9, granularity: str = "layer", cap: int = 1 << 24, seed: int = 0) -> None:
        super().__init__(granularity)
        if granularity == "neuron":
            raise ValueError("percentile thresholds are layer- or channel-wise")
        if not _is_number(p) or not 0.0 < p <= 100.0:
            raise ValueError(f"percentile p must be in (0, 100], got {p!r}")
        if not _is_count(cap):
            raise ValueError(f"percentile cap (values kept per layer) must be a positive integer, got {cap!r}")
        self.p, self.cap = float(p), int(cap)
        self.values: List[torch.Tensor] = []
        self.n = 0
        self.gen = torch.Generator().manual_seed(seed)

    def observe(self, z: torch.Tensor) -> None:
        z = z.detach().float().clamp_min(0)
        vals = z.reshape(1, -1) if self.granularity == "layer" else _channels_first(z)
        self.values.append(vals.cpu())
        self.n += vals.shape[1]
        self.count += z.shape[0]
        self._sample_dim = z.dim() - 1
        if self.n > 2 * self.cap:
            self._shrink()

    def _shrink(self) -> None:
        allv = torch.cat(self.values, dim=1)
        idx = torch.randperm(allv.shape[1], generator=self.gen)[: self.cap]
        self.values, self.n = [allv[:, idx]], self.cap

    def compute(self) -> torch.Tensor:
        self._check_ready()
        if self.n > self.cap:
            self._shrink()
        allv = torch.cat(self.values, dim=1)
        k = max(1, min(allv.shape[1], int(round(self.p / 100.0 * allv.shape[1]))))
        theta = self._positive(self._check_finite(allv.kthvalue(k, dim=1).values))
        return theta[0] if self.granularity == "layer" else _shape_channel(theta, self._sample_dim)


@register("activation")
class ActivationBound(ThresholdStrategy):
    """The bound the ANN was trained with (stReLU/tReLU Vth, Han et al. 2023 Sec. 3: "no weight
    normalisation needed"). Observations only check that calibration data flowed."""

    def __init__(self, granularity: str = "layer") -> None:
        super().__init__(granularity)
        self.bound: Optional[float] = None

    def bind(self, module: torch.nn.Module) -> None:
        if not hasattr(module, "bound"):
            raise ValueError(f"{type(module).__name__} has no trained bound; the 'activation' threshold needs "
                             "a clipped activation such as StReLU or TReLU")
        self.bound = float(module.bound)

    def observe(self, z: torch.Tensor) -> None:
        self.count += z.shape[0]

    def compute(self) -> torch.Tensor:
        self._check_ready()
        return torch.tensor(self.bound)


def clip_round(x: torch.Tensor, theta: torch.Tensor, T: int, rounding: str = "round") -> torch.Tensor:
    """ClipRound (Li et al. 2022, Eq. 17): theta/T * clip(floor(T x / theta + 1/2), 0, T), the T-step mean
    output of an IF neuron firing at theta/2; ``rounding="floor"`` gives ClipFloor (Eq. 10)."""
    shift = 0.5 if rounding == "round" else 0.0
    return theta / T * torch.clamp(torch.floor(T * x / theta + shift), 0, T)


@register("mmse")
class MMSEThreshold(PercentileThreshold):
    """Threshold minimising the MSE between ReLU and its ClipRound quantisation for T steps (Li et al. 2022,
    Eq. 18, Algorithm 1): a grid of N points in (0, max], layer- or channel-wise.

    Algorithm 1's text says ClipFloor while Eq. 18 says ClipRound; ``rounding`` picks (default Eq. 18).
    """

    def __init__(self, T: int = 8, N: int = 100, granularity: str = "layer", rounding: str = "round",
                 cap: int = 1 << 18, seed: int = 0) -> None:
        super().__init__(p=100.0, granularity=granularity, cap=cap, seed=seed)
        if not _is_count(T) or not _is_count(N):
            raise ValueError(f"MMSE needs integers T >= 1 and N >= 1 grid points, got T={T!r}, N={N!r}")
        if rounding not in ("round", "floor"):
            raise ValueError(f"rounding must be 'round' (Eq. 18) or 'floor' (ClipFloor), got {rounding!r}")
        self.T, self.N, self.rounding = int(T), int(N), rounding

    def compute(self) -> torch.Tensor:
        self._check_ready()
        if self.n > self.cap:
            self._shrink()
        x = torch.cat(self.values, dim=1)  # [groups, n], already ReLU'd
        top = self._check_finite(x.max(dim=1).values).clamp_min(1e-8)  # [groups]
        best_err = torch.full_like(top, float("inf"))
        best = top.clone()
        for j in range(1, self.N + 1):  # Algorithm 1: theta_j = j/N * max
            theta = top * j / self.N
            err = (clip_round(x, theta[:, None], self.T, self.rounding) - x).pow(2).mean(dim=1)
            better = err < best_err
            best = torch.where(better, theta, best)
            best_err = torch.where(better, err, best_err)
        return best[0] if self.granularity == "layer" else _shape_channel(best, self._sample_dim)
