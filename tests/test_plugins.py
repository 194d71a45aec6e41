"""SpikingJelly and snnTorch adapters: same neuron, same spikes, framework conventions honoured."""
import copy

import pytest
import snntorch as snn
import snntorch.utils
import torch
import torch.nn as nn
from spikingjelly.activation_based import ann2snn, functional, neuron as sj_neuron

import snnconv_ext as sc
from conftest import run_both_backends
from snnconv_ext.evaluate import simulate_net
from snnconv_ext.neuron import NeuronParams, simulate
from snnconv_snntorch import Neuron as TorchNeuron, convert as to_snntorch
from snnconv_spikingjelly import SnnconvNode, native_node, recipes


KNOBS = [dict(theta=0.75), dict(theta=0.75, fire_at=0.5), dict(theta=1.0, theta_neg=1.0),
         dict(theta=1.0, theta_neg=0.5, memory=True), dict(theta=2.0, amplitude=0.5, v0=0.3, leak=0.9)]


@pytest.mark.parametrize("knobs", KNOBS)
def test_sj_node_single_and_multi_step_equal_core(knobs):
    torch.manual_seed(0)
    x = torch.randn(12, 5, 7)
    ref = simulate(x, **knobs)
    node = SnnconvNode(NeuronParams(**knobs), step_mode="m")
    torch.testing.assert_close(node(x), ref, atol=0, rtol=0)
    functional.reset_net(node)
    torch.testing.assert_close(node(x[:5]), ref[:5], atol=0, rtol=0)  # chunks continue the state
    torch.testing.assert_close(node(x[5:]), ref[5:], atol=0, rtol=0)
    node.step_mode = "s"
    functional.reset_net(node)
    torch.testing.assert_close(torch.stack([node(x[t]) for t in range(12)]), ref, atol=0, rtol=0)


@pytest.mark.parametrize("knobs", KNOBS)
def test_snntorch_neuron_equals_core_in_sequential(knobs):
    torch.manual_seed(0)
    x = torch.randn(12, 5, 7)
    ref = simulate(x, **knobs)
    net = nn.Sequential(nn.Identity(), TorchNeuron(NeuronParams(**knobs), init_hidden=True))
    for _ in range(2):  # second round checks snntorch.utils.reset restores v0 and memory
        snntorch.utils.reset(net)
        torch.testing.assert_close(torch.stack([net(x[t]) for t in range(12)]), ref, atol=0, rtol=0)
    # explicit-state style, as snn.Leaky without init_hidden
    lif = TorchNeuron(NeuronParams(**knobs))
    mem = lif.reset_mem()
    outs = []
    for t in range(12):
        spk, mem = lif(x[t], mem)
        outs.append(spk)
    torch.testing.assert_close(torch.stack(outs), ref, atol=0, rtol=0)


@pytest.mark.parametrize("theta, v0", [(0.5, 0.0), (2.0, 0.0), (torch.tensor([0.25, 4.0, 1.0]), 0.0), (2.0, 1.0)])
def test_native_spikingjelly_node_gives_identical_spikes(theta, v0):
    # power-of-two thresholds: scaling by 1/theta is exact in floating point, so spikes must be identical
    torch.manual_seed(0)
    x = torch.rand(20, 4, 3) * 3
    p = NeuronParams(theta=theta, v0=v0)
    native = native_node(p)
    assert native is not None
    assert isinstance(native[1], (sj_neuron.IFNode, sj_neuron.HalfThresholdIFNode))
    torch.testing.assert_close(native(x), SnnconvNode(p)(x), atol=0, rtol=0)
    assert native_node(NeuronParams(theta=1.0, theta_neg=1.0)) is None  # signed: no SpikingJelly equivalent


def test_recipe_with_spikingjelly_fxconverter(trained_cnn, calib, digits):
    # exactly as with SpikingJelly's own recipes
    snn_a = ann2snn.FXConverter(recipe=recipes.PercentileRecipe(dataloader=calib, progress=False)).convert(
        copy.deepcopy(trained_cnn))
    snn_b = sc.convert(trained_cnn, "percentile", calib, progress=False)
    x = digits[1].tensors[0][:16]
    a = torch.cat(list(simulate_net(snn_a, x, 8)))
    b = torch.cat(list(simulate_net(snn_b, x, 8)))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert "PercentileChannelRecipe" in dir(recipes)
    with pytest.raises(AttributeError):
        recipes.NoSuchRecipe


def test_native_and_own_nodes_agree_on_a_network(trained_cnn, calib, digits):
    x = digits[1].tensors[0][:64]
    own = sc.convert(trained_cnn, "max", calib, native=False, progress=False)
    nat = sc.convert(trained_cnn, "max", calib, native=True, progress=False)
    assert any(isinstance(m, sj_neuron.IFNode) for m in nat.modules())
    a, b = (torch.cat(list(simulate_net(n, x, 16))) for n in (own, nat))
    # float rounding of x/theta vs x can flip a rare spike for non power-of-two thresholds: predictions agree
    assert (a[-1].argmax(-1) == b[-1].argmax(-1)).float().mean() >= 0.98


def test_snntorch_and_spikingjelly_versions_identical(trained_cnn, calib, digits):
    x = digits[1].tensors[0][:64]
    for method in ("max", "percentile-channel"):
        st_net = to_snntorch(trained_cnn, method, calib, progress=False)
        assert isinstance(st_net, nn.Sequential)
        a, b, same = run_both_backends(sc.convert(trained_cnn, method, calib, progress=False), st_net, x, 8)
        assert same == [True, True, True]  # identical spikes in every layer
        # outputs equal up to float summation order of batched vs per-step matmuls
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("name, method", [("fmnist-net4", "percentile"), ("fmnist-net4-strelu", "strelu")])
def test_zoo_model_identical_outputs_in_both_frameworks(name, method):
    from snnconv_ext import data, zoo
    ann = zoo.load(name)
    calib = data.loader(data.subset(data.fashion_mnist("train"), 256, seed=0), batch_size=128)
    x = data.fashion_mnist("test").tensors[0][:32]
    a, b, same = run_both_backends(sc.convert(ann, method, calib, progress=False),
                                   to_snntorch(ann, method, calib, progress=False), x, 8)
    assert same and all(same)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
