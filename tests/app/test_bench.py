"""`snnconv bench` end to end on a small slice: table, CSV and plot, our rows beside SpikingJelly's."""
import csv

import pytest

from snnconv_ext import bench, cli


@pytest.mark.slow
def test_bench_writes_csv_and_plot(tmp_path, capsys):
    rc = cli.main(["bench", "--model", "fmnist-net4", "--methods", "percentile,sj-best", "--timesteps", "1,8",
                   "--n-test", "100", "--n-calib", "256", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert list(rows[0].keys()) == bench.FIELDS
    assert {(r["method"], r["T"]) for r in rows} == {("percentile", "1"), ("percentile", "8"),
                                                     ("sj-best", "1"), ("sj-best", "8")}
    assert (tmp_path / "accuracy_vs_T.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "sj-best" in out and "T=8" in out and "ANN" in out
    acc = {(r["method"], int(r["T"])): float(r["accuracy"]) for r in rows}
    assert acc[("percentile", 8)] > acc[("percentile", 1)]
    # energy columns: ANN energy of Net4 as stReLU's Table 5 gives it (4.80e6 MACs x 4.6 pJ = 22.06 uJ); the SNN's
    # is the analog first layer's MACs every step (24*24*32*25 = 460800) plus 0.9 pJ per synaptic operation
    for r in rows:
        assert round(float(r["ann_energy_uj"]), 2) == 22.06
        T, synops = int(r["T"]), float(r["synops"])
        assert float(r["energy_uj"]) == pytest.approx((4.6 * 460800 * T + 0.9 * synops) * 1e-6, rel=1e-4)
    spikes = {(r["method"], int(r["T"])): float(r["spikes_per_image"]) for r in rows}
    assert spikes[("percentile", 8)] > spikes[("percentile", 1)]


def test_cli_lists_methods(capsys):
    assert cli.main(["methods"]) == 0
    assert "percentile" in capsys.readouterr().out


def test_unknown_method_is_refused():
    import pytest
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        bench.run_bench("fmnist-net4", ["nope"], [1], None, n_test=10, n_calib=16, log=lambda s: None)


def test_bench_reports_inapplicable_methods(tmp_path, capsys):
    rows = bench.run_bench("fmnist-net4", ["strelu", "max"], [2], None, n_test=50, n_calib=64, progress=False)
    assert {r["method"] for r in rows} == {"max"}
    out = capsys.readouterr().out
    assert "strelu" in out and "n/a on fmnist-net4: method converts ['StReLU'], the model uses ['ReLU']" in out


def test_method_options_parse():
    from snnconv_ext.app.bench import parse_options
    assert parse_options("samples=128, ridge=0.1,threshold=percentile") == {"samples": 128, "ridge": 0.1,
                                                                            "threshold": "percentile"}
    assert parse_options("") == {}
    import pytest
    with pytest.raises(ValueError, match="key=value"):
        parse_options("samples")


def test_bench_snntorch_backend_gives_the_same_rows(tmp_path):
    # our methods converted into snnTorch networks: same accuracy and spike counts as in SpikingJelly
    args = ["bench", "--model", "fmnist-net4", "--methods", "percentile", "--timesteps", "2,4", "--n-test", "64",
            "--n-calib", "128", "--no-progress"]
    assert cli.main(args + ["--out", str(tmp_path / "sj")]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "st"), "--backend", "snntorch"]) == 0
    a, b = (list(csv.DictReader(open(tmp_path / d / "results.csv"))) for d in ("sj", "st"))
    for ra, rb in zip(a, b):
        assert ra["accuracy"] == rb["accuracy"] and ra["spikes_per_image"] == rb["spikes_per_image"]


def test_no_progress_silences_every_bar_including_spikingjellys(tmp_path, capfd):
    from snnconv_ext import data, zoo
    from snnconv_ext.app.baselines import sj_convert
    calib = data.loader(data.subset(data.fashion_mnist("train"), 64), batch_size=32)
    sj_convert(zoo.load("fmnist-net4"), "sj-best", calib, progress=True)
    assert "2/2" in capfd.readouterr().err  # SpikingJelly's recipe draws its calibration bar on its own
    assert cli.main(["bench", "--model", "fmnist-net4", "--methods", "sj-best,percentile", "--timesteps", "1",
                     "--n-test", "32", "--n-calib", "64", "--out", str(tmp_path), "--no-progress"]) == 0
    assert capfd.readouterr().err == ""
