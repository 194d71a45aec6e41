"""The synaptic form of a converted network: pooling, spike values and signed spikes folded into the synaptic
layers, checked against the layers they replace (closed forms in float64) and against the original network."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import neuron as sj_neuron

from snnconv_ext.conversion.graph import Scale
from snnconv_ext.core.simulation import simulate_net
from snnconv_ext.study.forms import Synapse, fold_avgpool_kernel, sample_shapes, synaptic_form
from snnconv_spikingjelly import SeqModule


@pytest.mark.parametrize("k,stride,padding,dilation", [(3, 1, 0, 1), (3, 2, 1, 1), (2, 1, 1, 2)])
def test_folded_kernel_equals_conv_of_average_pool(k, stride, padding, dilation):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    w = torch.randn(4, 3, k, k, dtype=torch.float64)
    pool = nn.AvgPool2d(2)
    ref = F.conv2d(F.avg_pool2d(x, 2), w, stride=stride, padding=padding, dilation=dilation)
    folded = fold_avgpool_kernel(w, pool, (dilation, dilation))
    assert folded.shape[-1] == 2 * dilation * (k - 1) + 2
    out = F.conv2d(x, folded, stride=2 * stride, padding=2 * padding)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12)


def _signed_net(per_position: bool):
    """Signed IF -> Scale (per channel or per position) -> 2x2 average pooling -> conv -> IF -> flatten -> linear."""
    torch.manual_seed(1)
    factor = torch.rand(3, 8, 8) + 0.5 if per_position else (torch.rand(3, 1, 1) + 0.5).expand(3, 8, 8)
    net = nn.Sequential(SeqModule(nn.Conv2d(1, 3, 3, padding=1)), sj_neuron.TernaryIFNode(v_reset=None, step_mode="m"),
                        SeqModule(Scale(factor)), SeqModule(nn.AvgPool2d(2)), SeqModule(nn.Conv2d(3, 5, 3, padding=1)),
                        sj_neuron.IFNode(v_threshold=0.5, v_reset=None, step_mode="m"), SeqModule(nn.AvgPool2d(2)),
                        SeqModule(nn.Flatten()), SeqModule(nn.Linear(5 * 2 * 2, 4)))
    return net.eval()


@pytest.mark.parametrize("per_position", [False, True])
def test_synaptic_form_equals_network_and_reads_spikes(per_position):
    net = _signed_net(per_position).double()
    form = synaptic_form(net, (1, 8, 8))
    syn = {n: m for n, m in form.named_modules() if isinstance(m, Synapse)}
    assert sorted((m.kind, m.signed) for m in syn.values()) == \
        sorted([("local" if per_position else "conv", True), ("linear", False)])
    assert not any(isinstance(m, (nn.AvgPool2d, Scale)) for m in form.modules())
    # every synapse reads spikes: -1/0/+1 from the signed layer, 0/1 from the IF layer
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0])) for m in syn.values()]
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64) * 3 - 1
    ours = torch.cat(list(simulate_net(net, x, 7)))
    theirs = torch.cat(list(simulate_net(form, x, 7)))
    for h in hooks:
        h.remove()
    assert all(bool(((s == 0) | (s.abs() == 1)).all()) for s in seen) and any(bool((s < 0).any()) for s in seen)
    assert ours.abs().max() > 0
    assert torch.allclose(theirs, ours, rtol=1e-10, atol=1e-10)
    assert torch.equal(torch.cat(list(simulate_net(net, x, 7))), ours)  # the original is untouched


def test_synaptic_form_refuses_overlapping_pooling():
    net = nn.Sequential(SeqModule(nn.Conv2d(1, 2, 3, padding=1)), sj_neuron.IFNode(v_reset=None, step_mode="m"),
                        SeqModule(nn.AvgPool2d(3, stride=2)), SeqModule(nn.Conv2d(2, 2, 3))).eval()
    with pytest.raises(ValueError, match=r"layer '3' \(fed by spiking layer '1'\): average pooling \(3, 3\) with "
                                         r"stride \(2, 2\)"):
        synaptic_form(net, (1, 9, 9))


def test_sample_shapes_names_bad_input_shape():
    net = _signed_net(False)
    assert sample_shapes(net, (1, 8, 8))["_8"] == (4,)
    with pytest.raises(ValueError, match=r"input_shape must be one image's shape .* got 28"):
        sample_shapes(net, 28)
    with pytest.raises(ValueError, match=r"^input_shape \(2, 8, 8\): layer '0' \(SeqModule\) cannot take the input: "):
        sample_shapes(net, (2, 8, 8))


def test_synaptic_form_refuses_residual_sums_by_name():
    from snnconv_ext import convert

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.conv2, self.act2 = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), \
                nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 3))

        def forward(self, x):
            h = self.act(self.conv(x))
            return self.head(self.act2(self.conv2(h) + h))

    snn = convert(Res().eval(), "max", [torch.rand(8, 1, 8, 8)], progress=False)
    with pytest.raises(ValueError, match=r"spiking layer 'act': node '.*' feeds 2 nodes .* \(no residual sums\)"):
        synaptic_form(snn)
