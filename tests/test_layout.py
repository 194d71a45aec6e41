"""The package's shape: every module reachable, no function shadowing a module, imports only downward, no import
circle, and frameworks imported only by the plugins and ``app/baselines.py``. Read from the source (ast), so a new
upward import or a new framework import fails here."""
import ast
import importlib
import types
from pathlib import Path

import pytest

import snnconv_ext as sc

ROOT = Path(sc.__file__).parent
LAYERS = ["core", "assets", "conversion", "study", "app"]  # bottom to top


def _imports(path: Path):
    """Modules of snnconv_ext (dotted, relative to the package) and top-level packages that ``path`` imports."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    own, other = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import a, b
                    own.update(".".join(base + [a.name]) for a in node.names)
                else:
                    own.add(mod)
            elif node.module and node.module.startswith("snnconv_ext"):
                own.add(node.module[len("snnconv_ext."):])
            elif node.module:
                other.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("snnconv_ext."):
                    own.add(a.name[len("snnconv_ext."):])
                else:
                    other.add(a.name.split(".")[0])
    return own, other


def _files():
    return sorted(p for p in ROOT.rglob("*.py") if p.parent != ROOT)


def test_every_module_is_reachable_and_no_function_shadows_a_module():
    for layer, names in sc.MODULES.items():
        for name in names:
            mod = importlib.import_module(f"snnconv_ext.{layer}.{name}")
            assert getattr(sc, name) is mod, name
    public = set(sc.__all__) - {"__version__"}
    assert not public & set(sc._LAYER), "a public function has a module's name"
    for name in public:
        assert not isinstance(getattr(sc, name), types.ModuleType), name
    on_disk = {p.stem for p in _files() if p.stem != "__init__"}
    assert on_disk == set(sc._LAYER), on_disk ^ set(sc._LAYER)


def test_imports_run_only_downward_and_form_no_circle():
    graph = {}
    for path in _files():
        rel = path.relative_to(ROOT).with_suffix("")
        me = ".".join(p for p in rel.parts if p != "__init__")
        layer = LAYERS.index(rel.parts[0])
        own, _ = _imports(path)
        for target in own:
            top = target.split(".")[0]
            if top in LAYERS:
                assert LAYERS.index(top) <= layer, f"{me} imports {target}: a higher layer"
        graph[me] = {t for t in own if t.split(".")[0] in LAYERS and t != me}
    # no circle among modules: depth-first search
    state = {}

    def visit(n, stack):
        state[n] = 1
        for m in graph.get(n, ()):
            m = m if m in graph else next((k for k in graph if k == m or k.startswith(m + ".")), None)
            if m is None:
                continue
            if state.get(m) == 1:
                pytest.fail(f"import circle: {' -> '.join(stack + [m])}")
            if m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])


def test_only_the_baselines_import_a_framework():
    for path in [*_files(), *ROOT.glob("*.py")]:
        _, other = _imports(path)
        hits = other & {"spikingjelly", "snntorch", "snnconv_spikingjelly", "snnconv_snntorch"}
        if path.relative_to(ROOT).as_posix() == "app/baselines.py":
            assert hits == {"spikingjelly"}
        else:
            assert not hits, f"{path.relative_to(ROOT)} imports {sorted(hits)}"
