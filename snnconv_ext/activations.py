"""ANN activations that conversion methods train with, as modules the converter recognises.

stReLU, atLeakyReLU and tReLU are from Han et al. 2023 (Eqs. 7, 21, 22). Each exposes ``bound``: the
positive threshold that the converted neuron gets (the ``activation`` threshold strategy reads it).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .models import ACTIVATIONS as MODEL_ACTIVATIONS

__all__ = ["StReLU", "TReLU", "AtLeakyReLU", "Clamp", "ThresholdReLU", "LEAF_FUNCTIONS"]


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


torch.fx.wrap("strelu")
torch.fx.wrap("threshold_relu")
torch.fx.wrap("clamp_act")
torch.fx.wrap("trelu")
torch.fx.wrap("atleakyrelu")


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


LEAF_FUNCTIONS = {strelu: StReLU, trelu: TReLU, atleakyrelu: AtLeakyReLU, clamp_act: Clamp,
                  threshold_relu: ThresholdReLU}
MODEL_ACTIVATIONS.update({"strelu": StReLU, "trelu": TReLU, "atleakyrelu": AtLeakyReLU, "clamp": Clamp,
                          "threshold_relu": ThresholdReLU})
