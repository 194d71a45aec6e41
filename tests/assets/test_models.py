"""Shapes, module structure and sizes of Net1..Net6 (stReLU paper, Table 1)."""

import pytest
import torch
from torch import nn

import snnconv_ext as sc
from snnconv_ext import models


class Marker(nn.Module):
    """Identity activation used to check that every activation comes from ``act()``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# (arch, input shape, number of activations = hidden layers)
CASES = [
    ("net1", (2, 1, 28, 28), 2),
    ("net2", (2, 1, 28, 28), 2),
    ("net3", (2, 1, 28, 28), 1),
    ("net4", (2, 1, 28, 28), 3),
    ("net5", (2, 3, 32, 32), 7),
    ("net6", (2, 3, 32, 32), 13),
]


@pytest.mark.parametrize("arch,shape,n_act", CASES)
def test_output_shape_and_activation_modules(arch, shape, n_act):
    model = models.build(arch, Marker)
    assert isinstance(model, nn.Sequential)
    with torch.no_grad():
        out = model.eval()(torch.rand(shape))
    assert out.shape == (shape[0], 10)
    acts = [m for m in model.modules() if isinstance(m, Marker)]
    assert len(acts) == n_act
    assert len({id(a) for a in acts}) == n_act  # one instance per layer, never shared
    # each weight layer but the last is followed (after an optional BN) by its own activation
    weights = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weights) == n_act + 1
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert all(m.bias is not None for m in weights)
    flat = [i for i, m in enumerate(model) if isinstance(m, nn.Flatten)]
    assert len(flat) == 1 and not any(isinstance(m, nn.Conv2d) for m in model[flat[0]:])


def test_default_relu_and_registry():
    assert set(models.ARCHS) == {f"net{i}" for i in range(1, 7)} | {"vgg", "vgg_bn", "resnet20", "resnet20_pre", "resnet56_w8",
                                                                  "resnet56_w8_pre", "net4_datta", "vgg_datta",
                                                                  "tv_resnet18", "tv_vgg11_bn"}
    model = models.build("net4")
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 3
    assert sc.activations.BY_NAME["relu"] is nn.ReLU
    with pytest.raises(ValueError, match="unknown arch"):
        models.build("net7")
    with pytest.raises(ValueError, match="unknown activation"):
        models.build("net1", "nope")


def test_net4_parameter_count_by_hand():
    conv1 = 1 * 32 * 5 * 5 + 32            # 28 -> 24, pool -> 12
    conv2 = 32 * 64 * 5 * 5 + 64           # 12 -> 8, pool -> 4
    fc1 = (64 * 4 * 4) * 1024 + 1024
    fc2 = 1024 * 10 + 10
    assert sum(p.numel() for p in models.net4().parameters()) == conv1 + conv2 + fc1 + fc2 == 1_111_946
    assert sum(p.numel() for p in models.net3().parameters()) == 784 * 6400 + 6400 + 6400 * 10 + 10


def test_macs_match_paper_table5():
    """Multiply-accumulates per image agree with the paper's Table 5 (x1e6): pins the topologies."""
    paper = {"net1": 2.39, "net2": 1.41, "net3": 5.08, "net4": 4.80}
    for arch, ref in paper.items():
        model, macs = models.build(arch), 0
        size = 28
        for m in model:
            if isinstance(m, nn.Conv2d):
                size = size - m.kernel_size[0] + 1
                macs += size * size * m.out_channels * m.in_channels * m.kernel_size[0] ** 2
            elif isinstance(m, nn.AvgPool2d):
                size //= 2
            elif isinstance(m, nn.Linear):
                macs += m.in_features * m.out_features
        assert macs / 1e6 == pytest.approx(ref, abs=0.01), arch


def _macs(model: nn.Module, shape) -> int:
    """Multiply-accumulates per image: the package's conv/linear count (``energy.ann_macs``) plus one per BatchNorm
    output element (y = a*x + b at inference)."""
    from snnconv_ext import energy
    bn = []
    hooks = [m.register_forward_hook(lambda m, i, out: bn.append(out[0].numel()))
             for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return sum(energy.ann_macs(model, shape).values()) + sum(bn)


def test_macs_net6_and_net5_against_paper_table5():
    """Net6 (VGG-16 with BN) matches Table 5's 313.48e6 when BN counts one MAC per output element (313.20e6
    without). Net5 as Table 1 lists it does not match: 615.92e6 (616.38e6 counting BN) against the paper's
    610.08e6, 0.96% more; the paper's figure would need a 2048-input classifier (one more 2x2 pooling), which
    Table 1 does not show, so we keep Table 1's topology and check only that the two are within 1%."""
    assert _macs(models.net6(), (3, 32, 32)) / 1e6 == pytest.approx(313.48, abs=0.01)
    net5 = _macs(models.net5(), (3, 32, 32)) / 1e6
    assert net5 == pytest.approx(610.08, rel=0.01) and net5 != pytest.approx(610.08, abs=1.0)
    # the package's counter reproduces the Net1-Net4 rows (padding-free, no BN) that the test above walks by hand
    for arch, ref in {"net1": 2.39, "net2": 1.41, "net3": 5.08, "net4": 4.80}.items():
        assert _macs(models.build(arch), (1, 28, 28)) / 1e6 == pytest.approx(ref, abs=0.01), arch


def test_batch_norm_and_other_sizes():
    assert any(isinstance(m, nn.BatchNorm2d) for m in models.net6().modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in models.net5().modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in models.net5(batch_norm=True).modules()) == 6
    with torch.no_grad():
        assert models.net4(in_channels=3, image_size=32, num_classes=100)(torch.rand(1, 3, 32, 32)).shape == (1, 100)
        assert models.net1(image_size=8)(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(ValueError, match="too small"):
        models.net4(image_size=8)
    with pytest.raises(ValueError, match="multiple of 32"):
        models.net6(image_size=28)
