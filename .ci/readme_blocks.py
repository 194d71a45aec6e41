"""The README's generated blocks: the pipeline figure (from the code, snnconv_ext.conversion.pipeline.figure) and the
demo's headline table (book/generated/demo_headline.md, written by `make demo`). `make demo` runs this to refresh
them; tests/test_readme.py fails when a block and its source differ.

    python .ci/readme_blocks.py [--check]
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sources() -> dict:
    """Block name -> the text the README must hold between its markers."""
    import snnconv_ext as sc

    headline = ROOT / "book" / "generated" / "demo_headline.md"
    return {"pipeline-figure": "```text\n" + sc.pipeline.figure() + "\n```",
            "demo-headline": headline.read_text().strip() if headline.is_file() else "(run `make demo`)"}


def blocks(text: str) -> dict:
    """Block name -> its current text in ``text`` (between ``<!-- name... -->`` and ``<!-- /name -->``)."""
    return {m.group(1): m.group(2).strip() for m in
            re.finditer(r"<!-- ([a-z-]+)[^>]*-->\n(.*?)\n<!-- /\1 -->", text, re.S)}


def refresh(text: str) -> str:
    for name, body in sources().items():
        text = re.sub(rf"(<!-- {name}[^>]*-->\n).*?(\n<!-- /{name} -->)", lambda m: m.group(1) + body + m.group(2),
                      text, flags=re.S)
    return text


if __name__ == "__main__":
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = refresh(old)
    if "--check" in sys.argv[1:]:
        sys.exit(0 if new == old else 1)
    readme.write_text(new)
