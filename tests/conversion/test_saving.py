"""``sc.save`` / ``sc.load``: every registered method round-trips bit-identically (on zoo Net4, or on the zoo model
whose activations the method converts), both backends, a residual graph, single-step mode, a fine-tuned network;
the file is plain data that ``torch.load(weights_only=True)`` reads; bad files and paths are refused by name."""
import re
from dataclasses import fields

import pytest
import torch
import torch.nn as nn
from torch import fx

import snnconv_ext as sc
from snnconv_ext.conversion import graph, saving
from snnconv_ext.conversion.auto import applies_to
from snnconv_ext.conversion.registry import get as get_method
from snnconv_ext.core.neuron import NeuronParams
from snnconv_ext.core.nodes import params_of, spiking_modules
from snnconv_ext.core.simulation import simulate_net

from helpers import Payload

# Net4 first; then the zoo models for methods that convert other activations (stReLU, Datta's, QCFS, and the
# Net2 models for tReLU / atLeakyReLU, which have no Net4 version in the zoo)
ZOO = ["fmnist-net4", "fmnist-net4-strelu", "fmnist-net4-datta", "fmnist-net4-qcfs4", "fmnist-net2-trelu",
       "fmnist-net2-atleakyrelu"]
PLAIN = (torch.Tensor, dict, list, str, int, float, bool, type(None))


@pytest.fixture(scope="module")
def calib():
    return sc.data.subset(sc.data.fashion_mnist("train"), 256, seed=0)


@pytest.fixture(scope="module")
def images():
    test = sc.data.fashion_mnist("test")
    return torch.stack([test[i][0] for i in range(16)])


@pytest.fixture(scope="module")
def zoo_models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = sc.zoo.load(name)
        return cache[name]
    return get


def options_for(method: str) -> dict:
    """Fast settings: T=2 for methods tuned for T, 64 images and 10 SGD steps for the calibration passes."""
    m = get_method(method)
    opts = {"T": 2} if m.T is not None else {}
    if m.calibration or m.scale == "search":
        opts["samples"] = 64
    if "weights" in m.calibration:
        opts["iters"] = 10
    return opts


def convert(zoo_models, calib, method, backend="spikingjelly"):
    name = next(z for z in ZOO if not applies_to(method, zoo_models(z)))
    return sc.convert(zoo_models(name), method=method, calib_data=calib, backend=backend, progress=False,
                      **options_for(method))


def outputs(net, x):
    """Cumulative readouts after T = 1..4 from one run of 4 steps, then again stepped one at a time."""
    whole = torch.cat(list(simulate_net(net, x, 4, chunk=4)))
    stepped = torch.cat(list(simulate_net(net, x, 4, chunk=1)))
    return torch.cat([whole, stepped])


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and torch.equal(a, b)
    return type(a) is type(b) and a == b


def assert_same_network(a: nn.Module, b: nn.Module) -> None:
    """Same classes, weights, knobs, parameters, step modes and meta."""
    assert isinstance(b, fx.GraphModule) == isinstance(a, fx.GraphModule) and type(b).__name__ == type(a).__name__
    assert [(n, type(m)) for n, m in a.named_modules() if n] == [(n, type(m)) for n, m in b.named_modules() if n]
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(_same(sa[k], sb[k]) for k in sa)
    assert [(n, p.requires_grad) for n, p in a.named_parameters()] == \
           [(n, p.requires_grad) for n, p in b.named_parameters()]
    assert [(n, getattr(m, "step_mode", None), m.training) for n, m in a.named_modules()] == \
           [(n, getattr(m, "step_mode", None), m.training) for n, m in b.named_modules()]
    na, nb = spiking_modules(a), spiking_modules(b)
    assert list(na) == list(nb) and na
    for name in na:
        pa, pb = params_of(na[name]), params_of(nb[name])
        for f in fields(NeuronParams):
            assert _same(getattr(pa, f.name), getattr(pb, f.name)), (name, f.name)
        assert (pa.theta_neg is pa.theta) == (pb.theta_neg is pb.theta), name
    assert a.meta == b.meta


def round_trip(snn, tmp_path, images):
    path = sc.save(snn, tmp_path / "snn.pt")
    net = sc.load(path)
    assert_same_network(snn, net)
    assert torch.equal(outputs(snn, images), outputs(net, images))
    return net, path


# --- round trips --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["percentile", "dni+snm"])
def test_net4_round_trips_bit_identically(method, zoo_models, calib, images, tmp_path):
    snn = convert(zoo_models, calib, method)
    net, path = round_trip(snn, tmp_path, images)
    # SpikingJelly's own IFNode where the conversion used it, SnnconvNode (with its Scale) elsewhere
    assert {type(m).__name__ for m in spiking_modules(net).values()} == \
           ({"IFNode"} if method == "percentile" else {"SnnconvNode"})
    weights = sum(t.numel() * t.element_size() for t in snn.state_dict().values())
    assert weights < path.stat().st_size < 1.2 * weights  # the weights, a small description around them


@pytest.mark.slow
@pytest.mark.parametrize("method", sc.methods())
def test_every_method_round_trips_bit_identically(method, zoo_models, calib, images, tmp_path):
    round_trip(convert(zoo_models, calib, method), tmp_path, images)


@pytest.mark.parametrize("method", ["percentile", "dni+snm", "strelu"])
def test_snntorch_networks_round_trip(method, zoo_models, calib, images, tmp_path):
    snn = convert(zoo_models, calib, method, backend="snntorch")
    net, _ = round_trip(snn, tmp_path, images)
    assert isinstance(net, nn.Sequential) and net.step_mode == "s"
    assert {type(m).__name__ for m in spiking_modules(net).values()} == {"Neuron"}


class Residual(nn.Module):
    """A graph that is not a chain: a residual sum and torch.flatten."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        self.pool, self.fc = nn.AvgPool2d(2), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = self.relu1(self.conv1(x))
        h = self.relu2(self.conv2(h) + h)
        return self.fc(torch.flatten(self.pool(h), 1))


@pytest.mark.parametrize("backend", ["spikingjelly", "snntorch"])
def test_residual_graph_round_trips(backend, tmp_path):
    torch.manual_seed(0)
    x = torch.rand(32, 1, 8, 8)
    snn = sc.convert(Residual().eval(), "dni", [x], backend=backend, progress=False)
    assert isinstance(snn, fx.GraphModule)
    net, _ = round_trip(snn, tmp_path, x[:8])
    calls = [(n.op, n.target) for n in net.graph.nodes]
    assert calls == [(n.op, n.target) for n in snn.graph.nodes]


@pytest.mark.slow
@pytest.mark.parametrize("method, backend", [("dni+snm", "spikingjelly"), ("percentile", "snntorch")])
def test_resnet_round_trips(method, backend, zoo_models, calib, images, tmp_path):
    """Nested module names (layer1.0.conv1) and residual sums of a zoo ResNet-20."""
    snn = sc.convert(zoo_models("fmnist-resnet20"), method=method, calib_data=calib, backend=backend, progress=False)
    round_trip(snn, tmp_path, images[:8])


def test_auto_network_round_trips_with_its_report(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    snn = sc.convert(Residual().eval(), "auto", [x], T=2, candidates=["max", "dni"], progress=False)
    net, _ = round_trip(snn, tmp_path, x[:8])
    assert net.meta["snnconv_auto"]["chosen"] == net.meta["snnconv_method"]


@pytest.mark.cuda
def test_cuda_network_loads_onto_cuda(zoo_models, calib, images, tmp_path):
    snn = convert(zoo_models, calib, "dni+snm").cuda()
    net = sc.load(sc.save(snn, tmp_path / "snn.pt"), map_location="cuda")
    assert all(t.is_cuda for t in net.state_dict().values())
    assert torch.equal(outputs(snn, images.cuda()), outputs(net, images.cuda()))


def test_single_step_mode_round_trips(zoo_models, calib, images, tmp_path):
    from spikingjelly.activation_based import functional
    snn = convert(zoo_models, calib, "percentile-channel")
    functional.set_step_mode(snn, "s")
    net, _ = round_trip(snn, tmp_path, images)
    assert {getattr(m, "step_mode", "s") for m in net.modules()} == {"s"}


def test_finetuned_network_round_trips(zoo_models, calib, images, tmp_path):
    snn = convert(zoo_models, calib, "percentile")
    train = sc.data.subset(sc.data.fashion_mnist("train"), 32, seed=1)
    sc.finetune(snn, train, T=2, epochs=1, batch_size=32, max_batches=1, progress=False)
    net, _ = round_trip(snn, tmp_path, images)
    for node in spiking_modules(net).values():  # trainable knobs stay parameters, Datta's surrogate follows them
        assert isinstance(node.v_threshold, nn.Parameter) and isinstance(node.leak, nn.Parameter)
        assert type(node.surrogate_function).__name__ == "DattaSurrogate"
        assert node.surrogate_function._node[0] is node


def test_file_is_plain_data_with_the_conversion_record(zoo_models, calib, tmp_path):
    snn = convert(zoo_models, calib, "mmse")  # registered for T = 8, converted for T = 2
    path = sc.save(snn, tmp_path / "net4-mmse.pt")
    raw = torch.load(path, weights_only=True)  # no pickled classes, no code

    def walk(v):
        assert isinstance(v, PLAIN), type(v)
        for item in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()):
            walk(item)
    walk(raw)
    assert (raw["format"], raw["version"]) == (saving.FORMAT, saving.FORMAT_VERSION)
    rec = sc.saving.record(path)
    assert (rec["model"], rec["method"], rec["T"], rec["backend"]) == ("fmnist-net4", "mmse", 2, "spikingjelly")
    registered = get_method("mmse")
    assert registered.T != 2  # what differs from the registered method: T, and the T of its MMSE thresholds
    assert rec["options"] == {"threshold_options": {**registered.threshold_options, "T": 2}, "T": 2}
    assert rec["versions"]["torch"] == torch.__version__
    assert sc.load(path).meta["snnconv_calibration"] == snn.meta["snnconv_calibration"]


def test_function_table_covers_the_graph_functions():
    assert set(saving.FUNCTIONS.values()) == graph.FUNCTIONS


def test_interrupted_save_keeps_the_old_file(zoo_models, calib, tmp_path, monkeypatch):
    snn = convert(zoo_models, calib, "max")
    path = sc.save(snn, tmp_path / "snn.pt")
    old = path.read_bytes()

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("snnconv_ext.core.files.torch.save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        sc.save(snn, path, overwrite=True)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["snn.pt"]


def test_an_existing_file_is_replaced_only_when_asked(zoo_models, calib, images, tmp_path):
    snn = convert(zoo_models, calib, "max")
    path = tmp_path / "snn.pt"
    path.write_bytes(b"somebody's file")
    with pytest.raises(FileExistsError, match=f"save: {path} exists; pass overwrite=True"):
        sc.save(snn, path)
    assert path.read_bytes() == b"somebody's file"
    sc.save(snn, path, overwrite=True)
    assert torch.equal(outputs(sc.load(path), images), outputs(snn, images))


# --- refusals: one line naming the file (or the layer) ---------------------------------------------------------

@pytest.fixture
def small(tmp_path):
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    snn = sc.convert(ann, "max", [torch.rand(16, 4)], progress=False)
    return snn, sc.save(snn, tmp_path / "small.pt")


def _refused(exc_type, path, call):
    with pytest.raises(exc_type) as ei:
        call()
    msg = str(ei.value)
    assert str(path) in msg and "\n" not in msg, msg
    return msg


def test_other_format_version_is_refused(small, tmp_path):
    state = torch.load(small[1], weights_only=True)
    state["version"] = saving.FORMAT_VERSION + 1
    f = tmp_path / "v2.pt"
    torch.save(state, f)
    assert "format version 2; this snnconv reads version 1" in _refused(saving.LoadError, f, lambda: sc.load(f))


def test_truncated_file_is_refused(small):
    f = small[1]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert "corrupt, truncated" in _refused(saving.LoadError, f, lambda: sc.load(f))


def test_a_state_dict_is_not_our_file(small, tmp_path):
    f = tmp_path / "state.pt"
    torch.save(small[0].state_dict(), f)
    assert "is not an snnconv network file" in _refused(saving.LoadError, f, lambda: sc.load(f))


def test_code_carrying_file_is_refused_and_not_run(tmp_path):
    marker, f = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"format": saving.FORMAT, "version": saving.FORMAT_VERSION, "network": Payload(marker)}, f)
    assert "not a safe torch file" in _refused(saving.LoadError, f, lambda: sc.load(f))
    assert not marker.exists()


def test_unknown_module_kind_is_refused(small, tmp_path):
    state = torch.load(small[1], weights_only=True)
    state["network"]["modules"][1][1]["kind"] = "torch.LSTM"
    f = tmp_path / "lstm.pt"
    torch.save(state, f)
    msg = _refused(saving.LoadError, f, lambda: sc.load(f))
    assert "module '1' has unknown kind 'torch.LSTM'" in msg


def test_corrupt_description_is_refused(small, tmp_path):
    state = torch.load(small[1], weights_only=True)
    del state["network"]["modules"][0][1]["children"]["module"]["parameters"]["weight"]
    f = tmp_path / "noweight.pt"
    torch.save(state, f)
    assert "is corrupt" in _refused(saving.LoadError, f, lambda: sc.load(f))


def test_load_missing_file_or_folder(tmp_path):
    _refused(FileNotFoundError, tmp_path / "nope.pt", lambda: sc.load(tmp_path / "nope.pt"))
    _refused(IsADirectoryError, tmp_path, lambda: sc.load(tmp_path))


def test_save_into_missing_folder(small, tmp_path):
    f = tmp_path / "missing" / "snn.pt"
    assert "does not exist" in _refused(FileNotFoundError, f, lambda: sc.save(small[0], f))
    assert not f.parent.exists()


def test_save_under_a_file(small, tmp_path):
    f = small[1] / "snn.pt"
    assert "is a file, not a folder" in _refused(NotADirectoryError, f, lambda: sc.save(small[0], f))


def test_save_onto_a_folder(small, tmp_path):
    assert "is a folder" in _refused(IsADirectoryError, tmp_path, lambda: sc.save(small[0], tmp_path))


def test_save_refuses_an_ann(tmp_path):
    f = tmp_path / "ann.pt"
    ann = nn.Sequential(nn.Linear(4, 3))
    assert "has no spiking layer" in _refused(saving.SaveError, f, lambda: sc.save(ann, f))
    assert not f.exists()


def test_save_refuses_a_layer_it_cannot_write(small, tmp_path):
    snn = small[0]
    graph.set_module(snn, "2", nn.GELU())
    f = tmp_path / "gelu.pt"
    msg = _refused(saving.SaveError, f, lambda: sc.save(snn, f))
    assert "module '2' (GELU) is a kind of layer snnconv cannot save" in msg and not f.exists()


def test_save_refuses_a_custom_surrogate(small, tmp_path):
    snn = small[0]

    class MySurrogate(nn.Module):
        def forward(self, x):
            return (x >= 0).to(x)
    spiking_modules(snn)["1"].surrogate_function = MySurrogate()
    f = tmp_path / "custom.pt"
    msg = _refused(saving.SaveError, f, lambda: sc.save(snn, f))
    assert re.search(r"module '1' \(IFNode\): surrogate function MySurrogate .* cannot be saved", msg)
