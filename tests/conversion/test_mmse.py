"""ClipRound and MMSE thresholds (Li et al. 2022, Eqs. 17-18, Algorithm 1) against independent references."""
import numpy as np
import pytest
import torch

import snnconv_ext as sc
from snnconv_ext import thresholds
from snnconv_ext.conversion.calibrate import ann_activations
from snnconv_ext.conversion.registry import get
from snnconv_ext.core.neuron import simulate


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


def test_mmse_grid_top_is_the_true_maximum_even_when_subsampled():
    # Algorithm 1: theta_j = j/N * max over the calibration set; the values kept for the MSE are a subsample
    # (cap), but the grid must still be built on the true maximum, a single outlier here
    z = torch.rand(100, 200, generator=torch.Generator().manual_seed(0))
    z[37, 11] = 50.0
    s = thresholds.get("mmse", T=4, N=100, cap=500)
    for chunk in z.split(10):
        s.observe(chunk)
    assert s.n < z.numel() and not bool((torch.cat(s.values, 1) == 50.0).any())  # the outlier was dropped
    theta = s.compute().item()
    j = theta * 100 / 50.0
    assert abs(j - round(j)) < 1e-4 and theta < 2.0  # on the true max's grid, and clipping the outlier


@pytest.mark.parametrize("T", [2, 4])
def test_mmse_threshold_beats_max_with_the_same_neuron(trained_cnn, calib, T):
    # Li et al. Table 1b: with ClipRound neurons on both sides (clipround = layer max, fire at theta/2), the MMSE
    # threshold alone must lower the quantisation error, measured independently of the strategy: the per-layer
    # MSE between ReLU and its ClipRound output at the chosen thresholds on the calibration data
    from snnconv_ext import graph
    gm = graph.fold_bn(graph.trace(trained_cnn))
    p_max = sc.calibrate.calibrate_thresholds(gm, get("clipround"), calib, progress=False)
    p_mmse = sc.calibrate.calibrate_thresholds(gm, get("mmse", T=T), calib, progress=False)
    x = torch.cat([b[0] for b in calib])
    acts, _ = ann_activations(gm, list(p_max), x)
    for t, a in acts.items():
        err = lambda th: (thresholds.clip_round(a, torch.as_tensor(th), T) - a).pow(2).mean().item()
        assert err(p_mmse[t].theta) < err(p_max[t].theta), t


def test_neuron_percentile_is_each_neurons_own_order_statistic():
    # dni-percentile: per neuron, the k-th smallest of its B values (k = round(p/100 * B)), checked by sorting
    z = torch.randn(200, 3, 4, 4, generator=torch.Generator().manual_seed(2)).abs()
    s = thresholds.get("percentile", p=99.0, granularity="neuron")
    for chunk in z.split(50):
        s.observe(chunk)
    th = s.compute()
    assert th.shape == (3, 4, 4)
    ref = z.reshape(200, -1).sort(0).values[round(0.99 * 200) - 1].reshape(3, 4, 4)
    assert torch.equal(th, ref) and bool((th < z.max(0).values).all())


@pytest.mark.parametrize("p", [70.0, 99.9])
def test_layer_percentile_is_the_exact_order_statistic_below_the_cap(p):
    # both selection paths (kthvalue for low p, topk of the largest for high p) against a full sort
    z = torch.randn(64, 8, 6, 6, generator=torch.Generator().manual_seed(3)).relu()
    s = thresholds.get("percentile", p=p)
    for chunk in z.split(16):
        s.observe(chunk)
    v = z.flatten().sort().values
    assert s.compute().item() == v[round(p / 100 * v.numel()) - 1].item()


def test_percentile_subsample_is_uniform_without_replacement():
    # cap to 2 cap distinct values are kept, each value equally likely whatever batch it came in:
    # stream the integers 0..n-1 in unequal batches and compare the kept set with a uniform sample
    n, cap = 60_000, 2_000
    sizes = [5_000, 500, 20_000, 34_500]
    kept = []
    for seed in range(20):
        s = thresholds.get("percentile", p=50.0, cap=cap, seed=seed)
        start = 0
        for b in sizes:
            s.observe(torch.arange(start, start + b, dtype=torch.float32)[:, None])
            start += b
        s.compute()
        v = torch.cat(s.values, 1)[0]
        assert cap - 5 * cap ** 0.5 < v.numel() < 2 * cap and v.unique().numel() == v.numel()  # no value twice
        kept.append(v)
    v = torch.cat(kept)
    # share of each batch: binomial around size/n; the mean of a uniform sample of 0..n-1: n/2 within 5 SE
    edges = torch.tensor(np.cumsum([0] + sizes), dtype=torch.float32)
    for i, b in enumerate(sizes):
        share = ((v >= edges[i]) & (v < edges[i + 1])).float().mean().item()
        assert abs(share - b / n) < 5 * (b / n * (1 - b / n) / v.numel()) ** 0.5, (i, share)
    assert abs(v.mean().item() - n / 2) < 5 * (n / 12 ** 0.5) / v.numel() ** 0.5
