"""Every number a chapter's prose states comes from its run (issue 26): the prose-number check of `make test`.

For each chapter in _toc.yml, every number in a markdown cell must be one of:

* printed by the chapter's executed outputs (read from the execution cache in _build/.jupyter_cache): the prose
  number equals an output number rounded to the prose's decimals (``89.2`` matches a printed ``89.21``);
* inside an external-measurement block, a fenced ``{admonition} External measurement`` that names the command
  (in backticks) and the date (YYYY-MM-DD) that produced its numbers;
* a constant of the paper that the text attributes to the paper: its sentence says "paper" (or "the authors");
* not a quantity: equation / table / figure / section / algorithm / theorem / line / issue numbers
  ("Eqs. 19-23", "Table 7"), citations and publication years ("Bu et al. 2022", "[15]"), numbers inside LaTeX
  math, inline code, links, and numbers glued to a name ("ResNet-20", "Net4", "fmnist-net4-qcfs4", "L2").

It fails naming the chapter, the cell and the number.

    python .ci/prose_numbers.py [--build _build] [--root .]
    python .ci/prose_numbers.py --nb book/X.ipynb --executed X.out.ipynb   # one chapter against one executed copy
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Set, Tuple

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from book_report import ROOT, toc_notebooks  # noqa: E402

NUMBER = re.compile(r"(?<![\w.\-/])[+\-−]?(?:\d{1,3}(?:[,\u2009\u202f ]\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][+\-−]?\d+)?"
                    r"(?:st|nd|rd|th)?(?![\w])")
REFERENCE = re.compile(
    r"\b(?:Eqs?|Equations?|Tables?|Figs?|Figures?|Secs?|Sections?|Algorithms?|Alg|Apps?|Appendix|Appendices|"
    r"Theorems?|Lemmas?|Corollary|Definitions?|lines?|[Ii]ssues?|Chapter|Step|Steps|Remark|Props?)\.?\s*"
    r"(?:[A-Z]?\d+(?:\.\d+)*[a-z]?(?:\([a-z]\))?(?:\s*(?:[-–,/]|and|or|&)\s*)?)+")
CITATION = re.compile(r"\bet al\.?,?\s*\(?(?:19|20)\d\d[a-z]?\)?|\[\d+(?:\s*[,–-]\s*\d+)*\]|"
                      r"\b(?:ICLR|CVPR|ICCV|ECCV|NeurIPS|NIPS|ICML|AAAI|IJCAI|TNNLS|IEEE|arXiv)\s*(?:19|20)\d\d")
MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$|\\\(.*?\\\)|\\\[.*?\\\]", re.S)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
LINK = re.compile(r"\]\([^)]*\)|https?://\S+|<[^>]+>|\bdoi:\S+|^.*\b(?:doi|arXiv|ISBN)\b.*$|\b(?:19|20)\d\d-\d\d-\d\d\b",
                  re.M)
EXTERNAL = re.compile(r"```+\{admonition\}\s*External measurement.*?\n(.*?)```+", re.S | re.I)
DATE = re.compile(r"\b(?:19|20)\d\d-\d\d-\d\d\b")
SENTENCE = re.compile(r"(?:[^.!?\n]|\.(?=\d))*(?:[.!?]|\n|$)")
PAPER = re.compile(r"\bpaper'?s?\b|\bthe authors\b", re.I)


def _value(token: str) -> Optional[float]:
    token = re.sub(r"(?:st|nd|rd|th)$", "", token)
    try:
        return float(re.sub(r"[,\u2009\u202f ]", "", token).replace("−", "-"))
    except ValueError:
        return None


def _decimals(token: str) -> int:
    mant = re.sub(r"(?:st|nd|rd|th)$", "", token).split("e")[0].split("E")[0]
    return len(mant.split(".")[1]) if "." in mant else 0


def output_numbers(nb) -> Set[str]:
    """Every number printed by the executed notebook ``nb`` (streams, text/plain, text/markdown, text/html, errors)."""
    out: Set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for o in cell.get("outputs", []):
            texts = [o.get("text", "")] if o.get("output_type") == "stream" else []
            data = o.get("data", {})
            texts += [data.get(k, "") for k in ("text/plain", "text/markdown", "text/html", "text/latex")]
            for t in texts:
                t = "".join(t) if isinstance(t, list) else t
                out.update(m.group(0) for m in re.finditer(r"[+\-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][+\-−]?\d+)?", t))
    return out


def _matches(token: str, printed: Iterable[float]) -> bool:
    v = _value(token)
    if v is None:
        return True
    d = _decimals(token)
    return any(abs(round(abs(p), d) - abs(v)) < 0.5 * 10 ** (-d) * 1e-6 + 1e-12 or abs(p) == abs(v) for p in printed)


def _blank(text: str, pattern: re.Pattern) -> str:
    """``text`` with every match of ``pattern`` replaced by spaces (positions kept)."""
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def prose_numbers(source: str) -> Tuple[List[Tuple[str, str]], List[str]]:
    """(numbers that must be printed, as (token, sentence)), and problems with external blocks, of one markdown cell."""
    problems = []
    for m in EXTERNAL.finditer(source):
        body = m.group(0)
        if not re.search(r"`[^`\n]+`", body) or not DATE.search(body):
            problems.append("an External measurement block must name its command (in backticks) and its date "
                            "(YYYY-MM-DD)")
    text = _blank(source, EXTERNAL).replace("..", "  ")  # "T = 1..32": two numbers
    for pat in (CODE, MATH, LINK, REFERENCE, CITATION):
        text = _blank(text, pat)
    found = []
    for sent in SENTENCE.finditer(text):
        s = sent.group(0)
        if not s.strip():
            continue
        if PAPER.search(source[sent.start():sent.end()]):
            continue  # a constant the text attributes to the paper
        for m in NUMBER.finditer(s):
            found.append((m.group(0), source[sent.start():sent.end()].strip()))
    return found, problems


def check_notebook(source_nb, executed_nb) -> List[str]:
    """Lines ``cell N: number X (...)`` for every prose number of ``source_nb`` its run does not print."""
    printed = [v for v in (_value(t) for t in output_numbers(executed_nb)) if v is not None]
    bad = []
    for i, cell in enumerate(source_nb.cells):
        if cell.cell_type != "markdown":
            continue
        found, problems = prose_numbers(cell.source)
        bad += [f"cell {i}: {p}" for p in problems]
        for token, sentence in found:
            if not _matches(token, printed):
                bad.append(f"cell {i}: number {token} is not printed by the chapter's run: \"{sentence[:110]}\"")
    return bad


def count_numbers(source_nb) -> int:
    return sum(len(prose_numbers(c.source)[0]) for c in source_nb.cells if c.cell_type == "markdown")


def main(argv: Optional[List[str]] = None) -> int:
    from jupyter_cache import get_cache

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--build", type=Path, default=None)
    ap.add_argument("--nb", type=Path, default=None, help="one chapter (with --executed: an executed copy of it)")
    ap.add_argument("--executed", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.nb is not None:
        if args.executed is None:
            ap.error("--nb needs --executed: the chapter executed, e.g. by jupyter nbconvert --execute")
        nb, executed = (nbformat.read(p, as_version=4) for p in (args.nb, args.executed))
        bad = check_notebook(nb, executed)
        print(f"  {args.nb.name:<28} {count_numbers(nb):4d} numbers checked, {len(bad)} not from the run")
        print("\n".join(f"      {line}" for line in bad))
        return int(bool(bad))
    root = args.root.resolve()
    cache = get_cache(str((args.build or root / "_build") / ".jupyter_cache"))
    status = 0
    print("\nProse numbers (every number in a chapter's text printed by its run, marked external, or the paper's):")
    for path in toc_notebooks(root):
        nb = nbformat.read(path, as_version=4)
        try:
            record = cache.match_cache_notebook(nb)
        except KeyError:
            print(f"  {path.name:<28} no executed run in the cache: run `make book`")
            status = 1
            continue
        executed = cache.get_cache_bundle(record.pk).nb
        bad = check_notebook(nb, executed)
        n = count_numbers(nb)
        print(f"  {path.name:<28} {n:4d} numbers checked, {len(bad)} not from the run")
        for line in bad:
            print(f"      {line}")
        status |= bool(bad)
    return status


if __name__ == "__main__":
    sys.exit(main())
