"""Plain stateless layers that graph normalisation puts in place of functional idioms, so every method sees modules:
a per-channel affine (a BatchNorm that cannot be folded into a weighted layer), channel concatenation and chunking,
ShuffleNet's channel shuffle and global average pooling. Each computes exactly the op it replaces; in a multi-step
network they run on ``[T*B, ...]`` like any stateless layer (``graph.SeqModule``)."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ChannelAffine", "Concat", "Chunk", "ChannelShuffle", "GlobalAvgPool", "DATA_MOVEMENT"]


class ChannelAffine(nn.Module):
    """``y = scale_c * x + shift_c`` along dim 1: an eval-mode BatchNorm kept on the current that enters a layer
    (scale = gamma / sqrt(var + eps), shift = beta - mean * scale). Exact for every neuron of the family, which
    only sees this linear current."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).detach().clone().reshape(-1))
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32).detach().clone().reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}"


class Concat(nn.Module):
    """``torch.cat(inputs, dim)`` with the inputs as arguments (``dim`` is never the batch dimension)."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = int(dim)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Chunk(nn.Module):
    """``x.chunk(chunks, dim)[index]``: one part of a split (ShuffleNet's ``x1, x2 = x.chunk(2, dim=1)``)."""

    def __init__(self, chunks: int, dim: int, index: int) -> None:
        super().__init__()
        self.chunks, self.dim, self.index = int(chunks), int(dim), int(index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.chunk(self.chunks, self.dim)[self.index]

    def extra_repr(self) -> str:
        return f"chunks={self.chunks}, dim={self.dim}, index={self.index}"


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle (Zhang et al. 2018, Sec. 3.1): view ``[N, g, C/g, ...]``, swap the two channel
    axes, flatten them again; the same values in the same order as torchvision's ``channel_shuffle``."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = int(groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        rest = x.shape[2:]
        return x.view(n, self.groups, c // self.groups, *rest).transpose(1, 2).reshape(n, c, *rest)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class GlobalAvgPool(nn.AdaptiveAvgPool2d):
    """``x.mean((2, 3), keepdim=True)`` of a 4-D tensor as ``AdaptiveAvgPool2d(1)``; refuses any other rank, where
    the mean over the last two dimensions is not global average pooling."""

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"GlobalAvgPool: the mean over dims (2, 3) replaced here is global average pooling of a "
                             f"[N, C, H, W] tensor; got shape {tuple(x.shape)}")
        return super().forward(x)


#: layers that move channels around without changing values (spike values fold through them, ``graph.fold_spike_values``)
DATA_MOVEMENT = (Concat, Chunk, ChannelShuffle)
