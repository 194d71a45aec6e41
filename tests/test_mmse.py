"""ClipRound and MMSE thresholds (Li et al. 2022, Eqs. 17-18, Algorithm 1) against independent references."""
import numpy as np
import pytest
import torch

import snnconv_ext as sc
from snnconv_ext import thresholds
from snnconv_ext.neuron import simulate


@pytest.mark.parametrize("T", [1, 3, 8, 32])
def test_clipround_equals_if_mean_output_exactly(T):
    # the IF neuron firing at theta/2 reproduces ClipRound for constant input (grid values exact in float)
    theta = 1.0
    xs = torch.arange(-16, 80) / 32.0
    mean = simulate(xs.expand(T, -1).contiguous(), theta=theta, fire_at=0.5).mean(0)
    assert torch.equal(mean, thresholds.clip_round(xs, torch.tensor(theta), T))


def brute_force(x: np.ndarray, T: int, N: int) -> float:
    best, best_err = None, np.inf
    top = x.max()
    for j in range(1, N + 1):
        th = top * j / N
        q = th / T * np.clip(np.floor(T * x / th + 0.5), 0, T)
        err = np.mean((q - x) ** 2)
        if err < best_err:
            best, best_err = th, err
    return best


@pytest.mark.parametrize("T", [2, 8])
def test_mmse_matches_brute_force_on_exponential(T):
    g = torch.Generator().manual_seed(0)
    z = torch.empty(20000).exponential_(generator=g) - 0.5  # half-normal-like tail, some negatives
    s = thresholds.get("mmse", T=T, N=100)
    s.observe(z.view(200, 100))
    ref = brute_force(np.clip(z.numpy(), 0, None), T, 100)
    assert abs(s.compute().item() - ref) < 1e-5
    # the MMSE threshold clips: below the max, and it balances errors better than max
    assert s.compute().item() < z.max().item()


def test_mmse_channelwise_shape_and_values():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(64, 3, 4, 4, generator=g) * torch.tensor([0.5, 1.0, 3.0])[None, :, None, None]
    s = thresholds.get("mmse", T=4, granularity="channel")
    s.observe(z)
    th = s.compute()
    assert th.shape == (3, 1, 1)
    for c in range(3):
        ref = brute_force(np.clip(z[:, c].numpy().ravel(), 0, None), 4, 100)
        assert abs(th[c].item() - ref) < 1e-5


def test_mmse_method_beats_max_at_small_T(trained_cnn, calib, digits):
    test = digits[1]
    acc_max = sc.evaluate(sc.convert(trained_cnn, "max", calib, progress=False), test, [4], progress=False)[4]
    acc_mmse = sc.evaluate(sc.convert(trained_cnn, "mmse", calib, T=4, progress=False), test, [4], progress=False)[4]
    assert acc_mmse >= acc_max
