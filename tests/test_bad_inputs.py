"""Bad-input corpus: every case must end in a clear error that names the layer, argument, shape or file,
and leave nothing half-written behind.

Models here are tiny and untrained: what is tested is the refusal, not accuracy.
"""
import gzip
import json
import os
import re

import pytest
import torch
import torch.nn as nn

import snnconv_ext as sc
from snnconv_ext import cli, data, graph, models, thresholds, train, zoo
from snnconv_ext.core.simulation import simulate_net
from helpers import FunctionalReLU, Payload
from snnconv_ext.core.neuron import simulate


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def calib(n: int = 16):
    return [torch.rand(n, 4)]


@pytest.fixture(scope="module")
def snn():
    return sc.convert(mlp(), "max", calib(), progress=False)


def labelled(x):
    return [(x, torch.zeros(x.shape[0], dtype=torch.long))]


# --- NaN / Inf in inputs, calibration data and weights ------------------------------------------------------

@pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "Inf"), (-float("inf"), "Inf")])
def test_nonfinite_simulation_input(snn, value, word):
    x = torch.rand(2, 4)
    x[1, 2] = value
    with pytest.raises(ValueError, match=f"input contains {word}"):
        next(simulate_net(snn, x, 4))


@pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_nonfinite_calibration_data(value, word):
    good, bad = torch.rand(8, 4), torch.rand(8, 4)
    bad[3, 0] = value
    with pytest.raises(ValueError, match=f"calibration data: batch 1 contains {word}"):
        sc.convert(mlp(), "max", [good, bad], progress=False)


def test_nan_weight_names_layer_and_parameter():
    m = mlp()
    with torch.no_grad():
        m[2].weight[1, 1] = float("nan")
    with pytest.raises(graph.ConversionError, match=r"module '2' \(Linear\): parameter 'weight' of shape \(3, 8\) "
                                                    "contains NaN"):
        sc.convert(m, "max", calib(), progress=False)


def test_inf_bn_buffer_names_layer():
    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    m[1].running_var[0] = float("inf")
    with pytest.raises(graph.ConversionError, match=r"module '1' \(BatchNorm1d\): buffer 'running_var'.*Inf"):
        sc.convert(m, "max", calib(), progress=False)


def test_nan_in_checkpoint_names_tensor(tmp_path):
    state = models.net1(in_channels=1, image_size=8).state_dict()
    state["3.bias"][0] = float("nan")
    f = tmp_path / "nan.pt"
    torch.save(state, f)
    with pytest.raises(ValueError, match=r"nan\.pt: tensor '3\.bias' of shape \(1200,\) contains NaN"):
        zoo.load_state(f, "net1", in_channels=1, image_size=8)


# --- shape and dtype -----------------------------------------------------------------------------------------

def test_wrong_input_shape(snn):
    with pytest.raises(ValueError, match=r"input has shape \(2, 5\); the converted model expects \[B, 4\]"):
        next(simulate_net(snn, torch.rand(2, 5), 4))


def test_nir_export_wrong_input_shape_is_one_line(snn, capsys):
    pytest.importorskip("nir")
    from snnconv_ext.study.export import to_nir
    with pytest.raises(ValueError) as err:
        to_nir(snn, (5,))
    assert str(err.value) == "input_shape (5,) differs from the network's input shape (4,)"
    assert capsys.readouterr().err == ""  # no ShapeProp traceback first


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_wrong_input_dtype(snn, dtype):
    with pytest.raises(TypeError, match=f"input has dtype {dtype}"):
        next(simulate_net(snn, torch.zeros(2, 4, dtype=dtype), 4))


def test_calibration_shape_that_does_not_fit_the_model():
    with pytest.raises(ValueError, match=r"calibration data of shape \(8, 5\) does not fit the model"):
        sc.convert(mlp(), "max", [torch.rand(8, 5)], progress=False)


def test_calibration_batches_of_changing_shape():
    with pytest.raises(ValueError, match=r"batch 1 has sample shape \(5,\), earlier batches \(4,\)"):
        sc.convert(mlp(), "max", [torch.rand(8, 4), torch.rand(8, 5)], progress=False)


def test_integer_calibration_data():
    with pytest.raises(ValueError, match="batch 0 has dtype torch.int64, expected floating point"):
        sc.convert(mlp(), "max", [torch.ones(8, 4, dtype=torch.long)], progress=False)


# --- time steps ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [0, -3, 2.5, True, "8", None])
def test_bad_T_in_simulation(snn, T):
    with pytest.raises(ValueError, match=re.escape(f"T: the number of time steps must be an integer >= 1, got {T!r}")):
        next(simulate_net(snn, torch.rand(2, 4), T))


@pytest.mark.parametrize("timesteps", [[0], [4, -1], [2.5], [4, True]])
def test_bad_timesteps_in_evaluate(snn, timesteps):
    with pytest.raises(ValueError, match="timesteps: the number of time steps must be an integer >= 1"):
        sc.evaluate(snn, labelled(torch.rand(2, 4)), timesteps, progress=False)


def test_empty_or_string_timesteps(snn):
    with pytest.raises(ValueError, match="timesteps is empty"):
        sc.evaluate(snn, labelled(torch.rand(2, 4)), [], progress=False)
    with pytest.raises(TypeError, match="timesteps must be a list of positive integers, got '16'"):
        sc.evaluate(snn, labelled(torch.rand(2, 4)), "16", progress=False)  # would have read T in {1, 6}


def test_zero_chunk_is_refused_not_an_endless_loop(snn):
    with pytest.raises(ValueError, match="chunk: the number of time steps must be an integer >= 1, got 0"):
        next(simulate_net(snn, torch.rand(2, 4), 4, chunk=0))


def test_method_T_must_be_a_positive_integer():
    for T in (2.5, 0, -8, "8"):
        with pytest.raises(ValueError, match=re.escape(f"method 'mmse': option T={T!r} is invalid")):
            sc.convert(mlp(), "mmse", calib(), progress=False, T=T)


# --- thresholds ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("theta", [0.0, -1.0, float("nan"), float("inf"), torch.tensor([1.0, 0.0])])
def test_bad_threshold_of_the_neuron(theta):
    with pytest.raises(ValueError, match="theta must be finite and > 0"):
        simulate(torch.rand(4, 2), theta=theta)


@pytest.mark.parametrize("theta_neg", [0.0, -1.0, float("nan")])
def test_bad_negative_threshold(theta_neg):
    with pytest.raises(ValueError, match="theta_neg"):
        simulate(torch.rand(4, 2), theta_neg=theta_neg)


@pytest.mark.parametrize("name, kw, msg", [
    ("percentile", {"p": 0}, r"percentile p must be in \(0, 100\], got 0"),
    ("percentile", {"p": float("nan")}, r"percentile p must be in \(0, 100\], got nan"),
    ("percentile", {"p": 100.5}, r"percentile p must be in \(0, 100\], got 100.5"),
    ("percentile", {"cap": 0}, "cap .* must be a positive integer, got 0"),
    ("max", {"granularity": "pixel"}, "granularity must be one of"),
    ("mmse", {"T": 2.5}, "MMSE needs integers T >= 1 and N >= 1 grid points, got T=2.5"),
    ("mmse", {"N": 0}, "MMSE needs integers T >= 1 and N >= 1 grid points, got T=8, N=0"),
    ("mmse", {"rounding": "ceil"}, "rounding must be 'round'"),
    ("nope", {}, "unknown threshold strategy 'nope'"),
])
def test_bad_threshold_strategy_arguments(name, kw, msg):
    with pytest.raises((ValueError, KeyError), match=msg):
        thresholds.get(name, **kw)


def test_threshold_from_nonfinite_activations_names_layer():
    s = thresholds.get("max")
    s.observe(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="MaxThreshold: the recorded activations contain NaN or Inf"):
        s.compute()


# --- calibration loaders -------------------------------------------------------------------------------------

def test_empty_calibration_loader():
    with pytest.raises(ValueError, match="calibration data is empty"):
        sc.convert(mlp(), "max", [], progress=False)
    with pytest.raises(ValueError, match="calib_data"):
        sc.convert(mlp(), "max", None, progress=False)


def test_one_image_calibration_loader():
    with pytest.raises(ValueError, match="calibration data holds 1 image; .* at least 2 images"):
        sc.convert(mlp(), "max", [torch.rand(1, 4)], progress=False)


def test_unbatched_image_in_calibration_loader():
    with pytest.raises(ValueError, match=r"batch 0 has shape \(4,\), expected \[B, \.\.\.\]"):
        sc.convert(mlp(), "max", [torch.rand(4)], progress=False)


def test_dict_batches_without_images():
    with pytest.raises(ValueError, match=r"batch 0 is a dict with keys \['features', 'y'\]; the images must be under"):
        sc.convert(mlp(), "max", [{"features": torch.rand(8, 4), "y": torch.zeros(8)}], progress=False)


def test_dict_batches_with_images_are_accepted_but_not_for_evaluation(snn):
    sc.convert(mlp(), "max", [{"image": torch.rand(8, 4), "label": torch.zeros(8, dtype=torch.long)}], progress=False)
    with pytest.raises(ValueError, match=r"evaluation data must yield \(images, labels\) batches"):
        sc.evaluate(snn, [{"image": torch.rand(2, 4), "label": torch.zeros(2, dtype=torch.long)}], [2], progress=False)


@pytest.mark.parametrize("n", [0, 3, 5])
def test_odd_length_batches(n):
    batch = [torch.rand(8, 4)] + [torch.zeros(8, dtype=torch.long)] * (n - 1) if n else []
    msg = "empty batch" if n == 0 else f"batch 0 is a list of {n} items; expected images, \\(images,\\)"
    with pytest.raises(ValueError, match=msg):
        sc.convert(mlp(), "max", [batch], progress=False)


def test_one_item_evaluation_batches(snn):
    with pytest.raises(ValueError, match=r"evaluation data must yield \(images, labels\)"):
        sc.evaluate(snn, [[torch.rand(2, 4)]], [2], progress=False)


# --- models we cannot convert faithfully --------------------------------------------------------------------

def test_training_mode_names_submodule():
    m = mlp()
    m[1].train()
    with pytest.raises(graph.ConversionError, match=r"'1' \(ReLU\) is in training mode"):
        sc.convert(m, "max", calib(), progress=False)


@pytest.mark.parametrize("model, method, shape, msg", [
    (nn.Sequential(nn.Linear(4, 3), nn.GELU()), "max", (4,), r"module '1' \(GELU\): an activation that is not"),
    (nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.ReLU()), "max", (4,), r"module '1' \(LayerNorm\): it normalises"),
    (nn.Sequential(nn.Linear(4, 3), nn.Hardtanh(-1, 1)), "max", (4,), r"module '1' \(Hardtanh\): Hardtanh\(min_val=-1\)"),
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU()), "strelu", (4,), r"module '1' \(ReLU\): method 'strelu' converts "
                                                               r"\['StReLU'\] activations"),
])
def test_unconvertible_models(model, method, shape, msg):
    with pytest.raises(graph.ConversionError, match=msg):
        sc.convert(model.eval(), method, [torch.rand(8, *shape)], progress=False)


# --- unknown names and option values ---------------------------------------------------------------------------

def test_unknown_method_backend_zoo_entry_option():
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        sc.convert(mlp(), "nope", calib(), progress=False)
    with pytest.raises(ValueError, match="unknown backend 'nest'; available"):
        sc.convert(mlp(), "max", calib(), backend="nest")
    with pytest.raises(ValueError, match="unknown zoo model 'fmnist-net99'"):
        zoo.load("fmnist-net99")
    with pytest.raises(TypeError, match=r"method 'max' has no option\(s\) \['colour'\]"):
        sc.convert(mlp(), "max", calib(), progress=False, colour="red")


@pytest.mark.parametrize("option, value", [
    ("v0", "quarter"), ("fire_at", 0.0), ("fire_at", 1.5), ("leak", 0.0), ("leak", float("nan")),
    ("amplitude", -1.0), ("granularity", "pixel"), ("p", 150), ("threshold", "median"), ("scale", 0.0),
    ("samples", 0), ("memory", "yes"), ("calibration", ("bias", "magic")),
])
def test_bad_option_values_name_method_option_and_value(option, value):
    with pytest.raises(ValueError, match=re.escape(f"method 'percentile': option {option}={value!r} is invalid")):
        sc.convert(mlp(), "percentile", calib(), progress=False, **{option: value})


# --- checkpoints ------------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_zoo(tmp_path):
    """A manifest with one small net1 checkpoint in tmp_path."""
    torch.manual_seed(0)
    f = tmp_path / "tiny.pt"
    torch.save({k: v.half() for k, v in models.net1(in_channels=1, image_size=8).state_dict().items()}, f)
    zoo.write_manifest_entry("tiny", {"file": f.name, "sha256": zoo.sha256_file(f), "arch": "net1",
                                      "arch_kwargs": {"in_channels": 1, "image_size": 8}}, tmp_path)
    return tmp_path


def _set_sha(root, name="tiny"):
    m = json.loads((root / zoo.MANIFEST_NAME).read_text())
    m[name]["sha256"] = zoo.sha256_file(root / m[name]["file"])
    (root / zoo.MANIFEST_NAME).write_text(json.dumps(m))


def test_good_tiny_zoo_loads(tiny_zoo):
    assert not zoo.load("tiny", root=tiny_zoo).training  # the fixture itself is sound


def test_truncated_checkpoint(tiny_zoo):
    f = tiny_zoo / "tiny.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _set_sha(tiny_zoo)  # even with a matching hash, the file is refused as unreadable
    with pytest.raises(ValueError, match=f"cannot read checkpoint {re.escape(str(f))}: corrupt"):
        zoo.load("tiny", root=tiny_zoo)


def test_corrupted_checkpoint_reports_both_hashes(tiny_zoo):
    f = tiny_zoo / "tiny.pt"
    expected = zoo.sha256_file(f)
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch") as ei:
        zoo.load("tiny", root=tiny_zoo)
    assert str(f) in str(ei.value) and expected in str(ei.value) and zoo.sha256_file(f) in str(ei.value)


def test_wrong_hash_for_user_checkpoint(tiny_zoo):
    f = tiny_zoo / "tiny.pt"
    with pytest.raises(ValueError, match=f"expected sha256 {'ab' * 32}, actual {zoo.sha256_file(f)}"):
        zoo.load_state(f, "net1", expected_sha256="ab" * 32, in_channels=1, image_size=8)


def test_code_carrying_checkpoint_is_refused_and_not_run(tiny_zoo):
    marker = tiny_zoo / "pwned"
    f = tiny_zoo / "tiny.pt"
    torch.save({"0.weight": Payload(marker)}, f)
    _set_sha(tiny_zoo)
    with pytest.raises(ValueError, match="corrupt or not a torch state_dict .*Unpickl"):
        zoo.load("tiny", root=tiny_zoo)
    assert not marker.exists()


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    f = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], f)
    with pytest.raises(ValueError, match=f"checkpoint {re.escape(str(f))} does not hold a state_dict"):
        zoo.load_state(f, "net1")


# --- IDX data files -------------------------------------------------------------------------------------------

def _idx(path, dims, payload):
    header = ((0x08 << 8) | len(dims)).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def test_missing_idx_file_names_file_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"t10k-images-idx3-ubyte.gz not found; searched: {re.escape(str(tmp_path))}"):
        data.fashion_mnist("test", root=tmp_path)


def test_corrupt_idx_file(tmp_path):
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", (2, 28, 28), bytes(2 * 28 * 28))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: not a readable gzip file"):
        data.fashion_mnist("test", root=tmp_path, sha256={})


def test_idx_file_with_wrong_hash_reports_both(tmp_path):
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", (2, 28, 28), bytes(2 * 28 * 28))
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", (2,), bytes(2))
    want = data.FASHION_MNIST_SHA256["t10k-images-idx3-ubyte.gz"]
    got = zoo.sha256_file(tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match=f"sha256 mismatch for .*t10k-images-idx3-ubyte.gz: expected {want}, got {got}"):
        data.fashion_mnist("test", root=tmp_path)


# --- the snnconv command line ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, msg", [
    ([], "the following arguments are required: cmd"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["bench", "--timesteps", "1,a"], "--timesteps must be comma-separated integers >= 1, got '1,a'"),
    (["bench", "--timesteps", "0"], "--timesteps must be comma-separated integers >= 1"),
    (["bench", "--model", "nope"], "--model: unknown zoo model 'nope'"),
    (["bench", "--methods", "max,nope"], "--methods: unknown method 'nope'"),
    (["bench", "--methods", "percentile", "--method-options", "p=150"], "--method-options: method 'percentile': option p=150"),
    (["bench", "--method-options", "samples"], "--method-options: method option 'samples' is not key=value"),
    (["bench", "--n-calib", "0"], "--n-calib must be an integer >= 1, got 0"),
    (["bench", "--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["bench", "--chunk", "x"], "argument --chunk: invalid int value: 'x'"),
    (["train"], "the following arguments are required: --model"),
    (["train", "--model", "nope"], "'nope' is not a zoo entry"),
    (["train", "--model", "fmnist-net4", "--lr", "-1"], "--lr must be a finite number > 0"),
    (["train", "--model", "fmnist-net4", "--alpha-decay", "nan"], "--alpha-decay must be a finite number >= 0, got nan"),
    (["finetune", "--model", "fmnist-net4", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["finetune", "--model", "fmnist-net4", "--T", "0"], "--T: the number of time steps must be an integer >= 1, got 0"),
    (["finetune", "--model", "fmnist-net4", "--T", "1.5"], "argument --T: invalid int value: '1.5'"),
    (["finetune", "--model", "fmnist-net4", "--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["finetune", "--model", "fmnist-net4", "--batch-size", "-4"], "--batch-size must be an integer >= 1, got -4"),
    (["finetune", "--model", "fmnist-net4", "--trainable", "v_threshold,bias"], "--trainable: cannot train ['bias']"),
    (["finetune", "--model", "fmnist-net4", "--device", "gpu"], "--device: 'gpu' is not a torch device"),
])
def test_cli_misuse_is_one_line_with_status_2(argv, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("snnconv: error: ")
    assert msg in err
    assert list(tmp_path.iterdir()) == []  # nothing written (not even bench-out/)


def test_cli_out_is_a_file_or_under_a_file(tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    assert cli.main(["bench", "--out", str(f)]) == 2
    assert f"--out '{f}' is a file, not a folder" in capsys.readouterr().err
    assert cli.main(["bench", "--out", str(f / "sub")]) == 2
    assert "is a file, so the folder cannot be created" in capsys.readouterr().err
    assert cli.main(["train", "--model", "fmnist-net4", "--out", str(f)]) == 2
    assert f.read_text() == "keep me"


def test_cli_out_unwritable(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root writes anywhere: make the permission check see what a user would
        real = os.access
        monkeypatch.setattr(cli.os, "access", lambda p, mode: False if str(p).startswith(str(ro)) else real(p, mode))
    assert cli.main(["bench", "--out", str(ro)]) == 2
    assert f"--out '{ro}': folder is not writable" in capsys.readouterr().err
    assert cli.main(["bench", "--out", str(ro / "new" / "deeper")]) == 2
    assert f"cannot create it, '{ro}' is not writable" in capsys.readouterr().err
    assert list(ro.iterdir()) == []


# --- interrupted training leaves no half-written checkpoint ---------------------------------------------------

@pytest.fixture
def small_arch(monkeypatch):
    """``snnconv train`` as is, on a linear model (the training loop and saving are what is tested)."""
    monkeypatch.setattr(train.models, "build", lambda *a, **k: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))


def _train_argv(out):
    return ["train", "--model", "digits-tiny", "--arch", "net1", "--dataset", "digits", "--epochs", "1",
            "--batch-size", "256", "--out", str(out), "--no-progress", "--threads", "1"]


def test_interrupted_checkpoint_write_keeps_old_files(tmp_path, monkeypatch, capsys, small_arch):
    old_ckpt, old_manifest = b"old checkpoint bytes", '{"digits-tiny": {"file": "digits-tiny.pt"}}\n'
    (tmp_path / "digits-tiny.pt").write_bytes(old_ckpt)
    (tmp_path / zoo.MANIFEST_NAME).write_text(old_manifest)
    real_save = torch.save

    def save_then_interrupt(obj, f, *a, **k):  # half the bytes reach the disk, then Ctrl-C
        real_save(obj, f, *a, **k)
        f.seek(f.tell() // 2)
        f.truncate()
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo.torch, "save", save_then_interrupt)
    assert cli.main(_train_argv(tmp_path)) == 130
    assert capsys.readouterr().err == "snnconv: interrupted\n"
    assert (tmp_path / "digits-tiny.pt").read_bytes() == old_ckpt
    assert (tmp_path / zoo.MANIFEST_NAME).read_text() == old_manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits-tiny.pt", zoo.MANIFEST_NAME]  # no temp files


def test_interrupted_training_writes_nothing(tmp_path, monkeypatch, small_arch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train.torch.optim.Adam, "step", interrupt)
    assert cli.main(_train_argv(tmp_path)) == 130
    assert list(tmp_path.iterdir()) == []


def test_atomic_save_writes_a_loadable_file(tmp_path):
    f = tmp_path / "w.pt"
    zoo.save_atomic({"w": torch.arange(3.0)}, f)
    assert torch.equal(zoo.read_state_dict(f)["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]


# --- fine-tuning and training refuse bad input in one line, before any work ------------------------------------

def _task(n: int = 32, classes: int = 3):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 4, generator=g), torch.randint(0, classes, (n,), generator=g)


def _refused(snn, match, exc=ValueError, data=None, **kw):
    """``sc.finetune`` refuses with ``match`` and leaves the network as it was (nothing swapped, nothing trained)."""
    before = {k: v.clone() for k, v in snn.state_dict().items()}
    kinds = [type(m) for m in sc.nodes.spiking_modules(snn).values()]
    with pytest.raises(exc, match=match):
        sc.finetune(snn, _task() if data is None else data, **{"batch_size": 8, "progress": False, **kw})
    assert {k: v for k, v in snn.state_dict().items()}.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in snn.state_dict().items())
    assert [type(m) for m in sc.nodes.spiking_modules(snn).values()] == kinds


@pytest.fixture
def fresh_snn():
    return sc.convert(mlp(), "max", calib(), progress=False)


@pytest.mark.parametrize("T", [1.5, True, "2", 0])
def test_finetune_bad_T(fresh_snn, T):
    _refused(fresh_snn, re.escape(f"finetune: T: the number of time steps must be an integer >= 1, got {T!r}"), T=T)


@pytest.mark.parametrize("name, value", [("lr", float("nan")), ("lr", 0.0), ("lr", -1.0), ("lr", float("inf")),
                                         ("lr", "1e-3"), ("threshold_lr", float("nan")), ("max_seconds", -5.0)])
def test_finetune_bad_rate(fresh_snn, name, value):
    _refused(fresh_snn, re.escape(f"finetune: {name} must be a finite number > 0, got {value!r}"), **{name: value})


@pytest.mark.parametrize("distill, exc, match", [
    ("ann", ValueError, "finetune: distill must be (teacher, temperature, weight), got 'ann'"),
    ((None, 2.0, 0.5), TypeError, "finetune: distill: teacher must be an nn.Module (the ANN), got NoneType"),
    ((nn.Linear(4, 3), 0.0, 0.5), ValueError, "finetune: distill: temperature must be a finite number > 0, got 0.0"),
    ((nn.Linear(4, 3), 2.0, 1.5), ValueError, "finetune: distill: weight must be a number in [0, 1], got 1.5"),
    ((nn.Linear(4, 3), 2.0, True), ValueError, "finetune: distill: weight must be a number in [0, 1], got True"),
])
def test_finetune_bad_distill(fresh_snn, distill, exc, match):
    _refused(fresh_snn, re.escape(match), exc, distill=distill)


def test_finetune_bad_schedule(fresh_snn):
    _refused(fresh_snn, re.escape("finetune: schedule must be one of ('constant', 'cosine'), got 'step'"),
             schedule="step")


@pytest.mark.parametrize("name, value", [("epochs", 0), ("epochs", 2.0), ("batch_size", 0), ("batch_size", True),
                                         ("max_batches", 0)])
def test_finetune_bad_count(fresh_snn, name, value):
    _refused(fresh_snn, re.escape(f"finetune: {name} must be an integer >= 1, got {value!r}"), **{name: value})


@pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_finetune_nonfinite_images(fresh_snn, value, word):
    x, y = _task()
    x[5, 1] = value
    _refused(fresh_snn, f"finetune: train_data images contains {word}", data=(x, y))


def test_finetune_nonfinite_image_in_a_dataset_names_the_batch(fresh_snn):
    class Images(torch.utils.data.Dataset):  # not a TensorDataset: checked batch by batch, before each step
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return torch.full((4,), float("nan")) if i == 3 else torch.rand(4), 0

    with pytest.raises(ValueError, match=r"finetune: train_data batch 0 images contains NaN"):
        sc.finetune(fresh_snn, Images(), batch_size=16, progress=False)


@pytest.mark.parametrize("labels, msg", [
    (torch.eye(3)[torch.arange(32) % 3], r"train_data labels have dtype torch.float32; expected integer class "
                                         r"indices \(one-hot labels: pass y.argmax\(1\)\)"),
    (torch.eye(3, dtype=torch.long)[torch.arange(32) % 3], r"train_data labels have shape \(32, 3\); expected one "
                                                           r"class index per image, shape \[B\] \(one-hot labels"),
    (torch.arange(32) % 3 + 1, r"train_data labels range over 1..3, but the network has 3 outputs: class indices "
                               r"must be 0..2 \(labels counted from 1\? subtract 1\)"),
    (torch.arange(16) % 3, r"train_data labels: 16 labels for 32 images"),
])
def test_finetune_bad_labels(fresh_snn, labels, msg):
    _refused(fresh_snn, "finetune: " + msg, data=(_task()[0], labels))


@pytest.mark.parametrize("labels, msg", [
    (torch.eye(3, dtype=torch.long)[torch.arange(8) % 3], r"evaluation labels \(batch 0\) have shape \(8, 3\); "
                                                          r"expected one class index per image, shape \[B\]"),
    (torch.arange(8) % 3 + 1, r"evaluation labels range over 1..3, but the network has 3 outputs: class indices "
                              r"must be 0..2 \(labels counted from 1\? subtract 1\)"),
])
def test_evaluate_bad_labels(snn, labels, msg):
    data = [(torch.rand(8, 4), labels)]
    with pytest.raises(ValueError, match=msg):
        sc.evaluate(snn, data, [2], progress=False)
    with pytest.raises(ValueError, match=msg):
        sc.ann_accuracy(mlp(), data)


def test_finetune_diverging_loss_stops_before_the_weights_turn_nonfinite(fresh_snn):
    with pytest.raises(ValueError, match=r"finetune: the loss became inf in epoch \d+, batch \d+ \(a learning rate too "
                                         r"high\?\); this batch updated nothing"):
        sc.finetune(fresh_snn, _task(), batch_size=8, lr=1e37, epochs=5, trainable=(), progress=False)
    assert all(torch.isfinite(v).all() for v in fresh_snn.state_dict().values())


def test_finetune_data_smaller_than_a_batch(fresh_snn):
    _refused(fresh_snn, r"finetune: train_data holds 32 images, fewer than one batch of 64: lower batch_size, or "
                        "pass drop_last=False to train on the partial batch", batch_size=64)
    res = sc.finetune(fresh_snn, _task(), batch_size=64, drop_last=False, lr=1e-2, progress=False)
    assert res["batches"] == 1 and res["loss"][0] > 0  # the partial batch trained


def test_finetune_images_that_do_not_fit_the_network(fresh_snn):
    _refused(fresh_snn, r"finetune: train_data images has shape \(1, 5\); the converted model expects \[B, 4\]",
             data=(torch.rand(32, 5), torch.zeros(32, dtype=torch.long)))


def test_finetune_train_data_of_the_wrong_kind(fresh_snn):
    _refused(fresh_snn, "finetune: train_data must be a map-style Dataset of \\(image, label\\) or a pair of tensors",
             exc=TypeError, data=[_task()])


@pytest.mark.parametrize("trainable, exc, msg", [
    ("leak", TypeError, "finetune: trainable must be a list of knob names"),
    (["v_threshold", "bias"], ValueError, r"finetune: trainable: cannot train \['bias'\]; trainable knobs: "),
])
def test_finetune_bad_trainable(fresh_snn, trainable, exc, msg):
    _refused(fresh_snn, msg, exc=exc, trainable=trainable)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_names_the_cause(fresh_snn, tmp_path, capsys, monkeypatch):
    _refused(fresh_snn, "finetune: device 'cuda': CUDA is not available on this machine", device="cuda")
    with pytest.raises(ValueError, match="map_location 'cuda': CUDA is not available") as ei:
        zoo.load("fmnist-net4", map_location="cuda")
    assert "corrupt" not in str(ei.value)
    monkeypatch.chdir(tmp_path)
    for argv in (["finetune", "--model", "fmnist-net4", "--device", "cuda"],
                 ["train", "--model", "fmnist-net4", "--device", "cuda", "--out", str(tmp_path / "z")],
                 ["bench", "--device", "cuda"]):
        assert cli.main(argv) == 2
        assert "--device 'cuda': CUDA is not available on this machine" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_finetune_checkpoint_that_is_a_folder(fresh_snn, tmp_path):
    _refused(fresh_snn, f"finetune: checkpoint '{re.escape(str(tmp_path))}' is a folder, not a file",
             checkpoint=tmp_path)


def test_finetune_resume_without_checkpoint(fresh_snn, tmp_path):
    _refused(fresh_snn, "finetune: resume=True, but there is no checkpoint", exc=FileNotFoundError,
             checkpoint=tmp_path / "none.pt", resume=True)


def test_train_fit_refuses_bad_data_and_rates():
    x, y = torch.rand(32, 4), torch.arange(32) % 3
    model = mlp().train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for kw, msg in (({"lr": float("nan")}, "train: lr must be a finite number > 0, got nan"),
                    ({"epochs": 0}, "train: epochs must be an integer >= 1, got 0"),
                    ({"train_ds": torch.utils.data.TensorDataset(x, y + 1)}, "train: train_data labels range over 1..3"),
                    ({"train_ds": torch.utils.data.TensorDataset(x * float("nan"), y)},
                     "train: train_data images contains NaN")):
        args = {"train_ds": torch.utils.data.TensorDataset(x, y), "epochs": 1, "lr": 1e-3, **kw}
        with pytest.raises(ValueError, match=re.escape(msg)):
            train.fit(model, show=False, **args)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


# --- conversion: messages that name the real cause ------------------------------------------------------------------

def test_converting_a_converted_snn(snn):
    with pytest.raises(graph.ConversionError, match=r"GraphModule is already a converted SNN \(layer '1' is a spiking "
                                                    r"IFNode\): convert the ANN it came from"):
        sc.convert(snn, "max", calib(), progress=False)


@pytest.mark.parametrize("method, T", [("lcp", 2), ("ttrbr", 2)])
def test_one_shot_calibration_iterator_for_a_method_that_reads_it_twice(method, T):
    batches = (torch.rand(16, 4) for _ in range(2))
    with pytest.raises(ValueError, match=rf"calib_data is a one-shot iterator \(generator\) and method '{method}' "
                                         r"reads it twice .*: the second pass would find it used up; pass a list"):
        sc.convert(mlp(), method, batches, T=T, progress=False)


def test_custom_autograd_activation_is_not_told_to_use_flatten():
    class Rect(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.abs()  # (a clamp(min=0) would be read as a ReLU by the graph normalisation)

        @staticmethod
        def backward(ctx, g):
            return g

    class MyAct(nn.Module):
        def forward(self, x):
            return Rect.apply(x)

    with pytest.raises(graph.ConversionError) as ei:
        sc.convert(nn.Sequential(nn.Linear(4, 8), MyAct(), nn.Linear(8, 3)).eval(), "max", calib(), progress=False)
    msg = str(ei.value)
    assert "module '1' (MyAct): unsupported tensor method .abs(); torch.fx traced into a custom module or autograd " \
           "function" in msg and "Flatten" not in msg


@pytest.mark.parametrize("method, kw, msg", [
    ("percentile", {"T": 4}, "method 'percentile': option T=4 would be ignored: its thresholds do not depend on T"),
    ("max", {"p": 99.0}, r"method 'max': option\(s\) \['p'\] do not apply to its 'max' thresholds"),
    ("dni+snm", {"samples": 128}, r"method 'dni\+snm': option\(s\) \['samples'\] would be ignored: it has no "
                                  r"calibration passes and no lambda search"),
    ("ttrbr", {"T": 2, "iters": 50}, r"method 'ttrbr': option\(s\) \['iters'\] would be ignored: it has no "
                                     r"calibration passes \(its lambda search reads samples only\)"),
])
def test_options_a_method_would_ignore_are_refused(method, kw, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        sc.convert(mlp(), method, calib(), progress=False, **kw)


# --- snnconv finetune / train: files never mix or vanish --------------------------------------------------------

def _finetune_argv(out, *more):
    return ["finetune", "--model", "fmnist-net4", "--method", "percentile", "--T", "4", "--out", str(out), *more]


def test_cli_finetune_keeps_an_earlier_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text("{}")
    assert cli.main(_finetune_argv(out)) == 2
    assert f"--out '{out}' holds result.json of an earlier run: --resume continues it, --overwrite replaces it" \
        in capsys.readouterr().err
    assert cli.main(_finetune_argv(out, "--resume", "--overwrite")) == 2
    assert "--resume continues the run in --out, --overwrite replaces it: give one" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["result.json"] and (out / "result.json").read_text() == "{}"


def test_cli_finetune_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "out.txt"
    f.write_text("keep me")
    assert cli.main(_finetune_argv(f)) == 2
    assert f"--out '{f}' is a file, not a folder" in capsys.readouterr().err
    assert f.read_text() == "keep me"


def test_cli_finetune_resume_without_or_with_another_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_finetune_argv(out, "--resume")) == 2
    assert f"--resume: there is no checkpoint {out / 'checkpoint.pt'} to continue" in capsys.readouterr().err
    out.mkdir()
    rec = {"model": "fmnist-net4", "method": "clipround", "options": {"calib": 1024}, "T": 2,
           "trainable": ["leak", "v_threshold"], "surrogate": "datta"}
    torch.save({"model": {}, "optimizer": {}, "epoch": 1, "loss": [1.0], "record": rec}, out / "checkpoint.pt")
    assert cli.main(_finetune_argv(out, "--resume")) == 2
    err = capsys.readouterr().err
    assert f"cannot resume checkpoint {out / 'checkpoint.pt'}: it was written for T=2, method='clipround', this run " \
           "is T=4, method='percentile'" in err


def test_cli_train_default_out_is_not_the_shipped_zoo(tmp_path, monkeypatch, small_arch):
    pytest.importorskip("sklearn")
    mine = tmp_path / "mine"
    monkeypatch.setenv("SNNCONV_ZOO", str(mine))
    shipped = {p.name: p.stat().st_mtime_ns for p in zoo.ZOO_DIR.iterdir()}
    argv = [a for a in _train_argv(tmp_path) if a not in ("--out", str(tmp_path))]
    assert cli.main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in zoo.ZOO_DIR.iterdir()} == shipped
    assert sorted(p.name for p in mine.iterdir()) == ["digits-tiny.pt", zoo.MANIFEST_NAME]
    assert "--out" not in zoo.read_manifest(mine)["digits-tiny"]["command"]
    assert not zoo.load("digits-tiny").training  # an entry only you trained is found in your folder
