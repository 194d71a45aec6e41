"""The built HTML book in a real browser: headless Chromium opens every page offline and checks what a
reader sees. `make test` builds the book first (`make book`); without _build/html these tests skip.

Per page: no traceback or error output, every image loads, every formula is typeset by MathJax (no raw
``\\(``), and no request leaves the machine (Chromium runs behind a dead proxy and every request in its
network log must be file:, data: or blob:). A full-page screenshot of each chapter goes to
``SNNCONV_SCREENSHOTS`` (default ``_build/screenshots``).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("SNNCONV_BOOK_HTML", ROOT / "_build" / "html"))
SHOTS = Path(os.environ.get("SNNCONV_SCREENSHOTS", ROOT / "_build" / "screenshots"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "chrome-untrusted:", "devtools:")  # no network
PAGES = sorted(str(p.relative_to(HTML)) for p in HTML.rglob("*.html")
               if not {"_static", "_sources"} & set(p.relative_to(HTML).parts)) if HTML.is_dir() else []


def chapters() -> set[str]:
    """HTML pages of the files listed in _toc.yml (the landing page, the chapters and their sections)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("book_report", ROOT / ".ci" / "book_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return {str(Path(f).with_suffix(".html")) for f in report.toc_files(ROOT)}


def skip_reason() -> str | None:
    if not (HTML / "index.html").is_file():
        return f"no built book at {HTML}: run `make book` first (make test does)"
    if CHROMIUM is None or DRIVER is None:
        return "chromium and chromium-driver are not installed (make setup installs them as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="snnconv-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage",
                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # dead proxy
                "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,1000",
                f"--user-data-dir={profile}"]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(110)                                   # below the client's 120 s
    driver.set_script_timeout(110)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def requested_urls(driver) -> list[str]:
    """Every URL the page asked the network stack for, from Chromium's DevTools network log."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


WAIT_MATHJAX = """
const done = arguments[arguments.length - 1];
if (!document.querySelector('.math')) { done('no maths'); return; }
const t0 = Date.now();
setTimeout(() => done('MathJax still typesetting after 100 s'), 100000);
(function poll() {
  if (window.MathJax && MathJax.Hub && MathJax.Hub.Queue) { MathJax.Hub.Queue(() => done('typeset')); }
  else if (Date.now() - t0 > 30000) { done('MathJax never loaded (is _static/mathjax in the build?)'); }
  else { setTimeout(poll, 100); }
})();
"""

DECODE_IMAGES = """
const done = arguments[arguments.length - 1];
Promise.all([...document.images].map(i => i.decode().catch(() => null))).then(() => done(true));
"""

INSPECT = """
const out = {raw_math: [], math_errors: [], bad_images: [], tracebacks: [], stderr: [], urls: []};
for (const el of document.querySelectorAll('.math')) {
  const typeset = el.querySelector('.MathJax_SVG, .MathJax_SVG_Display, .MathJax, .MathJax_Display');
  if (!typeset || /\\\\\\(|\\\\\\[/.test(el.innerText)) out.raw_math.push(el.innerText.slice(0, 80));
}
for (const el of document.querySelectorAll('.noError, .MathJax_Error, [data-mjx-error], .merror'))
  out.math_errors.push(el.textContent.slice(0, 80));
for (const img of document.images)
  if (!(img.complete && img.naturalWidth > 0)) out.bad_images.push(img.currentSrc || img.src);
for (const el of document.querySelectorAll('.output.traceback, .output.error, .cell_output .traceback'))
  out.tracebacks.push(el.innerText.slice(0, 300));
for (const el of document.querySelectorAll('.output.stderr')) out.stderr.push(el.innerText.slice(0, 300));
if (document.body.innerText.includes('Traceback (most recent call last)')) out.tracebacks.push('Traceback text');
for (const el of document.querySelectorAll('script[src], link[href], img[src], iframe[src], source[src]')) {
  if (el.tagName === 'LINK' && !/stylesheet|preload|icon/.test(el.rel)) continue;
  out.urls.push(el.src || el.href);
}
for (const e of performance.getEntriesByType('resource')) out.urls.push(e.name);
return out;
"""


@pytest.mark.parametrize("page", PAGES or ["(none)"])
def test_page_offline(browser, page):
    """The page renders offline: maths typeset, images loaded, no traceback, nothing from the network."""
    path = HTML / page
    browser.get_log("performance")                                    # drop the previous page's log
    browser.get(path.as_uri())
    mathjax = browser.execute_async_script(WAIT_MATHJAX)
    found = browser.execute_script(INSPECT)
    urls = found["urls"] + requested_urls(browser)
    remote = sorted({u for u in urls if not u.startswith(LOCAL_SCHEMES)})

    if page in chapters():
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.execute_async_script(DECODE_IMAGES)
        height = min(browser.execute_script("return document.documentElement.scrollHeight"), 30000)
        # the whole page as the viewport, so that every figure is painted (not only the first screen)
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False})
        shot = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        (SHOTS / (page.replace("/", "_")[:-5] + ".png")).write_bytes(base64.b64decode(shot["data"]))

    assert mathjax in ("no maths", "typeset"), f"{page}: {mathjax}"
    assert not remote, f"{page} requested from the network: {remote}"
    assert not found["raw_math"], f"{page}: formulas left as raw TeX: {found['raw_math'][:5]}"
    assert not found["math_errors"], f"{page}: MathJax could not typeset: {found['math_errors'][:5]}"
    assert not found["bad_images"], f"{page}: images that did not load: {found['bad_images']}"
    assert not found["tracebacks"], f"{page}: traceback in the output: {found['tracebacks'][:2]}"
    errors = [s for s in found["stderr"] if any(w in s for w in ("Error", "Exception", "Traceback"))]
    assert not errors, f"{page}: error text on stderr: {errors[:2]}"
