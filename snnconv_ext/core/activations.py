"""ANN activations that conversion methods train with, as modules the converter recognises.

stReLU, atLeakyReLU and tReLU are from Han et al. 2023 (Eqs. 7, 21, 22). Each exposes ``bound``: the
positive threshold that the converted neuron gets (the ``activation`` threshold strategy reads it).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Type

import torch
import torch.nn as nn

__all__ = ["StReLU", "TReLU", "AtLeakyReLU", "Clamp", "ThresholdReLU", "ClippedReLU", "QCFS", "qcfs_levels", "LEAF_FUNCTIONS",
           "ACTIVATIONS", "BY_NAME", "register_activation"]


# torch.fx traces through custom modules; these wrapped functions stay single call_function nodes that
# graph.relift_activations turns back into modules (SpikingJelly's tracer has no custom leaf modules).
def strelu(x: torch.Tensor, vth: float) -> torch.Tensor:
    """clip(x, -vth, vth), Eq. 7."""
    return torch.clamp(x, -vth, vth)


def trelu(x: torch.Tensor, vth: float) -> torch.Tensor:
    """clip(x, 0, vth), Eq. 22."""
    return torch.clamp(x, 0.0, vth)


def atleakyrelu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 21."""
    return torch.where(x >= 0, x.clamp(max=1.0), (alpha * x).clamp(min=-1.0 / alpha))


def clamp_act(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """clamp(x, 0, alpha) with a trainable upper level alpha (TTRBR Sec. 4, Eq. 7)."""
    return torch.minimum(torch.relu(x), alpha)


def threshold_relu(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """clip(x, 0, mu) with a trainable threshold mu (Datta & Beerel 2022, Eq. 1)."""
    return torch.minimum(torch.relu(x), mu)


def clipped_relu(x: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """clip(x, 0, bound) with a fixed bound (ReLU6, Hardtanh(0, b))."""
    return torch.minimum(torch.relu(x), bound)


class _FloorSTE(torch.autograd.Function):
    """floor in the forward pass, identity in the backward pass (straight-through estimator, Bu et al. 2022 Sec. 4.3)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def qcfs_levels(x: torch.Tensor, lam: torch.Tensor, levels: int, shift: float = 0.5) -> torch.Tensor:
    """The integer level floor(clip(x/lam, 0, 1)*L + phi) = clip(floor(x*L/lam + phi), 0, L) of the QCFS activation
    (Bu et al. 2022, Eq. 15); with phi = 1/2 it is the spike count of an IF neuron (theta = lam, v0 = theta/2)
    over T = L steps."""
    return _FloorSTE.apply(torch.clamp(x / lam, 0.0, 1.0) * levels + shift)


def qcfs_act(x: torch.Tensor, lam: torch.Tensor, levels: int = 4, shift: float = 0.5) -> torch.Tensor:
    """Quantization clip-floor-shift, (lam/L) * clip(floor(x*L/lam + phi), 0, L) (Bu et al. 2022, Eq. 15), computed
    as lam * floor(clip(x/lam, 0, 1)*L + phi) / L, the same values. Gradients (Sec. 4.3): the floor is passed
    straight through, so d/dx = 1 on 0 < x < lam (0 outside) and d/dlam = level/L - x/lam there, 1 above lam;
    clipping before the floor is the authors' corrected code (clipping after it would stop the gradient on the
    lowest and highest level)."""
    return qcfs_levels(x, lam, levels, shift) * (lam / levels)


torch.fx.wrap("qcfs_act")
torch.fx.wrap("strelu")
torch.fx.wrap("threshold_relu")
torch.fx.wrap("clamp_act")
torch.fx.wrap("trelu")
torch.fx.wrap("atleakyrelu")
torch.fx.wrap("clipped_relu")


class _Bounded(nn.Module):
    """An activation clipped at a trained bound Vth > 0 (the converted neuron's threshold)."""

    def __init__(self, vth: float = 1.0) -> None:
        super().__init__()
        if vth <= 0:
            raise ValueError(f"{type(self).__name__} threshold must be > 0, got {vth}")
        self.bound = float(vth)

    def extra_repr(self) -> str:
        return f"vth={self.bound}"


class StReLU(_Bounded):
    """Symmetric-threshold ReLU, stReLU(x) = clip(x, -Vth, Vth) (Han et al. 2023, Eq. 7).

    ``torch.clamp``'s gradient is 1 inside (-Vth, Vth) and 0 outside, which is Eq. 9.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return strelu(x, self.bound)  # the global name, so torch.fx keeps it as one node


class TReLU(_Bounded):
    """Threshold ReLU, tReLU(x) = clip(x, 0, Vth) (Han et al. 2023, Eq. 22)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return trelu(x, self.bound)


class AtLeakyReLU(nn.Module):
    """Asymmetric-threshold LeakyReLU (Han et al. 2023, Eq. 21): 1 above 1, x on [0, 1), alpha*x on
    (-1/alpha^2, 0), and -1/alpha below -1/alpha^2."""

    def __init__(self, alpha: float = 0.5) -> None:
        super().__init__()
        if not 0 < alpha <= 1:
            raise ValueError(f"atLeakyReLU slope alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.bound = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return atleakyrelu(x, self.alpha)

    def neuron_knobs(self) -> dict:
        """Signed IF matching Eq. 21: negative threshold 1/alpha^2 and negative spikes worth 1/alpha, so the
        negative rate is alpha*x, saturating at -1/alpha (one spike per step)."""
        a = self.alpha
        return {"theta": torch.tensor(1.0), "theta_neg": torch.tensor(1.0 / a ** 2), "amplitude_neg": a}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Clamp(nn.Module):
    """clamp(x, 0, alpha) with a trainable upper level alpha per layer (TTRBR Sec. 4, after Choi et al. 2018).

    Its gradient reaches alpha where x > alpha; training adds an L2 penalty on alpha (``train`` puts alphas
    in their own weight-decay group) and calls :meth:`project_` after each step so alpha stays positive.
    """

    def __init__(self, alpha: float = 1.0, min_alpha: float = 1e-3) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"Clamp upper level alpha must be > 0, got {alpha}")
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.min_alpha = float(min_alpha)

    @property
    def bound(self) -> float:
        """The trained upper level (what the ``activation`` threshold strategy would use)."""
        return float(self.alpha.detach())

    @torch.no_grad()
    def project_(self) -> None:
        """Keep alpha >= min_alpha > 0 (projected gradient step)."""
        self.alpha.clamp_(min=self.min_alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clamp_act(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.bound:.4g}"


class ThresholdReLU(Clamp):
    """Threshold ReLU clip(x, 0, mu) with a trainable threshold mu per layer (Datta & Beerel 2022, Eq. 1,
    after Ho et al.'s TCL). The same function as :class:`Clamp` (so ``snnconv train`` trains mu the same way:
    its own weight-decay group, kept positive); mu is stored as ``alpha`` and read as :attr:`mu`."""

    def __init__(self, mu: float = 1.0, min_alpha: float = 1e-3) -> None:
        super().__init__(mu, min_alpha)

    @property
    def mu(self) -> float:
        """The trained threshold mu (Eq. 1)."""
        return self.bound

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return threshold_relu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"mu={self.bound:.4g}"


class QCFS(Clamp):
    """Quantization clip-floor-shift activation (Bu et al., ICLR 2022, Eq. 15):
    (lam/L) * clip(floor(x*L/lam + phi), 0, L), with a trainable upper level lam per layer, L levels and the
    shift phi = 1/2 that makes the expected conversion error zero for every T (Theorem 2).

    A :class:`Clamp` whose output is quantised, so ``snnconv train`` handles lam as it does alpha (own group,
    kept positive, ``--init`` starts it at the 99.9th percentile). Converted with theta = lam and v0 = theta/2
    (method ``qcfs``), an IF neuron emits exactly the activation's level over T = L steps at constant input.
    """

    def __init__(self, alpha: float = 1.0, levels: int = 4, shift: float = 0.5, min_alpha: float = 1e-3) -> None:
        super().__init__(alpha, min_alpha)
        if isinstance(levels, bool) or int(levels) != levels or levels < 1:
            raise ValueError(f"QCFS needs a whole number of levels L >= 1, got {levels!r}")
        if not 0.0 <= float(shift) < 1.0:
            raise ValueError(f"QCFS shift phi must be in [0, 1), got {shift!r}")
        self.levels, self.shift = int(levels), float(shift)

    @property
    def lam(self) -> float:
        """The trained upper level lambda (Eq. 15); the converted neuron's threshold."""
        return self.bound

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return qcfs_act(x, self.alpha, self.levels, self.shift)

    def extra_repr(self) -> str:
        return f"lam={self.bound:.4g}, levels={self.levels}, shift={self.shift:g}"


class ClippedReLU(Clamp):
    """A fixed clip clip(x, 0, b) of the source model (``nn.ReLU6``: b = 6, ``nn.Hardtanh(0, b)``), which graph
    normalisation puts in their place. Every unsigned method converts it: an IF neuron with threshold theta <= b
    fires at most once per step, so its scaled rate is clamp(x, 0, theta) (TTRBR Eq. 7), the clip itself when
    theta = b; calibration caps each method's threshold at b."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clipped_relu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"bound={self.bound:.4g}"


def _qcfs_factory(levels: int):
    def make() -> QCFS:
        return QCFS(levels=levels)
    make.__name__ = f"qcfs{levels}"
    return make


LEAF_FUNCTIONS = {strelu: StReLU, trelu: TReLU, atleakyrelu: AtLeakyReLU, clamp_act: Clamp,
                  threshold_relu: ThresholdReLU, qcfs_act: QCFS, clipped_relu: ClippedReLU}
# The one activation registry: ANN activation types the converter understands -> whether their output is signed
# (a signed output needs a negative threshold theta_neg).
ACTIVATIONS: Dict[Type[nn.Module], bool] = {nn.ReLU: False, StReLU: True, TReLU: False, AtLeakyReLU: True,
                                            Clamp: False, ThresholdReLU: False, QCFS: False, ClippedReLU: False}

# Activation names for ``models.build`` and ``snnconv train --act``: name -> zero-argument factory.
BY_NAME: Dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "strelu": StReLU, "trelu": TReLU, "atleakyrelu": AtLeakyReLU, "clamp": Clamp,
    "threshold_relu": ThresholdReLU, "qcfs": QCFS, **{f"qcfs{n}": _qcfs_factory(n) for n in (2, 4, 8, 16)}}


def register_activation(kind: Type[nn.Module], signed: bool = False, name: Optional[str] = None) -> None:
    """Teach the converter an activation module type (and, with ``name``, ``models.build`` its name)."""
    ACTIVATIONS[kind] = signed
    if name is not None:
        BY_NAME[name] = kind
