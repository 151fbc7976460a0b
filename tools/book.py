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
   While staging, outputs are cleaned for the reader (`clean_outputs`): machine paths become relative or
   `<tmp>`, warnings lose their file:line prefix and source line, tqdm bars and `RESULTS:` lines (the matrix
   driver's record) are dropped, and Markdown pipe tables printed to stdout become tables. Cross-references
   (`crossrefs`): `{#eq-x}` after `$$...$$`, `{#sec-x}` on a heading, `#| label: fig-x` with `#| fig-cap:`
   (or `![cap](f.png){#fig-x}`) and `#| label: tbl-x` with `#| tbl-cap:` are numbered by chapter (the
   file's number: Eq. (33.2), Figure 33.1); `@eq-x`, `@fig-x`, `@tbl-x`, `@sec-x` (also `[-@eq-x]`: the number
   only) become links to them on any page, and links to `NN_name.ipynb` resolve from every page.
   Previous/next links close every page (`page-navigation`).
4. smalldocs loads KaTeX from a CDN, which does not work offline; we convert every `\\(...\\)` and
   `\\[...\\]` to MathML at build time with latex2mathml (browsers render MathML natively) and
   drop the CDN tags, so the pages need no network.
5. Checks (`check_site`, written to `_build/book_checks.json`; the build fails on any): TeX left raw in a page
   (a `$...$` the Markdown reader did not take as maths, or a `\\(` not converted), an unresolved `@ref`, an
   internal link whose file or `#anchor` does not exist, a figure cell with `fig-cap` but no caption shown, a
   machine path (the project's parent folder, the temporary folder, site-packages, `<ipython-input-`) anywhere
   on a page, prose and code included.
"""
from __future__ import annotations

import html
import json
import os
import posixpath
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


def stage_notebook(executed: Path) -> dict:
    "The reader's copy of an executed chapter: directives as Quarto options, outputs cleaned."
    nb = json.loads(executed.read_text())
    rules = _path_rules()
    cells = []
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c = dict(c, outputs=clean_outputs(c.get("outputs", []), rules))
        cells += convert_directives(c) if c["cell_type"] == "code" else [c]
    nb["cells"] = cells
    return nb


def stage_all(docs: dict, sources: dict) -> tuple[dict, list]:
    "Number labels and resolve references over every staged page; return the pages and the unresolved references."
    labels, missing = collect_labels(docs), []
    out = {}
    for entry, doc in docs.items():
        fix = lambda t: number_markdown(resolve_refs(link_chapters(t, entry, sources[entry]), entry, labels, missing), entry, labels)
        if isinstance(doc, dict):
            cells = []
            for c in doc["cells"]:
                if c["cell_type"] == "markdown":
                    c = dict(c, source=fix(_cell_src(c)))
                elif c["cell_type"] == "code":
                    c = number_cell_options(c, labels)
                cells.append(c)
            out[entry] = {**doc, "cells": cells}
        else:
            out[entry] = fix(doc)
    return out, missing


def _path_rules() -> list:
    "Machine paths and their reader-facing replacements, longest first."
    import site as _site
    import tempfile
    rules = []
    for sp in sorted(set(_site.getsitepackages() + [_site.getusersitepackages()]), key=len, reverse=True):
        rules.append((sp.rstrip("/") + "/", ""))
    rules += [(sys.base_prefix.rstrip("/") + "/lib/", ""), (str(ROOT) + "/nbs/../", ""), (str(ROOT) + "/nbs/", "nbs/"),
              (str(ROOT) + "/", "")]
    for var in ("CDB_DATA_MIRROR",):
        if os.environ.get(var):
            rules.append((os.environ[var].rstrip("/"), f"${var}"))
    rules.append((str(ROOT), "."))
    rules.append((tempfile.gettempdir().rstrip("/") + "/", "<tmp>/"))
    rules.append((os.path.expanduser("~").rstrip("/") + "/", "~/"))
    return sorted(rules, key=lambda r: -len(r[0]))


TMP_NAME = re.compile(r"<tmp>/tmp[\w-]{6,}/")
IPY_INPUT = re.compile(r"<ipython-input-\d+-[0-9a-f]+>|/tmp/ipykernel_\d+/\d+\.py")
WARNING_LINE = re.compile(r"^(\S[^\n]*?):\d+: (\w*(?:Warning|Deprecation)\w*): (.*)\n(?:  [^\n]*\n?)?", re.M)
TQDM_LINE = re.compile(r"[^\n]*\d+%\|[^\n|]*\|[^\n]*(?:\??[A-Za-z]+/s|s/[A-Za-z]+)[^\n]*\]?\s*")   # any unit: it/s, crystal/s, s/call
PIPE_TABLE = re.compile(r"(?:^\|[^\n]*\|[ \t]*\n)(?:^\|[ \t:|-]*-[ \t:|-]*\|[ \t]*\n)(?:^\|[^\n]*\|[ \t]*(?:\n|$))*", re.M)


def clean_text(text: str, rules=None) -> str:
    "A text output as the reader should see it: no machine paths, no tqdm bars, warnings without file:line."
    rules = rules or _path_rules()
    if "\r" in text:   # a progress bar redraws itself with carriage returns: keep the last state of each line
        text = "\n".join(l.split("\r")[-1] for l in text.split("\n"))
    text = IPY_INPUT.sub("<cell>", text)
    for old, new in rules:
        text = text.replace(old, new)
    text = TMP_NAME.sub("<tmp>/", text)
    text = WARNING_LINE.sub(lambda m: f"{m.group(2)}: {m.group(3)}\n", text)
    text = "\n".join(l for l in text.split("\n") if not l.startswith("RESULTS:") and not TQDM_LINE.fullmatch(l))
    return re.sub(r"\n{3,}", "\n\n", text)


def clean_outputs(outputs: list, rules=None) -> list:
    "The outputs of a cell with clean text, and Markdown pipe tables in stdout split out as Markdown displays."
    rules = rules or _path_rules()
    out = []
    for o in outputs:
        o = dict(o)
        if o.get("output_type") == "stream":
            text = clean_text("".join(o["text"]) if isinstance(o.get("text"), list) else o.get("text", ""), rules)
            pos = 0
            for m in PIPE_TABLE.finditer(text) if o.get("name") == "stdout" else ():
                if text[pos:m.start()].strip():
                    out.append({**o, "text": text[pos:m.start()]})
                out.append({"output_type": "display_data", "metadata": {}, "data": {"text/markdown": m.group(0)}})
                pos = m.end()
            if text[pos:].strip():
                out.append({**o, "text": text[pos:]})
            continue
        data = o.get("data")
        if data:
            data = dict(data)
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in data:
                    v = "".join(data[mime]) if isinstance(data[mime], list) else data[mime]
                    data[mime] = clean_text(v, rules) if mime != "text/html" else IPY_INPUT.sub("<cell>", _replace_all(v, rules))
            o["data"] = data
        out.append(o)
    return out


def _replace_all(text, rules):
    for old, new in rules:
        text = text.replace(old, new)
    return TMP_NAME.sub("<tmp>/", text)


# ---------------------------------------------------------------- cross-references
KINDS = {"eq": "Eq.", "fig": "Figure", "tbl": "Table", "sec": "Section"}
REF = re.compile(r"(\[)?(-)?@(eq|fig|tbl|sec)-([A-Za-z0-9_:-]*[A-Za-z0-9_])(\])?")
EQ_LABEL = re.compile(r"(\$\$)(.+?)\$\$[ \t]*\{#(eq-[A-Za-z0-9_:-]+)\}", re.S)
SEC_LABEL = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*\{#(sec-[A-Za-z0-9_:-]+)\}[ \t]*$", re.M)
IMG_LABEL = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)\{#(fig-[A-Za-z0-9_:-]+)\}")
CODE_SPAN = re.compile(r"(```.*?```|`[^`\n]+`)", re.S)


def chapter_number(entry: str):
    "The number a chapter's labels carry: the file's number (33 for nbs/33_kldm.ipynb), None for the others."
    m = re.match(r"(\d+)_", Path(entry).name)
    return int(m.group(1)) if m else None


def _cell_src(c) -> str:
    return "".join(c["source"]) if isinstance(c["source"], list) else c["source"]


def _outside_code(text: str, fn) -> str:
    "Apply `fn` to the parts of Markdown outside code spans and fences."
    parts = CODE_SPAN.split(text)
    return "".join(fn(p) if i % 2 == 0 else p for i, p in enumerate(parts))


def collect_labels(staged: dict) -> dict:
    "Every label of the book: label -> (entry, kind, number text, title). `staged`: entry -> notebook dict or Markdown text."
    labels, counts = {}, {}

    def add(label, entry, kind, title=""):
        if label in labels:
            raise SystemExit(f"book: label {label} is defined twice ({labels[label][0]} and {entry})")
        ch = chapter_number(entry)
        counts[(entry, kind)] = counts.get((entry, kind), 0) + 1
        num = f"{ch}.{counts[(entry, kind)]}" if ch is not None else str(counts[(entry, kind)])
        labels[label] = (entry, kind, num, title)

    for entry, doc in staged.items():
        cells = doc["cells"] if isinstance(doc, dict) else [{"cell_type": "markdown", "source": doc}]
        for c in cells:
            src = _cell_src(c)
            if c["cell_type"] == "markdown":
                text = CODE_SPAN.sub("", src)
                for m in re.finditer(r"\{#((?:eq|sec|fig|tbl)-[A-Za-z0-9_:-]+)\}", text):
                    lab = m.group(1)
                    title = ""
                    if lab.startswith("sec-"):
                        h = SEC_LABEL.search(text[max(0, text.rfind("\n", 0, m.start()) + 1):m.end() + 1])
                        title = re.sub(r"^\d+\.\s*", "", h.group(2)) if h else ""
                    add(lab, entry, lab.split("-")[0], title)
            elif c["cell_type"] == "code":
                from smalldocs.notebook import cell_options
                opts, _ = cell_options(src)
                lab = opts.get("label")
                if isinstance(lab, str) and lab.split("-")[0] in ("fig", "tbl"):
                    add(lab, entry, lab.split("-")[0])
    return labels


def resolve_refs(text: str, entry: str, labels: dict, missing: list) -> str:
    "Markdown with every `@kind-label` replaced by a link to its target; unknown labels go to `missing`."
    here = posixpath.dirname(entry)

    def sub(m):
        lb, bare, kind, name, rb = m.groups()
        lab = f"{kind}-{name}"
        if lab not in labels:
            missing.append(f"{entry}: @{lab}")
            return m.group(0)
        tgt, k, num, title = labels[lab]
        href = "" if tgt == entry else posixpath.relpath(tgt, here or ".")
        if k == "sec":
            word = f"Chapter {chapter_number(tgt)}" if title == "" and chapter_number(tgt) else f"“{title}”"
            txt = word if bare else (word if word.startswith("Chapter") else f"Section {word}")
        elif k == "eq":
            txt = f"({num})" if bare else f"Eq. ({num})"
        else:
            txt = num if bare else f"{KINDS[k]} {num}"
        link = f"[{txt}]({href}#{lab})"
        return link if (lb and rb) or not (lb or rb) else (lb or "") + link + (rb or "")
    return _outside_code(text, lambda t: REF.sub(sub, t))


def number_markdown(text: str, entry: str, labels: dict) -> str:
    "Markdown with its labelled equations tagged and anchored, labelled images captioned with their numbers."
    def eq(m):
        lab = m.group(3)
        return f"$$\\label{{{lab}}}{m.group(2).rstrip()} \\qquad ({labels[lab][2]})$$"

    def img(m):
        lab = m.group(3)
        return f"![Figure {labels[lab][2]}: {m.group(1)}]({m.group(2)}){{#{lab}}}"
    return _outside_code(text, lambda t: IMG_LABEL.sub(img, EQ_LABEL.sub(eq, t)))


def link_chapters(text: str, entry: str, src_entry: str) -> str:
    "Links written relative to the source file (nbs/00_index.ipynb) rewritten for where the page is staged."
    if entry == src_entry:
        return text
    src_dir, dst_dir = posixpath.dirname(src_entry), posixpath.dirname(entry)

    def sub(m):
        href = m.group(2)
        if re.match(r"^[a-z]+:|^#|^/", href):
            return m.group(0)
        path, _, frag = href.partition("#")
        new = posixpath.relpath(posixpath.normpath(posixpath.join(src_dir, path)), dst_dir or ".")
        return f"{m.group(1)}({new}{'#' + frag if frag else ''})"
    return _outside_code(text, lambda t: re.sub(r"(\]\s?)\(([^)\s]+)\)", sub, t))


def number_cell_options(cell: dict, labels: dict) -> dict:
    "A figure or table cell's caption prefixed with its number (`Figure 33.1: ...`)."
    from smalldocs.notebook import cell_options
    src = _cell_src(cell)
    opts, body = cell_options(src)
    lab = opts.get("label")
    if not (isinstance(lab, str) and lab in labels):
        return cell
    kind, key = lab.split("-")[0], f"{lab.split('-')[0]}-cap"
    cap = opts.get(key)
    if cap is None:
        return cell
    word = KINDS[kind]
    opts[key] = f"{word} {labels[lab][2]}: {cap}" if isinstance(cap, str) else [f"{word} {labels[lab][2]}{chr(97 + i)}: {c}" for i, c in enumerate(cap)]
    head = [f"#| {k}: {json.dumps(v, ensure_ascii=False)}" for k, v in opts.items()]
    return dict(cell, source="\n".join(head + [body]))


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
        lab = re.match(r"\s*\\label\{([^}]+)\}", tex)
        if lab:
            tex = tex[lab.end():]
        try:
            out = convert(tex.strip(), display="block" if display else "inline")
        except Exception as e:  # keep the TeX visible and report it
            bad.append(f"{tex[:80]!r}: {e}")
            return m.group(0)
        n += 1
        if lab:   # the anchor of a labelled equation (`{#eq-x}`), on the maths itself
            out = out.replace("<math ", f'<math id="{html.escape(lab.group(1))}" ', 1)
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


RAW_TEX = re.compile(r"\$[^$<>\n]{0,200}?(?:\\[A-Za-z]+|[_^{}])[^$<>\n]{0,200}?\$|\$\$|\\\(|\\\[")
HREF = re.compile(r"""<a\b[^>]*?\bhref=(["'])(.*?)\1""", re.S)
IDS = re.compile(r"""\bid=(["'])(.*?)\1""")


def prose(page: str) -> str:
    "The text of a page outside code, scripts, styles and MathML, tags removed (what a reader reads as prose)."
    text = PROTECT.sub(" ", page)
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


def check_site(site: Path, missing_refs=(), staged=None) -> dict:
    "The problems of a built site: raw TeX, unresolved references, broken internal links, figure captions not shown."
    pages = {p.relative_to(site).as_posix(): p.read_text() for p in site.rglob("*.html")}
    ids = {name: {m.group(2) for m in IDS.finditer(t)} for name, t in pages.items()}
    rep = {"raw_tex": [], "unresolved_refs": list(missing_refs), "broken_links": [], "missing_captions": [],
           "machine_paths": []}
    import tempfile
    machine = [str(ROOT.parent) + "/", tempfile.gettempdir().rstrip("/") + "/", "site-packages/", "<ipython-input-"]
    for name, text in pages.items():
        plain = html.unescape(re.sub(r"<[^>]+>", "", text))
        for m in machine:
            i = plain.find(m)
            if i >= 0:
                rep["machine_paths"].append(f"{name}: {plain[max(0, i - 40):i + 60]!r}")
        for m in RAW_TEX.finditer(prose(text)):
            rep["raw_tex"].append(f"{name}: {m.group(0)[:80]!r}")
        for m in HREF.finditer(text):
            href = html.unescape(m.group(2))
            if not href or re.match(r"^[a-z][a-z0-9+.-]*:", href, re.I) or href.startswith("//"):
                continue
            path, _, frag = href.partition("#")
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), path)) if path else name
            if (site / target).is_dir():
                target = posixpath.join(target, "index.html")
            if not (site / target).exists():
                rep["broken_links"].append(f"{name}: {href} (no file {target})")
            elif frag and target in ids and frag not in ids[target]:
                rep["broken_links"].append(f"{name}: {href} (no #{frag} in {target})")
    for entry, doc in (staged or {}).items():
        if not isinstance(doc, dict):
            continue
        page = pages.get(re.sub(r"\.(ipynb|md|qmd)$", ".html", entry), "")
        from smalldocs.notebook import cell_options
        for c in doc["cells"]:
            if c["cell_type"] != "code":
                continue
            opts, _ = cell_options(_cell_src(c))
            cap = opts.get("fig-cap")
            has_img = any(set(o.get("data") or {}) & {"image/png", "image/svg+xml", "image/jpeg"} for o in c.get("outputs", []))
            if cap and has_img and opts.get("include") is not False:
                for one in cap if isinstance(cap, list) else [cap]:
                    if html.escape(str(one)) not in page:
                        rep["missing_captions"].append(f"{entry}: {str(one)[:60]!r}")
    return {k: list(dict.fromkeys(v)) for k, v in rep.items()}


def build(
    flags: str = "",         # notebook flags to run too, e.g. "slow"
    jobs: int = 2,           # chapters executed at the same time
    renderer: str = "auto",  # "quarto", "smalldocs", or "auto" (quarto when on the PATH)
    only=None,               # notebook file names to include (default: every chapter listed)
    reuse: bool = False,     # render the executed copies already in _build/executed, even stale ones (renderer work)
    check: bool = True,      # fail (SystemExit) when check_site finds a problem
) -> Path:                   # the index page of the built book
    "Execute, stage and render the book; return the path of its index page."
    cfg = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    entries = chapter_files(cfg)
    present = [e for e in entries if source_of(e).exists()
               and (only is None or not e.endswith(".ipynb") or source_of(e).name in only)
               and (not reuse or not e.endswith(".ipynb") or (nbrun.OUT / source_of(e).name).exists())]
    missing = sorted(set(entries) - set(present))
    if missing:
        print(f"note: not yet written{' or executed' if reuse else ''}, left out of this build: {', '.join(missing)}")
    nb_entries = [e for e in present if e.endswith(".ipynb")]
    if reuse:   # the copies as they are, leaving out those whose last execution failed
        ok = lambda e: json.loads((nbrun.OUT / (source_of(e).stem + ".json")).read_text()).get("ok", False) \
            if (nbrun.OUT / (source_of(e).stem + ".json")).exists() else True
        dropped = [e for e in nb_entries if not ok(e)]
        if dropped:
            print(f"note: last execution failed, left out of this build: {', '.join(dropped)}")
        present = [e for e in present if e not in dropped]
        nb_entries = [e for e in nb_entries if e not in dropped]
        results = {source_of(e).name: nbrun.NbResult(source_of(e).name, True, 0.0, executed=str(nbrun.OUT / source_of(e).name))
                   for e in nb_entries}
    else:
        results = nbrun.run_all([source_of(e) for e in nb_entries], jobs=jobs, flags=flags)
    failed = [r for r in results.values() if not r.ok]
    if failed:
        for r in failed:
            print(f"\n=== {r.name} failed ===\n{r.error}", file=sys.stderr)
        raise SystemExit(f"book: {len(failed)} chapter(s) failed to execute: {', '.join(r.name for r in failed)}")

    if STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir(parents=True)
    docs, sources = {}, {}
    for e in present:
        src = source_of(e)
        sources[e] = src.relative_to(ROOT).as_posix()
        docs[e] = stage_notebook(Path(results[src.name].executed)) if e.endswith(".ipynb") else src.read_text()
    docs, missing_refs = stage_all(docs, sources)
    for e, doc in docs.items():
        (STAGE / e).parent.mkdir(parents=True, exist_ok=True)
        (STAGE / e).write_text(json.dumps(doc, indent=1) if isinstance(doc, dict) else doc)
    cfg["book"]["chapters"] = prune(cfg["book"]["chapters"], set(present))
    cfg["book"].setdefault("page-navigation", True)   # previous / next at the foot of every page
    (STAGE / "_quarto.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    use_quarto = renderer == "quarto" or (renderer == "auto" and shutil.which("quarto"))
    out = STAGE / cfg["project"].get("output-dir", "_book")
    if use_quarto:
        subprocess.run(["quarto", "render", str(STAGE)], check=True)
    else:
        from smalldocs.site import build as sd_build
        site = sd_build(str(STAGE), quiet=True)
        for w in site.warnings:
            if "built as a website" not in w and "html-math-method" not in w and "page-navigation" not in w:
                print(f"smalldocs: {w}")
        report = offline_maths(out)
        (ROOT / "_build" / "maths.json").write_text(json.dumps(report, indent=1))
        if report["failures"]:
            print("maths that could not be converted to MathML:\n  " + "\n  ".join(report["failures"]))
    final = ROOT / "_build" / "book"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(out, final)
    problems = check_site(final, missing_refs, docs)
    (ROOT / "_build" / "book_checks.json").write_text(json.dumps(problems, indent=1))
    bad = {k: v for k, v in problems.items() if v}
    if bad and check:
        raise SystemExit("book: the built pages have problems (see _build/book_checks.json):\n"
                         + "\n".join(f"  {k}: {x}" for k, v in bad.items() for x in v[:20]))
    return final / "index.html"


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Build the book into _build/book/.")
    ap.add_argument("--flags", default="", help='notebook flags to run too, e.g. "slow"')
    ap.add_argument("--jobs", type=int, default=2, help="chapters executed at the same time")
    ap.add_argument("--renderer", choices=["auto", "quarto", "smalldocs"], default="auto")
    ap.add_argument("--reuse-executed", action="store_true",
                    help="render the executed copies already in _build/executed without re-running any (renderer work)")
    a = ap.parse_args()
    index = build(a.flags, a.jobs, a.renderer, reuse=a.reuse_executed)
    print(f"The book is at {index}")
