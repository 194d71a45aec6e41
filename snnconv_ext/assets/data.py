"""Datasets for snnconv: Fashion-MNIST, scikit-learn digits, CIFAR-10 and CIFAR-100.

Every loader returns a ``torch.utils.data.TensorDataset`` of ``(images, labels)`` with float32 images
in ``[0, 1]`` shaped ``[N, C, H, W]`` and int64 labels shaped ``[N]``.

Fashion-MNIST search order
--------------------------
The four standard IDX files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``) are looked up

1. in ``root`` if it is given (and nowhere else), otherwise
2. in ``$SNNCONV_DATA_DIR`` if that variable is set,
3. in ``/usr/share/datasets/fashion-mnist/`` (Debian package ``dataset-fashion-mnist``),
4. in ``~/.cache/snnconv/fashion-mnist/`` (where ``download=True`` puts them by default).

Each file's sha256 is checked before it is parsed. With ``download=True`` missing files are fetched
into ``root``, else ``$SNNCONV_DATA_DIR``, else ``~/.cache/snnconv/fashion-mnist/``; a download is
written to a temporary file, verified, and only then moved into place.

Parsed arrays are cached in-process, so a second call with unchanged files is instant. The cached
tensors are shared between calls: do not modify a returned dataset's tensors in place.

CIFAR-10/100 are read from the standard python-pickle batches (``cifar-10-batches-py/`` and
``cifar-100-python/``); ``root`` may point at that folder or at its parent.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import hashlib
import os
import pickle
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..core.files import sha256_file

__all__ = [
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_SHA256",
    "FASHION_MNIST_URL",
    "SYSTEM_FASHION_MNIST_DIR",
    "fashion_mnist",
    "fashion_mnist32",
    "digits",
    "cifar10",
    "cifar100",
    "loader",
    "subset",
]

# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------

FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

FASHION_MNIST_SHA256: dict[str, str] = {
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
}

# Base URL published by the dataset's authors (Zalando Research).
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DATA_DIR = "SNNCONV_DATA_DIR"

_IDX_UBYTE = 0x08
_CHUNK = 1 << 20


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "snnconv" / "fashion-mnist"


def _search_dirs(root: str | os.PathLike | None) -> list[Path]:
    """Directories searched for the IDX files, in order (see module docstring)."""
    if root is not None:
        return [Path(root).expanduser()]
    dirs: list[Path] = []
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        dirs.append(Path(env).expanduser())
    dirs += [SYSTEM_FASHION_MNIST_DIR, _cache_dir()]
    return dirs


def _download_dir(root: str | os.PathLike | None) -> Path:
    """Directory that ``download=True`` writes into."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env).expanduser() if env else _cache_dir()


def _verify(path: Path, expected: str | None) -> None:
    """Raise ValueError if ``path``'s sha256 differs from ``expected`` (None skips the check)."""
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ValueError(
            f"sha256 mismatch for {path}: expected {expected.lower()}, got {actual}. "
            "The file is corrupt or not the official release; delete it and fetch it again."
        )


def _parse_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse a gzip-compressed unsigned-byte IDX file with ``ndim`` dimensions."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable gzip file ({e}); it is corrupt or truncated") from e
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, need {header})")
    magic = int.from_bytes(raw[:4], "big")
    expected_magic = (_IDX_UBYTE << 8) | ndim
    if magic != expected_magic:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned-byte, {ndim} dimension(s))"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        raise ValueError(
            f"{path}: IDX data size mismatch: header says {dims} = {size} bytes, "
            f"file holds {len(raw) - header} bytes (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(dims)


@functools.lru_cache(maxsize=8)
def _load_idx_pair(
    images_path: str, labels_path: str, key: tuple, images_sha: str | None, labels_sha: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify and parse one split; ``key`` (sizes and mtimes) invalidates the cache when files change."""
    ip, lp = Path(images_path), Path(labels_path)
    _verify(ip, images_sha)
    _verify(lp, labels_sha)
    images = _parse_idx(ip, 3)
    labels = _parse_idx(lp, 1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{ip} holds {images.shape[0]} images but {lp} holds {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{ip}: expected 28x28 images, got {images.shape[1]}x{images.shape[2]}")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{lp}: label {int(labels.max())} out of range 0..9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def _download(url: str, dest: Path, expected: str | None) -> None:
    """Fetch ``url`` into ``dest`` via a temp file; verify sha256 before moving it into place."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = resp.headers.get("Content-Length")
            with tqdm(
                total=int(total) if total and total.isdigit() else None,
                unit="B", unit_scale=True, desc=dest.name, leave=False,
            ) as bar:
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
        actual = h.hexdigest()
        if expected is not None and actual != expected.lower():
            raise ValueError(
                f"downloaded {url} has sha256 {actual}, expected {expected.lower()}; "
                f"the download was deleted and {dest} was not written"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise OSError(f"could not download {url} to {dest}: {e}") from e
    finally:
        if tmp.exists():
            tmp.unlink()


def _missing_message(name: str, dirs: Sequence[Path]) -> str:
    searched = ", ".join(str(d) for d in dirs)
    return (
        f"Fashion-MNIST file {name} not found; searched: {searched}. To get it: "
        "`apt-get install dataset-fashion-mnist` (Debian, installs into "
        f"{SYSTEM_FASHION_MNIST_DIR}/), or put the four IDX .gz files in a folder and set "
        f"{ENV_DATA_DIR} to it (or pass root=...), or pass download=True."
    )


def fashion_mnist(
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
    url: str | None = None,
    sha256: Mapping[str, str | None] | None = None,
) -> TensorDataset:
    """Fashion-MNIST as (float32 [N,1,28,28] in [0,1], int64 [N]); 60000 train / 10000 test.

    ``sha256`` maps file names to expected digests and replaces the official ones (a ``None`` value,
    or a name absent from the mapping, skips that file's check); meant for tests and mirrors.
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    checks = dict(FASHION_MNIST_SHA256 if sha256 is None else sha256)
    dirs = _search_dirs(root)
    paths: list[Path] = []
    for name in FASHION_MNIST_FILES[split]:
        found = next((d / name for d in dirs if (d / name).is_file()), None)
        if found is None:
            if not download:
                raise FileNotFoundError(_missing_message(name, dirs))
            base = url or FASHION_MNIST_URL
            found = _download_dir(root) / name
            _download(base.rstrip("/") + "/" + name, found, checks.get(name))
        paths.append(found)
    ip, lp = paths
    key = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    x, y = _load_idx_pair(
        str(ip.resolve()), str(lp.resolve()), key, checks.get(ip.name), checks.get(lp.name)
    )
    return TensorDataset(x, y)


def fashion_mnist32(split: str = "train", root: str | os.PathLike | None = None) -> TensorDataset:
    """Fashion-MNIST at 3x32x32 for nets built for RGB 32x32 input (the torchvision zoo entries): each image
    resized bilinearly (align_corners=False) from 28x28 to 32x32 and its one channel repeated three times
    (a stride-0 view: one copy in memory; indexing a batch makes it contiguous)."""
    x, y = fashion_mnist(split, root).tensors
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
    return TensorDataset(x.expand(-1, 3, -1, -1), y)


# --------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class shuffled split with numpy's seeded generator; returns sorted (train, test) indices."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def digits(split: str = "train", test_fraction: float = 0.25, seed: int = 0) -> TensorDataset:
    """scikit-learn 8x8 digits as (float32 [N,1,8,8] in [0,1], int64 [N]) with a fixed stratified split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = _digits_arrays()
    train_idx, test_idx = _stratified_split(labels, test_fraction, seed)
    idx = train_idx if split == "train" else test_idx
    x = torch.from_numpy(images[idx]).unsqueeze(1)
    y = torch.from_numpy(labels[idx])
    return TensorDataset(x, y)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# --------------------------------------------------------------------------------------------

try:  # numpy >= 2
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]

# The only globals a CIFAR batch (or a numpy array pickled by numpy 1.x or 2.x) needs.
_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes at pickle protocol < 3
}
for _mod in ("numpy.core", "numpy._core"):
    _NUMPY_GLOBALS[(_mod + ".multiarray", "_reconstruct")] = np.ndarray.__reduce__(np.zeros(0))[0]
    _NUMPY_GLOBALS[(_mod + ".multiarray", "scalar")] = np.int64(0).__reduce__()[0]
    _NUMPY_GLOBALS[(_mod + ".numeric", "_frombuffer")] = _frombuffer
for _dt in (np.uint8, np.int32, np.int64, np.float32, np.float64):
    _NUMPY_GLOBALS[("numpy", _dt.__name__)] = _dt
    _NUMPY_GLOBALS[("numpy.dtypes", type(np.dtype(_dt)).__name__)] = type(np.dtype(_dt))


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the numpy globals CIFAR batches use (no arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _NUMPY_GLOBALS.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return obj


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR pickle batch; validate it and return (uint8 [N,3,32,32], int64 [N])."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch {path} not found")
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure means a corrupt / foreign file
        raise ValueError(f"{path}: cannot read CIFAR pickle batch ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: expected a dict with b'data' and {label_key!r}, got {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but labels of shape {list(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _find_folder(root: str | os.PathLike, folder: str, marker: str) -> Path:
    """Return ``root/folder`` if it exists, else ``root`` if it holds ``marker``."""
    root = Path(root).expanduser()
    if (root / folder).is_dir():
        return root / folder
    if (root / marker).is_file():
        return root
    raise FileNotFoundError(
        f"no {folder}/ found: looked for {root / folder / marker} and {root / marker}. "
        f"Pass root= as the extracted {folder} folder or its parent."
    )


@functools.lru_cache(maxsize=4)
def _load_cifar(paths: tuple[str, ...], key: tuple, label_key: bytes, num_classes: int):
    xs, ys = zip(*(_read_batch(Path(p), label_key, num_classes) for p in paths))
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    y = torch.from_numpy(np.concatenate(ys))
    return x, y


def _cifar(files: list[Path], label_key: bytes, num_classes: int,
           sha256: Mapping[str, str | None] | None = None) -> TensorDataset:
    for p in files:
        if not p.is_file():
            raise FileNotFoundError(f"CIFAR batch {p} not found")
        _verify(p, (sha256 or {}).get(p.name))  # before the file is unpickled
    key = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    x, y = _load_cifar(tuple(str(p.resolve()) for p in files), key, label_key, num_classes)
    return TensorDataset(x, y)


def cifar10(root: str | os.PathLike, split: str = "train",
            sha256: Mapping[str, str | None] | None = None) -> TensorDataset:
    """CIFAR-10 as (float32 [N,3,32,32] in [0,1], int64 [N]) from ``cifar-10-batches-py`` (or its parent).
    ``sha256`` maps batch file names to expected digests, checked before a file is read."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = _find_folder(root, "cifar-10-batches-py", "test_batch" if split == "test" else "data_batch_1")
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar([folder / n for n in names], b"labels", 10, sha256)


def cifar100(root: str | os.PathLike, split: str = "train", label: str = "fine",
             sha256: Mapping[str, str | None] | None = None) -> TensorDataset:
    """CIFAR-100 as (float32 [N,3,32,32] in [0,1], int64 [N]); ``label`` picks 100 fine or 20 coarse classes.
    ``sha256`` maps file names (``train``, ``test``) to expected digests, checked before a file is read."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    folder = _find_folder(root, "cifar-100-python", split)
    key, n = (b"fine_labels", 100) if label == "fine" else (b"coarse_labels", 20)
    return _cifar([folder / split], key, n, sha256)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def loader(dataset: Dataset, batch_size: int = 256, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """DataLoader with a seeded generator so shuffled order is reproducible."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g)


def subset(dataset: Dataset, n: int, seed: int | None = 0) -> Subset:
    """Deterministic subset of ``n`` items (e.g. a calibration set): random with ``seed``, first-n if ``seed`` is None.

    ``n`` larger than the dataset is clamped to its length.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    total = len(dataset)  # type: ignore[arg-type]
    n = min(n, total)
    if seed is None:
        indices = list(range(n))
    else:
        g = torch.Generator()
        g.manual_seed(seed)
        indices = torch.randperm(total, generator=g)[:n].tolist()
    return Subset(dataset, indices)
