"""Li et al. 2022 layer-wise calibration (LCP/ACP, Algorithm 2) and TTRBR's lambda search, on small models."""
import pytest
import torch
import torch.nn as nn

import snnconv_ext as sc
from snnconv_ext import calibrate as cal, graph, models
from snnconv_ext.methods import get
from snnconv_ext.neuron import NeuronParams, simulate


def _prepared(model, method, calib):
    gm = graph.fold_bn(graph.trace(model))
    params = graph.calibrate_thresholds(gm, method, calib, progress=False)
    x, y = cal.collect(calib, 256, torch.device("cpu"))
    return gm, params, x, y


@pytest.mark.parametrize("T", [2, 5, 16])
def test_quantize_equals_neuron_mean_for_constant_input_with_v0(T):
    # Eq. 21: with an initial potential v0 the T-step mean output of the IF neuron firing at theta/2 is
    # theta/T * clip(floor(T x/theta + v0/theta + 1/2), 0, T); checked exactly on a grid of dyadic values
    # exact where the membrane never has to take back an early spike: x >= 0, or v0 below the firing point
    theta = 0.5
    xs = torch.cat([(torch.arange(-40, 120) / 64.0).repeat(2), torch.arange(0, 120) / 64.0])
    v0 = torch.cat([torch.tensor([-0.25, 0.125]).repeat_interleave(160), torch.full((120,), 0.375)])
    mean = theta * simulate(xs.expand(T, -1).contiguous(), theta=theta, fire_at=0.5, v0=v0).mean(0)  # spikes worth theta
    q = cal.quantize(xs, NeuronParams(theta=theta, fire_at=0.5, v0=v0), T)
    assert torch.equal(mean, q)
    # fire_at = 1 is ClipFloor (Eq. 10)
    mean = theta * simulate(xs.expand(T, -1).contiguous(), theta=theta).mean(0)
    assert torch.equal(mean, cal.quantize(xs, NeuronParams(theta=theta), T))


def test_quantize_ste_passes_gradient_inside_the_range():
    u = torch.tensor([-1.0, 0.3, 0.7, 5.0], requires_grad=True)
    cal.quantize(u, NeuronParams(theta=1.0, fire_at=0.5), 4, ste=True).sum().backward()
    assert torch.equal(u.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))  # Eq. 24 inside, clip outside


def test_lcp_zeroes_the_per_channel_mean_error(trained_cnn, calib):
    m = get("lcp", T=4)
    gm, params, x, _ = _prepared(trained_cnn, m, calib)
    _, one = cal.calibrate_layers(gm, dict(params), x, 4, ("bias",))
    gm, params, x, _ = _prepared(trained_cnn, m, calib)
    _, many = cal.calibrate_layers(gm, dict(params), x, 4, ("bias",), bias_iters=30)
    for a, b in zip(one, many):
        assert a.mean_error_after < a.mean_error_before  # one step of Algorithm 2 already shrinks mu_c(e)
        assert b.mean_error_after < 0.2 * b.mean_error_before
    # iterating the update drives mu_c(e) to zero on the conv layers (many positions per channel); on the
    # 32-unit linear layer the mean over 256 images is a staircase in the bias (images with the same input
    # jump together), so it stops near the smallest step instead of at exactly zero
    assert many[0].mean_error_after < 0.02 * many[0].mean_error_before
    assert many[1].mean_error_after < 0.02 * many[1].mean_error_before


def test_lcp_leaves_the_callers_model_alone(trained_cnn, calib):
    before = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    sc.convert(trained_cnn, "lcp+acp", calib, T=4, progress=False, iters=20)
    after = trained_cnn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_acp_weight_calibration_lowers_the_layer_loss(trained_cnn, calib):
    gm, params, x, _ = _prepared(trained_cnn, get("acp", T=4), calib)
    _, reps = cal.calibrate_layers(gm, params, x, 4, ("weights",), iters=200)
    assert all(r.loss_after <= r.loss_before for r in reps)
    assert any(r.loss_after < 0.97 * r.loss_before for r in reps)


def test_potential_calibration_sets_v0_per_neuron(trained_cnn, calib):
    gm, params, x, _ = _prepared(trained_cnn, get("acp", T=4), calib)
    p, reps = cal.calibrate_layers(gm, params, x, 4, ("potential",))
    first = next(iter(p))
    assert p[first].v0.shape == (8, 8, 8)  # one v0 per channel and position of the first conv's output
    assert all(r.mean_error_after < r.mean_error_before for r in reps)


def test_calibration_improves_accuracy_at_small_T(trained_cnn, calib, digits):
    test = digits[1]
    acc = {m: sc.evaluate(sc.convert(trained_cnn, m, calib, T=2, progress=False), test, [2], progress=False)[2]
           for m in ("mmse", "lcp", "acp")}
    ann = sc.ann_accuracy(trained_cnn, test)
    assert acc["acp"] > acc["mmse"]
    assert ann - acc["acp"] < ann - acc["mmse"]


def test_calibration_refuses_empty_or_misshapen_data(trained_cnn):
    with pytest.raises(ValueError, match="empty"):
        sc.convert(trained_cnn, "lcp", [], T=4, progress=False)
    bad = [torch.rand(16, 3, 8, 8)]
    with pytest.raises(ValueError, match=r"shape \(16, 3, 8, 8\)"):
        sc.convert(trained_cnn, "lcp", bad, T=4, progress=False)
    nan = torch.rand(16, 1, 8, 8)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sc.convert(trained_cnn, "acp", [nan], T=4, progress=False)


def test_calibration_refuses_signed_neurons(trained_cnn, calib):
    with pytest.raises(graph.ConversionError, match="unsigned"):
        sc.convert(trained_cnn, get("snm").with_options(calibration=("bias",), T=4), calib, progress=False)


def test_residual_owner_is_the_branch_conv():
    net = models.resnet20(image_size=8).eval()
    gm = graph.fold_bn(graph.trace(net))
    acts = graph.activation_nodes(gm, get("max"))
    owners = [cal._owner(gm, n) for n in acts]
    assert owners[0] == "stem.0"
    assert owners[2] == "blocks.0.branch.3"  # act_out of block 0: its sum's branch conv, not the shortcut
    assert len(set(owners)) == len(owners)


def test_lcp_and_acp_convert_a_resnet(digits):
    net = models.resnet20_pre(image_size=8).eval()
    calib = sc.data.loader(sc.data.subset(digits[0], 64, seed=0), batch_size=32)
    snn = sc.convert(net, "lcp+acp", calib, T=4, progress=False, iters=5, samples=64)
    out = sc.evaluate(snn, sc.data.subset(digits[1], 32, seed=None), [4], progress=False)
    assert 0 <= out[4] <= 100
    assert len(snn.meta["snnconv_calibration"]["layers"]) == 19


def test_lambda_search_matches_exhaustive_evaluation(trained_cnn, calib):
    # TTRBR Sec. 5.5: pick lambda by accuracy; the search must choose what an independent sweep with
    # scaled-threshold conversions and evaluate() finds best on the same images
    grid = (0.6, 0.8, 1.0, 1.2, 1.4)
    m = get("ttrbr", T=3, activations=(nn.ReLU,), scale_grid=grid, samples=128)
    snn = sc.convert(trained_cnn, m, calib, progress=False)
    chosen = snn.meta["snnconv_calibration"]["scale"]
    x, y = cal.collect(calib, 128, torch.device("cpu"))
    data = torch.utils.data.TensorDataset(x, y)
    sweep = {lam: sc.evaluate(sc.convert(trained_cnn, m.with_options(scale=lam), calib, progress=False), data, [3],
                              progress=False)[3] for lam in grid}
    best = max(sweep.values())
    assert sweep[chosen] == best
    assert snn.meta["snnconv_calibration"]["scale_scores"] == pytest.approx(sweep)


def test_synthesized_inputs_match_bn_statistics(trained_cnn):
    ds = cal.synthesize_inputs(trained_cnn, (1, 8, 8), n=32, steps=60, lr=0.1, progress=False)
    x, y = ds.tensors
    assert x.shape == (32, 1, 8, 8) and y.shape == (32,)
    bn = trained_cnn[1]
    feats = trained_cnn[0](x)
    noise = trained_cnn[0](torch.rand(32, 1, 8, 8))
    gap = lambda f: (f.mean((0, 2, 3)) - bn.running_mean).norm()
    assert gap(feats) < 0.5 * gap(noise)
    with pytest.raises(ValueError, match="BatchNorm"):
        cal.synthesize_inputs(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (1, 8, 8), n=4, steps=1)


def test_readout_fit_lowers_the_logit_error(trained_cnn, calib):
    # snnconv's readout pass (beyond Algorithm 2): ridge regression of the last linear layer on the SNN's mean
    # input towards the ANN's logits must not increase their squared difference on the calibration images
    gm, params, x, _ = _prepared(trained_cnn, get("acp+readout", T=2), calib)
    _, reps = cal.calibrate_layers(gm, params, x, 2, ("readout",), ridge=0.1)
    assert len(reps) == 1 and reps[0].layer == "11"
    assert reps[0].rel_error_after < reps[0].rel_error_before
    with pytest.raises(graph.ConversionError, match="nn.Linear"):
        net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten()).eval()
        g2 = graph.fold_bn(graph.trace(net))
        p2 = graph.calibrate_thresholds(g2, get("max"), [torch.rand(4, 1, 8, 8)], progress=False)
        cal.calibrate_layers(g2, p2, torch.rand(4, 1, 8, 8), 2, ("readout",))


def test_calibrated_net_is_the_same_in_both_backends_and_as_a_recipe(trained_cnn, calib, digits):
    from conftest import run_both_backends
    from spikingjelly.activation_based import ann2snn
    from snnconv_spikingjelly import recipes
    from snnconv_snntorch import convert as st_convert

    torch.manual_seed(0)
    sj = sc.convert(trained_cnn, "acp", calib, T=4, progress=False, iters=30)
    torch.manual_seed(0)
    st = st_convert(trained_cnn, "acp", calib, T=4, progress=False, iters=30)
    x = digits[1].tensors[0][:16]
    a, b, same = run_both_backends(sj, st, x, 4)
    assert all(same) and torch.allclose(a, b, atol=1e-4)  # same spikes; logits summed in another order
    rec = ann2snn.FXConverter(recipe=recipes.LcpRecipe(dataloader=calib, T=4, progress=False)).convert(
        __import__("copy").deepcopy(trained_cnn))
    assert rec.meta["snnconv_calibration"]["passes"] == ("bias",)
