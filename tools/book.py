"""Build the book: execute the chapters (quick tier), stage them, render, and make the maths offline.

    python tools/book.py            # what `make book` runs
    python tools/book.py --flags slow

Steps:
1. Execute every chapter listed in `_quarto.yml` with `tools/nbrun.py` (nbdev's test semantics,
   one process per notebook, cached by content hash) into `_build/executed/`.
2. Stage a copy of the project under `_build/book_src/`: `_quarto.yml`, the executed chapters with
   nbdev's directives turned into Quarto cell options (`#| hide` becomes `#| include: false`,
   `#| export` disappears), `nbs/00_index.ipynb` as `index.ipynb`, and the Markdown appendices.
3. Render with `quarto render` when the quarto binary is on the PATH, and with smalldocs (pure
   Python) otherwise. Both read the same `_quarto.yml`.
4. smalldocs loads KaTeX from a CDN, which does not work offline; we convert every `\\(...\\)` and
   `\\[...\\]` to MathML at build time with latex2mathml (browsers render MathML natively) and
   drop the CDN tags, so the pages need no network.
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nbrun  # noqa: E402

ROOT = nbrun.ROOT
STAGE = ROOT / "_build" / "book_src"
INDEX_SRC = "nbs/00_index.ipynb"

NBDEV_HIDDEN = {"hide", "default_exp"}  # directives whose cells the reader does not see
NBDEV_DROP = {"export", "exports", "exporti", "slow", "gpu", "notest", "eval: false"}


def chapter_files(cfg: dict) -> list[str]:
    "Every file the book lists, in reading order (parts flattened)."
    out = []

    def walk(items):
        for it in items or []:
            if isinstance(it, str):
                out.append(it)
            elif isinstance(it, dict):
                walk(it.get("chapters"))
    walk(cfg["book"].get("chapters"))
    walk(cfg["book"].get("appendices"))
    return out


def source_of(entry: str) -> Path:
    "The repository file behind a chapter entry (the index page is staged from nbs/00_index.ipynb)."
    return ROOT / (INDEX_SRC if entry == "index.ipynb" else entry)


def prune(items, keep: set[str]):
    "The chapter list without entries whose source does not exist yet (and without empty parts)."
    out = []
    for it in items or []:
        if isinstance(it, str):
            if it in keep:
                out.append(it)
        elif isinstance(it, dict):
            kids = prune(it.get("chapters"), keep)
            if kids:
                out.append({**it, "chapters": kids})
    return out


def convert_directives(cell: dict) -> list[dict]:
    "Turn one executed code cell's nbdev directives into Quarto options; return the cells to stage."
    src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    lines = src.split("\n")
    head, body = [], lines
    while body and body[0].startswith("#|"):
        head.append(body[0][2:].strip())
        body = body[1:]
    keep, hidden = [], False
    for d in head:
        name = d.split()[0] if d else ""
        if name in NBDEV_HIDDEN:
            hidden = True
        elif d in NBDEV_DROP or name in NBDEV_DROP:
            continue
        else:
            keep.append(d)  # a Quarto option such as `fig-cap: ...`
    if hidden:
        keep.append("include: false")
    cell = dict(cell, source="\n".join([f"#| {d}" for d in keep] + body))
    staged = [cell]
    if cell.get("metadata", {}).get(nbrun.SKIP_META) and not hidden:
        flags = [d for d in head if d.split()[0] in ("slow", "gpu")]
        note = {"cell_type": "markdown", "metadata": {}, "source":
                f"*The next cell is flagged `{' '.join(flags) or 'slow'}` and is not run in the book's quick tier; "
                f"run it with `nbdev-test --flags {' '.join(flags) or 'slow'}`.*"}
        staged.insert(0, note)
    return staged


def stage_notebook(executed: Path, dest: Path) -> None:
    "Write the reader's copy of an executed chapter."
    nb = json.loads(executed.read_text())
    cells = []
    for c in nb["cells"]:
        cells += convert_directives(c) if c["cell_type"] == "code" else [c]
    nb["cells"] = cells
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(nb, indent=1))


MATH = re.compile(r"\\\[(.+?)\\\]|\\\((.+?)\\\)", re.S)
PROTECT = re.compile(r"(<pre\b.*?</pre>|<code\b.*?</code>|<script\b.*?</script>|<style\b.*?</style>|<math\b.*?</math>)", re.S)
KATEX_TAG = re.compile(r'<(?:link|script)\b[^>]*katex[^>]*>(?:</script>)?\s*', re.I)


def mathml_page(text: str) -> tuple[str, int, list[str]]:
    "Replace TeX maths in one HTML page by MathML; return the page, the count and the failures."
    from latex2mathml.converter import convert
    n, bad = 0, []

    def sub(m):
        nonlocal n
        tex = html.unescape(m.group(1) if m.group(1) is not None else m.group(2))
        display = m.group(1) is not None
        try:
            out = convert(tex.strip(), display="block" if display else "inline")
        except Exception as e:  # keep the TeX visible and report it
            bad.append(f"{tex[:80]!r}: {e}")
            return m.group(0)
        n += 1
        return out

    parts = PROTECT.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside <pre>, <code>, <script>
        parts[i] = MATH.sub(sub, parts[i])
    text = KATEX_TAG.sub("", "".join(parts))
    text = re.sub(r"<script[^>]*>[^<]*renderMathInElement[^<]*</script>", "", text)
    return text, n, bad


def offline_maths(site: Path) -> dict:
    "Convert the maths of every page under `site` to MathML; return per-page counts and failures."
    report = {"pages": {}, "failures": []}
    for page in sorted(site.rglob("*.html")):
        text, n, bad = mathml_page(page.read_text())
        page.write_text(text)
        report["pages"][page.relative_to(site).as_posix()] = n
        report["failures"] += [f"{page.name}: {b}" for b in bad]
    return report


def build(
    flags: str = "",         # notebook flags to run too, e.g. "slow"
    jobs: int = 2,           # chapters executed at the same time
    renderer: str = "auto",  # "quarto", "smalldocs", or "auto" (quarto when on the PATH)
    only=None,               # notebook file names to include (default: every chapter listed)
) -> Path:                   # the index page of the built book
    "Execute, stage and render the book; return the path of its index page."
    cfg = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    entries = chapter_files(cfg)
    present = [e for e in entries if source_of(e).exists()
               and (only is None or not e.endswith(".ipynb") or source_of(e).name in only)]
    missing = sorted(set(entries) - set(present))
    if missing:
        print(f"note: not yet written, left out of this build: {', '.join(missing)}")
    nb_entries = [e for e in present if e.endswith(".ipynb")]
    results = nbrun.run_all([source_of(e) for e in nb_entries], jobs=jobs, flags=flags)
    failed = [r for r in results.values() if not r.ok]
    if failed:
        for r in failed:
            print(f"\n=== {r.name} failed ===\n{r.error}", file=sys.stderr)
        raise SystemExit(f"book: {len(failed)} chapter(s) failed to execute: {', '.join(r.name for r in failed)}")

    if STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir(parents=True)
    for e in present:
        src = source_of(e)
        if e.endswith(".ipynb"):
            stage_notebook(Path(results[src.name].executed), STAGE / e)
        else:
            (STAGE / e).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, STAGE / e)
    cfg["book"]["chapters"] = prune(cfg["book"]["chapters"], set(present))
    (STAGE / "_quarto.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    use_quarto = renderer == "quarto" or (renderer == "auto" and shutil.which("quarto"))
    out = STAGE / cfg["project"].get("output-dir", "_book")
    if use_quarto:
        subprocess.run(["quarto", "render", str(STAGE)], check=True)
    else:
        from smalldocs.site import build as sd_build
        site = sd_build(str(STAGE), quiet=True)
        for w in site.warnings:
            if "built as a website" not in w and "html-math-method" not in w:
                print(f"smalldocs: {w}")
        report = offline_maths(out)
        (ROOT / "_build" / "maths.json").write_text(json.dumps(report, indent=1))
        if report["failures"]:
            print("maths that could not be converted to MathML:\n  " + "\n  ".join(report["failures"]))
    final = ROOT / "_build" / "book"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(out, final)
    return final / "index.html"


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Build the book into _build/book/.")
    ap.add_argument("--flags", default="", help='notebook flags to run too, e.g. "slow"')
    ap.add_argument("--jobs", type=int, default=2, help="chapters executed at the same time")
    ap.add_argument("--renderer", choices=["auto", "quarto", "smalldocs"], default="auto")
    a = ap.parse_args()
    index = build(a.flags, a.jobs, a.renderer)
    print(f"The book is at {index}")
