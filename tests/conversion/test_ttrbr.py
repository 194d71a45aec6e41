"""TTRBR (Meng et al. 2022): restructured residual blocks, clamp activations and their conversion."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import snnconv_ext as sc
from snnconv_ext import graph, models
from snnconv_ext.core.activations import Clamp


def _bn(c, g):
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=g)
        bn.bias.uniform_(-0.5, 0.5, generator=g)
        bn.running_mean.uniform_(-0.2, 0.2, generator=g)
        bn.running_var.uniform_(0.5, 2.0, generator=g)
    return bn.eval()


def _reference_block(x, blk, restructured):
    """The block written out by hand from Fig. 6 / He et al. 2016, with the block's own parameters."""
    c1, b1, _, c2, b2 = blk.branch
    def bn(t, b):
        return (t - b.running_mean[:, None, None]) / torch.sqrt(b.running_var[:, None, None] + b.eps) \
            * b.weight[:, None, None] + b.bias[:, None, None]
    h = F.relu(x) if restructured else x
    h = F.relu(bn(F.conv2d(h, c1.weight, stride=c1.stride, padding=1), b1))
    h = bn(F.conv2d(h, c2.weight, padding=1), b2)
    if isinstance(blk.shortcut, nn.Identity):
        sc_ = x
    else:
        conv, b = blk.shortcut
        sc_ = bn(F.conv2d(x, conv.weight, stride=conv.stride), b)
    out = h + sc_
    return out if restructured else F.relu(out)


@pytest.mark.parametrize("restructured", [False, True])
@pytest.mark.parametrize("stride,c_in", [(1, 4), (2, 4)])
def test_basic_block_matches_hand_written_reference(restructured, stride, c_in):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    blk = models.BasicBlock(c_in, 4 if stride == 1 else 8, stride, nn.ReLU, restructured)
    blk.branch[1], blk.branch[4] = _bn(blk.branch[1].num_features, g), _bn(blk.branch[4].num_features, g)
    if not isinstance(blk.shortcut, nn.Identity):
        blk.shortcut[1] = _bn(blk.shortcut[1].num_features, g)
    blk.eval()
    x = torch.randn(3, c_in, 8, 8, generator=g)
    assert torch.allclose(blk(x), _reference_block(x, blk, restructured), atol=1e-5)
    # the restructured block hands on the un-activated sum (negative values included); the original its ReLU
    assert bool((blk(x) < 0).any()) == restructured


def test_bottleneck_and_depths():
    net = models.ResNet(29, 4, bottleneck=True, restructured=True, image_size=8).eval()
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert sum(isinstance(m, models.Bottleneck) for m in net.modules()) == 9
    with pytest.raises(ValueError, match="6n\\+2"):
        models.ResNet(21)
    n = sum(p.numel() for p in models.resnet20(in_channels=3, image_size=32).parameters())
    assert 0.26e6 < n < 0.28e6  # the standard 0.27 M ResNet-20 (with 1x1 projection shortcuts)


def test_restructured_skip_path_carries_the_unactivated_sum():
    # Fig. 6 as we build it: in the original block every sum is replaced by its activation's output, on both
    # paths; in the restructured block each (non-final) sum reaches the next block twice: through an activation
    # (act_in, feeding only the branch's first conv) and un-activated along the skip path (the next sum or a
    # 1x1 shortcut conv). No activation's output ever feeds a sum directly.
    def sums(gm):
        return [n for n in gm.graph.nodes if n.op == "call_function" and "add" in str(n.target)]

    def users(gm, n):  # look through nn.Identity placeholders
        out = []
        for u in n.users:
            ident = u.op == "call_module" and isinstance(gm.get_submodule(u.target), nn.Identity)
            out += users(gm, u) if ident else [u]
        return out

    def is_act(gm, u):
        return u.op == "call_module" and isinstance(gm.get_submodule(u.target), nn.ReLU)

    gm = graph.trace(models.resnet20(image_size=8).eval())
    assert all([is_act(gm, u) for u in users(gm, s)] == [True] for s in sums(gm))
    gm = graph.trace(models.resnet20_pre(image_size=8).eval())
    s = sums(gm)
    assert len(s) == 9
    for n in s[:-1]:
        us = users(gm, n)
        acts = [u for u in us if is_act(gm, u)]
        skip = [u for u in us if not is_act(gm, u)]
        assert len(acts) == 1 and len(skip) == 1  # act_in of the next block, and its skip path
        assert all(not is_act(gm, v) for v in users(gm, acts[0]))  # act_in feeds a conv, not a sum
        assert skip[0] in s or isinstance(gm.get_submodule(skip[0].target), nn.Conv2d)
    assert [is_act(gm, u) for u in users(gm, s[-1])] == [True]  # the final activation before pooling
    for n in gm.graph.nodes:  # no activation output feeds a sum
        if is_act(gm, n):
            assert not any(u in s for u in users(gm, n))


def test_clamp_forward_gradient_and_projection():
    c = Clamp(1.0)
    x = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    y = c(x)
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.5, 1.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 0.0])) and c.alpha.grad.item() == 1.0
    with pytest.raises(ValueError):
        Clamp(0.0)


def test_clamp_training_keeps_alpha_positive():
    # a strong L2 pull on alpha (TTRBR Sec. 4) drives it towards 0; the projection keeps it positive
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), Clamp(0.05), nn.Linear(8, 2))
    clamp = net[1]
    opt = torch.optim.SGD([{"params": [net[0].weight, net[0].bias, net[2].weight, net[2].bias]},
                           {"params": [clamp.alpha], "weight_decay": 50.0}], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        F.cross_entropy(net(torch.randn(16, 4)), torch.randint(2, (16,))).backward()
        opt.step()
        clamp.project_()
        assert clamp.alpha.item() > 0
    assert clamp.alpha.item() == pytest.approx(clamp.min_alpha)


def test_clamp_net_traces_and_converts_with_ttrbr(digits):
    torch.manual_seed(0)
    net = models.build("resnet20_pre", "clamp", image_size=8).eval()
    gm = graph.trace(net)
    clamps = [m for m in gm.modules() if isinstance(m, Clamp)]
    assert len(clamps) == 19 and all(m.bound == 1.0 for m in clamps)
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(gm(x), net(x))
    calib = sc.data.loader(sc.data.subset(digits[0], 64, seed=0), batch_size=32)
    snn = sc.convert(net, "ttrbr", calib, T=4, scale_grid=(0.8, 1.0), samples=32, progress=False)
    info = snn.meta["snnconv_calibration"]
    # the converted net is the one the search scored: its accuracy on the search images is the chosen score
    x, y = sc.calibrate.collect(calib, 32, torch.device("cpu"))
    got = sc.evaluate(snn, torch.utils.data.TensorDataset(x, y), [4], progress=False)[4]
    assert got == pytest.approx(info["scale_scores"][info["scale"]])
    with pytest.raises(graph.ConversionError, match="Clamp"):
        sc.convert(net, "percentile", calib, progress=False)  # a ReLU-only method refuses clamp layers


def test_ttrbr_head_spikes_at_the_output(digits):
    # Sec. 5.1: IF after the average pooling and after the last FC (with BN in between); the converted
    # network's last layer is then a spiking layer, whose accumulated spikes are the readout
    net = models.ResNet(8, 4, restructured=True, act=Clamp, image_size=8, head="ttrbr").eval()
    gm = graph.fold_bn(graph.trace(net))
    kinds = [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"]
    assert kinds[-3:] == ["Flatten", "Linear", "Clamp"] and "BatchNorm1d" not in kinds  # BN folded into the FC
    calib = sc.data.loader(sc.data.subset(digits[0], 32, seed=0), batch_size=32)
    snn = sc.convert(net, "ttrbr-plain", calib, progress=False)
    from snnconv_ext.core.simulation import reset
    x = digits[1].tensors[0][:16]
    reset(snn)
    with torch.no_grad():
        out = snn(x.unsqueeze(0).expand(4, *x.shape))  # per-step readout [T, B, classes]
    # the readout is the last IF layer's spikes, each worth that class's threshold: per class, 0 or one value
    for c in range(10):
        vals = out[..., c].unique()
        assert len(vals) <= 2 and float(vals[0]) == 0.0, (c, vals)
    assert out.ne(0).any()
    with pytest.raises(ValueError, match="head"):
        models.ResNet(8, head="other")


def test_layer_report_variance_in_theta_units_is_reproducible(digits):
    # TTRBR Fig. 7 compared across layers and nets: the median of var / theta^2 per layer. With layer-wise
    # thresholds it must equal the median of var divided by theta^2 (an independent computation), and it must
    # not depend on the global RNG (the report subsamples the first stage's 65536 variances to 50000)
    from snnconv_ext import analysis
    torch.manual_seed(0)
    net = models.build("resnet20_pre", "clamp", image_size=8).eval()
    calib = sc.data.loader(sc.data.subset(digits[0], 64, seed=0), batch_size=32)
    snn = sc.convert(net, "ttrbr-plain", calib, progress=False)
    x = torch.utils.data.TensorDataset(*(t[:64] for t in digits[1].tensors))
    torch.manual_seed(1)
    a = analysis.layer_report(net, snn, x, T=8)
    torch.manual_seed(2)
    b = analysis.layer_report(net, snn, x, T=8)
    assert [r["input_var_theta2_median"] for r in a] == [r["input_var_theta2_median"] for r in b]
    layers = analysis.spiking_layers(snn, [r["layer"] for r in a])
    for r in a:
        theta = float(layers[r["layer"]].v_threshold)
        assert r["input_var_theta2_median"] == pytest.approx(r["input_var_median"] / theta ** 2, rel=1e-5, abs=1e-12)
    assert any(r["input_var_median"] > 0 for r in a)
