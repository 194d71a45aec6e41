"""Sphinx extension for the snnconv book: an HTML build that needs no network and shows no stray output.

* Serves MathJax 2 (SVG output, no web fonts) from the build, copied from Debian's ``libjs-mathjax``
  (``MATHJAX_DIR`` overrides where it is looked for).
* Disables tqdm in the kernels that execute the chapters (``TQDM_DISABLE=1`` reaches libraries, such as
  SpikingJelly's recipes, that do not pass ``disable`` themselves).
* Records each cell's start and end in the cached notebooks (nbclient's ``record_timing``, which
  jupyter-cache switches off), so ``.ci/book_report.py`` can list the slow cells.
* After the build, warns (so ``jupyter-book build -W`` fails) on any page or stylesheet that loads a
  resource from outside the build, on tqdm progress text and on traceback output in a page.
"""
from __future__ import annotations

import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

MATHJAX_DIR = Path(os.environ.get("MATHJAX_DIR", "/usr/share/javascript/mathjax"))
# The subset of MathJax 2 that the TeX-AMS_SVG combined configuration loads (SVG glyphs, no fonts).
MATHJAX_PARTS = ["MathJax.js", "config/TeX-AMS_SVG.js", "extensions", "jax/element", "jax/input/TeX",
                 "jax/output/SVG/config.js", "jax/output/SVG/jax.js", "jax/output/SVG/autoload",
                 "jax/output/SVG/fonts/TeX"]
# Tags whose attribute makes the browser fetch something when the page loads (<a href> does not).
LOADING_ATTRS = {"script": "src", "link": "href", "img": "src", "iframe": "src", "source": "src",
                 "video": "src", "audio": "src", "embed": "src", "object": "data", "track": "src"}
EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.I)   # http://, https://, //host, ftp://
CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])\s*((?:[a-z][a-z0-9+.-]*:)?//[^'")\s]+)""", re.I)
CELL_SECONDS = "snnconv_cell_seconds"      # notebook metadata key (not hashed by jupyter-cache)
TQDM_TEXT = re.compile(r"\d{1,3}%\|[█▏▎▍▌▋▊▉#0-9 ]{0,120}\|\s*\d+/\d*")   # " 40%|████      | 20/50"


class _Loads(HTMLParser):
    """Collect the URLs a page loads on its own: script/link/img/... sources and inline CSS urls."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "link" and not ({"stylesheet", "preload", "icon", "modulepreload", "prefetch",
                                   "manifest", "shortcut"} & set((a.get("rel") or "").lower().split())):
            return                                        # rel="next"/"prev"/"canonical": navigation
        key = LOADING_ATTRS.get(tag)
        if key and a.get(key):
            self.urls.append(a[key])
        if a.get("srcset"):
            self.urls.extend(part.split()[0] for part in a["srcset"].split(",") if part.strip())
        if a.get("style"):
            self.urls.extend(CSS_URL.findall(a["style"]))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls.extend(CSS_URL.findall(data))


def external_loads(html: str) -> list[str]:
    """URLs outside the build that a page loads (scripts, stylesheets, images, frames, CSS urls)."""
    parser = _Loads()
    parser.feed(html)
    return [u for u in parser.urls if EXTERNAL.match(u)]


def _copy_mathjax(app: Sphinx) -> None:
    dest = Path(app.outdir) / "_static" / "mathjax"
    stamp = dest / ".source"
    if stamp.is_file() and stamp.read_text() == str(MATHJAX_DIR):
        return
    if not (MATHJAX_DIR / "MathJax.js").is_file():
        logger.warning(f"MathJax not found at {MATHJAX_DIR}: install Debian's libjs-mathjax "
                       "(make setup does, as root) or set MATHJAX_DIR; maths will show as raw TeX")
        return
    shutil.rmtree(dest, ignore_errors=True)
    for part in MATHJAX_PARTS:
        src, out = MATHJAX_DIR / part, dest / part
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, out)                    # follows Debian's symlinks
        else:
            shutil.copyfile(src, out)
    stamp.write_text(str(MATHJAX_DIR))


def check_output(app: Sphinx, exc: Exception | None) -> None:
    """Copy MathJax into the build, then warn on network loads, tqdm text and tracebacks."""
    if exc is not None or app.builder.format != "html":
        return
    _copy_mathjax(app)
    out = Path(app.outdir)
    for page in sorted(out.rglob("*.html")):
        if "_static" in page.parts or "_sources" in page.parts:
            continue
        rel = page.relative_to(out)
        html = page.read_text(encoding="utf-8", errors="replace")
        for url in external_loads(html):
            logger.warning(f"{rel} loads {url} from the network; the book must build offline")
        if m := TQDM_TEXT.search(html):
            logger.warning(f"{rel} shows tqdm progress text {m.group(0)!r}; pass progress=False")
        if 'class="output traceback' in html or "Traceback (most recent call last)" in html:
            logger.warning(f"{rel} shows a traceback in a cell output")
    for css in sorted((out / "_static").rglob("*.css")):
        for url in CSS_URL.findall(css.read_text(encoding="utf-8", errors="replace")):
            logger.warning(f"{css.relative_to(out)} loads {url} from the network")


def keep_cell_seconds(nb) -> None:
    """Move nbclient's per-cell timing records into ``nb.metadata[CELL_SECONDS]`` (cell metadata is hashed by
    jupyter-cache, so the cells must come back unchanged)."""
    from datetime import datetime

    def seconds(cell) -> float | None:
        t = cell.get("metadata", {}).pop("execution", {})
        start, end = t.get("iopub.execute_input"), t.get("shell.execute_reply")
        if not (start and end):
            return None
        return (datetime.fromisoformat(end.replace("Z", "+00:00"))
                - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()

    nb.metadata[CELL_SECONDS] = [seconds(c) if c.cell_type == "code" else None for c in nb.cells]


def _record_cell_timing() -> None:
    """Make myst-nb's cache executor record each cell's run time in ``nb.metadata[CELL_SECONDS]``."""
    from myst_nb.core.execute import cache

    run = cache.single_nb_execution
    if getattr(run, "records_timing", False):
        return

    def timed(nb, *args, **kwargs):
        kwargs.setdefault("record_timing", True)
        result = run(nb, *args, **kwargs)
        keep_cell_seconds(nb)
        return result

    timed.records_timing = True
    cache.single_nb_execution = timed


def setup(app: Sphinx) -> dict:
    os.environ.setdefault("TQDM_DISABLE", "1")           # inherited by the kernels that run the chapters
    _record_cell_timing()
    app.connect("build-finished", check_output)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
