"""Datta & Beerel 2022: Algorithm 1 against hand-worked examples and brute force, Eqs. 6-7 against closed forms,
max pooling of spikes against a hand example, and the refusals."""
import math

import pytest
import torch
import torch.nn as nn

import snnconv_ext as sc
from snnconv_ext import datta
from snnconv_ext.core.activations import ThresholdReLU
from snnconv_ext.core.simulation import simulate_net
from snnconv_ext.conversion.graph import ConversionError
from snnconv_ext.core.neuron import simulate


def test_compute_loss_hand_worked():
    # mu = 1, alpha = 0.8, beta = 1.5, T = 2: steps at 0.4 and 0.8, SNN outputs 0, 0.6 (Seg-I), 1.2 (Seg-II)
    # p=0 -> 0; p=0.2 -> 0.2 - 0; p=0.5 -> 0.5 - 0.6; p=0.9 -> 0.9 - 1.2; p=1.0 -> 1.0 - 1.2; p=1.2 -> 1*(1 - 1.2)
    P = [0.0, 0.2, 0.5, 0.9, 1.0, 1.2]
    assert datta.compute_loss(P, 1.0, 0.8, 1.5, 2) == pytest.approx(0.2 - 0.1 - 0.3 - 0.2 - 0.2, abs=1e-12)
    # a p on the inner step edge 0.4 matches j = 0 and j = 1 (both bounds inclusive as printed): 0.4 + (0.4 - 0.6)
    assert datta.compute_loss([0.4], 1.0, 0.8, 1.5, 2) == pytest.approx(0.2, abs=1e-12)
    # the unsigned variant adds magnitudes: 0.2 + 0.1 + 0.3 + 0.2 + 0.2
    tab = datta.loss_table(torch.tensor(P, dtype=torch.float64), 1.0, torch.tensor([0.8], dtype=torch.float64), 2, [1.5],
                           loss="abs")
    assert float(tab[0, 0]) == pytest.approx(1.0, abs=1e-12)


def test_loss_table_equals_compute_loss():
    g = torch.Generator().manual_seed(1)
    P = torch.sort(torch.rand(15, generator=g, dtype=torch.float64) * 1.3).values
    alphas, betas = torch.tensor([0.1, 0.37, 0.5, 1.0], dtype=torch.float64), [0.0, 0.3, 1.0, 1.7]
    tab = datta.loss_table(P, 1.1, alphas, 3, betas)
    for i, a in enumerate(alphas.tolist()):
        for j, b in enumerate(betas):
            assert float(tab[i, j]) == pytest.approx(datta.compute_loss(P.tolist(), 1.1, a, b, 3), abs=1e-12)


@pytest.mark.parametrize("T", [1, 2, 3])
def test_search_finds_brute_force_optimum(T):
    g = torch.Generator().manual_seed(T)
    a = torch.distributions.Exponential(3.0).sample((4000,)).clamp(max=2.0)  # skewed, like Fig. 1(a)
    mu = 1.0
    P = datta.percentiles(a, mu)
    betas = [round(0.1 * i, 1) for i in range(21)]
    # FindScalingFactors with ComputeLoss, literally: start at (1, 1), keep strictly smaller |loss| in scan order
    best_a, best_b, pre = 1.0, 1.0, datta.compute_loss(P.tolist(), mu, 1.0, 1.0, T)
    for p in P.tolist():
        if p <= 0:
            continue
        for b in betas:
            loss = datta.compute_loss(P.tolist(), mu, p / mu, b, T)
            if abs(loss) < abs(pre):
                best_a, best_b, pre = p / mu, b, loss
    alpha, beta, loss = datta.find_scaling_factors(P, mu, T, betas)
    assert abs(loss) == pytest.approx(abs(pre), abs=1e-9)
    assert (alpha, beta) == (pytest.approx(best_a, rel=1e-12), best_b)


def test_signed_loss_is_linear_in_beta_hand_worked():
    # mu = 1, alpha = 0.6, T = 2: steps at 0.3 and 0.6, no percentile on an inner edge. Terms (Seg-I, Seg-II):
    # p=0 -> 0; 0.1 -> 0.1; 0.25 -> 0.25; 0.5 -> 0.5 - 0.3b; 0.7 -> 0.7 - 0.6b; 0.95 -> 0.95 - 0.6b
    # so loss = A - b*B with A = 2.5, B = 1.5: zero at b = 5/3, and 0.005 at the nearest grid point 1.67
    P = [0.0, 0.1, 0.25, 0.5, 0.7, 0.95]
    for b in (0.0, 0.4, 1.0, 5 / 3, 2.0):
        assert datta.compute_loss(P, 1.0, 0.6, b, 2) == pytest.approx(2.5 - 1.5 * b, abs=1e-12)
    Pt = torch.tensor(P, dtype=torch.float64)
    assert float(datta.zero_loss_beta(Pt, 1.0, torch.tensor([0.6], dtype=torch.float64), 2)[0]) == pytest.approx(5 / 3)
    tab = datta.loss_table(Pt, 1.0, torch.tensor([0.6], dtype=torch.float64), 2)[0]
    assert float(tab.abs().min()) == pytest.approx(0.005, abs=1e-12) and int(tab.abs().argmin()) == 167
    # the absolute loss is not linear in beta: 0.1 + 0.25 + |0.5 - 0.3b| + |0.7 - 0.6b| + |0.95 - 0.6b|
    for b in (0.0, 1.0, 5 / 3, 2.0):
        ref = 0.35 + abs(0.5 - 0.3 * b) + abs(0.7 - 0.6 * b) + abs(0.95 - 0.6 * b)
        assert datta.compute_loss(P, 1.0, 0.6, b, 2, loss="abs") == pytest.approx(ref, abs=1e-12)


# Dyadic percentiles (exact in binary, so the inclusive step edges of Seg-I compare exactly), mu = 1, sum 1.625.
HAND_P = [0.0, 0.125, 0.25, 0.5, 0.75]


def test_zero_loss_alphas_by_hand_T1():
    # T = 1: the SNN outputs 0 up to alpha and alpha*b above it, so A = sum(p) = 1.625 and B = alpha * #(p > alpha):
    # alpha = 0.125: B = 0.375, A/B = 4.33; 0.25: B = 0.5, 3.25; 0.5: B = 0.5, 3.25; 0.75: B = 0 (no zero).
    # No alpha reaches zero within b <= 2, so the search ends on the grid's edge b = 2, at the smallest
    # |1.625 - 2B| = 0.625, first found at alpha = 0.25 (alpha = beta = 1, the start, has loss 1.625).
    P = torch.tensor(HAND_P, dtype=torch.float64)
    alphas = P[P > 0]
    zb = datta.zero_loss_beta(P, 1.0, alphas, 1)
    assert zb[:3].tolist() == pytest.approx([1.625 / 0.375, 3.25, 3.25]) and math.isinf(zb[3])
    assert datta.find_scaling_factors(P, 1.0, 1) == (0.25, 2.0, pytest.approx(0.625))


def test_zero_loss_alphas_by_hand_T4():
    # T = 4, by hand (a p on an inner edge j*alpha/4 counts for j - 1 and j, as printed):
    # alpha = 0.125: A = 1.625, B = 0.09375 + 3 * 0.125 = 0.46875  -> A/B = 3.47 (out of reach)
    # alpha = 0.25:  A = 1.75,  B = 0.0625 + 0.125 + 0.1875 + 2 * 0.25 = 0.875 -> A/B = 2 exactly (on the grid)
    # alpha = 0.5:   A = 2.0,   B = 0.125 + 0.125 + 0.25 + 0.375 + 0.5 = 1.375 -> A/B = 1.4545
    # alpha = 0.75:  A = 1.625, B = 0.1875 + 0.375 + 0.5625 = 1.125 -> A/B = 1.4444
    # Three of four reach zero; the search keeps the one whose zero lies on the 0.01 grid (alpha = 0.25, b = 2,
    # loss 0), although it halves what a spike is worth relative to alpha = 0.5 or 0.75 with b near 1.45.
    P = torch.tensor(HAND_P, dtype=torch.float64)
    zb = datta.zero_loss_beta(P, 1.0, P[P > 0], 4)
    assert zb.tolist() == pytest.approx([1.625 / 0.46875, 2.0, 2.0 / 1.375, 1.625 / 1.125])
    assert int(((zb >= 0) & (zb <= 2)).sum()) == 3
    assert datta.find_scaling_factors(P, 1.0, 4) == (0.25, 2.0, 0.0)
    # the signed search's pick is the zero-reaching alpha with the smallest B * (distance of A/B to the grid)
    B = torch.tensor([0.46875, 0.875, 1.375, 1.125], dtype=torch.float64)
    reach = (zb >= 0) & (zb <= 2)
    gap = torch.where(reach, B * (zb - (zb * 100).round() / 100).abs(), torch.full_like(B, math.inf))
    assert float(P[P > 0][int(gap.argmin())]) == 0.25


@pytest.mark.parametrize("T", [1, 2, 4])
def test_abs_search_finds_brute_force_optimum(T):
    # FindScalingFactors with the literal loop of compute_loss(loss="abs"), against the vectorized search
    torch.manual_seed(T)
    a = torch.distributions.Exponential(3.0).sample((4000,)).clamp(max=2.0)
    P = datta.percentiles(a, 1.0)
    betas = [round(0.1 * i, 1) for i in range(21)]
    best_a, best_b, pre = 1.0, 1.0, datta.compute_loss(P.tolist(), 1.0, 1.0, 1.0, T, loss="abs")
    for p in P.tolist():
        for b in betas if p > 0 else ():
            loss = datta.compute_loss(P.tolist(), 1.0, p, b, T, loss="abs")
            if loss < pre:
                best_a, best_b, pre = p, b, loss
    alpha, beta, loss = datta.find_scaling_factors(P, 1.0, T, betas, loss="abs")
    assert loss == pytest.approx(pre, abs=1e-9) and (alpha, beta) == (pytest.approx(best_a, rel=1e-12), best_b)


def test_snn_activation_tends_to_scaled_clip():
    # the staircase (beta*alpha*mu/T) * clip(floor(T d/(alpha*mu)), 0, T) is within one step beta*alpha*mu/T below
    # beta * clip(d, 0, alpha*mu): the limit a converted layer approaches as T grows
    mu, alpha, beta = 1.2, 0.4, 1.7
    d = torch.linspace(-0.3, 1.5, 997, dtype=torch.float64)
    limit = beta * d.clamp(0, alpha * mu)
    for T in (1, 4, 32, 1024):
        err = limit - datta.snn_activation(d, mu, alpha, beta, T)
        assert float(err.min()) >= -1e-12 and float(err.max()) <= beta * alpha * mu / T + 1e-12


def test_limit_ann_is_the_snn_for_large_T():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 8, bias=False), ThresholdReLU(0.7), nn.Linear(8, 3, bias=False)).eval()
    calib = _calib((6,), 256)
    x = calib[0][:16]
    with torch.no_grad():
        # alpha = beta = 1 is the threshold-ReLU ANN itself
        found = {n: {"mu": net[1].mu, "alpha": 1.0, "beta": 1.0} for n in datta.layer_percentiles(net, x)}
        assert torch.allclose(datta.limit_ann(net, found)(x), net(x), atol=1e-6)
        snn = sc.convert(net, "datta", calib, T=2, progress=False)
        (r,) = snn.meta["snnconv_thresholds"].values()
        lim = datta.limit_ann(net, snn.meta["snnconv_thresholds"])
        ref = net[2](r["beta"] * net[0](x).clamp(0, r["alpha"] * r["mu"]))  # beta * clip(W1 x, 0, alpha*mu), by hand
        assert torch.allclose(lim(x), ref, atol=1e-6)
        T = 256  # one hidden layer, constant input: |SNN mean - limit| <= |W2| * beta*alpha*mu/T per output
        gap = (_readout(snn, x, T)[-1] / T - lim(x)).abs()
        assert bool((gap <= net[2].weight.abs().sum(1) * r["beta"] * r["alpha"] * r["mu"] / T + 1e-5).all())
    with pytest.raises(ValueError, match="not activations"):
        datta.limit_ann(net, {"fc9": r})


def test_percentiles_stop_at_mu():
    a = torch.arange(1001, dtype=torch.float64) / 1000  # uniform on [0, 1]: P[i] = i/100
    P = datta.percentiles(a, 0.255)
    assert P.numel() == 26 and float(P[-1]) == pytest.approx(0.25)


def test_snn_activation_is_the_neuron():
    # Fig. 1(b): constant input d for T steps into an IF neuron with threshold alpha*mu, spikes worth beta*alpha*mu
    mu, alpha, beta, T = 2.0, 0.6, 1.3, 3
    d = torch.linspace(-0.5, 2.5, 61)
    spikes = simulate(d.expand(T, -1).clone(), theta=alpha * mu, amplitude=beta)
    mean_value = (spikes != 0).float().mean(0) * beta * alpha * mu
    assert torch.allclose(datta.snn_activation(d, mu, alpha, beta, T), mean_value, atol=1e-6)


def test_k_and_h_closed_forms():
    g = torch.Generator().manual_seed(0)
    mu, n = 1.5, 400_000
    u = torch.rand(n, generator=g) * mu  # uniform on [0, mu]: K = h = 1/2 (Sec. III-A)
    assert datta.k_mu(u, mu) == pytest.approx(0.5, abs=5e-3)
    for T in (1, 2, 5):
        assert datta.h_T_mu(u, mu, T) == pytest.approx(0.5, abs=5e-3)
    lam = 3.0  # exponential, the skewed case: closed forms of Eqs. 6-7
    e = torch.distributions.Exponential(lam).sample((n,))
    k_exact = (1 / lam - math.exp(-lam * mu) * (mu + 1 / lam)) / mu
    assert datta.k_mu(e, mu) == pytest.approx(k_exact, abs=5e-3)
    for T in (1, 2, 5):
        F = lambda x: 1 - math.exp(-lam * x)
        h_exact = sum(i / T * (F((i + .5) * mu / T) - F((i - .5) * mu / T)) for i in range(1, T)) \
            + F(mu) - F((T - .5) * mu / T)
        assert datta.h_T_mu(e, mu, T) == pytest.approx(h_exact, abs=5e-3)
    assert datta.h_T_mu(e, mu, 1) < datta.h_T_mu(e, mu, 5) < datta.k_mu(e, mu) * 1.5  # h falls as T falls


def _readout(snn, x, T):
    """Accumulated readout [T, B, classes] after 1..T steps of direct input x."""
    return torch.cat(list(simulate_net(snn, x, T)))


def _calib(shape, n=64, seed=0):
    return [torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("method, loss", [("datta", "signed"), ("datta-abs", "abs")])
def test_datta_conversion_is_eq8(method, loss):
    # Linear -> threshold ReLU -> Linear: the SNN's cumulative readout after T steps of constant input is
    # W2 @ (T * scaled staircase(W1 x)) with the alpha, beta the search chose (with the method's loss)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8, bias=False), ThresholdReLU(0.7), nn.Linear(8, 3, bias=False)).eval()
    calib = _calib((6,), 256)
    T = 2
    snn = sc.convert(net, method, calib, T=T, progress=False)
    (info,) = snn.meta["snnconv_thresholds"].values()
    mu = net[1].mu  # the float32 parameter: the signed loss's optimum moves with the last bit of mu
    P = datta.percentiles(net[0](calib[0]).clamp_min(0).detach(), mu)
    alpha, beta, _ = datta.find_scaling_factors(P, mu, T, loss=loss)
    # zero_loss: the candidate alphas whose signed loss changes sign (or is zero) between beta = 0 and beta = 2
    cand = [float(p) / mu for p in P if p > 0]
    crosses = [datta.compute_loss(P.tolist(), mu, a, 0.0, T) >= 0 >= datta.compute_loss(P.tolist(), mu, a, 2.0, T)
               for a in cand]
    assert (info["candidates"], info["zero_loss"]) == (len(cand), sum(crosses))
    assert (info["alpha"], info["beta"], info["mu"]) == (pytest.approx(alpha), pytest.approx(beta), pytest.approx(mu))
    x = calib[0][:16]
    with torch.no_grad():
        out = _readout(snn, x, T)[-1]
        ref = net[2](T * datta.snn_activation(net[0](x), mu, alpha, beta, T))
    assert torch.allclose(out, ref, atol=1e-4)


def _pool_net(act):
    conv = nn.Conv2d(1, 1, 1, bias=False)
    fc = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        fc.weight.fill_(1.0)
    return nn.Sequential(conv, act, nn.MaxPool2d(2), nn.Flatten(), fc).eval()


def test_maxpool_of_spikes_hand_example():
    # threshold mu = 1, constant currents 0.6 and 0.34 into two neurons of one 2x2 pool (the others 0):
    # 0.6: v = .6, 1.2 -> spike (t=2), .8, 1.4 -> spike (t=4);  0.34: .34, .68, 1.02 -> spike (t=3), .36
    # pooled spikes per step: 0, 1, 1, 1 (the max of 0/1 spikes at each step, not the max of the rates, 2/4),
    # so the cumulative readout is 0, 1, 2, 3.
    net = _pool_net(ThresholdReLU(1.0))
    snn = sc.convert(net, "datta-mu", _calib((1, 2, 2)), progress=False)
    x = torch.tensor([[[[0.6, 0.34], [0.0, 0.0]]]])
    with torch.no_grad():
        out = _readout(snn, x, 4)
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 1.0, 2.0, 3.0]), atol=1e-6)


def test_maxpool_refusals():
    relu_net = _pool_net(nn.ReLU())
    with pytest.raises(ConversionError, match="signed spikes"):
        sc.convert(relu_net, "snm", _calib((1, 2, 2)), progress=False, maxpool="spikes")
    with pytest.raises(ConversionError, match="own threshold"):
        sc.convert(relu_net, "dni", _calib((1, 2, 2)), progress=False, maxpool="spikes")
    with pytest.raises(TypeError, match="allow_maxpool was replaced by maxpool="):
        sc.convert(relu_net, "max", _calib((1, 2, 2)), progress=False, allow_maxpool=True)
    snn = sc.convert(relu_net, "max", _calib((1, 2, 2)), progress=False, maxpool="spikes")  # binary: allowed
    assert any(isinstance(m, nn.MaxPool2d) for m in snn.modules())
    for method in ("max", "snm", "dni"):  # the default gated form converts every method (tests/conversion/test_normalize)
        snn = sc.convert(relu_net, method, _calib((1, 2, 2)), progress=False)
        assert any(type(m).__name__ == "GatedMaxPool" for m in snn.modules()), method


def test_datta_refusals():
    from snnconv_ext.core.activations import StReLU
    net = nn.Sequential(nn.Linear(4, 4), StReLU(), nn.Linear(4, 2)).eval()
    with pytest.raises(ConversionError, match="StReLU"):
        sc.convert(net, "datta", _calib((4,)), progress=False)
    with pytest.raises(ValueError, match="layer-wise"):
        sc.convert(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval(), "datta", _calib((4,)),
                   progress=False, granularity="channel")


def test_datta_nets_by_hand():
    from snnconv_ext import models
    net = models.build("net4_datta", "threshold_relu")
    # 32c5 (1*32*25) + 64c5 (32*64*25) + 1024*1024 + 1024*10 weights, no biases, plus one mu per activation
    assert sum(p.numel() for p in net.parameters()) == 800 + 51200 + 1048576 + 10240 + 3
    for m in (net, models.build("vgg_datta", "threshold_relu")):
        layers = [l for l in m.modules() if isinstance(l, (nn.Conv2d, nn.Linear))]
        assert all(l.bias is None for l in layers) and not any(isinstance(l, nn.BatchNorm2d) for l in m.modules())
        assert sum(isinstance(l, nn.MaxPool2d) for l in m.modules()) >= 2
        assert sum(isinstance(l, ThresholdReLU) for l in m.modules()) == len(layers) - 1
