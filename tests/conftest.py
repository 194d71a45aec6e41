"""Shared fixtures: a small BN CNN trained on scikit-learn's 8x8 digits in a few seconds (helpers: tests/helpers.py),
and the markers: ``cuda`` (skipped without a GPU) and ``slow`` (left out of the quick loop ``pytest -m "not slow"``)."""
import pytest

import snnconv_ext  # noqa: F401  (thread defaults, book/performance.md "Threads and busy machines"; before torch loads)
import torch
import torch.nn as nn

from helpers import small_cnn

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    from snnconv_ext import data
    return data.digits("train"), data.digits("test")


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """Small CNN with BN trained on digits (about 95% test accuracy), eval mode."""
    train, _ = digits
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = small_cnn()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    x, y = train.tensors
    for _ in range(40):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="session")
def calib(digits):
    from snnconv_ext import data
    return data.loader(data.subset(digits[0], 512, seed=0), batch_size=128)


# --- `cuda` marker (issue 10 item 10): such tests run when a GPU is present and are skipped otherwise ---
def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
