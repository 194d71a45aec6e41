"""NIR: to_nir's structure, refusals and one-line shape errors; the zoo Net4 through SpikingJelly's and sinabs'
importers with the settings README "NIR: what each consumer needs" gives (cumulative logits within float32
rounding); from_nir's bit-exact round trip; snnTorch's importer with its documented deviations (IF imported as
Leaky(beta=0.9), a (spike, mem) tuple, Flatten over the batch, strict >, and a spike skipped while the potential
stays above threshold after a reset)."""
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
    half = convert(ann, "dni", calib, progress=False)  # v0 = theta/2: refused unless recorded in metadata
    with pytest.raises(ExportError, match=r"layer '1' \(SnnconvNode\): an initial potential.*initial='metadata'"):
        to_nir(half, (1, 8, 8))
    g = to_nir(half, (1, 8, 8), initial="metadata")
    ifs = [v for v in g.nodes.values() if type(v).__name__ == "IF"]
    assert all(np.allclose(n.metadata["snnconv.v_init"], n.v_threshold / 2) for n in ifs)
    with pytest.raises(ExportError, match="soft reset"):
        to_nir(half, (1, 8, 8), soft_reset="refuse", initial="metadata")
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


def test_wrong_input_shape_is_one_line(capsys):
    _, snn = _one_layer_net()
    with pytest.raises(ValueError) as err:
        to_nir(snn, (1, 12, 12))
    assert str(err.value) == "input_shape (1, 12, 12) differs from the network's input shape (1, 8, 8)"
    snn.meta.pop("input_shape")
    with pytest.raises(ValueError, match=r"^input_shape \(1, 12, 12\): layer '4' \(SeqModule\) cannot take the input: "
                                         r"mat1 and mat2 shapes cannot be multiplied") as err:
        to_nir(snn, (1, 12, 12))
    assert "\n" not in str(err.value)
    assert capsys.readouterr().err == ""  # no traceback printed before the error


# ---------------------------------------------------------------------------- the zoo Net4 through NIR and back
# Settings per consumer (README "Energy and export"): to_nir writes nir.IF with r = 1 and the soft reset and
# initial potential in the node's metadata (snnconv.reset = "subtract", snnconv.v_init).
T_NIR = 8


@pytest.fixture(scope="module")
def net4_nir():
    """The zoo Net4 converted with three IF methods (256 calibration images), 16 test images, our cumulative
    logits [T, B, 10]."""
    from snnconv_ext import data, zoo
    calib = data.loader(data.subset(data.fashion_mnist("train"), 256, seed=0), batch_size=128)
    test = data.subset(data.fashion_mnist("test"), 16, seed=0)
    x = torch.stack([test[i][0] for i in range(len(test))])
    nets = {}
    for method in ("max", "percentile", "clipround"):
        snn = convert(zoo.load("fmnist-net4"), method, calib, progress=False)
        nets[method] = (snn, torch.cat(list(simulate_net(snn, x, T_NIR, chunk=T_NIR))))
    return nets, x


def _if_nodes(g):
    return {k: v for k, v in g.nodes.items() if isinstance(v, nir.IF)}


def _spikingjelly(g, x, soft_reset=True, initial=True):
    """SpikingJelly 2.0: import_from_nir(graph, dt=1.0) (it requires r = 1/dt), then per IFNode v_reset=None (soft
    reset) and the initial potential from snnconv.v_init as the reset value of v."""
    from nirtorch.utils import sanitize_name
    from spikingjelly.activation_based.nir_exchange import import_from_nir
    net = import_from_nir(g, dt=1.0)
    for name, node in _if_nodes(g).items():
        m = net.get_submodule(sanitize_name(name)).module
        if soft_reset:
            m.v_reset = None
        if initial and "snnconv.v_init" in node.metadata:
            v0 = float(np.unique(node.metadata["snnconv.v_init"])[0])
            m.set_reset_value("v", v0)
            m.v = v0
    return _run_imported(net, x, T_NIR)


def _sinabs(g, x, single_spike=True, initial=True):
    """sinabs 2.0.3: from_nir(graph, batch_size=B) on the synaptic form (it has no average pooling), then per IAF
    spike_fn=SingleSpike and min_v_mem=None (its defaults: several spikes per step, membrane clipped at -theta),
    and the initial membrane from snnconv.v_init."""
    import sinabs.layers as sl
    import sinabs.nir
    from nirtorch.utils import sanitize_name
    from sinabs.activation import SingleSpike
    net = sinabs.nir.from_nir(g, batch_size=x.shape[0])  # (through nirtorch's deprecated load)
    for name, node in _if_nodes(g).items():
        m = getattr(net, sanitize_name(name))
        assert isinstance(m, sl.IAFSqueeze)
        if single_spike:
            m.spike_fn, m.min_v_mem = SingleSpike, None
        if initial and "snnconv.v_init" in node.metadata:
            m.init_state_with_shape((x.shape[0], *node.v_threshold.shape))
            m.v_mem.copy_(torch.from_numpy(node.metadata["snnconv.v_init"]).expand_as(m.v_mem))
    xs = x.unsqueeze(1).expand(x.shape[0], T_NIR, *x.shape[1:]).reshape(-1, *x.shape[1:])  # [B*T, ...]
    with torch.no_grad():
        out = net(xs)
    out = out[0] if isinstance(out, tuple) else out
    return out.view(x.shape[0], T_NIR, -1).transpose(0, 1).cumsum(0)


def _float_close(theirs, ours):
    """Equal up to float32 rounding of sums taken in another order: far below one spike's contribution."""
    return (theirs - ours).abs().max().item() <= 1e-6 * T_NIR * ours.abs().max().item()


@pytest.mark.parametrize("method", ["max", "percentile", "clipround"])
def test_spikingjelly_and_sinabs_import_reproduce_cumulative_logits(net4_nir, method):
    from snnconv_ext.study.forms import synaptic_form
    nets, x = net4_nir
    snn, ours = nets[method]
    g = to_nir(snn, (1, 28, 28), initial="metadata")
    assert _float_close(_spikingjelly(g, x), ours)
    # what the settings change: SpikingJelly's import resets to v_reset (hard); without the initial potential
    # clipround starts at 0 (both measured on these 16 images at T = 8: > 30 logit units)
    assert (_spikingjelly(g, x, soft_reset=False) - ours).abs().max() > 1
    g_form = to_nir(synaptic_form(snn), (1, 28, 28), initial="metadata")
    assert not any(isinstance(v, nir.AvgPool2d) for v in g_form.nodes.values())
    assert _float_close(_sinabs(g_form, x), ours)
    assert (_sinabs(g_form, x, single_spike=False) - ours).abs().max() > 1
    if method == "clipround":
        assert (_spikingjelly(g, x, initial=False) - ours).abs().max() > 1
        assert (_sinabs(g_form, x, initial=False) - ours).abs().max() > 1
        with pytest.raises(ExportError, match="initial potential"):
            to_nir(snn, (1, 28, 28))


@pytest.mark.parametrize("method", ["max", "percentile", "clipround"])
def test_from_nir_round_trip_is_bit_exact(net4_nir, method, tmp_path):
    from snnconv_ext.study.export import from_nir
    nets, x = net4_nir
    snn, ours = nets[method]
    path = tmp_path / "net4.nir"
    nir.write(path, to_nir(snn, (1, 28, 28), initial="metadata"))
    back = from_nir(path)
    assert [type(m).__name__ for m in back.modules() if "IFNode" in type(m).__name__] == ["IFNode"] * 3
    assert back.meta["input_shape"] == (1, 28, 28) and back.meta["snnconv_method"] == method
    assert torch.equal(torch.cat(list(simulate_net(back, x, T_NIR, chunk=T_NIR))), ours)


def test_from_nir_per_neuron_thresholds_and_refusals(tmp_path):
    from snnconv_ext.study.export import from_nir
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 10)).eval()
    snn = convert(ann, "dni", [torch.rand(16, 1, 8, 8)], progress=False)  # per-neuron thresholds, v0 = theta/2
    x = torch.rand(5, 1, 8, 8)
    back = from_nir(to_nir(snn, (1, 8, 8), initial="metadata"))
    assert torch.equal(torch.cat(list(simulate_net(back, x, 6))), torch.cat(list(simulate_net(snn, x, 6))))
    foreign = nir.NIRGraph(nodes={"input": nir.Input(np.array([3])), "lif": nir.IF(r=np.ones(3), v_threshold=np.ones(3)),
                                  "output": nir.Output(np.array([3]))}, edges=[("input", "lif"), ("lif", "output")])
    with pytest.raises(ValueError, match="not written by snnconv's to_nir"):
        from_nir(foreign)
    foreign.metadata = {"snnconv.format": "snnconv-nir-1"}
    with pytest.raises(ValueError, match=r"NIR node 'lif' \(IF\): not written by snnconv's to_nir"):
        from_nir(foreign)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_nir(tmp_path / "missing.nir")
