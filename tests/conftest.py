"""Shared fixtures: a small BN CNN trained on scikit-learn's 8x8 digits in a few seconds."""
import pytest

import snnconv_ext  # noqa: F401  (thread defaults, README "Threads and busy machines"; before torch loads)
import torch
import torch.nn as nn

torch.set_num_threads(2)


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, 10))


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


def run_both_backends(sj_net, st_net, x, T):
    """Simulate a SpikingJelly and an snnTorch conversion of one model for T steps; return both outputs
    ``[T, B, classes]`` and, per spiking layer, whether the two emitted identical spike trains."""
    import snntorch.utils
    from snnconv_ext.core.simulation import simulate_net
    from snnconv_snntorch import Neuron
    from spikingjelly.activation_based.neuron import BaseNode

    spikes_sj, spikes_st = [], []
    hooks = [m.register_forward_hook(lambda m, i, o: spikes_sj.append(o)) for m in sj_net.modules()
             if isinstance(m, BaseNode)]
    hooks += [m.register_forward_hook(lambda m, i, o: spikes_st.append(o)) for m in st_net.modules()
              if isinstance(m, Neuron)]
    a = torch.cat(list(simulate_net(sj_net, x, T, chunk=T)))
    snntorch.utils.reset(st_net)
    b = torch.stack([st_net(x) for _ in range(T)]).cumsum(0)
    for h in hooks:
        h.remove()
    n = len(spikes_sj)
    same = [torch.equal(spikes_sj[k], torch.stack(spikes_st[k::n])) for k in range(n)]
    return a, b, same


# --- `cuda` marker (issue 10 item 10): such tests run when a GPU is present and are skipped otherwise ---
def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
