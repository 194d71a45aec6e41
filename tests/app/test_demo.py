"""`snnconv demo` (make demo): best-per-T marking within a net, our best minus SpikingJelly's, the verdict, the
two-panel figure and the skip of a missing zoo checkpoint; rows are made by hand, no simulation runs."""
import csv
import struct

import pytest

from snnconv_ext import baselines, bench, cli, demo


def _row(model, method, T, acc, relu_ann=None, energy=1.0):
    return {"model": model, "method": method, "T": T, "accuracy": acc, "ann_accuracy": 91.0,
            "relu_ann": relu_ann or model, "relu_ann_accuracy": 91.0, "spikes_per_image": 10.0, "synops": 100,
            "energy_uj": energy, "ann_energy_uj": 22.0}


# Net "A": two ReLU rows, a fine-tuned model (started from a-relu), an SJ row; net "B" on its own.
ACC = {("a-relu", "ours1"): (50.0, 85.0), ("a-relu", "sj-ltb"): (84.0, 84.0), ("a-ft", "qcfs"): (70.0, 85.0),
       ("b", "ours1"): (60.0, 90.0), ("b", "sj-best"): (40.0, 95.0)}
ROWS = [_row(m, meth, T, a[i], relu_ann="a-relu" if m == "a-ft" else None, energy=T * 2.0)
        for (m, meth), a in ACC.items() for i, T in enumerate((1, 2))]
NETS = {"a-relu": "A", "a-ft": "A", "b": "B"}


def test_best_rows_mark_the_top_of_each_net_and_T_with_ties():
    # by hand: A T=1 sj-ltb 84; A T=2 tie ours1/qcfs 85; B T=1 ours1 60; B T=2 sj-best 95
    assert demo.best_rows(ROWS, NETS) == {("a-relu", "sj-ltb", 1), ("a-relu", "ours1", 2), ("a-ft", "qcfs", 2),
                                          ("b", "ours1", 1), ("b", "sj-best", 2)}
    # grouped by the ReLU ANN a row's model started from (a-ft -> a-relu), the same nets here
    assert demo.best_rows(ROWS) == demo.best_rows(ROWS, NETS)


def test_margins_are_best_ours_minus_best_spikingjelly():
    assert demo.margins(ROWS, NETS) == {"A": {1: 70.0 - 84.0, 2: 85.0 - 84.0}, "B": {1: 60.0 - 40.0, 2: 90.0 - 95.0}}


def test_table_stars_best_cells_and_states_the_verdict():
    text = demo.format_demo(ROWS, NETS, {"a-relu": "all 10000 test images"})
    lines = text.splitlines()
    # accuracy lines show the ANN's accuracy (91.00) after the model; energy lines its energy (22.00)
    row = {(l.split()[1], l.split()[0]): l for l in lines if l.split()[2:3] == ["91.00"]}
    assert len(row) == len(ACC)
    assert "84.00*" in row[("a-relu", "sj-ltb")] and "85.00*" in row[("a-ft", "qcfs")]
    assert "50.00*" not in row[("a-relu", "ours1")] and "85.00*" in row[("a-relu", "ours1")]
    assert "a-relu 91.00" in row[("a-ft", "qcfs")]  # the ReLU ANN the fine-tuned model started from
    assert sum(l.count("*") for l in lines if not l.startswith(("A:", "B:"))) == 5
    assert "A: our best row beats every SpikingJelly row at T = 1, 2: NO, not at T = 1" in text
    assert "B: our best row beats every SpikingJelly row at T = 1, 2: NO, not at T = 2" in text
    assert "all 10000 test images" in text
    won = [dict(r, accuracy=80.0) if (r["model"], r["method"], r["T"]) == ("b", "sj-best", 2) else r for r in ROWS]
    assert "B: our best row beats every SpikingJelly row at T = 1, 2: yes" in demo.format_demo(won, NETS)


def test_figure_has_two_panels(tmp_path):
    demo.write_figure(ROWS, tmp_path / "demo.png", NETS)
    head = (tmp_path / "demo.png").read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", head[16:24])
    assert (w, h) == (13 * 120, 5 * 120)  # two 6.5 x 5 inch panels at 120 dpi


def test_missing_checkpoint_is_skipped_with_a_log_line(tmp_path, monkeypatch):
    calls = []

    def fake_bench(model, methods, timesteps, out, n_test, n_calib, **kw):
        calls.append((model, tuple(methods), n_test, kw["options"]))
        return [r for r in ROWS if r["model"] == model]

    monkeypatch.setattr(demo, "run_bench", fake_bench)
    monkeypatch.setattr(demo, "missing", lambda m: "not there" if m == "a-ft" else "")
    monkeypatch.setattr(demo, "_test_images", lambda p: "some test images")
    plan = (demo.Part("A", "a-relu", ("ours1", "sj-ltb")), demo.Part("A", "a-ft", ("qcfs",)),
            demo.Part("B", "b", ("ours1", "sj-best"), n_test=7, options=(("samples", 128),)))
    log = []
    rows = demo.run_demo(tmp_path, plan, timesteps=(1, 2), log=log.append)
    assert calls == [("a-relu", ("ours1", "sj-ltb"), None, {}), ("b", ("ours1", "sj-best"), 7, {"samples": 128})]
    assert "skipping a-ft (qcfs): not there" in log
    assert {r["model"] for r in rows} == {"a-relu", "b"}
    out = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert list(out[0]) == bench.FIELDS and len(out) == len(rows)
    assert (tmp_path / "demo.png").is_file()


def test_demo_plan_names_zoo_models_and_methods():
    from snnconv_ext import zoo
    from snnconv_ext.conversion.registry import methods
    for p in demo.PLAN:
        assert p.model in zoo.ENTRIES
        assert set(p.methods) <= set(methods()) | set(baselines.SJ_RECIPES)
    assert {m for p in demo.PLAN for m in p.methods} >= set(demo.SJ_ROWS)


def test_cli_demo_refuses_a_file_as_out(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    assert cli.main(["demo", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_demo_gives_the_serial_rows(tmp_path):
    """--jobs 2 runs each (model, method) bench in its own spawned process: the same rows, in plan order."""
    plan = (demo.Part("Net4", "fmnist-net4", ("max", "sj-best"), n_test=64),
            demo.Part("Net4", "fmnist-net4-qcfs4", ("qcfs",), n_test=64))
    kw = dict(timesteps=(1, 4), n_calib=64, progress=False, log=lambda s: None)
    serial = demo.run_demo(None, plan, **kw)
    parallel = demo.run_demo(tmp_path, plan, jobs=2, **kw)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "convert_s"} for r in rows]   # timing differs
    assert drop(parallel) == drop(serial)
    assert [(r["model"], r["method"]) for r in parallel[::2]] == [("fmnist-net4", "max"), ("fmnist-net4", "sj-best"),
                                                                  ("fmnist-net4-qcfs4", "qcfs")]
    assert (tmp_path / "results.csv").is_file()


def test_headline_is_the_first_net_of_the_run_with_its_date_and_command():
    md = demo.format_headline(ROWS, NETS, {"a-relu": "all 100 test images"}, minutes=1.5, jobs=2)
    lines = md.splitlines()
    assert demo.COMMAND in lines[0] and "1.5 min" in lines[0]
    import datetime
    assert datetime.date.today().isoformat() in lines[0]
    table = [ln for ln in lines if ln.startswith("| `")]
    assert {ln.split("|")[3].strip(" `") for ln in table} == {"a-relu", "a-ft"}  # net A only, every row of it
    assert len(table) == 3
    best = demo.best_rows(ROWS, NETS)
    for ln in table:
        cells = [c.strip() for c in ln.split("|")[1:-1]]
        method, model = cells[0].strip("`"), cells[2].strip("`")
        ts = sorted({r["T"] for r in ROWS})
        for t, c in zip(ts, cells[4:4 + len(ts)]):
            assert c.startswith("**") == ((model, method, t) in best), (method, t, c)
