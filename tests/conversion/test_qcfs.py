"""QCFS (Bu et al., ICLR 2022): the activation (Eq. 15) against hand-computed values, its gradients, and the
conversion: an IF neuron with theta = lambda and v0 = theta/2 emits exactly the activation's level in T = L steps."""
import copy

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import ann2snn, neuron as sj_neuron

from snnconv_ext import neuron
from snnconv_ext.core.activations import QCFS, qcfs_levels
from snnconv_ext.core.simulation import simulate_net
from snnconv_spikingjelly import QCFSRecipe, recipes

# (x, lambda, L) -> output, worked by hand from (lam/L) * clip(floor(x*L/lam + 1/2), 0, L)
HAND = [
    (-1.0, 2.0, 4, 0.0),      # floor(-2 + .5) = -2 -> 0
    (0.24, 2.0, 4, 0.0),      # floor(0.48 + .5) = 0
    (0.26, 2.0, 4, 0.5),      # floor(0.52 + .5) = 1 -> 1 * 0.5
    (0.74, 2.0, 4, 0.5),      # floor(1.48 + .5) = 1
    (0.76, 2.0, 4, 1.0),      # floor(1.52 + .5) = 2
    (1.9, 2.0, 4, 2.0),       # floor(3.8 + .5) = 4 = L
    (2.5, 2.0, 4, 2.0),       # floor(5.5) = 5 -> clipped to L
    (0.0624, 1.0, 8, 0.0),    # floor(0.4992 + .5) = 0
    (0.0626, 1.0, 8, 0.125),  # floor(0.5008 + .5) = 1 -> 1/8
    (0.3, 1.0, 8, 0.25),      # floor(2.4 + .5) = 2 -> 2/8
    (0.99, 1.0, 8, 1.0),      # floor(7.92 + .5) = 8
]


@pytest.mark.parametrize("x,lam,levels,want", HAND)
def test_activation_hand_table(x, lam, levels, want):
    assert QCFS(lam, levels=levels)(torch.tensor([x])).item() == pytest.approx(want, abs=1e-7)


def test_lambda_and_input_gradients():
    # straight-through floor (Sec. 4.3): on 0 < x < lam d/dx = 1 and d/dlam = level/L - x/lam (the lowest and the
    # highest level included); above lam the output is lam, so d/dlam = 1; below 0 both are 0
    q = QCFS(2.0, levels=4)
    x = torch.tensor([-1.0, 0.1, 0.26, 0.74, 0.76, 1.0, 1.9, 2.5], requires_grad=True)
    q(x).sum().backward()
    xd = x.detach()
    lv = torch.floor(xd * 4 / 2.0 + 0.5).clamp(0, 4)
    inside = (xd > 0) & (xd < 2.0)
    want_lam = torch.where(inside, lv / 4 - xd / 2.0, (xd >= 2.0).float()).sum()
    assert q.alpha.grad is not None and q.alpha.grad.item() == pytest.approx(want_lam.item(), abs=1e-6)
    assert torch.equal(x.grad, inside.float())


def test_levels_are_the_if_spike_count_over_L_steps():
    # constant input z for T = L steps into IF with theta = lam, v0 = theta/2, soft reset
    torch.manual_seed(0)
    for lam, levels in ((1.7, 4), (0.9, 8), (3.0, 16)):
        z = torch.empty(4000).uniform_(-0.5 * lam, 1.5 * lam)
        spikes = neuron.simulate(z.expand(levels, -1), theta=lam, v0=lam / 2)
        assert torch.equal(spikes.sum(0), qcfs_levels(z, torch.tensor(lam), levels))


class _Tiny(nn.Module):
    def __init__(self, levels: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(64, 48), QCFS(1.3, levels=levels), nn.Linear(48, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))


@pytest.mark.parametrize("levels", [4, 8])
def test_recipe_round_trips_through_fxconverter(levels, calib, digits):
    # one QCFS layer: over T = L steps of a constant image the SNN's mean readout is the QCFS ANN's output exactly
    torch.manual_seed(levels)
    ann = _Tiny(levels).eval()
    snn = ann2snn.FXConverter(recipe=QCFSRecipe(dataloader=calib, progress=False)).convert(copy.deepcopy(ann))
    nodes = [m for m in snn.modules() if isinstance(m, sj_neuron.BaseNode)]
    assert len(nodes) == 1 and type(nodes[0]).__mro__[1] is sj_neuron.IFNode  # SpikingJelly's own IF
    assert float(nodes[0].v_threshold) == pytest.approx(1.3)
    x = digits[1].tensors[0][:256]
    out = torch.cat(list(simulate_net(snn, x, levels, chunk=levels)))[-1] / levels
    with torch.no_grad():
        want = ann(x)
    assert torch.allclose(out, want, atol=1e-4)
    assert recipes.QCFSRecipe is QCFSRecipe


def test_qcfs_refuses_a_relu_net(calib):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 10)).eval()
    with pytest.raises(Exception, match="QCFS"):
        ann2snn.FXConverter(recipe=QCFSRecipe(dataloader=calib, progress=False)).convert(net)


def test_bad_levels():
    with pytest.raises(ValueError, match="levels"):
        QCFS(1.0, levels=0)
    with pytest.raises(ValueError, match="shift"):
        QCFS(1.0, levels=4, shift=1.5)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_init_levels_are_the_relu_inputs_percentile(digits):
    import numpy as np
    from snnconv_ext.app.train import init_levels, swap_relus

    ann = _mlp().eval()
    x = digits[0].tensors[0][:300]
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().flatten().numpy()))
             for m in ann if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        ann(x)
    for h in hooks:
        h.remove()
    q = copy.deepcopy(ann)
    assert swap_relus(q, lambda: QCFS(levels=4)) == 2
    got = init_levels(q, x, batch_size=128)
    # the percentile of the ReLU output, zeros included, as the k-th smallest value with k = round(p/100 * n)
    want = [float(np.sort(np.maximum(s, 0))[round(0.999 * s.size) - 1]) for s in seen]
    assert got == pytest.approx(want, rel=1e-6)


def test_qcfs_warm_start_fine_tunes_and_saves(digits, tmp_path):
    from snnconv_ext import train as trainer, zoo

    train, test = digits
    ann = _mlp()
    trainer.fit(ann, train, epochs=8, lr=3e-3, batch_size=64, show=False)
    relu_acc = trainer.evaluate(ann, test)
    q = trainer.qcfs(ann, 4, train, epochs=3, lr=1e-3, batch_size=64, init_images=512,
                     checkpoint=tmp_path / "q.pt", progress=False)
    assert all(type(m) is not nn.ReLU for m in q.modules()) and sum(isinstance(m, QCFS) for m in q.modules()) == 2
    assert trainer.evaluate(q, test) > relu_acc - 3.0  # L = 4 costs little on this task after fine-tuning
    q2 = copy.deepcopy(q)
    q2.load_state_dict(zoo.read_state_dict(tmp_path / "q.pt"))
    assert torch.equal(q2(test.tensors[0][:64]), q(test.tensors[0][:64]))
    with pytest.raises(ValueError, match="no nn.ReLU"):
        trainer.qcfs(q, 4, train, epochs=1, progress=False)


def test_bench_row_names_the_relu_ann_it_started_from():
    from torch.utils.data import TensorDataset
    from snnconv_ext import data, zoo
    from snnconv_ext.app.bench import run_bench
    from snnconv_ext.app.train import evaluate as ann_eval

    log = []
    rows = run_bench("fmnist-net4-qcfs4", ["qcfs", "sj-best"], [4], n_test=200, n_calib=256, progress=False,
                     log=log.append)
    assert [r["method"] for r in rows] == ["qcfs"]  # SpikingJelly's recipe converts ReLU nets only
    assert any("sj-best" in line and "n/a" in line for line in log)
    test = data.fashion_mnist("test")
    first = TensorDataset(test.tensors[0][:200], test.tensors[1][:200])
    assert rows[0]["relu_ann"] == "fmnist-net4"
    assert rows[0]["relu_ann_accuracy"] == pytest.approx(ann_eval(zoo.load("fmnist-net4"), first), abs=1e-9)
    assert rows[0]["ann_accuracy"] == pytest.approx(ann_eval(zoo.load("fmnist-net4-qcfs4"), first), abs=1e-9)
