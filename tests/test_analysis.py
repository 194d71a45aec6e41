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
