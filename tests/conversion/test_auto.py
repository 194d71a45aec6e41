"""``method="auto"``: the choice matches an independent re-scoring of the candidates on the held-out calibration
images, the held-out images come from calib_data only, the time budget is respected and bad input is refused."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import snnconv_ext as sc
from snnconv_ext import auto, data
from snnconv_ext.core.simulation import simulate_net
from snnconv_ext.conversion.registry import get as get_method

T = 2
CANDIDATES = ["max", "percentile", "clipround", "dni", "mmse-channel"]


def _images(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _tuned(method):
    return {"T": T} if get_method(method).T is not None else {}


@pytest.fixture(scope="module")
def picked(trained_cnn, calib):
    with pytest.MonkeyPatch.context() as mp:  # auto must never load a (test) split: any dataset call fails here
        for name in ("digits", "fashion_mnist", "cifar10", "cifar100"):
            mp.setattr(data, name, lambda *a, **k: pytest.fail("auto loaded a dataset"))
        return sc.convert(trained_cnn, "auto", calib, T=T, candidates=CANDIDATES, progress=False)


@pytest.mark.slow
def test_heldout_is_a_seeded_subset_of_calib_data(picked, calib):
    rep = picked.meta["snnconv_auto"]
    x, _ = _images(calib)
    idx = rep["heldout_indices"]
    assert len(idx) == len(set(idx)) == rep["heldout_images"] == min(512, len(x) // 4)
    assert all(0 <= i < len(x) for i in idx)
    assert rep["conversion_images"] + rep["heldout_images"] == len(x)
    # the same split again from the permutation of the seed (no other source of randomness)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    assert sorted(idx) == sorted(perm[:len(idx)].tolist())


@pytest.mark.slow
def test_choice_matches_independent_rescoring(picked, trained_cnn, calib):
    rep = picked.meta["snnconv_auto"]
    x, y = _images(calib)
    held = torch.tensor(rep["heldout_indices"])
    rest = torch.tensor(sorted(set(range(len(x))) - set(held.tolist())))
    conv = DataLoader(TensorDataset(x[rest], y[rest]), batch_size=256)
    scores = {}
    for m in CANDIDATES:
        snn = sc.convert(trained_cnn, m, conv, progress=False, **_tuned(m))
        scores[m] = sc.evaluate(snn, TensorDataset(x[held], y[held]), [T], progress=False)[T]
    assert [r["method"] for r in rep["tried"]] == auto.candidates(trained_cnn, CANDIDATES)[0]
    for r in rep["tried"]:
        assert r["heldout_accuracy"] == pytest.approx(scores[r["method"]], abs=1e-3)
    assert max(scores.values()) - min(scores.values()) > 5  # the candidates really differ at T=2
    best = max(scores.values())
    assert scores[rep["chosen"]] == best
    tied = [r for r in rep["tried"] if scores[r["method"]] == best]
    assert min(tied, key=lambda r: r["spikes_per_image"])["method"] == rep["chosen"]
    # the returned network is the chosen method converted on the conversion part only
    ref = sc.convert(trained_cnn, rep["chosen"], conv, progress=False, **_tuned(rep["chosen"]))
    probe = x[held[:16]]
    assert torch.equal(list(simulate_net(picked, probe, T, chunk=T))[-1], list(simulate_net(ref, probe, T, chunk=T))[-1])


def test_conversion_uses_only_the_conversion_part(trained_cnn, calib):
    snn = sc.convert(trained_cnn, "auto", calib, T=T, candidates=["percentile"], progress=False)
    rep = snn.meta["snnconv_auto"]
    x, y = _images(calib)
    rest = sorted(set(range(len(x))) - set(rep["heldout_indices"]))
    part = sc.convert(trained_cnn, "percentile", DataLoader(TensorDataset(x[rest], y[rest]), batch_size=256),
                      progress=False)
    full = sc.convert(trained_cnn, "percentile", calib, progress=False)

    def thresholds(net):
        return torch.cat([torch.as_tensor(m.v_threshold).flatten() for m in net.modules() if hasattr(m, "v_threshold")])
    assert torch.equal(thresholds(snn), thresholds(part))
    assert not torch.equal(thresholds(snn), thresholds(full))  # the 99.9th percentile moves without the held-out part


def test_budget_spent_skips_the_rest(trained_cnn, calib, capsys):
    snn = sc.convert(trained_cnn, "auto", calib, T=T, candidates=CANDIDATES, budget_s=0, progress=True)
    rep = snn.meta["snnconv_auto"]
    order = auto.candidates(trained_cnn, CANDIDATES)[0]
    assert [r["method"] for r in rep["tried"]] == order[:1] == [rep["chosen"]]
    assert [s["method"] for s in rep["skipped"]] == order[1:]
    assert all("budget" in s["reason"] for s in rep["skipped"])
    out = capsys.readouterr().out
    assert "chosen: " + order[0] in out and "skipped" in out


def test_cost_order_and_default_pool(trained_cnn):
    names, not_applicable = auto.candidates(trained_cnn)
    ranks = [auto.cost_rank(n) for n in names]
    assert ranks == sorted(ranks) and ranks[0] == 0 and ranks[-1] == 4  # plain thresholds first, ACP last
    assert not set(auto.ABLATIONS) & set(names)
    assert "strelu" in {r["method"] for r in not_applicable} and "strelu" not in names


def test_without_labels_the_ann_labels_heldout(trained_cnn, calib):
    x, _ = _images(calib)
    snn = sc.convert(trained_cnn, "auto", DataLoader(x, batch_size=128), T=T, candidates=["dni"], progress=False)
    assert snn.meta["snnconv_auto"]["labels"] == "ann predictions"


def test_snntorch_backend_carries_the_report(trained_cnn, calib):
    snn = sc.convert(trained_cnn, "auto", calib, T=T, candidates=["percentile", "dni"], backend="snntorch",
                     progress=False)
    assert snn.step_mode == "s" and snn.meta["snnconv_auto"]["chosen"] in ("percentile", "dni")


@pytest.mark.parametrize("kw, match", [
    ({}, "pass T="),
    ({"T": 0}, "time steps must be an integer"),
    ({"T": 2, "candidates": ["nope"]}, "unknown candidate method 'nope'"),
    ({"T": 2, "candidates": ["strelu"]}, "candidate 'strelu' does not apply to this model: method converts"),
    ({"T": 2, "candidates": []}, "candidates is empty"),
    ({"T": 2, "heldout": 511}, "holds 512 images; holding out 511"),
    ({"T": 2, "budget_s": -1}, "budget_s"),
])
def test_bad_input(trained_cnn, calib, kw, match):
    with pytest.raises(ValueError, match=match):
        sc.convert(trained_cnn, "auto", calib, progress=False, **kw)


def test_training_mode_is_refused_before_any_forward_pass(calib):
    from helpers import small_cnn
    net = small_cnn()  # training mode: a forward pass would move the BN running statistics
    before = net[1].running_mean.clone()
    images = DataLoader(_images(calib)[0], batch_size=128)  # no labels: auto would label them with the ANN
    with pytest.raises(ValueError, match="model \\(Sequential\\) is in training mode: call model.eval"):
        sc.convert(net, "auto", images, T=2, progress=False)
    assert torch.equal(net[1].running_mean, before)


@pytest.mark.slow
def test_bench_auto_row_per_T():
    from snnconv_ext import bench, cli
    lines = []
    rows = bench.run_bench("fmnist-net4", ["max", "auto"], [1, 4], None, n_test=50, n_calib=128, progress=False,
                           options={"candidates": "percentile/dni", "budget_s": 60}, log=lines.append)
    assert {(r["method"], r["T"]) for r in rows} == {("max", 1), ("max", 4), ("auto", 1), ("auto", 4)}
    chose = [line for line in lines if line.strip().startswith("auto T=")]
    assert len(chose) == 2 and all(("chose percentile" in c) or ("chose dni" in c) for c in chose)
    with pytest.raises(cli.UsageError, match="unknown method 'autox'"):
        cli._check_bench(_bench_args("autox"))
    cli._check_bench(_bench_args("lcp,auto"))  # auto-only options are not offered to lcp


def _bench_args(methods):
    import argparse
    from snnconv_ext import bench
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(["--methods", methods, "--method-options", "budget_s=5,samples=64"])
