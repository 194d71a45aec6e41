"""The zoo's SNN entries (``fmnist-net4-snn-t1`` / ``-t2``: converted and trained networks written by ``sc.save``):
the file is the one the manifest's sha256 names, ``zoo.load`` and ``sc.load`` rebuild it, and the rebuilt network
scores on the first 1000 test images exactly the hits recorded when the entry was written (``benchmarks/lossless.py``
counted them in its full-test-set evaluation, whose accuracy it checked against the training run's own)."""
import json
import shutil

import pytest
import torch
from torch.utils.data import TensorDataset

import snnconv_ext as sc
from snnconv_ext import data, zoo

SNN_ENTRIES = ["fmnist-net4-snn-t1", "fmnist-net4-snn-t2"]


def _entry(name):
    info = zoo.read_manifest().get(name)
    if info is None:
        pytest.skip(f"{name} is not in the zoo")
    return info


@pytest.mark.parametrize("name", SNN_ENTRIES)
def test_snn_entry_file_matches_manifest_and_records_its_recipe(name):
    info = _entry(name)
    f = zoo.path(name)
    assert zoo.kind(name) == zoo.SNN_KIND and info["from"] == "fmnist-net4"
    assert f.stat().st_size == info["size_bytes"] and zoo.sha256_file(f) == info["sha256"]
    assert sc.saving.record(f)["model"] == "fmnist-net4" and sc.saving.record(f)["T"] == info.get("convert_T", info["T"])
    assert info["command"].startswith("python benchmarks/lossless.py ") and f"--T {info['T']}" in info["command"]
    assert info["test_hits"] == round(info["test_accuracy"] * info["test_images"] / 100)


@pytest.mark.parametrize("name", SNN_ENTRIES)
def test_snn_entry_reproduces_its_recorded_hits_on_1000_test_images(name):
    info = _entry(name)
    x, y = data.fashion_mnist("test").tensors
    snn = zoo.load(name)
    assert snn.zoo_name == name and sc.nodes.spiking_modules(snn)
    hits = sc.hits(snn, TensorDataset(x[:1000], y[:1000]), timesteps=[info["T"]], progress=False)[info["T"]]
    assert int(hits.sum()) == info["hits_first_1000"]
    again = sc.load(name)  # sc.load takes the zoo name as well, and rebuilds the same network
    with torch.no_grad():
        out = sc.simulation.run_window(snn, x[:64], info["T"])
        assert torch.equal(out, sc.simulation.run_window(again, x[:64], info["T"]))


def test_snn_entry_with_a_changed_file_is_refused_naming_the_command(tmp_path):
    name = SNN_ENTRIES[1]
    info = _entry(name)
    shutil.copy(zoo.path(name), tmp_path / info["file"])
    (tmp_path / zoo.MANIFEST_NAME).write_text(json.dumps({name: info}))
    with open(tmp_path / info["file"], "r+b") as f:  # one byte changed in the middle
        f.seek(info["size_bytes"] // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(ValueError, match="checksum mismatch.*lossless.py"):
        zoo.load(name, root=tmp_path)
