"""The book builds offline, and its pages carry prose, code, outputs, rendered maths and figures."""
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import book  # noqa: E402


@pytest.fixture(scope="module")
def site(executed, nb_flags):
    failed = [r.name for r in executed.values() if not r.ok]
    if failed:
        pytest.skip(f"chapters failed to execute (reported by test_notebooks): {failed}")
    index = book.build(flags=nb_flags, only=set(executed), check=False)   # the checks are the tests below
    return index.parent


@pytest.fixture(scope="module")
def checks(site):
    return json.loads((ROOT / "_build" / "book_checks.json").read_text())


def pages(site):
    return {p.relative_to(site).as_posix(): p.read_text() for p in site.rglob("*.html")}


def test_index_page(site):
    html = (site / "index.html").read_text()
    text = re.sub(r"<[^>]+>", "", html)  # code is highlighted with spans: compare the text
    assert "Diffusion models of crystals" in text
    assert "make test" in text and "make book" in text
    # the sidebar lists the chapters under their parts
    for word in ("Foundations", "Notation and conventions"):
        assert word in html, word


def test_every_chapter_has_prose_code_and_outputs(site, executed):
    found = pages(site)
    for name in executed:
        page = "index.html" if name == "00_index.ipynb" else f"nbs/{Path(name).stem}.html"
        assert page in found, f"{page} was not rendered"
        html = found[page]
        assert "<h1" in html and "<p>" in html, f"{page}: no title or prose"
        assert "cell-code" in html, f"{page}: no code"
        assert "cell-output" in html, f"{page}: no outputs"
        assert "Traceback" not in html, f"{page}: a traceback was rendered"


def test_maths_is_mathml_and_offline(site):
    report = json.loads((ROOT / "_build" / "maths.json").read_text())
    assert report["failures"] == [], report["failures"]
    found = pages(site)
    assert sum(report["pages"].values()) > 20
    for name, html in found.items():
        assert "katex" not in html.lower(), f"{name} still loads KaTeX"
        assert "cdn.jsdelivr" not in html, f"{name} loads from a CDN"
    notation = found["nbs/01_notation.html"]
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">' in notation
    # no TeX left unconverted in prose (outside code)
    prose = re.sub(r"<(pre|code|script)\b.*?</\1>", "", notation, flags=re.S)
    assert "\\(" not in prose and "\\[" not in prose


def test_figures_are_embedded(site):
    notation = (site / "nbs" / "01_notation.html").read_text()
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/]{1000,}', notation)


@pytest.mark.parametrize("kind", ["raw_tex", "unresolved_refs", "broken_links", "missing_captions", "machine_paths"])
def test_build_checks(checks, kind):
    "Every equation rendered, every @ref resolved, every internal link and #anchor found, every fig-cap shown, no machine paths."
    assert checks[kind] == [], "\n".join(checks[kind][:30])


def test_previous_and_next_links(site):
    "Every page ends with links to the pages before and after it in the book's reading order."
    import posixpath
    import yaml
    found = pages(site)
    order = [re.sub(r"\.(ipynb|md)$", ".html", e) for e in book.chapter_files(yaml.safe_load((ROOT / "_quarto.yml").read_text()))]
    order = [p for p in order if p in found]
    assert len(order) > 5
    for i, name in enumerate(order):
        html = found[name]
        for side, j in (("previous", i - 1), ("next", i + 1)):
            m = re.search(rf'nav-page-{side}"><a href="([^"]+)"', html)
            if 0 <= j < len(order):
                assert m, f"{name}: no {side} link"
                assert posixpath.normpath(posixpath.join(posixpath.dirname(name), m.group(1))) == order[j], (name, side, m.group(1))
            else:
                assert not m, f"{name}: a {side} link past the end"


def test_outputs_are_clean(site):
    for name, html in pages(site).items():
        outs = " ".join(re.findall(r'<div class="cell-output.*?</div>', html, flags=re.S))
        assert "RESULTS:" not in outs, name
        assert not re.search(r"\d+%\|", outs), f"{name}: a progress bar"
        assert not re.search(r"\.py:\d+: \w*Warning", outs), f"{name}: a warning with its file and line"


# ------------------------------------------------------------- the mechanisms, on small inputs (fast)

def test_clean_text():
    rules = book._path_rules()
    t = (f"{book.ROOT}/crystal_diffusion_book/data.py:68: UserWarning: skipped 2 rows\n  warnings.warn(x)\n"
         "<ipython-input-3-abc123>:4: DeprecationWarning: old\n  y()\n"
         " 50%|#####     | 5/10 [00:01<00:01,  4.20it/s]\r100%|##########| 10/10 [00:02<00:00,  4.40it/s]\n"
         "sampling 2 crystal(s), 50 steps: 100%|##########| 100/100 [00:00<00:00, 214.66call/s]\n"   # any unit
         "RESULTS:{\"a\": 1}\nwrote /tmp/tmpab12cd34/x.cif\n")
    out = book.clean_text(t, rules)
    assert out.split("\n")[:3] == ["UserWarning: skipped 2 rows", "DeprecationWarning: old", "wrote <tmp>/x.cif"], out
    outs = book.clean_outputs([{"output_type": "stream", "name": "stdout",
                                "text": "before\n| a | b |\n|---|---|\n| 1 | 2 |\nafter\n"}], rules)
    assert [o["output_type"] for o in outs] == ["stream", "display_data", "stream"]
    assert outs[1]["data"]["text/markdown"].startswith("| a | b |") and outs[2]["text"] == "after\n"


def test_crossrefs_mechanism():
    "Labels numbered by chapter; @refs become links across pages; captions numbered; equations anchored in MathML."
    fig = {"cell_type": "code", "source": '#| label: fig-demo\n#| fig-cap: "A demo"\nplot()', "outputs": []}
    docs = {"nbs/32_a.ipynb": {"cells": [
                {"cell_type": "markdown", "source": "## Sampler {#sec-sampler}\n\n$$x = 1$$ {#eq-one}\n\nsee @eq-two, `@eq-two` stays"},
                fig]},
            "nbs/33_b.ipynb": {"cells": [{"cell_type": "markdown",
                "source": "$$y = 2$$ {#eq-two}\n\n@eq-one, [-@eq-one], @fig-demo, @sec-sampler, @fig-nope, [chapter 32](32_a.ipynb)"}]},
            "index.ipynb": {"cells": [{"cell_type": "markdown", "source": "[torus](10_torus.ipynb) and @eq-two"}]}}
    src = {"nbs/32_a.ipynb": "nbs/32_a.ipynb", "nbs/33_b.ipynb": "nbs/33_b.ipynb", "index.ipynb": "nbs/00_index.ipynb"}
    out, missing = book.stage_all(docs, src)
    a, b = (out[k]["cells"][0]["source"] for k in ("nbs/32_a.ipynb", "nbs/33_b.ipynb"))
    assert "$$\\label{eq-one}x = 1 \\qquad (32.1)$$" in a and "[Eq. (33.1)](33_b.ipynb#eq-two)" in a and "`@eq-two`" in a
    assert "[Eq. (32.1)](32_a.ipynb#eq-one)" in b and "[(32.1)](32_a.ipynb#eq-one)" in b
    assert "[Figure 32.1](32_a.ipynb#fig-demo)" in b and "[Section “Sampler”](32_a.ipynb#sec-sampler)" in b
    assert missing == ["nbs/33_b.ipynb: @fig-nope"]
    assert '"Figure 32.1: A demo"' in out["nbs/32_a.ipynb"]["cells"][1]["source"]
    idx = out["index.ipynb"]["cells"][0]["source"]
    assert "[torus](nbs/10_torus.ipynb)" in idx and "(nbs/33_b.ipynb#eq-two)" in idx   # staged at the root
    page, n, bad = book.mathml_page('<p><span class="math display">\\[\\label{eq-one}x = 1 \\qquad (32.1)\\]</span></p>')
    assert n == 1 and not bad and '<math id="eq-one"' in page and "32.1" in page and "label" not in page


def test_checks_catch_problems(tmp_path):
    "check_site fails on what it should: raw TeX, a missing page or anchor, a caption not shown."
    (tmp_path / "nbs").mkdir()
    (tmp_path / "nbs" / "a.html").write_text('<p>grid $\\tau_i = $ here, cost $5 and $6</p><code>$x^2$</code>'
                                             '<a href="b.html#eq-1">x</a><a href="c.html">y</a><a href="#top">z</a>'
                                             '<a href="https://example.org">w</a><p id="top"></p>')
    (tmp_path / "nbs" / "b.html").write_text('<math id="eq-2"></math>')
    staged = {"nbs/a.ipynb": {"cells": [{"cell_type": "code", "source": '#| fig-cap: "Shown?"\nplot()',
                                         "outputs": [{"output_type": "display_data", "data": {"image/png": "xx"}}]}]}}
    rep = book.check_site(tmp_path, ["x: @eq-9"], staged)
    assert rep["raw_tex"] == ["nbs/a.html: '$\\\\tau_i = $'"], rep["raw_tex"]       # "$5 and $6" is not TeX; code is skipped
    assert sorted(rep["broken_links"]) == ["nbs/a.html: b.html#eq-1 (no #eq-1 in nbs/b.html)", "nbs/a.html: c.html (no file nbs/c.html)"]
    assert rep["missing_captions"] == ["nbs/a.ipynb: 'Shown?'"] and rep["unresolved_refs"] == ["x: @eq-9"]
