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


def test_datta_conversion_is_eq8():
    # Linear -> threshold ReLU -> Linear: the SNN's cumulative readout after T steps of constant input is
    # W2 @ (T * scaled staircase(W1 x)) with the alpha, beta the search chose
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8, bias=False), ThresholdReLU(0.7), nn.Linear(8, 3, bias=False)).eval()
    calib = _calib((6,), 256)
    T = 2
    snn = sc.convert(net, "datta", calib, T=T, progress=False)
    (info,) = snn.meta["snnconv_thresholds"].values()
    mu = net[1].mu  # the float32 parameter: the signed loss's optimum moves with the last bit of mu
    P = datta.percentiles(net[0](calib[0]).clamp_min(0).detach(), mu)
    alpha, beta, _ = datta.find_scaling_factors(P, mu, T)
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
