"""snnconv_ext.compare on hand-made rows: the definitions the comparison chapter and the demo rely on."""
import pytest

from snnconv_ext import compare


def test_lossless_latency_is_where_the_curve_stays_within_the_margin():
    acc = {1: 80.0, 2: 90.5, 4: 89.0, 8: 90.2, 16: 90.9}
    assert compare.lossless_latency(acc, 91.0, tol=1.0) == 8      # reaches at T=2 but dips again at T=4
    assert compare.lossless_latency(acc, 91.0, tol=2.5) == 2
    assert compare.lossless_latency(acc, 91.0, tol=0.05) is None   # the last T is 0.1 short
    assert compare.lossless_latency({4: 92.0}, 91.0, tol=0.0) == 4  # above the ANN counts
    with pytest.raises(ValueError):
        compare.lossless_latency({}, 91.0)


def test_pareto_front_keeps_only_undominated_rows():
    rows = [dict(m="a", energy_uj=1.0, accuracy=80.0), dict(m="b", energy_uj=2.0, accuracy=79.0),   # b dominated
            dict(m="c", energy_uj=2.0, accuracy=85.0), dict(m="d", energy_uj=3.0, accuracy=85.0),   # d: tie, costlier
            dict(m="e", energy_uj=0.5, accuracy=60.0), dict(m="f", energy_uj=5.0, accuracy=90.0)]
    assert [r["m"] for r in compare.pareto_front(rows)] == ["e", "a", "c", "f"]


def test_best_per_T_and_curves():
    rows = [dict(model="n", method="ours", T=1, accuracy=50.0), dict(model="n", method="sj-best", T=1, accuracy=60.0),
            dict(model="n", method="ours", T=2, accuracy=70.0), dict(model="n", method="other", T=2, accuracy=70.0)]
    assert compare.best_per_T(rows)[1]["method"] == "sj-best"
    ours = compare.best_per_T(rows, exclude=("sj-",))
    assert ours[1]["method"] == "ours" and ours[2]["method"] == "ours"      # a tie keeps the first row
    assert compare.curves(rows)[("n", "ours")] == {1: 50.0, 2: 70.0}


def test_diff_se_matches_the_spread_of_simulated_accuracies():
    # Monte Carlo: two independent binomial accuracies on n images; the spread of their difference is diff_se
    import torch
    n, pa, pb = 400, 0.9, 0.8
    g = torch.Generator().manual_seed(0)
    a = torch.binomial(torch.full((20000,), float(n)), torch.full((20000,), pa), generator=g) / n * 100
    b = torch.binomial(torch.full((20000,), float(n)), torch.full((20000,), pb), generator=g) / n * 100
    assert float((a - b).std()) == pytest.approx(compare.diff_se(90.0, 80.0, n), rel=0.03)
    assert compare.diff_se(50.0, 50.0, 100) == pytest.approx(100 * (0.5 / 100) ** 0.5)   # sqrt(2 * 0.25 / n)
    with pytest.raises(ValueError, match="n >= 1"):
        compare.diff_se(50.0, 50.0, 0)


def test_verdict_classes_a_difference_by_its_standard_error():
    se = compare.diff_se(60.0, 50.0, 200)          # 4.95 pp: 10 pp is about two standard errors
    assert se == pytest.approx(4.95, abs=0.01)
    assert compare.verdict(60.0, 50.0, 200) == "holds"
    assert compare.verdict(50.0, 60.0, 200) == "reversed"
    assert compare.verdict(60.0, 50.0, 200, k=2.5) == "within noise"
    assert compare.verdict(60.0, 50.0, 50) == "within noise"     # the same gap on fewer images


def test_paired_se_by_hand():
    import torch
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, False, True])        # differences 0, 1, 0, -1: sample std sqrt(2/3)
    assert compare.paired_se(a, b) == pytest.approx(100 * (2 / 3) ** 0.5 / 2)
    assert compare.paired_se(a, a) == 0.0               # the same results: no spread at all
    with pytest.raises(ValueError, match="one shape"):
        compare.paired_se(a, b[:3])
