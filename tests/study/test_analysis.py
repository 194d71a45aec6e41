"""analysis.layer_report against quantities computed by hand on small networks."""
import torch
import torch.nn as nn

import snnconv_ext as sc
from snnconv_ext import analysis, thresholds


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4))
    return net.eval()


def test_first_layer_errors_match_hand_computation():
    net = _net()
    x = torch.rand(32, 1, 8, 8)
    T = 5
    snn = sc.convert(net, "max", [x], progress=False)
    rows = analysis.layer_report(net, snn, [x], T, per_channel=True)
    assert [r["layer"] for r in rows] == ["1", "5"]
    first = rows[0]
    # constant (analog) input: the neuron's output is exactly the quantised mean current (Eq. 11)
    z = net[0](x).detach()
    theta = z.max()
    y = thresholds.clip_round(z, theta, T, "floor")
    relu = z.clamp_min(0)
    assert abs(first["rel_error"] - float((relu - y).pow(2).sum() / relu.pow(2).sum())) < 1e-5
    assert abs(first["quantization_error"] - float((relu.clamp(max=theta) - y).abs().mean())) < 1e-6
    assert first["deviation_error"] < 1e-7 and first["input_var_max"] < 1e-5  # float32 rounding only
    per_c = [float((relu[:, c] - y[:, c]).pow(2).sum() / relu[:, c].pow(2).sum()) for c in range(3)]
    assert all(abs(a - b) < 1e-5 for a, b in zip(first["rel_error_channels"], per_c))
    # the second layer integrates spikes: its input varies in time
    assert rows[1]["input_var_median"] >= 0 and rows[1]["input_var_max"] > 0


def test_relative_error_shrinks_with_T():
    net = _net()
    x = torch.rand(32, 1, 8, 8)
    snn = sc.convert(net, "max", [x], progress=False)
    short, long = (analysis.layer_report(net, snn, [x], T) for T in (4, 256))
    assert all(b["rel_error"] < a["rel_error"] for a, b in zip(short, long))
    assert long[-1]["rel_error"] < 0.01


def _signed_if(z: torch.Tensor, T: int, theta_neg: float, value_neg: float) -> torch.Tensor:
    """Reference signed IF with soft reset, written out by hand: +1 at v >= 1, -1 at v <= -theta_neg;
    the mean value carried per step (a positive spike is worth 1, a negative one ``value_neg``)."""
    v = torch.zeros_like(z)
    out = torch.zeros_like(z)
    for _ in range(T):
        v = v + z
        pos, neg = v >= 1.0, v <= -theta_neg
        v = v - pos.float() + theta_neg * neg.float()
        out = out + pos.float() - value_neg * neg.float()
    return out / T


def test_negative_spike_value_amplitude_neg():
    # atLeakyReLU (Han et al. 2023, Eq. 21) converts to a signed IF whose negative spikes are worth
    # amplitude_neg * theta_neg = alpha * 1/alpha^2 = 1/alpha, not theta_neg: the report must use that value.
    from snnconv_ext.core.activations import AtLeakyReLU
    alpha, T = 0.5, 8
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), AtLeakyReLU(alpha), nn.Linear(12, 10), AtLeakyReLU(alpha),
                        nn.Linear(10, 3)).eval()
    x = torch.randn(40, 6)
    snn = sc.convert(net, "atleakyrelu", [x], progress=False)
    rows = analysis.layer_report(net, snn, [x], T)
    assert len(rows) == 2
    with torch.no_grad():
        z1 = net[0](x)
        s1 = _signed_if(z1, T, 1 / alpha ** 2, 1 / alpha)   # first layer: constant analog current
        assert (s1 < 0).any()                                # negative spikes do occur
        # second layer, independently: the current of every step is W2 * (values of layer 1's spikes) + b2
        v = torch.zeros(40, 12)
        v2, out2 = torch.zeros(40, 10), torch.zeros(40, 10)
        for _ in range(T):
            v = v + z1
            pos, neg = v >= 1.0, v <= -1 / alpha ** 2
            v = v - pos.float() + neg.float() / alpha ** 2
            v2 = v2 + net[2](pos.float() - neg.float() / alpha)
            p2, n2 = v2 >= 1.0, v2 <= -1 / alpha ** 2
            v2 = v2 - p2.float() + n2.float() / alpha ** 2
            out2 = out2 + p2.float() - n2.float() / alpha
        s2 = out2 / T
        a1 = net[1](z1)
        a2 = net[3](net[2](a1))
    for row, a, s in ((rows[0], a1, s1), (rows[1], a2, s2)):
        ref = float((a - s).pow(2).sum() / a.pow(2).sum())
        assert abs(row["rel_error"] - ref) < 1e-5 * max(1.0, ref), (row["layer"], row["rel_error"], ref)
    # with negative spikes valued at theta_neg (the amplitude_neg dropped) the first layer would differ
    wrong = _signed_if(z1, T, 1 / alpha ** 2, 1 / alpha ** 2)
    assert abs(rows[0]["rel_error"] - float((a1 - wrong).pow(2).sum() / a1.pow(2).sum())) > 1e-3


def test_layer_report_is_reproducible():
    # the input-variance median comes from a subsample of more than 50000 neurons: it must be seeded,
    # so two reports on the same data agree exactly whatever the global random state
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                        nn.AvgPool2d(4), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).eval()
    x = torch.rand(64, 1, 32, 32)
    snn = sc.convert(net, "max", [x], progress=False)
    assert 8 * 32 * 32 * 64 > 50000  # the second layer's variances are subsampled
    torch.manual_seed(1)
    a = analysis.layer_report(net, snn, [x], 4, batch_size=64)
    torch.manual_seed(2)
    b = analysis.layer_report(net, snn, [x], 4, batch_size=64)
    assert a == b
    assert a[1]["input_var_median"] > 0  # a real statistic, not a constant
