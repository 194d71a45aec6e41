"""The layers graph normalisation puts in (ChannelAffine, Concat, Chunk, ChannelShuffle, GlobalAvgPool) and the gated
max pooling in the rest of the package: ``sc.save``/``sc.load`` rebuild them exactly (both backends), ``energy``
counts synaptic operations through the channel moves (against a hand count from the recorded spikes), and the tools
that cannot write them (``synaptic_form``, ``to_nir``) refuse in one line naming the module."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import snnconv_ext as sc
from snnconv_ext.conversion import saving
from snnconv_ext.core.nodes import spiking_modules
from snnconv_ext.core.simulation import evaluate, reset, run_window
from snnconv_ext.study import energy, export, forms

NEW = {"ChannelAffine", "Concat", "Chunk", "ChannelShuffle", "GlobalAvgPool", "GatedMaxPool"}


def _shuffle(y, groups):  # torchvision.models.shufflenetv2.channel_shuffle
    n, c, h, w = y.size()
    return y.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class Every(nn.Module):
    """One of each: max pooling, chunk, concatenation, channel shuffle, a BN kept as an affine, global pooling."""

    def __init__(self):
        super().__init__()
        self.conv0, self.conv1 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.bn, self.conv2, self.fc = nn.BatchNorm2d(8), nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv0(x)), 2)
        x1, x2 = x.chunk(2, dim=1)
        y = _shuffle(torch.cat((x1, F.relu(self.conv1(x2))), dim=1), 2)
        return self.fc(F.relu(self.conv2(F.relu(self.bn(y)))).mean((2, 3)))


@pytest.fixture(scope="module")
def every():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    net = Every()
    net.bn.momentum = None
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval(), x


@pytest.mark.parametrize("backend", ["spikingjelly", "snntorch"])
def test_save_load_rebuilds_the_new_layers_exactly(every, backend, tmp_path):
    net, x = every
    snn = sc.convert(net, "max", [x], progress=False, backend=backend)
    kinds = {type(m).__name__ for m in snn.modules()}
    assert NEW <= kinds, NEW - kinds
    back = saving.load(saving.save(snn, tmp_path / "snn.pt"))
    assert {type(m).__name__ for m in back.modules()} == kinds
    with torch.no_grad():
        if backend == "spikingjelly":
            a, b = run_window(snn, x[:8], 16), run_window(back, x[:8], 16)
        else:  # snnTorch: single-step calls
            reset(snn), reset(back)
            a, b = (torch.stack([n(x[:8]) for _ in range(16)]) for n in (snn, back))
    assert a.abs().sum() > 0 and torch.equal(a, b)


class Moves(nn.Module):
    """Spikes moved between layers by shuffle, chunk and concatenation, into 1x1 and padded 3x3 convs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 1), nn.Conv2d(2, 3, 1)
        self.c, self.fc = nn.Conv2d(5, 4, 3, padding=1), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        s = F.relu(self.a(x))
        p, q = _shuffle(s, 2).chunk(2, 1)            # p: channels 0, 2 of s; q: channels 1, 3
        u = F.relu(self.b(p))
        return self.fc(torch.flatten(F.relu(self.c(torch.cat([q, u], 1))), 1))


def test_synops_follow_channels_through_shuffle_chunk_and_concat():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 4, 4)
    snn = sc.convert(Moves().eval(), "max", [x], progress=False)
    names = list(spiking_modules(snn))
    meter = energy.SpikeMeter(snn, (1, 4, 4))  # before the hooks below: its one-image dry run is not counted
    spikes = {n: 0 for n in names}  # spikes per neuron [C, 4, 4], summed over steps and images

    def record(n, o):
        spikes[n] = spikes[n] + o.detach().ne(0).float().sum((0, 1))
    hooks = [snn.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: record(n, o)) for n in names]
    T, xt = 8, x[:6]
    with meter:
        evaluate(snn, TensorDataset(xt, torch.zeros(len(xt), dtype=torch.long)), [T], progress=False)
    reports = meter.report([T], len(xt))
    for h in hooks:
        h.remove()
    s, u, v = (spikes[n] for n in names)
    # a padded 3x3 conv: a spike at (i, j) reaches the 3x3 window positions inside the 4x4 map
    reach = F.conv2d(F.pad(torch.ones(1, 1, 4, 4), (1, 1, 1, 1)), torch.ones(1, 1, 3, 3))[0, 0]
    want = {"b": 3 * s[[0, 2]].sum(),                                # 1x1 conv, 3 outputs, fed by channels 0 and 2
            "c": 4 * ((s[[1, 3]].sum(0) + u.sum(0)) * reach).sum(),  # 3x3 conv, 4 outputs
            "fc": 3 * v.sum()}
    got = reports[T].synops
    for layer, w in want.items():
        key = next(k for k in got if k == layer or k.endswith(layer))
        assert got[key] * len(xt) == pytest.approx(float(w)), layer
    assert s.sum() > 0 and u.sum() > 0 and v.sum() > 0


@pytest.mark.parametrize("tool", ["synaptic_form", "to_nir"])
def test_tools_without_a_form_refuse_naming_the_module(every, tool):
    net, x = every
    snn = sc.convert(net, "max", [x], progress=False)
    fn = forms.synaptic_form if tool == "synaptic_form" else export.to_nir
    with pytest.raises(ValueError) as err:
        fn(snn, (1, 8, 8))
    msg = str(err.value)
    assert "\n" not in msg and any(f"({k})" in msg for k in NEW), msg


def test_synops_through_spikingjellys_flatten():
    """SpikingJelly 2.0's converter wraps ``torch.flatten`` in a module of its own; its recipes' rows in ``snnconv
    bench`` count through it: every spike reaches each output of the linear layer once."""
    from torch.utils.data import DataLoader
    from snnconv_ext.app.baselines import sj_convert

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.fc = nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Linear(3 * 4 * 4, 5)

        def forward(self, x):
            return self.fc(torch.flatten(self.relu(self.conv(x)), 1))

    torch.manual_seed(0)
    x = torch.rand(32, 1, 4, 4)
    snn = sj_convert(Flat().eval(), "sj-max", DataLoader(TensorDataset(x, torch.zeros(32, dtype=torch.long)),
                                                         batch_size=32), progress=False)
    assert any(type(m).__name__ == "_StepModeTensorOp" for m in snn.modules())
    (name,) = spiking_modules(snn)
    meter = energy.SpikeMeter(snn, (1, 4, 4))
    count = []
    hook = snn.get_submodule(name).register_forward_hook(lambda m, i, o: count.append(o.ne(0).sum()))
    with meter:
        evaluate(snn, TensorDataset(x[:4], torch.zeros(4, dtype=torch.long)), [8], progress=False)
    hook.remove()
    synops = meter.report([8], 4)[8].synops
    assert sum(count) > 0 and synops["fc"] * 4 == pytest.approx(5 * float(sum(count)))
