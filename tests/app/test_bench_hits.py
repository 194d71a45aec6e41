"""``benchmarks/bench_hits.py``: ``snnconv bench`` with per-image results gives bench's own rows, and per-image hits
whose means are those rows and whose paired standard errors are computed as the textbook formula says."""
import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from snnconv_ext import cli

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_hits.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_hits", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_bench_hits_gives_benchs_rows_and_their_per_image_results(tmp_path, monkeypatch):
    from snnconv_ext.app import bench
    args = ["--model", "fmnist-net4", "--methods", "percentile,sj-best", "--timesteps", "1,4", "--n-test", "60",
            "--n-calib", "64", "--no-progress"]
    assert cli.main(["bench", *args, "--out", str(tmp_path / "plain")]) == 0
    mod = _load()
    monkeypatch.setattr(bench, "evaluate", bench.evaluate)        # main() patches bench; undone after the test
    monkeypatch.setattr(bench, "ann_accuracy", bench.ann_accuracy)
    assert mod.main([*args, "--out", str(tmp_path / "hits")]) == 0
    want = list(csv.DictReader(open(tmp_path / "plain" / "results.csv")))
    got = list(csv.DictReader(open(tmp_path / "hits" / "results.csv")))
    assert got == want                                             # the same rows, energy columns included
    hits = torch.load(tmp_path / "hits" / "hits.pt", weights_only=True)
    ann = hits["ANN"]
    assert ann.shape == (60,) and ann.dtype == torch.bool
    paired = {(r["method"], int(r["T"])): r for r in csv.DictReader(open(tmp_path / "hits" / "paired.csv"))}
    for r in want:
        ok = hits[r["method"], int(r["T"])]
        assert 100.0 * int(ok.sum()) / 60 == pytest.approx(float(r["accuracy"]), abs=1e-3)
        d = ok.double() - ann.double()                               # paired SE: sample sd of the differences / sqrt(n)
        se = 100 * float(np.std(d.numpy(), ddof=1)) / 60 ** 0.5
        p = paired[r["method"], int(r["T"])]
        assert float(p["paired_se_pp"]) == pytest.approx(se, abs=1e-3)
        assert float(p["minus_ann_pp"]) == pytest.approx(float(r["accuracy"]) - float(r["ann_accuracy"]), abs=1e-3)
        assert int(p["n_test"]) == 60
    for r in csv.DictReader(open(tmp_path / "hits" / "hits.csv")):  # the packed hex unpacks to the same bools
        key = "ANN" if r["method"] == "ANN" else (r["method"], int(r["T"]))
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(r["hits_hex"]), dtype=np.uint8))[:int(r["n_test"])]
        assert torch.equal(torch.from_numpy(bits.astype(bool)), hits[key])


def test_bench_hits_takes_one_model():
    with pytest.raises(SystemExit, match="one zoo entry"):
        _load().main(["--model", "fmnist-net4,fmnist-net4", "--methods", "max"])
