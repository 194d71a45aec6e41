"""stReLU family and DNI + SNM: activations, signed conversions, both DNI realisations, refusals."""
import copy

import pytest
import torch
import torch.nn as nn

import snnconv_ext as sc
from helpers import run_both_backends
from snnconv_ext import graph
from snnconv_ext.core.activations import AtLeakyReLU, StReLU, TReLU
from snnconv_ext.core.simulation import simulate_net
from snnconv_ext.core.neuron import NeuronParams, simulate, value
from spikingjelly.activation_based.neuron import IFNode, TernaryIFNode

from snnconv_spikingjelly import SnnconvNode
from snnconv_snntorch import convert as to_snntorch


def test_activation_shapes_and_strelu_gradient():
    x = torch.linspace(-3, 3, 61, requires_grad=True)
    y = StReLU(1.0)(x)
    torch.testing.assert_close(y, x.clamp(-1, 1))
    y.sum().backward()
    inside = (x.detach() > -1) & (x.detach() < 1)
    assert torch.equal(x.grad, inside.float())  # Eq. 9: 1 inside (-Vth, Vth), 0 outside
    torch.testing.assert_close(TReLU(1.0)(x), x.clamp(0, 1))
    a = 0.5  # Eq. 21: 1 above 1, x on [0,1), a*x down to -1/a^2, then -1/a
    ref = torch.where(x >= 1, 1.0, torch.where(x >= 0, x, torch.where(x > -1 / a ** 2, a * x, -1 / a)))
    torch.testing.assert_close(AtLeakyReLU(a)(x), ref)


@pytest.mark.parametrize("act", [StReLU(1.0), TReLU(1.0), AtLeakyReLU(0.5)])
def test_neuron_rate_matches_activation_for_constant_input(act):
    # the neuron each activation becomes reproduces the activation as T grows (rate on a grid of inputs)
    knobs = {"StReLU": dict(theta=1.0, theta_neg=1.0), "TReLU": dict(theta=1.0)}.get(type(act).__name__)
    knobs = knobs or act.neuron_knobs()
    xs = torch.linspace(-2.5, 1.5, 81)
    T = 512
    rate = value(simulate(xs.expand(T, -1).contiguous(), **knobs), NeuronParams(**knobs)).mean(0)
    torch.testing.assert_close(rate, act(xs), atol=2.0 / T * 2, rtol=0)


def _train(act, digits, epochs=30):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), act(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(8 * 16, 32), act(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    x, y = digits[0].tensors
    for _ in range(epochs):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def strelu_net(digits):
    return _train(StReLU, digits)


def test_strelu_conversion_reaches_ann_and_uses_negative_spikes(strelu_net, digits, calib):
    test = digits[1]
    ann = sc.ann_accuracy(strelu_net, test)
    snn = sc.convert(strelu_net, "strelu", calib, progress=False)
    node = next(m for m in snn.modules() if isinstance(m, (SnnconvNode, TernaryIFNode)))
    assert isinstance(node, TernaryIFNode)  # symmetric signed IF: SpikingJelly's own node
    assert node.v_threshold == 1.0
    neg = []
    node.register_forward_hook(lambda m, i, o: neg.append((o < 0).any().item()))
    acc = sc.evaluate(snn, test, [64], progress=False)
    assert any(neg)
    assert acc[64] >= ann - 1.0


def test_signed_network_identical_in_spikingjelly_and_snntorch(strelu_net, calib, digits):
    x = digits[1].tensors[0][:32]
    a, b, same = run_both_backends(sc.convert(strelu_net, "strelu", calib, progress=False),
                                   to_snntorch(strelu_net, "strelu", calib, progress=False), x, 8)
    assert same == [True, True]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("act, method", [(TReLU, "trelu"), (AtLeakyReLU, "atleakyrelu")])
def test_trelu_and_atleakyrelu_convert_end_to_end(act, method, digits, calib):
    # the paper's two comparison activations (Eqs. 21-22): trained, converted with their own method and simulated;
    # tReLU neurons never fire negative, atLeakyReLU neurons do (negative threshold 1/alpha^2, worth 1/alpha)
    net = _train(act, digits)
    test = digits[1]
    ann = sc.ann_accuracy(net, test)
    snn = sc.convert(net, method, calib, progress=False)
    nodes = [m for m in snn.modules() if isinstance(m, (SnnconvNode, TernaryIFNode, IFNode))]
    assert len(nodes) == 2
    neg = []
    for n in nodes:
        n.register_forward_hook(lambda m, i, o: neg.append(bool((o < 0).any())))
    acc = sc.evaluate(snn, test, [2, 128], progress=False)
    assert any(neg) == (method == "atleakyrelu")
    assert acc[128] >= ann - 1.0, (method, ann, acc)   # about 450 test images: 1 pp is 4-5 images
    assert acc[128] > acc[2], (method, acc)


def test_snm_network_never_fires_negative_without_memory(trained_cnn, calib, digits):
    snn = sc.convert(trained_cnn, "dni+snm", calib, progress=False)
    outs = []
    nodes = [m for m in snn.modules() if isinstance(m, SnnconvNode)]
    assert nodes and all(n.memory for n in nodes)
    for n in nodes:
        n.register_forward_hook(lambda m, i, o: outs.append(o))
    list(simulate_net(snn, digits[1].tensors[0][:64], 16, chunk=16))
    any_neg = False
    for o in outs:
        count_before = torch.cumsum(torch.sign(o), 0) - torch.sign(o)  # symmetric thresholds: spike counts
        assert not ((o < 0) & (count_before <= 0)).any()
        any_neg |= bool((o < 0).any())
    assert any_neg  # SNM did emit negative spikes (asynchronism corrected)


def test_dni_thresholds_are_per_neuron_max_with_half_v0(trained_cnn, calib):
    snn = sc.convert(trained_cnn, "dni", calib, native=False, progress=False)
    nodes = [m for m in snn.modules() if isinstance(m, SnnconvNode)]
    assert nodes[0].theta.shape == (8, 8, 8) and nodes[-1].theta.shape == (32,)
    torch.testing.assert_close(nodes[0].v0, nodes[0].theta / 2)
    gm = graph.fold_bn(graph.trace(copy.deepcopy(trained_cnn)))
    z = []
    h = gm.get_submodule("2").register_forward_pre_hook(lambda m, a: z.append(a[0]))
    with torch.no_grad():
        for x, _ in calib:
            gm(x)
    h.remove()
    torch.testing.assert_close(nodes[0].theta, torch.cat(z).max(0).values.clamp_min(1e-8))


def test_weight_norm_option_is_gone_with_a_clear_message(trained_cnn, calib):
    with pytest.raises(TypeError, match="binary"):
        sc.convert(trained_cnn, "dni", calib, weight_norm=True, progress=False)


def test_signed_refusals():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), StReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 2)).eval()
    with pytest.raises(graph.ConversionError, match=r"MaxPool2d.*max pooling of signed spikes"):
        sc.convert(net, "strelu", [torch.rand(4, 1, 6, 6)], progress=False, maxpool="spikes")
    relu_net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with pytest.raises(graph.ConversionError, match=r"converts \['StReLU'\] activations, not ReLU"):
        sc.convert(relu_net, "strelu", [torch.rand(4, 4)], progress=False)
    st_net = nn.Sequential(nn.Linear(4, 3), StReLU(), nn.Linear(3, 2)).eval()
    with pytest.raises(graph.ConversionError, match=r"converts \['ReLU'\] activations, not StReLU"):
        sc.convert(st_net, "dni+snm", [torch.rand(4, 4)], progress=False)
