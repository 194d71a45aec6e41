"""Report on the chapters of the last book build, from jupyter-cache's records in _build/.jupyter_cache.

For each notebook in _toc.yml: executed (its run time, when, and its slowest cells) or failed (the cell that
failed and the traceback), or not run with its current code. Exits 1 when a chapter failed or has no
up-to-date run, so `make book` fails with the chapter and cell named.

    python .ci/book_report.py [--build _build] [--slowest 3]
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
import warnings
from contextlib import suppress
from datetime import datetime
from pathlib import Path

import nbformat
import yaml
from jupyter_cache import get_cache

ROOT = Path(__file__).resolve().parents[1]
CELL_SECONDS = "snnconv_cell_seconds"          # written by book/_ext/offline_book.py
ANSI = re.compile(r"\x1b\[[0-9;]*m")
warnings.filterwarnings("ignore", message="Cell is missing an id field")     # nbformat, on older chapters


def toc_files(root: Path) -> list[str]:
    """The files _toc.yml lists (without suffix), in order: the root, the chapters and their ``sections``."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())

    def walk(entries) -> list[str]:
        return [f for e in entries for f in [e["file"], *walk(e.get("sections", []))]]
    return [toc["root"]] + [f for part in [toc] + toc.get("parts", []) for f in walk(part.get("chapters", []))]


def toc_notebooks(root: Path) -> list[Path]:
    """The .ipynb files listed in _toc.yml (sections included), in order."""
    return [root / (f + ".ipynb") for f in toc_files(root) if (root / (f + ".ipynb")).is_file()]


def failing_cell(nb, tb: str) -> int | None:
    """Index of the cell quoted between the dashed lines of nbclient's error or timeout message (the timeout
    preview shows the cell's first and last lines as Python lists of strings)."""
    m = re.search(r"-{10,}\n(.*?)\n-{10,}", tb, re.S)
    if not m:
        return None
    lines = []
    for ln in m.group(1).splitlines():
        if ln.strip().startswith("[") and ln.strip().endswith("]"):
            with suppress(ValueError, SyntaxError):
                lines.extend(str(x) for x in ast.literal_eval(ln.strip()))
                continue
        lines.append(ln)
    lines = [ln for ln in lines if ln.strip() and ln.strip() != "..."][:3]
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and lines and all(ln in cell.source for ln in lines):
            return i
    return None


def first_line(cell) -> str:
    return next((ln.strip() for ln in cell.source.splitlines() if ln.strip()), "")[:70]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="the book's folder (with _toc.yml)")
    ap.add_argument("--build", type=Path, default=None, help="build folder (default ROOT/_build)")
    ap.add_argument("--slowest", type=int, default=3, help="cells to list per chapter")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    args.build = args.build or root / "_build"
    timeout = yaml.safe_load((root / "_config.yml").read_text()).get("execute", {}).get("timeout", 0)
    cache_dir = args.build / ".jupyter_cache"
    if not cache_dir.is_dir():
        print(f"book report: no execution cache at {cache_dir}; run `make book`")
        return 1
    cache = get_cache(str(cache_dir))
    tracebacks = {Path(r.uri).resolve(): r.traceback for r in cache.list_project_records() if r.traceback}

    bad, total, total_cpu = 0, 0.0, 0.0
    print(f"\nBook chapters (wall and CPU seconds of each run, from {cache_dir}; per-cell timeout {timeout} s):")
    for path in toc_notebooks(root):
        rel = path.relative_to(root)
        nb = nbformat.read(path, as_version=4)
        try:
            record = cache.match_cache_notebook(nb)
        except KeyError:
            record = None
        if record is not None:
            secs = record.data.get("execution_seconds") or 0.0
            cpu = record.data.get("cpu_seconds")     # .ci/run_chapters.py measures it; myst-nb's own runs do not
            total += secs
            total_cpu += cpu or 0.0
            when = record.created.strftime("%Y-%m-%d %H:%M")
            cpu_text = f"{cpu:8.1f} CPU s" if cpu is not None else f"{'':>8} CPU s n/a"
            print(f"  {str(rel):<28} ok      {secs:8.1f} s {cpu_text}   (executed {when})")
            cells = cache.get_cache_bundle(record.pk).nb.metadata.get(CELL_SECONDS) or []
            slow = sorted(((s, i) for i, s in enumerate(cells) if s), reverse=True)[:args.slowest]
            for s, i in slow:
                flag = "   <-- over a third of the timeout" if timeout and s > timeout / 3 else ""
                print(f"      cell {i:>2}: {s:7.1f} s  {first_line(nb.cells[i]) if i < len(nb.cells) else ''}{flag}")
            continue
        bad += 1
        tb = tracebacks.get(path.resolve())
        if tb is None:
            print(f"  {str(rel):<28} NOT RUN with its current code (no cache record and no failure record)")
            continue
        tb = ANSI.sub("", tb)
        tb = tb[tb.find("nbclient.exceptions."):] if "nbclient.exceptions." in tb else tb   # skip the executor
        i = failing_cell(nb, tb)
        where = f"cell {i} ({first_line(nb.cells[i])!r})" if i is not None else "a cell"
        kind = "TIMED OUT" if "CellTimeoutError" in tb or "timed out" in tb else "FAILED"
        print(f"  {str(rel):<28} {kind} in {where}; traceback:")
        print("      " + "\n      ".join(tb.strip().splitlines()[-40:]))
    print(f"  {'total':<28}         {total:8.1f} s {total_cpu:8.1f} CPU s of execution for the cached chapters"
          f" (report at {datetime.now():%H:%M})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
