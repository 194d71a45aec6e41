"""Tests for snnconv_ext.data: real and fake Fashion-MNIST, download over loopback, digits, fake CIFAR."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from snnconv_ext import data

REAL_DIR = data.SYSTEM_FASHION_MNIST_DIR


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Keep SNNCONV_DATA_DIR, the system folder and ~/.cache out of the fake-file tests."""
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "system")
    monkeypatch.setattr(data, "_cache_dir", lambda: tmp_path / "home-cache")


# ---------------------------------------------------------------------------------------------
# fake IDX helpers
# ---------------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """Uncompressed IDX encoding of a uint8 array."""
    magic = (0x08 << 8) | arr.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_gz(path: Path, payload: bytes) -> str:
    path.write_bytes(gzip.compress(payload))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_split(tmp: Path, split: str = "test", n: int = 12, seed: int = 0):
    """Write a fake images/labels pair; return (images, labels, sha256 dict)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    iname, lname = data.FASHION_MNIST_FILES[split]
    sums = {
        iname: write_gz(tmp / iname, idx_bytes(images)),
        lname: write_gz(tmp / lname, idx_bytes(labels)),
    }
    return images, labels, sums


# ---------------------------------------------------------------------------------------------
# real Fashion-MNIST
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not all((REAL_DIR / f).is_file() for f in data.FASHION_MNIST_SHA256),
    reason=f"real Fashion-MNIST not installed in {REAL_DIR} (apt-get install dataset-fashion-mnist)",
)
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(split, n):
    ds = data.fashion_mnist(split, root=REAL_DIR)
    x, y = ds.tensors
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y.unique().tolist()) == set(range(10))
    assert torch.bincount(y, minlength=10).tolist() == [n // 10] * 10
    # second call hits the in-process cache and returns the same tensors
    assert data.fashion_mnist(split, root=REAL_DIR).tensors[0] is x


# ---------------------------------------------------------------------------------------------
# fake IDX files
# ---------------------------------------------------------------------------------------------


def test_fake_idx_roundtrip(tmp_path):
    images, labels, sums = fake_split(tmp_path, "test")
    ds = data.fashion_mnist("test", root=tmp_path, sha256=sums)
    x, y = ds.tensors
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0] * 255.0, torch.from_numpy(images).float(), atol=1e-4)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    assert len(ds) == 12 and ds[3][0].shape == (1, 28, 28)


def test_env_var_is_searched(tmp_path, monkeypatch):
    _, labels, sums = fake_split(tmp_path, "train", n=5)
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path))
    y = data.fashion_mnist("train", sha256=sums).tensors[1]
    assert y.tolist() == labels.tolist()


def test_wrong_magic_names_file(tmp_path):
    _, _, sums = fake_split(tmp_path, "test")
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    sums[bad.name] = write_gz(bad, idx_bytes(np.zeros(12, np.uint8), magic=0x00000803))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz.*magic"):
        data.fashion_mnist("test", root=tmp_path, sha256=sums)


@pytest.mark.parametrize("how", ["data", "header", "gzip"])
def test_truncated_names_file(tmp_path, how):
    _, _, sums = fake_split(tmp_path, "test")
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    full = idx_bytes(np.zeros((12, 28, 28), np.uint8))
    if how == "data":
        sums[bad.name] = write_gz(bad, full[:-100])
    elif how == "header":
        sums[bad.name] = write_gz(bad, full[:10])
    else:  # gzip stream cut short
        bad.write_bytes(gzip.compress(full)[:-30])
        sums[bad.name] = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*(truncated|corrupt)"):
        data.fashion_mnist("test", root=tmp_path, sha256=sums)


def test_checksum_mismatch(tmp_path):
    _, _, sums = fake_split(tmp_path, "test")
    actual = sums["t10k-images-idx3-ubyte.gz"]
    sums["t10k-images-idx3-ubyte.gz"] = "0" * 64
    with pytest.raises(ValueError) as e:
        data.fashion_mnist("test", root=tmp_path, sha256=sums)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "0" * 64 in msg and actual in msg


def test_official_checksums_reject_fake_files(tmp_path):
    fake_split(tmp_path, "test")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        data.fashion_mnist("test", root=tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.fashion_mnist("train", root=tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "SNNCONV_DATA_DIR" in msg and "download=True" in msg


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        data.fashion_mnist("val")


# ---------------------------------------------------------------------------------------------
# download over a loopback HTTP server
# ---------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/served on 127.0.0.1 (ephemeral port); yields (base_url, folder)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_success(tmp_path, http_server):
    url, served = http_server
    images, labels, sums = fake_split(served, "test", n=7)
    dest = tmp_path / "dest"
    ds = data.fashion_mnist("test", root=dest, download=True, url=url, sha256=sums)
    assert ds.tensors[0].shape == (7, 1, 28, 28)
    assert ds.tensors[1].tolist() == labels.tolist()
    assert sorted(p.name for p in dest.iterdir()) == sorted(sums)  # no leftover temp files
    for name, digest in sums.items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == digest


def test_download_default_dir_is_cache(tmp_path, http_server):
    url, served = http_server
    _, _, sums = fake_split(served, "train", n=3)
    ds = data.fashion_mnist("train", download=True, url=url, sha256=sums)
    assert len(ds) == 3
    assert sorted(p.name for p in (tmp_path / "home-cache").iterdir()) == sorted(sums)


def test_download_bad_checksum_removed(tmp_path, http_server):
    url, served = http_server
    _, _, sums = fake_split(served, "test", n=7)
    sums["t10k-images-idx3-ubyte.gz"] = "f" * 64
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*ffff"):
        data.fashion_mnist("test", root=dest, download=True, url=url, sha256=sums)
    assert not dest.exists() or list(dest.iterdir()) == []


def test_download_http_error(tmp_path, http_server):
    url, _ = http_server  # nothing served: 404
    dest = tmp_path / "dest"
    with pytest.raises(OSError, match=r"t10k-images-idx3-ubyte\.gz"):
        data.fashion_mnist("test", root=dest, download=True, url=url)
    assert list(dest.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------


def test_digits_shapes_and_split():
    train, test = data.digits("train"), data.digits("test")
    xtr, ytr = train.tensors
    xte, yte = test.tensors
    assert xtr.shape[1:] == (1, 8, 8) and xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert len(train) + len(test) == 1797
    assert abs(len(test) - 0.25 * 1797) < 10
    assert 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0 and float(xtr.max()) == 1.0
    # stratified: every class in both splits, class proportions close
    ctr, cte = torch.bincount(ytr, minlength=10), torch.bincount(yte, minlength=10)
    assert (cte > 0).all() and ((cte.float() / (ctr + cte).float()) - 0.25).abs().max() < 0.02
    # deterministic, disjoint, and seed-dependent
    assert torch.equal(data.digits("test").tensors[0], xte)
    assert torch.equal(data.digits("test", seed=1).tensors[1].sort().values, yte.sort().values)
    assert not torch.equal(data.digits("test", seed=1).tensors[0], xte)
    all_rows = {tuple(r.tolist()) for r in torch.cat([xtr, xte]).flatten(1)}
    assert len(all_rows) >= 1797 - 20  # load_digits has a few duplicate images; otherwise no overlap


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 on fake pickle batches
# ---------------------------------------------------------------------------------------------


def write_batch(path: Path, n: int, label_keys: dict[bytes, int], seed: int, protocol: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), b"batch_label": b"fake"}
    for key, k in label_keys.items():
        batch[key] = rng.integers(0, k, size=n).tolist()
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return batch


@pytest.fixture
def fake_cifar10(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [write_batch(folder / f"data_batch_{i}", 20, {b"labels": 10}, i) for i in range(1, 6)]
    test = write_batch(folder / "test_batch", 20, {b"labels": 10}, 99, protocol=pickle.HIGHEST_PROTOCOL)
    return tmp_path, batches, test


@pytest.mark.parametrize("at_folder", [False, True])
def test_cifar10(fake_cifar10, at_folder):
    root, batches, test = fake_cifar10
    if at_folder:
        root = root / "cifar-10-batches-py"
    x, y = data.cifar10(root, "train").tensors
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    expected = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    assert torch.allclose(x * 255.0, torch.from_numpy(expected).float(), atol=1e-4)
    assert y.tolist() == sum((b[b"labels"] for b in batches), [])
    xt, yt = data.cifar10(root, "test").tensors
    assert xt.shape == (20, 3, 32, 32) and yt.tolist() == test[b"labels"]


@pytest.mark.parametrize("label,key,k", [("fine", b"fine_labels", 100), ("coarse", b"coarse_labels", 20)])
def test_cifar100(tmp_path, label, key, k):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    keys = {b"fine_labels": 100, b"coarse_labels": 20}
    train = write_batch(folder / "train", 20, keys, 1)
    test = write_batch(folder / "test", 10, keys, 2)
    x, y = data.cifar100(tmp_path, "train", label=label).tensors
    assert x.shape == (20, 3, 32, 32) and y.tolist() == train[key]
    assert torch.allclose(x * 255.0, torch.from_numpy(train[b"data"].reshape(-1, 3, 32, 32)).float())
    xt, yt = data.cifar100(folder, "test", label=label).tensors
    assert xt.shape == (10, 3, 32, 32) and yt.tolist() == test[key] and int(yt.max()) < k


def test_cifar_corrupt_and_missing(fake_cifar10, tmp_path):
    root, _, _ = fake_cifar10
    folder = root / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(b"\x80\x02}q\x00(U\x04data")  # truncated pickle
    with pytest.raises(ValueError, match="data_batch_3"):
        data.cifar10(root, "train")
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.cifar10(root, "train")
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        data.cifar100(tmp_path / "nowhere", "train")


def test_cifar_bad_shape_and_unsafe_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    bad = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match=r"test_batch.*3072"):
        data.cifar10(folder, "test")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": print}))
    with pytest.raises(ValueError, match=r"test_batch.*not allowed"):
        data.cifar10(folder, "test")


# ---------------------------------------------------------------------------------------------
# loader / subset
# ---------------------------------------------------------------------------------------------


def test_loader_and_subset():
    ds = torch.utils.data.TensorDataset(torch.arange(50).float(), torch.arange(50))
    first = [y.tolist() for _, y in data.loader(ds, batch_size=16, shuffle=True, seed=3)]
    again = [y.tolist() for _, y in data.loader(ds, batch_size=16, shuffle=True, seed=3)]
    assert first == again and sorted(sum(first, [])) == list(range(50)) and len(first) == 4
    assert [y.tolist() for _, y in data.loader(ds, batch_size=25)] == [list(range(25)), list(range(25, 50))]

    assert data.subset(ds, 5, seed=None).indices == [0, 1, 2, 3, 4]
    r = data.subset(ds, 10, seed=1)
    assert len(r) == 10 and r.indices == data.subset(ds, 10, seed=1).indices and len(set(r.indices)) == 10
    assert r.indices != data.subset(ds, 10, seed=2).indices
    assert len(data.subset(ds, 500)) == 50
