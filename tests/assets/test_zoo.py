"""Zoo loading (checksums, missing/corrupt files, accuracy) and a tiny ``snnconv train`` run.

Real zoo files are only read; every error case works on copies in tmp_path."""

import argparse
import json
import math
import shutil

import pytest
import torch
from torch import nn

from snnconv_ext import models, train, zoo
from snnconv_ext.core.activations import Clamp

REQUIRED = {"file", "sha256", "arch", "dataset", "activation", "test_accuracy", "command", "seed",
            "epochs", "optimizer", "lr", "batch_size", "augmentation", "torch", "train_time_s"}


@pytest.fixture
def zoo_copy(tmp_path):
    """A tmp copy of the manifest and the (small) fmnist-net4 checkpoint."""
    manifest = zoo.read_manifest()
    if "fmnist-net4" not in manifest:
        pytest.skip("fmnist-net4 is not trained (see zoo.train_command('fmnist-net4'))")
    shutil.copy(zoo.ZOO_DIR / zoo.MANIFEST_NAME, tmp_path / zoo.MANIFEST_NAME)
    shutil.copy(zoo.path("fmnist-net4"), tmp_path / manifest["fmnist-net4"]["file"])
    return tmp_path


def _fmnist_test_slice(n=1000):
    from snnconv_ext import data
    try:
        ds = data.fashion_mnist("test")
    except (FileNotFoundError, OSError) as e:
        pytest.skip(f"Fashion-MNIST not available: {e}")
    x, y = ds.tensors
    return x[:n], y[:n]


def test_manifest_entries_complete():
    manifest = {n: e for n, e in zoo.read_manifest().items() if e.get("kind", "ann") == "ann"}  # SNN entries: test_zoo_snn
    assert {"fmnist-net3", "fmnist-net4"} <= set(manifest) <= set(zoo.names())
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    for name, info in manifest.items():
        assert REQUIRED <= set(info), name
        assert info["command"].startswith(f"snnconv train --model {name} ")
        assert info["arch"] == zoo.ENTRIES[name].arch and info["dataset"] == zoo.ENTRIES[name].dataset
        assert info["activation"] == zoo.ENTRIES[name].act
        f = zoo.path(name)
        assert f.is_file() and f.stat().st_size == info["size_bytes"], name
        assert zoo.sha256_file(f) == info["sha256"], name
        # the recorded command reproduces the recorded recipe
        r = train._resolve(parser.parse_args(info["command"].split()[2:]))
        assert (r["epochs"], r["lr"], r["batch_size"], r["augment"], r["seed"]) == \
            (info["epochs"], info["lr"], info["batch_size"], info["augmentation"], info["seed"]), name
        assert {"adam": "Adam"}.get(r["optimizer"], "SGD (momentum 0.9)") == info["optimizer"], name


@pytest.mark.parametrize("name", ["fmnist-net3", "fmnist-net4"])
def test_load_eval_mode_and_accuracy(name):
    model = zoo.load(name)
    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x, y = _fmnist_test_slice()
    with torch.no_grad():
        acc = 100.0 * (model(x).argmax(1) == y).float().mean().item()
    assert acc >= 85.0
    assert abs(acc - zoo.read_manifest()[name]["test_accuracy"]) < 4.0


def test_checksum_mismatch(zoo_copy):
    f = zoo_copy / "fmnist-net4.pt"
    raw = bytearray(f.read_bytes())
    raw[-100] ^= 0xFF
    f.write_bytes(bytes(raw))
    expected = zoo.read_manifest(zoo_copy)["fmnist-net4"]["sha256"]
    with pytest.raises(ValueError, match="checksum mismatch") as ei:
        zoo.load("fmnist-net4", root=zoo_copy)
    msg = str(ei.value)
    assert str(f) in msg and expected in msg and zoo.sha256_file(f) in msg


def test_missing_file_names_recreate_command(zoo_copy):
    (zoo_copy / "fmnist-net4.pt").unlink()
    with pytest.raises(FileNotFoundError, match="snnconv train --model fmnist-net4") as ei:
        zoo.load("fmnist-net4", root=zoo_copy)
    assert "fmnist-net4.pt" in str(ei.value)


def test_corrupt_file_with_matching_checksum(zoo_copy):
    f = zoo_copy / "fmnist-net4.pt"
    f.write_bytes(b"not a checkpoint" * 10)
    manifest = json.loads((zoo_copy / zoo.MANIFEST_NAME).read_text())
    manifest["fmnist-net4"]["sha256"] = zoo.sha256_file(f)
    (zoo_copy / zoo.MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="corrupt") as ei:
        zoo.load("fmnist-net4", root=zoo_copy)
    assert str(f) in str(ei.value)
    with pytest.raises(ValueError, match="corrupt"):
        zoo.load_state(f, "net4")


def test_load_state_user_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = models.net4()
    f = tmp_path / "mine.pt"
    torch.save({k: v.half() for k, v in src.state_dict().items()}, f)
    model = zoo.load_state(f, "net4", expected_sha256=zoo.sha256_file(f))
    assert not model.training
    assert torch.allclose(model[0].weight, src[0].weight.half().float())
    with pytest.raises(ValueError, match="checksum mismatch"):
        zoo.load_state(f, "net4", expected_sha256="0" * 64)
    with pytest.raises(ValueError, match="does not match") as ei:
        zoo.load_state(f, "net2")
    assert str(f) in str(ei.value)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        zoo.load_state(tmp_path / "nope.pt", "net4")


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown zoo model"):
        zoo.load("fmnist-net99")


def test_tiny_training_run(tmp_path):
    pytest.importorskip("sklearn")
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--model", "digits-net1", "--arch", "net1", "--dataset", "digits",
                              "--epochs", "1", "--batch-size", "64", "--augment", "crop1",
                              "--out", str(tmp_path), "--no-progress", "--threads", "1"])
    entry = train.run(args)
    f = tmp_path / "digits-net1.pt"
    assert f.is_file() and entry["sha256"] == zoo.sha256_file(f)
    manifest = zoo.read_manifest(tmp_path)
    assert manifest["digits-net1"] == entry and REQUIRED <= set(entry)
    assert entry["arch_kwargs"] == {"in_channels": 1, "image_size": 8, "num_classes": 10}
    assert entry["epochs"] == 1 and entry["augmentation"] == "crop1" and entry["seed"] == 0
    assert entry["command"].startswith("snnconv train --model digits-net1 --epochs 1 ")
    assert f"--out {tmp_path}" in entry["command"]
    assert entry["test_accuracy"] > 50.0  # 1 epoch on 8x8 digits
    model = zoo.load("digits-net1", root=tmp_path)
    assert isinstance(model, nn.Sequential) and not model.training
    # seeded: retraining gives identical weights
    entry2 = train.run(args)
    assert entry2["sha256"] == entry["sha256"]


def test_augment_batch_shapes_and_determinism():
    x = torch.rand(5, 1, 28, 28)
    a = train.augment_batch(x, 2, True, torch.Generator().manual_seed(3))
    b = train.augment_batch(x, 2, True, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(train.augment_batch(x, 0, False, torch.Generator()), x)
    with pytest.raises(ValueError, match="unknown augmentation"):
        train._parse_augment("rotate")


def test_stage_two_uses_sgd_with_the_alpha_penalty_in_the_loss(tmp_path):
    # TTRBR Sec. 4 / App. D: stage II fine-tunes with SGD (momentum 0.9) and an L2 regularizer on alpha in the loss.
    # With a strong penalty every alpha must move well away from its 99.9th-percentile start (the old Adam recipe
    # moved them by at most ~2%), and the manifest must state the penalty that was applied.
    pytest.importorskip("sklearn")
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    common = ["--arch", "net1", "--dataset", "digits", "--batch-size", "64", "--out", str(tmp_path),
              "--no-progress", "--threads", "1"]
    train.run(parser.parse_args(["--model", "digits-net1", "--epochs", "1"] + common))
    args = parser.parse_args(["--model", "digits-net1-clamp", "--act", "clamp", "--epochs", "3", "--lr", "0.05",
                              "--alpha-decay", "0.05", "--init", str(tmp_path / "digits-net1.pt")] + common)
    entry = train.run(args)
    assert entry["optimizer"] == "SGD (momentum 0.9)"
    assert entry["loss"] == "cross-entropy + 0.05 * ||alpha||^2"
    a0, a1 = torch.tensor(entry["alpha_init"]), torch.tensor(entry["alpha_final"])
    assert len(a0) == 2 and bool(((a0 - a1) / a0 > 0.05).all()), (a0, a1)  # the penalty pulls every alpha down
    model = zoo.load("digits-net1-clamp", root=tmp_path)
    got = torch.tensor([float(m.alpha.detach()) for m in model.modules() if hasattr(m, "alpha")])
    assert torch.allclose(got, a1, atol=2e-3 * float(a1.max()))  # the stored weights carry the final alphas


def test_stage_two_entries_start_from_zoo_checkpoints_and_record_their_alphas():
    # TTRBR stage II and QCFS: every fine-tuned entry names a stage-I checkpoint that is in the zoo (so
    # `snnconv train` can rebuild it), and the alphas its manifest records are the ones stored in its weights
    manifest = zoo.read_manifest()
    staged = {n: e for n, e in manifest.items() if e.get("init")}
    assert {"fmnist-resnet20-clamp", "fmnist-resnet20-pre-clamp", "fmnist-resnet56-w8-clamp",
            "fmnist-resnet56-w8-pre-clamp"} <= set(staged)
    for name, entry in staged.items():
        assert entry["init"] in manifest and zoo.path(entry["init"]).is_file(), (name, entry["init"])
        if "alpha_final" in entry:
            model = zoo.load(name)
            got = [float(m.alpha.detach()) for m in model.modules() if isinstance(m, Clamp)]   # QCFS's lambda too
            assert got == pytest.approx(entry["alpha_final"], rel=2e-3), name


def test_penalty_shrink_is_what_stage_two_does_to_an_alpha_the_loss_cannot_reach():
    # an alpha above every input gets no gradient from the loss (clamp's gradient reaches alpha only where
    # x > alpha), so a real SGD stage II must move it by exactly the regularizer's recursion (train.penalty_shrink)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), Clamp(alpha=1e3), nn.Linear(8, 3))
    ds = torch.utils.data.TensorDataset(torch.rand(200, 1, 4, 4), torch.randint(0, 3, (200,)))
    train.fit(net, ds, epochs=2, lr=0.05, batch_size=32, optimizer="sgd", alpha_decay=0.02, show=False)
    steps = 2 * math.ceil(200 / 32)
    assert net[2].bound / 1e3 - 1 == pytest.approx(train.penalty_shrink(0.05, 0.02, steps), rel=1e-4)
    assert train.penalty_shrink(0.05, 0.02, steps) < -0.05      # and the regularizer does move it
