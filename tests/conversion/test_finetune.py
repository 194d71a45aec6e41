"""SNN fine-tuning: the surrogate against its definition, lower training loss, resumable checkpoints, refusals,
and two torchrun processes against one on the same global batch."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import snnconv_ext as sc
import importlib

ft = importlib.import_module("snnconv_ext.conversion.training")  # the module (sc.finetune is the function)

sys.path.insert(0, str(Path(__file__).parent))
from ddp_finetune_worker import tiny_problem  # noqa: E402


def test_surrogate_is_datta_rectangle():
    # Sec. III-B: ds'/ds = 1 for 0 <= v <= 2 theta (s' = theta * S), else 0; forward is the Heaviside step
    theta = 0.5
    v = torch.tensor([-0.2, 0.0, 0.2, 0.49, 0.5, 0.8, 1.0, 1.01, 1.5], requires_grad=True)
    s = ft.rect_spike(v - theta, theta)
    assert torch.equal(s.detach(), (v >= theta).float().detach())
    (theta * s).sum().backward()
    inside = ((v >= 0) & (v <= 2 * theta)).float()
    assert torch.allclose(v.grad, inside)


def _loss(snn, x, y, T):
    with torch.no_grad():
        return F.cross_entropy(ft.logits(snn, x, T), y).item()


def test_finetune_lowers_training_loss(tmp_path):
    net, x, y = tiny_problem(128)
    snn = sc.convert(net, "max", [x], progress=False)
    before = _loss(snn, x, y, 2)
    out = sc.finetune(snn, (x, y), T=2, epochs=4, lr=1e-2, batch_size=32, progress=False,
                      checkpoint=tmp_path / "ck.pt")
    after = _loss(snn, x, y, 2)
    assert after < 0.8 * before, (before, after, out["loss"])
    assert out["loss"][-1] < out["loss"][0]
    assert set(os.listdir(tmp_path)) == {"ck.pt"}  # atomic save leaves no temporary file
    assert all(th != 0 for th in out["thresholds"].values())


def test_resume_continues_from_checkpoint(tmp_path):
    net, x, y = tiny_problem(64)
    a = sc.convert(net, "max", [x], progress=False)
    sc.finetune(a, (x, y), T=2, epochs=2, lr=1e-2, batch_size=16, progress=False)
    b = sc.convert(net, "max", [x], progress=False)
    ck = tmp_path / "ck.pt"
    sc.finetune(b, (x, y), T=2, epochs=1, lr=1e-2, batch_size=16, progress=False, checkpoint=ck)
    c = sc.convert(net, "max", [x], progress=False)
    res = sc.finetune(c, (x, y), T=2, epochs=2, lr=1e-2, batch_size=16, progress=False, checkpoint=ck, resume=True)
    assert len(res["loss"]) == 2
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.allclose(va, vc, atol=1e-6), k


def test_refuses_untrainable_layers():
    from spikingjelly.activation_based import neuron as sj_neuron
    net, x, y = tiny_problem(32)
    snn = sc.convert(net, "max", [x], progress=False)
    name = next(iter(sc.nodes.spiking_modules(snn)))
    sc.graph.set_module(snn, name, sj_neuron.LIFNode(step_mode="m"))
    with pytest.raises(ft.FinetuneError, match=name):
        sc.finetune(snn, (x, y), T=2, epochs=1, progress=False)
    with pytest.raises(ft.FinetuneError, match="no spiking nodes to fine-tune"):
        sc.finetune(net, (x, y), T=2, epochs=1, progress=False)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    # one process on the global batch of 16, in this process, against torchrun with 2 processes of 8 each
    net, x, y = tiny_problem()
    start = sc.convert(net, "max", [x], progress=False)
    one = sc.convert(net, "max", [x], progress=False)
    sc.finetune(one, (x, y), T=2, epochs=1, lr=1e-2, batch_size=16, progress=False)
    worker, out = Path(__file__).with_name("ddp_finetune_worker.py"), tmp_path / "two.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    two = torch.load(out, weights_only=True)
    ref = one.state_dict()
    assert set(two) == set(ref)
    untrained = start.state_dict()
    assert any(not torch.allclose(v, untrained[k]) for k, v in ref.items() if k in untrained)  # it did train
    for k, v in ref.items():
        assert torch.allclose(v, two[k], atol=1e-5), k


def test_cli_has_finetune(capsys):
    from snnconv_ext.app.cli import main
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--help"])
    assert e.value.code == 0 and "--max-minutes" in capsys.readouterr().out
