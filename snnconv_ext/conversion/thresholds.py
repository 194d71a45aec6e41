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

import inspect
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..core.checks import is_number, positive_int

__all__ = ["ThresholdStrategy", "MaxThreshold", "PercentileThreshold", "ActivationBound", "MMSEThreshold", "register",
           "get", "names", "options", "clip_round", "as_channel", "GRANULARITIES"]

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


def options(name: str) -> Tuple[str, ...]:
    """The keyword options strategy ``name`` takes (its constructor's parameters), e.g. ``("p", "granularity", ...)``."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown threshold strategy {name!r}; registered: {sorted(_REGISTRY)}")
    return tuple(inspect.signature(_REGISTRY[name]).parameters)


def _channels_first(z: torch.Tensor) -> torch.Tensor:
    """``[B, C, ...]`` -> ``[C, B*...]`` (per-channel value lists)."""
    return z.transpose(0, 1).reshape(z.shape[1], -1)


def as_channel(v: torch.Tensor, sample_dim: int) -> torch.Tensor:
    """A per-channel vector ``[C]`` shaped to broadcast against one sample of ``sample_dim`` dimensions."""
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
            m = z.amax()
        elif self.granularity == "channel":
            m = z.amax(dim=(0,) + tuple(range(2, z.dim())))
        else:
            m = z.amax(dim=0)  # amax: ~10x faster than max(dim=0), which also finds indices
        self.value = m if self.value is None else torch.maximum(self.value, m)
        self.count += z.shape[0]
        self._sample_dim = z.dim() - 1

    def compute(self) -> torch.Tensor:
        self._check_ready()
        theta = self._positive(self._check_finite(self.value))
        return as_channel(theta, self._sample_dim) if self.granularity == "channel" else theta


@register("percentile")
class PercentileThreshold(ThresholdStrategy):
    """p-th percentile of the ReLU output (zeros included), "robust norm" of Rueckauer et al. 2017.

    Values are kept exactly up to ``cap`` per layer (or per channel); beyond that a seeded uniform subsample of
    ``cap`` to ``2 cap`` values is kept, which leaves the percentile unbiased: every value position gets a uniform
    random key and values with a key below ``cap / values seen`` stay (Bernoulli sampling at one rate for the whole
    stream), so values that cannot make it are dropped as they arrive, without a shuffle. ``granularity="neuron"``
    takes the percentile of each neuron's values over the calibration images (a robust version of DNI's per-neuron
    maximum, DNISNM Sec. 4.1: one outlier image no longer sets a neuron's threshold).
    """

    def __init__(self, p: float = 99.9, granularity: str = "layer", cap: int = 1 << 24, seed: int = 0) -> None:
        super().__init__(granularity)
        if not is_number(p) or not 0.0 < p <= 100.0:
            raise ValueError(f"percentile p must be in (0, 100], got {p!r}")
        if not positive_int(cap):
            raise ValueError(f"percentile cap (values kept per layer) must be a positive integer, got {cap!r}")
        self.p, self.cap = float(p), int(cap)
        self.values: List[torch.Tensor] = []
        self.keys: List[torch.Tensor] = []
        self.bar: Optional[float] = None  # the sampling rate: values with a key >= bar are dropped
        self.n = self.seen = 0
        self.gen = torch.Generator().manual_seed(seed)

    def observe(self, z: torch.Tensor) -> None:
        z = z.detach().float().clamp_min(0)
        self.count += z.shape[0]
        self._sample_dim = z.dim() - 1
        self._sample_shape = tuple(z.shape[1:])
        g = self._groups(z).cpu()  # [groups, values]; one key per column keeps every group's sample uniform
        keys = torch.rand(g.shape[1], generator=self.gen, dtype=torch.float64)
        self.seen += g.shape[1]
        if self.bar is not None:
            keep = keys < self.bar
            g, keys = g[:, keep], keys[keep]
        self.values.append(g)
        self.keys.append(keys)
        self.n += g.shape[1]
        if self.n > 2 * self.cap:
            self._shrink()

    def _groups(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, C, ...]`` -> ``[groups, values]``: one group per layer, channel or neuron."""
        if self.granularity == "layer":
            return z.reshape(1, -1)
        if self.granularity == "channel":
            return _channels_first(z)
        return z.reshape(z.shape[0], -1).T

    def _shaped(self, theta: torch.Tensor) -> torch.Tensor:
        """Per-group values -> a threshold broadcasting against one sample."""
        if self.granularity == "layer":
            return theta[0]
        if self.granularity == "channel":
            return as_channel(theta, self._sample_dim)
        return theta.reshape(self._sample_shape)

    def _shrink(self) -> None:
        """Lower the rate to ``cap / seen``: every value seen so far is kept with that probability."""
        allv, keys = torch.cat(self.values, dim=1), torch.cat(self.keys)
        self.bar = self.cap / self.seen
        keep = keys < self.bar
        self.values, self.keys, self.n = [allv[:, keep]], [keys[keep]], int(keep.sum())

    def compute(self) -> torch.Tensor:
        self._check_ready()
        allv = torch.cat(self.values, dim=1)  # up to 2 * cap values: all of them count
        n = allv.shape[1]
        k = max(1, min(n, int(round(self.p / 100.0 * n))))
        if 2 * (n - k + 1) < n:  # a high percentile: the (n-k+1)-th largest, topk is several times faster
            theta = allv.topk(n - k + 1, dim=1).values[:, -1]
        else:
            theta = allv.kthvalue(k, dim=1).values
        return self._shaped(self._positive(self._check_finite(theta)))


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
    The grid's top is the true maximum of everything observed; the MSE of each grid point is measured on all
    values up to a budget and on a seeded uniform subsample beyond it: ``cap`` values for a layer-wise threshold,
    ``cap`` shared by the groups (at least 4096 each) for channel- and neuron-wise ones, so that the N-point search
    costs about the same at every granularity.
    """

    def __init__(self, T: int = 8, N: int = 100, granularity: str = "layer", rounding: str = "round",
                 cap: int = 1 << 18, seed: int = 0) -> None:
        super().__init__(p=100.0, granularity=granularity, cap=cap, seed=seed)
        if not positive_int(T) or not positive_int(N):
            raise ValueError(f"MMSE needs integers T >= 1 and N >= 1 grid points, got T={T!r}, N={N!r}")
        if rounding not in ("round", "floor"):
            raise ValueError(f"rounding must be 'round' (Eq. 18) or 'floor' (ClipFloor), got {rounding!r}")
        self.T, self.N, self.rounding = int(T), int(N), rounding
        self.top: Optional[torch.Tensor] = None

    def observe(self, z: torch.Tensor) -> None:
        z = z.detach().float().clamp_min(0)
        top = self._groups(z).max(dim=1).values.cpu()  # the true maximum, before any subsampling
        if self.top is None and top.numel() > 1:
            self.cap = max(self.cap // top.numel(), 1 << 12)  # values kept per group
        self.top = top if self.top is None else torch.maximum(self.top, top)
        super().observe(z)

    def compute(self) -> torch.Tensor:
        self._check_ready()
        if self.n > self.cap:
            self._shrink()
        x = torch.cat(self.values, dim=1)  # [groups, n], already ReLU'd
        top = self._check_finite(self.top).clamp_min(1e-8)  # [groups], Algorithm 1: max of the whole calibration set
        best_err = torch.full_like(top, float("inf"))
        best = top.clone()
        for j in range(1, self.N + 1):  # Algorithm 1: theta_j = j/N * max
            theta = top * j / self.N
            err = (clip_round(x, theta[:, None], self.T, self.rounding) - x).pow(2).mean(dim=1)
            better = err < best_err
            best = torch.where(better, theta, best)
            best_err = torch.where(better, err, best_err)
        return self._shaped(best)
