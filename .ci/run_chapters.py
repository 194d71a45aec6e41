"""Run the book's chapters in parallel into the jupyter-cache that `jupyter-book build` reads (issue 13).

myst-nb's cache mode executes chapters one at a time, each kernel using every core. On a small machine, two
single-threaded kernels side by side finish sooner than that: most of a chapter is small convolutions and
elementwise neuron updates that scale poorly with threads. This script executes each chapter whose code has
no up-to-date cache record the way myst-nb would (nbclient, cwd = the chapter's folder, the book's per-cell
timeout, no errors allowed, each cell's run time kept for `.ci/book_report.py`), ``--jobs`` at a time, longest
first, and stores the result in ``_build/.jupyter_cache``; the book build that follows then executes nothing.
A failing chapter is recorded with its traceback, exactly as myst-nb records it, and the build reports it.

Unlike myst-nb, the client does not act as the ipywidgets Output widget's front end (nbclient's comm handlers send
comm messages back on the shell channel while it waits for the execute reply; with `interact` cells that
intermittently deadlocked a kernel and its client, both idle, in three of our runs: nbclient issue 312). The
slider's first output then lands in the cell itself, which is what the static HTML shows anyway.

    python .ci/run_chapters.py [--jobs N] [--root .] [--build ROOT/_build]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import nbformat
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from book_report import ROOT, toc_notebooks  # noqa: E402

sys.path.insert(0, str(ROOT / "book" / "_ext"))
from offline_book import keep_cell_seconds  # noqa: E402

# Last measured CPU seconds (one thread, 2026-12-08, a loaded machine): only the order of execution depends on
# them, longest first so that the two workers finish together. A chapter not listed starts first.
EXPECTED_S = {"dnisnm": 197, "comparison": 196, "datta": 192, "calibration": 177, "strelu": 141, "ttrbr": 141,
              "relu_to_if": 104, "qcfs": 72, "own_model": 32, "snn_training": 19}


# appended to a chapter for its run only (removed before the notebook is cached): the kernel's CPU seconds, its own
# and its subprocesses', so a chapter's cost reads the same on an idle and on a busy machine
_CPU_PROBE = ("import resource as _r\n"
              "print('snnconv-cpu-seconds', sum(u.ru_utime + u.ru_stime for u in (_r.getrusage(_r.RUSAGE_SELF), "
              "_r.getrusage(_r.RUSAGE_CHILDREN))))")


def _execute(path: str, timeout: int, threads: int):
    """Worker: execute one chapter with ``threads`` threads per kernel; return the executed notebook, its wall and
    CPU seconds (the kernel's and its subprocesses', None when it failed) and the traceback of a failure."""
    import traceback

    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)            # the kernel inherits the worker's environment
    os.environ.setdefault("TQDM_DISABLE", "1")    # as book/_ext/offline_book.py sets for the build's kernels
    nb = nbformat.read(path, as_version=4)
    own = nb.metadata.get("execution", {})       # a chapter's own settings win, as in myst-nb / jupyter-cache
    client = NotebookClient(nb, timeout=own.get("timeout", timeout), allow_errors=own.get("allow_errors", False),
                            record_timing=True,
                            resources={"metadata": {"path": str(Path(path).parent)}})
    client.comm_open_handlers = {"jupyter.widget": lambda msg: None}   # no Output-widget front end (see above)
    nb.cells.append(nbformat.v4.new_code_cell(_CPU_PROBE))
    error, t0, cpu = None, time.perf_counter(), None
    try:
        client.execute()
        cpu = float(nb.cells[-1].outputs[0]["text"].split()[-1])
    except (CellExecutionError, CellTimeoutError, DeadKernelError):
        error = traceback.format_exc()
    secs = time.perf_counter() - t0
    nb.cells.pop()
    keep_cell_seconds(nb)
    return path, nbformat.writes(nb), secs, cpu, error


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="chapters run at once (default: cores)")
    ap.add_argument("--root", type=Path, default=ROOT, help="the book's folder (with _toc.yml)")
    ap.add_argument("--build", type=Path, default=None, help="build folder (default ROOT/_build)")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    build = args.build or root / "_build"
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    from jupyter_cache.cache.db import NbProjectRecord

    timeout = yaml.safe_load((root / "_config.yml").read_text()).get("execute", {}).get("timeout", 900)
    cache = get_cache(str(build / ".jupyter_cache"))
    todo = []
    for path in toc_notebooks(root):
        nb = nbformat.read(path, as_version=4)
        if not any(c.cell_type == "code" for c in nb.cells):
            continue
        try:
            cache.match_cache_notebook(nb)
            print(f"  {path.relative_to(root)}: cached, not run")
        except KeyError:
            todo.append(path)
    if not todo:
        return 0
    todo.sort(key=lambda p: -EXPECTED_S.get(p.stem, 1e9))
    jobs = max(1, min(args.jobs, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    print(f"Running {len(todo)} chapters, {jobs} at a time, {threads} thread(s) each: "
          + ", ".join(p.stem for p in todo), flush=True)
    t0, failed = time.time(), 0
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_execute, str(p), timeout, threads) for p in todo]
        for fut in as_completed(futures):
            path, text, secs, cpu, error = fut.result()
            record = cache.add_nb_to_project(path)
            NbProjectRecord.remove_tracebacks([record.pk], cache.db)
            name = Path(path).relative_to(root)
            if error is not None:
                failed += 1
                NbProjectRecord.set_traceback(record.uri, error, cache.db)
                print(f"  {name}: FAILED after {secs:.0f} s (the book build and book_report name the cell)",
                      flush=True)
                continue
            cache.cache_notebook_bundle(CacheBundleIn(nbformat.reads(text, as_version=4), record.uri,
                                                      data={"execution_seconds": secs, "cpu_seconds": cpu}),
                                        check_validity=False, overwrite=True)
            print(f"  {name}: executed in {secs:.0f} s, {cpu:.0f} CPU s (at {time.time() - t0:.0f} s)", flush=True)
    print(f"chapters done in {time.time() - t0:.0f} s, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
