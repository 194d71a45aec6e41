"""Determinism and isolation: the same run gives the same bytes, a simulation leaves no state behind,
converting twice gives the same network, and the batch size does not change results."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import snnconv_ext as sc
from snnconv_ext import data
from snnconv_ext.core.simulation import simulate_net

from helpers import small_cnn

METHODS = ["percentile", "clipround", "snm", "dni+snm", "lcp"]


@pytest.fixture(scope="module")
def net_and_data():
    """An untrained BN CNN with non-trivial BN statistics (spiking behaviour, not accuracy, is tested)."""
    torch.manual_seed(1)
    net = small_cnn()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    x = data.digits("train").tensors[0]
    return net.eval(), x[:128], x[128:192], x[192:224]


def _readout(snn, x, T=12, chunk=5):
    return torch.cat(list(simulate_net(snn, x, T, chunk)))


@pytest.mark.parametrize("backend", ["spikingjelly", "snntorch"])
@pytest.mark.parametrize("method", METHODS)
def test_batch_a_then_b_equals_b_alone(net_and_data, method, backend):
    net, calib, a, b = net_and_data
    snn = sc.convert(net, method, [calib], backend=backend, progress=False)
    alone = _readout(sc.convert(net, method, [calib], backend=backend, progress=False), b)
    _readout(snn, a, T=7)  # a different batch size and T, stopped mid-chunk
    assert torch.equal(_readout(snn, b), alone)


def test_interleaved_evaluations_do_not_leak(net_and_data):
    net, calib, a, b = net_and_data
    snn = sc.convert(net, "snm", [calib], progress=False)
    ya, yb = torch.zeros(len(a), dtype=torch.long), torch.ones(len(b), dtype=torch.long)
    acc_a = sc.evaluate(snn, [(a, ya)], [3, 9], progress=False)
    acc_b = sc.evaluate(snn, [(b, yb)], [3, 9], progress=False)
    both = sc.evaluate(snn, [(a, ya), (b, yb)], [3, 9], progress=False)
    for T in (3, 9):  # the accuracy over A and B is the image-weighted mean of the two
        assert both[T] == pytest.approx((acc_a[T] * len(a) + acc_b[T] * len(b)) / (len(a) + len(b)))


@pytest.mark.parametrize("method", METHODS + ["ttrbr"])
def test_converting_twice_gives_identical_networks_and_leaves_the_ann_alone(net_and_data, method):
    net, calib, a, _ = net_and_data
    before = {k: v.clone() for k, v in net.state_dict().items()}
    kw = {"samples": 64} if method in ("lcp", "ttrbr") else {}  # fewer calibration images: faster
    one = sc.convert(net, method, [calib], progress=False, **kw)
    two = sc.convert(net, method, [calib], progress=False, **kw)
    s1, s2 = one.state_dict(), two.state_dict()
    assert s1.keys() == s2.keys() and len(s1) > 0
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert torch.equal(_readout(one, a), _readout(two, a))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the source ANN is untouched
    assert not net.training


@pytest.mark.parametrize("method", ["percentile", "clipround", "dni+snm"])
def test_results_do_not_depend_on_the_batch_size(net_and_data, method):
    net, calib, a, b = net_and_data
    x = torch.cat([a, b])
    snn = sc.convert(net, method, [calib], progress=False)
    whole = _readout(snn, x)
    for size in (1, 7, 40):
        idx = range(0, len(x), size) if size > 1 else range(0, 8)  # batch size 1: the first 8 images
        parts = torch.cat([_readout(snn, x[i:i + size]) for i in idx], 1)
        ref = whole[:, :parts.shape[1]]
        # one spike more or less near a threshold may move a logit by one spike's worth: compare per image
        close = ((parts - ref).abs() <= 1e-5 * (1 + ref.abs())).flatten(0, 1).all(-1)
        assert close.float().mean() >= 0.99, (size, (parts - ref).abs().max())
    # and the accuracy, from the same readouts
    y = whole[-1].argmax(-1)
    assert sc.evaluate(snn, torch.utils.data.TensorDataset(x, y), [12], batch_size=7, chunk=5,
                       progress=False)[12] == 100.0


def _fmnist_ready() -> bool:
    from snnconv_ext import zoo
    try:
        data.fashion_mnist("test")
    except (FileNotFoundError, OSError, ValueError):
        return False
    return "fmnist-net4" in zoo.read_manifest()


@pytest.mark.slow
@pytest.mark.skipif(not _fmnist_ready(), reason="needs Fashion-MNIST and the zoo's fmnist-net4")
def test_two_bench_runs_give_byte_identical_csv(tmp_path):
    # two separate processes (different hash seeds, run at once) with the same settings and seed
    argv = [sys.executable, "-m", "snnconv_ext.app.cli", "bench", "--model", "fmnist-net4", "--methods", "max,snm",
            "--timesteps", "1,3", "--n-test", "64", "--n-calib", "32", "--no-progress"]
    procs = []
    for i in (1, 2):
        env = dict(os.environ, PYTHONHASHSEED=str(i), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(argv + ["--out", str(tmp_path / f"run{i}")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    one, two = (tmp_path / "run1" / "results.csv").read_bytes(), (tmp_path / "run2" / "results.csv").read_bytes()
    assert one == two
    assert one.count(b"\n") == 1 + 2 * 2  # header + 2 methods x 2 T
