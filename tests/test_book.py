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
    index = book.build(flags=nb_flags, only=set(executed))
    return index.parent


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
