"""The book build's own checks (book/_ext/offline_book.py, .ci/book_report.py) on hand-written pages."""
import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path, name: str):
    pytest.importorskip("sphinx")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod                      # so worker processes can unpickle its functions
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ext():
    return load(ROOT / "book" / "_ext" / "offline_book.py", "offline_book")


@pytest.fixture(scope="module")
def report():
    pytest.importorskip("jupyter_cache")
    return load(ROOT / ".ci" / "book_report.py", "book_report")


def test_external_loads_finds_every_kind_of_network_load(ext):
    page = ('<script src="https://cdn.example/a.js"></script>'
            '<script src="../_static/local.js"></script>'
            '<link rel="stylesheet" href="//fonts.example/f.css">'
            '<link rel="next" href="https://example/next.html">'          # navigation, not a load
            '<img src="../_images/fig.png"><img src="http://example/i.png">'
            '<div style="background: url(\'https://example/bg.png\')"></div>'
            '<style>@import "https://example/s.css";</style>'
            '<a href="https://arxiv.org/abs/1">paper</a>')                  # a link, not a load
    assert ext.external_loads(page) == ["https://cdn.example/a.js", "//fonts.example/f.css",
                                        "http://example/i.png", "https://example/bg.png",
                                        "https://example/s.css"]


def test_tqdm_text_is_caught_and_tables_are_not(ext):
    assert ext.TQDM_TEXT.search("evaluate:  40%|████      | 20/50 [00:01&lt;00:01, 19.9it/s]")
    assert ext.TQDM_TEXT.search(" 10%|#         | 1/10 [00:00<?, ?it/s]")
    assert not ext.TQDM_TEXT.search("accuracy 91.2%| T=4 | 3/4")
    assert not ext.TQDM_TEXT.search("<td>91.25%</td><td>4/8</td>")


def test_report_names_the_failing_cell(report):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"),
                                         nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("y = 2\nassert x == y, 'claim'")])
    error = ("nbclient.exceptions.CellExecutionError: An error occurred while executing the following cell:\n"
             "------------------\ny = 2\nassert x == y, 'claim'\n------------------\n\nAssertionError: claim")
    timeout = ("nbclient.exceptions.CellTimeoutError: A cell timed out while it was being executed, after 900 "
               "seconds.\nHere is a preview of the cell contents:\n-------------------\n"
               "['y = 2', \"assert x == y, 'claim'\"]\n-------------------\n")           # nbclient 0.11's format
    assert report.failing_cell(nb, error) == 2
    assert report.failing_cell(nb, timeout) == 2
    assert report.failing_cell(nb, "KeyboardInterrupt") is None


@pytest.mark.slow
def test_parallel_chapter_runner_fills_the_cache_the_build_reads(tmp_path, report):
    """.ci/run_chapters.py executes each chapter into jupyter-cache; the record matches the chapter's code (so the
    book build executes nothing), keeps each cell's seconds, and a failing chapter is recorded with its cell."""
    runner = load(ROOT / ".ci" / "run_chapters.py", "run_chapters")
    (tmp_path / "_config.yml").write_text("execute:\n  timeout: 60\n")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: index\nchapters:\n  - file: good\n  - file: bad\n")
    cells = {"good": ["import os\nthreads = os.environ['OMP_NUM_THREADS']", "x = 6 * 7\nprint(x)"],
             "bad": ["x = 1", "assert x == 2, 'the claim'"]}
    for name, src in [("index", [])] + list(cells.items()):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in src])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    assert runner.main(["--root", str(tmp_path), "--jobs", "2"]) == 1          # one chapter failed
    from jupyter_cache import get_cache
    cache = get_cache(str(tmp_path / "_build" / ".jupyter_cache"))
    record = cache.match_cache_notebook(nbformat.read(tmp_path / "good.ipynb", as_version=4))
    done = cache.get_cache_bundle(record.pk).nb
    assert done.cells[1].outputs[0]["text"] == "42\n"
    assert len(done.metadata[report.CELL_SECONDS]) == 2 and all(s >= 0 for s in done.metadata[report.CELL_SECONDS])
    with pytest.raises(KeyError):
        cache.match_cache_notebook(nbformat.read(tmp_path / "bad.ipynb", as_version=4))
    tb = {Path(r.uri).name: r.traceback for r in cache.list_project_records()}["bad.ipynb"]
    assert "the claim" in tb
    assert report.main(["--root", str(tmp_path)]) == 1                         # the report names the failure
    assert runner.main(["--root", str(tmp_path)]) == 1                         # only the failed one runs again


def test_prose_number_check_names_the_cell_and_number():
    import importlib.util
    import nbformat

    spec = importlib.util.spec_from_file_location("prose_numbers", ROOT / ".ci" / "prose_numbers.py")
    pn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pn)
    v4 = nbformat.v4
    src = v4.new_notebook(cells=[
        v4.new_markdown_cell("We measured 91.2 % on 2000 images and 77.7 % at $T=2$ (Eq. 12, Table 7, Bu et al. 2022)."),
        v4.new_code_cell("print(acc)"),
        v4.new_markdown_cell("The paper reports 90.83 %; ResNet-20 and `T=4` are names.\n\n"
                             "```{admonition} External measurement\n`snnconv bench --model x` on 2026-12-07: 55.5 %\n```"),
        v4.new_markdown_cell("```{admonition} External measurement\n66.6 % somewhere\n```"),
    ])
    run = v4.new_notebook(cells=[c.copy() for c in src.cells])
    run.cells[1].outputs = [v4.new_output("stream", name="stdout", text="accuracy 91.21 % on 2,000 images\n")]
    bad = pn.check_notebook(src, run)
    # 91.2 is 91.21 rounded, 2000 is printed as 2,000; 77.7 is not printed: named with its cell
    assert any(line.startswith("cell 0: number 77.7 ") for line in bad)
    assert not any("number 91.2 " in line or "number 2000 " in line for line in bad)
    # the paper's number, the names, the external block with command and date pass; a block without them does not
    assert not any(line.startswith("cell 2") for line in bad)
    assert any(line.startswith("cell 3: an External measurement block must name") for line in bad)
    assert len(bad) == 2, bad


def test_page_titles_have_no_maths(report):
    """Every page's title is in the sidebar of every page, the source-code pages (viewcode) too, which load no
    MathJax: a title with $...$ shows raw LaTeX there (the browser test fails on it)."""
    for path in report.toc_notebooks(ROOT):
        first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
        title = first.source.lstrip().splitlines()[0]
        assert title.startswith("# ") and "$" not in title and "\\(" not in title, (path.name, title)
