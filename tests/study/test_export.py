"""NIR export: structure, refusals, and the round trip through snnTorch's NIR importer with its documented
deviations (IF imported as Leaky(beta=0.9), a (spike, mem) tuple, Flatten over the batch, strict >, and a
spike skipped while the potential stays above threshold after a reset)."""
import numpy as np
import pytest
import torch
import torch.nn as nn

nir = pytest.importorskip("nir")

from snnconv_ext import convert  # noqa: E402
from snnconv_ext.core.simulation import simulate_net  # noqa: E402
from snnconv_ext.study.export import ExportError, to_nir  # noqa: E402


def _one_layer_net():
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 10)).eval()
    return ann, convert(ann, "max", [torch.rand(64, 1, 8, 8)], progress=False)


def test_export_structure_and_semantics_metadata():
    ann, snn = _one_layer_net()
    g = to_nir(snn, (1, 8, 8))
    kinds = {k: type(v).__name__ for k, v in g.nodes.items()}
    assert sorted(kinds.values()) == sorted(["Input", "Conv2d", "IF", "AvgPool2d", "Flatten", "Affine", "Output"])
    chain, node = [], "input"
    while node != "output":
        node = next(b for a, b in g.edges if a == node)
        chain.append(kinds[node])
    assert chain == ["Conv2d", "IF", "AvgPool2d", "Flatten", "Affine", "Output"]
    (name,) = [k for k, v in kinds.items() if v == "IF"]
    neuron = g.nodes[name]
    theta = float(snn.get_submodule("1").v_threshold)  # fx node '_1' is module '1'
    assert np.all(neuron.v_threshold == np.float32(theta)) and neuron.v_threshold.shape == (4, 8, 8)
    assert neuron.metadata["snnconv.reset"] == "subtract" and neuron.metadata["snnconv.fire"] == ">="
    conv = next(v for v in g.nodes.values() if type(v).__name__ == "Conv2d")
    assert np.array_equal(conv.weight, ann[0].weight.detach().numpy())
    with pytest.raises(ExportError, match="layer '1'.*soft reset"):
        to_nir(snn, (1, 8, 8), soft_reset="refuse")


def test_export_refuses_what_nir_cannot_express():
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    calib = [torch.rand(16, 1, 8, 8)]
    snm = convert(ann, "snm", calib, progress=False)
    with pytest.raises(ExportError, match=r"layer '1' \(SnnconvNode\): signed"):
        to_nir(snm, (1, 8, 8))
    half = convert(ann, "dni", calib, progress=False)  # v0 = theta/2: only in metadata
    g = to_nir(half, (1, 8, 8))
    ifs = [v for v in g.nodes.values() if type(v).__name__ == "IF"]
    assert all(np.allclose(n.metadata["snnconv.v_init"], n.v_threshold / 2) for n in ifs)
    with pytest.raises(ExportError, match="initial potential"):
        to_nir(half, (1, 8, 8), soft_reset="refuse")
    node = snm.get_submodule("1")
    node.symmetric, node._theta_neg = False, None  # an unsigned neuron with memory: refused too
    with pytest.raises(ExportError, match="layer '1'.*SNM memory"):
        to_nir(snm, (1, 8, 8))


def _import_snntorch(g):
    import snntorch as snn
    from snntorch.import_nir import import_from_nir
    net = import_from_nir(g)
    leaky = [m for m in net.modules() if isinstance(m, snn.Leaky)]
    flat = [m for m in net.modules() if isinstance(m, nn.Flatten)]
    return net, leaky, flat


def _run_imported(net, x, T):
    outs, state = [], None
    with torch.no_grad():
        for _ in range(T):
            o, state = net(x, state)
            outs.append(o)
    return torch.stack(outs).cumsum(0)


def test_snntorch_round_trip_after_documented_fixes():
    _, snn = _one_layer_net()
    x = torch.rand(6, 1, 8, 8)
    # the IF layer's current is constant; below threshold everywhere, a reset never leaves it above threshold
    with torch.no_grad():
        cur = snn.get_submodule("0").module(x)
    x = x * (0.95 * float(snn.get_submodule("1").v_threshold) / float(cur.max()))
    T = 9
    ours = torch.cat(list(simulate_net(snn, x, T, chunk=T)))
    net, leaky, flat = _import_snntorch(to_nir(snn, (1, 8, 8)))
    # snnTorch 1.0's importer: nir.IF -> Leaky(beta=0.9, reset "subtract", init_hidden=False), Flatten(start_dim=0)
    assert [(round(float(m.beta), 3), m.reset_mechanism, m.init_hidden) for m in leaky] == [(0.9, "subtract", False)]
    assert [f.start_dim for f in flat] == [0]
    with pytest.raises(TypeError):  # the (spike, mem) tuple reaches the pooling layer
        _run_imported(net, x, 1)
    net, leaky, flat = _import_snntorch(to_nir(snn, (1, 8, 8)))
    for m in leaky:
        m.beta.fill_(1.0)       # NIR's IF has no leak
        m.init_hidden = True    # return spikes only
    for f in flat:
        f.start_dim += 1        # NIR shapes carry no batch dimension
    theirs = _run_imported(net, x, T)
    assert ours.abs().sum() > 0
    assert torch.equal(theirs, ours)


def test_snntorch_leaky_differs_at_threshold_and_after_saturation():
    """Hand-worked: threshold 1, inputs exact in binary. Ours (and SpikingJelly's IF): v += x; fire if v >= 1;
    v -= 1. snnTorch's Leaky (reset_delay=False) fires if v > 1 and, while the potential left by a reset is
    still >= 1, subtracts it again before deciding, so it skips spikes."""
    import snntorch as snn
    from snnconv_ext.core.neuron import simulate

    def leaky(xs):
        m = snn.Leaky(beta=1.0, threshold=1.0, reset_mechanism="subtract", init_hidden=True, reset_delay=False)
        with torch.no_grad():
            return torch.stack([m(x) for x in xs]).flatten().tolist()

    tie = torch.tensor([[1.0], [0.0]])
    assert simulate(tie).flatten().tolist() == [1.0, 0.0]
    assert leaky(tie) == [0.0, 0.0]          # v = 1 is not > 1: never fires
    sat = torch.tensor([[2.25], [0.125], [0.0], [0.0]])
    assert simulate(sat).flatten().tolist() == [1.0, 1.0, 0.0, 0.0]   # v: 2.25 -> 1.25; 1.375 -> 0.375
    assert leaky(sat) == [1.0, 0.0, 0.0, 0.0]                         # stays at 1.375 without firing
