"""Conversion: BN folding, thresholds, the SNN approaching the ANN, and every refusal with its message."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import snnconv_ext as sc
from snnconv_ext import graph, thresholds
from snnconv_ext.core.simulation import simulate_net
from helpers import FunctionalReLU


def test_methods_registry():
    names = sc.methods()
    assert {"max", "percentile", "max-channel", "percentile-channel"} <= set(names)
    from snnconv_ext.conversion.registry import get
    assert get("percentile", p=99.99).threshold_options["p"] == 99.99
    with pytest.raises(KeyError, match="unknown method"):
        get("nope")
    with pytest.raises(TypeError, match="no option"):
        get("max", colour="red")


def test_bn_folding_matches_unfolded(trained_cnn, digits):
    x = digits[1].tensors[0][:64]
    gm = graph.fold_bn(graph.trace(trained_cnn))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    torch.testing.assert_close(gm(x), trained_cnn(x), atol=1e-5, rtol=1e-5)


def test_percentile_and_max_against_numpy():
    torch.manual_seed(0)
    z = torch.randn(64, 4, 5, 5)
    s = thresholds.get("percentile", p=99.0)
    s.observe(z[:32]); s.observe(z[32:])
    ref = np.percentile(z.clamp_min(0).numpy().ravel(), 99.0, method="inverted_cdf")
    assert abs(s.compute().item() - ref) < 1e-6
    sc_ = thresholds.get("percentile", p=99.0, granularity="channel")
    sc_.observe(z)
    got = sc_.compute()
    assert got.shape == (4, 1, 1)
    for c in range(4):
        ref_c = np.percentile(z[:, c].clamp_min(0).numpy().ravel(), 99.0, method="inverted_cdf")
        assert abs(got[c].item() - ref_c) < 1e-6
    mx = thresholds.get("max", granularity="neuron")
    mx.observe(z[:10]); mx.observe(z[10:])
    torch.testing.assert_close(mx.compute(), z.max(0).values.clamp_min(1e-8))
    with pytest.raises(RuntimeError, match="no activations"):
        thresholds.get("max").compute()


def test_snn_approaches_ann_as_T_grows(trained_cnn, digits, calib):
    test = digits[1]
    ann = sc.ann_accuracy(trained_cnn, test)
    snn = sc.convert(trained_cnn, "percentile", calib, progress=False)
    acc = sc.evaluate(snn, test, [4, 32, 512], progress=False)
    assert ann > 90
    assert acc[512] >= ann - 1.0
    assert acc[4] <= acc[512]  # few steps lose accuracy, many recover it


def test_output_approaches_ann_logits(trained_cnn, digits, calib):
    # T -> infinity: accumulated logits / T converge to the ANN's (clipped at the thresholds) logits
    x = digits[1].tensors[0][:32]
    snn = sc.convert(trained_cnn, "max", calib, progress=False)  # max: no clipping on calibration data
    outs = list(simulate_net(snn, x, 2048, chunk=256))
    rate_logits = outs[-1][-1] / 2048
    err = (rate_logits - trained_cnn(x)).abs().max().item()
    assert err < 0.05 * trained_cnn(x).abs().max().item()


def test_evaluate_every_T_from_one_pass_matches_separate_runs(trained_cnn, digits, calib):
    snn = sc.convert(trained_cnn, "max", calib, progress=False)
    test = torch.utils.data.Subset(digits[1], range(200))
    both = sc.evaluate(snn, test, [3, 7], chunk=2, progress=False)
    assert both[3] == sc.evaluate(snn, test, [3], chunk=3, progress=False)[3]
    assert both[7] == sc.evaluate(snn, test, [7], chunk=7, progress=False)[7]


class Custom(nn.Module):
    def forward(self, x):
        return x * 2


def _loader(shape=(4,)):
    return [torch.rand(8, *shape)]


@pytest.mark.parametrize("model, msg", [
    (nn.Sequential(nn.Linear(4, 3), Custom()), r"node 'mul' in module '1' \(Custom\): unsupported function 'mul'"),
    (nn.Sequential(nn.Linear(4, 3), nn.GELU()), r"module '1' \(GELU\)"),
])
def test_refusals(model, msg):
    shape = (1, 6, 6) if isinstance(model[0] if isinstance(model, nn.Sequential) else None, nn.Conv2d) else (4,)
    with pytest.raises(graph.ConversionError, match=msg):
        sc.convert(model.eval(), "max", _loader(shape), progress=False)


def test_refuses_training_mode():
    with pytest.raises(graph.ConversionError, match="training mode"):
        sc.convert(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), "max", _loader())


def test_refuses_empty_or_bad_calibration():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with pytest.raises(ValueError, match="empty"):
        sc.convert(model, "max", [], progress=False)
    with pytest.raises(ValueError, match="NaN"):
        sc.convert(model, "max", [torch.full((2, 4), float("nan"))], progress=False)
    with pytest.raises(ValueError, match="calib_data"):
        sc.convert(model, "max", None)


def test_unfoldable_bn_is_refused_by_fold_bn_alone():
    # the pipeline's normalisation turns such a BN into an affine first (tests/conversion/test_normalize.py)
    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3), nn.ReLU()).eval()
    with pytest.raises(graph.ConversionError, match="BatchNorm '0'"):
        graph.fold_bn(graph.trace(model))


def test_input_validation(trained_cnn, calib):
    snn = sc.convert(trained_cnn, "max", calib, progress=False)
    with pytest.raises(ValueError, match=r"shape \(2, 1, 9, 9\).*expects \[B, 1, 8, 8\]"):
        next(simulate_net(snn, torch.rand(2, 1, 9, 9), 4))
    with pytest.raises(ValueError, match="NaN"):
        next(simulate_net(snn, torch.full((2, 1, 8, 8), float("nan")), 4))
    with pytest.raises(TypeError, match="dtype"):
        next(simulate_net(snn, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), 4))


def test_residual_graph_converts():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.r1, self.r2, self.fc = nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            h = self.r1(self.a(x))
            return self.fc(self.r2(self.b(h) + h))

    torch.manual_seed(0)
    model = Res().eval()
    data = [torch.rand(64, 4)]
    snn = sc.convert(model, "max", data, progress=False)
    x = torch.rand(16, 4)
    out = list(simulate_net(snn, x, 4096, chunk=512))[-1][-1] / 4096
    torch.testing.assert_close(out, model(x), atol=2e-2, rtol=0)


def test_seq_pooling_fast_path_equals_avg_pool2d():
    # the 2x2 pooling of spikes is exact; analog input agrees to float rounding; odd sizes and hooked modules
    # take avg_pool2d itself
    g = torch.Generator().manual_seed(0)
    pool = nn.AvgPool2d(2)
    seq = graph.SeqModule(pool)
    s = torch.randint(-1, 2, (3, 2, 4, 6, 8), generator=g).float()
    assert torch.equal(seq(s), F.avg_pool2d(s.flatten(0, 1), 2).view(3, 2, 4, 3, 4))
    x = torch.randn(3, 2, 4, 6, 8, generator=g)
    assert torch.allclose(seq(x), F.avg_pool2d(x.flatten(0, 1), 2).view(3, 2, 4, 3, 4), atol=1e-6)
    odd = torch.randn(1, 2, 4, 5, 7, generator=g)
    assert torch.equal(seq(odd), F.avg_pool2d(odd.flatten(0, 1), 2).view(1, 2, 4, 2, 3))
    seen = []
    pool.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    seq(s)
    assert seen == [torch.Size([6, 4, 3, 4])]


def test_hits_are_per_image_results_of_one_simulation(trained_cnn, digits, calib):
    # reference: a separate full-length simulation of each T, its last readout's argmax per image
    from snnconv_ext.core.simulation import hits, simulate_net
    snn = sc.convert(trained_cnn, "max", calib, progress=False)
    test = torch.utils.data.Subset(digits[1], range(150))
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.tensor([int(test[i][1]) for i in range(len(test))])
    got = hits(snn, test, [2, 5], batch_size=64, chunk=3)
    for t in (2, 5):
        readout = list(simulate_net(snn, x, t, chunk=t))[-1][-1]      # accumulated readout after t steps
        assert torch.equal(got[t], readout.argmax(-1) == y), t
        assert 100 * got[t].float().mean().item() == pytest.approx(sc.evaluate(snn, test, [t], progress=False)[t])


def test_ann_hits_are_per_image_argmax_in_data_order(trained_cnn, digits):
    # reference: the ANN's argmax on the stacked images, compared with the labels by hand
    from snnconv_ext.core.simulation import ann_hits
    test = torch.utils.data.Subset(digits[1], range(150))
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.tensor([int(test[i][1]) for i in range(len(test))])
    with torch.no_grad():
        ref = trained_cnn(x).argmax(-1) == y
    got = ann_hits(trained_cnn, test, batch_size=64)
    assert torch.equal(got, ref)
    assert sc.ann_accuracy(trained_cnn, test, batch_size=64) == pytest.approx(100 * ref.double().mean().item())
