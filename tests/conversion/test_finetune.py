"""SNN fine-tuning: the surrogate against its definition, lower training loss, SpikingJelly's own nodes kept when only
weights train (same training as snnconv's neuron), the swap announced when knobs train, a fine-tuned state_dict
loading into a fresh conversion, resumable checkpoints that refuse another run's, single-step mode, refusals, and
two torchrun processes against one on the same global batch."""
import copy
import math
import os
import subprocess
import sys
import warnings
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


def _assert_same_state(net, ref, atol=1e-6):
    """Every tensor of ``net``'s state_dict equals ``ref``'s (same key) within ``atol``."""
    ref = ref.state_dict()
    for k, v in net.state_dict().items():
        assert torch.allclose(v, ref[k], atol=atol), k


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


def _kd_by_hand(student, teacher, y, tau, w):
    """Hinton et al. 2015 written out per image with math: (1-w) CE + w tau^2 sum_c p_c log(p_c / q_c)."""
    total = 0.0
    for s, t, k in zip(student.tolist(), teacher.tolist(), y.tolist()):
        ce = math.log(sum(math.exp(v) for v in s)) - s[k]
        zt, zs = sum(math.exp(v / tau) for v in t), sum(math.exp(v / tau) for v in s)
        p = [math.exp(v / tau) / zt for v in t]
        q = [math.exp(v / tau) / zs for v in s]
        total += (1 - w) * ce + w * tau ** 2 * sum(pc * math.log(pc / qc) for pc, qc in zip(p, q))
    return total / len(y)


def test_distill_loss_is_hintons():
    student, teacher, y = torch.tensor([[1.0, 0.0], [0.5, 2.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1])
    for tau, w in [(2.0, 0.5), (1.0, 1.0), (4.0, 0.0)]:
        assert ft.distill_loss(student, teacher, y, tau, w).item() == pytest.approx(_kd_by_hand(student, teacher, y, tau, w),
                                                                                   rel=1e-6)


def test_finetune_distills_from_the_teacher_on_a_tiny_net():
    # one full batch: the loss finetune reports is the distillation loss of the untrained SNN's T-step readout
    net, x, y = tiny_problem(32)
    teacher = nn.Sequential(nn.Linear(8, 2))
    torch.manual_seed(1)
    snn = sc.convert(net, "max", [x], progress=False)
    with torch.no_grad():
        expected = _kd_by_hand(ft.logits(copy.deepcopy(snn), x, 2), teacher(x), y, 3.0, 0.7)
    out = sc.finetune(snn, (x, y), T=2, epochs=1, lr=1e-3, batch_size=32, trainable=(), progress=False,
                      distill=(teacher, 3.0, 0.7))
    assert out["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert out["record"]["distill"] == {"temperature": 3.0, "weight": 0.7}


def test_cosine_schedule_anneals_the_learning_rate(monkeypatch):
    # Loshchilov & Hutter Eq. 5 without restarts: lr_k = lr (1 + cos(pi k / K)) / 2 over K planned batches
    seen = []
    step = torch.optim.Adam.step

    def spy(self, *a, **kw):
        seen.append([g["lr"] for g in self.param_groups])
        return step(self, *a, **kw)

    net, x, y = tiny_problem(32)
    snn = sc.convert(net, "max", [x], progress=False)
    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    sc.finetune(snn, (x, y), T=1, epochs=2, lr=1e-2, threshold_lr=1e-3, batch_size=8, progress=False,
                schedule="cosine")
    K = 8
    assert seen == [pytest.approx([1e-2 * (1 + math.cos(math.pi * k / K)) / 2,
                                   1e-3 * (1 + math.cos(math.pi * k / K)) / 2]) for k in range(K)]


def test_interrupted_cosine_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    net, x, y = tiny_problem(32)
    whole = sc.convert(net, "max", [x], progress=False)
    sc.finetune(whole, (x, y), T=1, epochs=2, lr=1e-2, batch_size=8, progress=False, schedule="cosine")
    step, calls = torch.optim.Adam.step, []

    def crash_in_epoch_2(self, *a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return step(self, *a, **kw)

    ck = tmp_path / "ck.pt"
    first = sc.convert(net, "max", [x], progress=False)
    with monkeypatch.context() as m:
        m.setattr(torch.optim.Adam, "step", crash_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            sc.finetune(first, (x, y), T=1, epochs=2, lr=1e-2, batch_size=8, progress=False, schedule="cosine",
                        checkpoint=ck)
    again = sc.convert(net, "max", [x], progress=False)
    sc.finetune(again, (x, y), T=1, epochs=2, lr=1e-2, batch_size=8, progress=False, schedule="cosine",
                checkpoint=ck, resume=True)
    _assert_same_state(again, whole)


def test_resume_continues_from_checkpoint(tmp_path):
    net, x, y = tiny_problem(64)
    a = sc.convert(net, "max", [x], progress=False)
    sc.finetune(a, (x, y), T=2, epochs=2, lr=1e-2, batch_size=16, progress=False)
    b = sc.convert(net, "max", [x], progress=False)
    ck = tmp_path / "ck.pt"
    sc.finetune(b, (x, y), T=2, epochs=1, lr=1e-2, batch_size=16, progress=False, checkpoint=ck)
    rec = torch.load(ck, weights_only=True)["record"]
    assert rec == {"method": "max", "options": {}, "T": 2, "trainable": ["leak", "v_threshold"], "surrogate": "datta"}
    c = sc.convert(net, "max", [x], progress=False)
    res = sc.finetune(c, (x, y), T=2, epochs=2, lr=1e-2, batch_size=16, progress=False, checkpoint=ck, resume=True)
    assert len(res["loss"]) == 2
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.allclose(va, vc, atol=1e-6), k


@pytest.mark.parametrize("change, msg", [
    ({"T": 4}, "it was written for T=2, this run is T=4"),
    ({"method": "clipround"}, "it was written for method='max', this run is method='clipround'"),
    ({"trainable": ()}, r"it was written for trainable=\['leak', 'v_threshold'\], this run is trainable=\[\]"),
    ({"record": {"model": "b"}}, "it was written for model='a', this run is model='b'"),
])
def test_resume_of_another_runs_checkpoint_is_refused_naming_the_difference(tmp_path, change, msg):
    net, x, y = tiny_problem(64)
    ck = tmp_path / "ck.pt"
    sc.finetune(sc.convert(net, "max", [x], progress=False), (x, y), T=2, batch_size=16, progress=False,
                checkpoint=ck, record={"model": "a"})
    before = ck.read_bytes()
    kw = {"T": 2, "record": {"model": "a"}, **{k: v for k, v in change.items() if k != "method"}}
    other = sc.convert(net, change.get("method", "max"), [x], progress=False)
    start = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match=f"cannot resume checkpoint {ck}: {msg}"):
        sc.finetune(other, (x, y), batch_size=16, progress=False, checkpoint=ck, resume=True, **kw)
    assert ck.read_bytes() == before  # the checkpoint is untouched
    assert all(torch.equal(v, start[k]) for k, v in other.state_dict().items())  # refused before any work


def test_checkpoints_are_not_replaced_silently(tmp_path):
    net, x, y = tiny_problem(64)
    ck = tmp_path / "ck.pt"
    with pytest.raises(FileNotFoundError, match=f"resume=True, but there is no checkpoint {ck} to continue"):
        sc.finetune(sc.convert(net, "max", [x], progress=False), (x, y), batch_size=16, progress=False,
                    checkpoint=ck, resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint="):
        sc.finetune(sc.convert(net, "max", [x], progress=False), (x, y), batch_size=16, progress=False, resume=True)
    sc.finetune(sc.convert(net, "max", [x], progress=False), (x, y), batch_size=16, progress=False, checkpoint=ck)
    before = ck.read_bytes()
    with pytest.raises(FileExistsError, match=f"checkpoint {ck} exists: resume=True continues it, overwrite=True "
                                              "replaces it"):
        sc.finetune(sc.convert(net, "max", [x], progress=False), (x, y), batch_size=16, progress=False, checkpoint=ck)
    assert ck.read_bytes() == before
    sc.finetune(sc.convert(net, "max", [x], progress=False), (x, y), T=3, batch_size=16, progress=False,
                checkpoint=ck, overwrite=True)
    assert torch.load(ck, weights_only=True)["record"]["T"] == 3


def test_single_step_network_trains_as_the_multi_step_one():
    # after functional.set_step_mode(snn, "s") the network is stepped one step at a time; training must not change
    from spikingjelly.activation_based import functional
    net, x, y = tiny_problem(64)
    multi = sc.convert(net, "clipround", [x], progress=False)
    single = copy.deepcopy(multi)
    functional.set_step_mode(single, "s")
    for snn in (multi, single):
        torch.manual_seed(0)
        sc.finetune(snn, (x, y), T=3, epochs=2, lr=1e-2, batch_size=16, progress=False)
    assert {m.step_mode for m in single.modules() if hasattr(m, "step_mode")} == {"s"}
    _assert_same_state(single, multi)


def test_refuses_untrainable_layers():
    from spikingjelly.activation_based import neuron as sj_neuron
    net, x, y = tiny_problem(32)
    snn = sc.convert(net, "max", [x], progress=False)
    name = next(iter(sc.nodes.spiking_modules(snn)))
    sc.graph.set_module(snn, name, sj_neuron.LIFNode(step_mode="m"))
    with pytest.raises(ft.FinetuneError, match=name):
        sc.finetune(snn, (x, y), T=2, epochs=1, batch_size=16, progress=False)
    with pytest.raises(ft.FinetuneError, match="no spiking nodes to fine-tune"):
        sc.finetune(net, (x, y), T=2, epochs=1, batch_size=16, progress=False)


def _kinds(snn):
    return [type(m).__name__ for m in sc.nodes.spiking_modules(snn).values()]


def _strelu_problem():
    from snnconv_ext.core.activations import StReLU
    net, x, y = tiny_problem(64)
    torch.manual_seed(1)
    signed = nn.Sequential(nn.Linear(8, 16), StReLU(), nn.Linear(16, 2)).eval()
    return signed, x, y


@pytest.mark.parametrize("method", ["max", "clipround", "strelu"])
def test_weights_only_keeps_spikingjelly_nodes_and_trains_like_snnconvs_neuron(method):
    # trainable=(): SpikingJelly's own IFNode / TernaryIFNode stay, with Datta's surrogate; the reference is the same
    # conversion with snnconv's neuron everywhere (native=False), trained the same way: the weights must agree
    net, x, y = _strelu_problem() if method == "strelu" else tiny_problem(64)
    native = sc.convert(net, method, [x], progress=False)
    ours = sc.convert(net, method, [x], progress=False, native=False)
    assert _kinds(native) == [("TernaryIFNode" if method == "strelu" else "IFNode")] and _kinds(ours) == ["SnnconvNode"]
    start = copy.deepcopy(native.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.NodeSwapWarning)  # nothing is swapped, so nothing is said
        res = sc.finetune(native, (x, y), T=4, epochs=2, lr=1e-2, batch_size=16, trainable=(), progress=False)
    sc.finetune(ours, (x, y), T=4, epochs=2, lr=1e-2, batch_size=16, trainable=(), progress=False)
    assert res["swapped"] == [] and res["trainable"] == []
    assert _kinds(native) == [("TernaryIFNode" if method == "strelu" else "IFNode")]
    assert any(not torch.equal(v, start[k]) for k, v in native.state_dict().items())  # it trained
    _assert_same_state(native, ours)


def test_training_knobs_announces_the_swap():
    net, x, y = tiny_problem(64)
    snn = sc.convert(net, "max", [x], progress=False)
    with pytest.warns(ft.NodeSwapWarning, match=r"1 spiking layer\(s\) \['1'\] \(IFNode -> SnnconvNode\) to train "
                                                r"\['v_threshold', 'leak'\]; trainable=\(\) trains the weights only"):
        res = sc.finetune(snn, (x, y), T=2, epochs=1, lr=1e-2, batch_size=16, progress=False)
    assert res["swapped"] == ["1"] and _kinds(snn) == ["SnnconvNode"]
    with warnings.catch_warnings():  # a second fine-tuning of the same knobs swaps nothing
        warnings.simplefilter("error", ft.NodeSwapWarning)
        assert sc.finetune(snn, (x, y), T=2, epochs=1, batch_size=16, progress=False)["swapped"] == []


@pytest.mark.parametrize("trainable", [(), ("v_threshold", "leak")])
def test_finetuned_state_dict_loads_into_a_fresh_conversion(trainable):
    # the documented way: convert again with the knobs that were trained (trainable=() is a plain conversion)
    net, x, y = tiny_problem(64)
    snn = sc.convert(net, "clipround", [x], progress=False)
    info = sc.finetune(snn, (x, y), T=2, epochs=2, lr=1e-2, batch_size=16, trainable=trainable, progress=False)
    state = {k: v.clone() for k, v in snn.state_dict().items()}
    fresh = sc.convert(net, "clipround", [x], progress=False, trainable=info["trainable"])
    assert _kinds(fresh) == _kinds(snn)
    fresh.load_state_dict(state)  # strict: same keys
    with torch.no_grad():
        assert torch.equal(ft.logits(fresh, x, 2), ft.logits(snn, x, 2))
    untrained = sc.convert(net, "clipround", [x], progress=False)
    with torch.no_grad():
        assert not torch.equal(ft.logits(untrained, x, 2), ft.logits(snn, x, 2))  # the loaded weights matter


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


def test_cli_finetune_resume_and_overwrite(tmp_path, capsys):
    # one run per --out: a second run needs --resume (same settings: it continues) or --overwrite (it starts afresh)
    import json
    from snnconv_ext.app.cli import main
    out = tmp_path / "run"
    argv = ["finetune", "--model", "fmnist-net4", "--method", "percentile", "--T", "2", "--max-batches", "1",
            "--test", "50", "--calib", "64", "--trainable", "none", "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["swapped"] == [] and res["trainable"] == [] and len(res["loss"]) == 1
    assert res["record"] == {"method": "percentile", "model": "fmnist-net4", "options": {"calib": 64}, "T": 2,
                             "trainable": [], "surrogate": "datta"}
    assert torch.load(out / "checkpoint.pt", weights_only=True)["record"] == res["record"]
    assert main(argv + ["--resume", "--epochs", "2"]) == 0
    assert len(json.loads((out / "result.json").read_text())["loss"]) == 2  # continued: epoch 1 from the checkpoint
    assert main(argv + ["--overwrite"]) == 0
    assert len(json.loads((out / "result.json").read_text())["loss"]) == 1
    assert "note:" not in capsys.readouterr().out  # weights only: SpikingJelly's IFNodes stay, nothing to announce
