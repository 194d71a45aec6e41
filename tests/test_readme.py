"""The README's code and generated blocks: the pipeline figure and the demo table match their sources, the quick
start runs (on a slice of the data), and the "Add a method" example registers a method whose threshold is the
closed form mean + 3 std."""
import importlib.util
import re
from pathlib import Path

import pytest
import torch

import snnconv_ext as sc

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _python_blocks(section: str):
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_generated_blocks_match_their_sources():
    rb = _module(ROOT / ".ci" / "readme_blocks.py")
    have, want = rb.blocks(README), rb.sources()
    assert set(want) <= set(have)
    for name, text in want.items():
        assert have[name] == text.strip(), f"README block {name!r} is stale: run `python .ci/readme_blocks.py`"


def test_add_a_method_example_registers_a_working_method(trained_cnn, calib):
    from snnconv_ext import registry, thresholds
    (code,) = _python_blocks("Add a method")
    try:
        exec(compile(code, "README: Add a method", "exec"), {"ann": trained_cnn, "calib": calib})
        assert "mean-3std" in sc.methods()
        snn = sc.convert(trained_cnn, "mean-3std", calib, progress=False)
        # independent reference: the first ReLU's input over the calibration images, mean + 3 std of its positive part
        gm = sc.graph.fold_bn(sc.graph.trace(trained_cnn))
        first = sc.graph.activation_nodes(gm, registry.get("max"))[0].target
        seen = []
        h = gm.get_submodule(first).register_forward_pre_hook(lambda m, a: seen.append(a[0].flatten()))
        with torch.no_grad():
            for x, _ in calib:
                gm(x)
        h.remove()
        v = torch.cat(seen).clamp_min(0).double()
        want = float(v.mean() + 3 * v.std())
        got = float(sc.nodes.params_of(sc.nodes.spiking_modules(snn)[first]).theta)
        assert abs(got - want) <= 1e-5 * want
    finally:
        registry._REGISTRY.pop("mean-3std", None)
        thresholds._REGISTRY.pop("mean-3std", None)


@pytest.mark.slow
def test_quick_start_runs(monkeypatch, tmp_path):
    (code,) = README.split("```python\n", 1)[1].split("```", 1)[:1]
    real = sc.data.fashion_mnist
    monkeypatch.setattr(sc.data, "fashion_mnist",
                        lambda split, **kw: torch.utils.data.TensorDataset(*(t[:2048] for t in real(split, **kw).tensors)))
    monkeypatch.chdir(tmp_path)
    code = code.replace("calib_data=calib, T=2)", "calib_data=calib, T=2, samples=64, iters=10)")
    exec(compile(code, "README: quick start", "exec"), {})
    assert sc.load(tmp_path / "net4-t2.pt") is not None
