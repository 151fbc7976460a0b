"""One notation: every Greek letter, named operator (\\operatorname{...}) and set or distribution symbol (\\mathbb,
\\mathcal) a chapter's maths uses is defined in chapter 01's symbol table, and the drifts
issue 15 found (the projection written P, the wrapped-normal score written g_σ, KLDM positions written x) stay fixed."""
import functools
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted((ROOT / "nbs").glob("*.ipynb"))
GREEK = set("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi pi varpi rho "
            "varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi "
            "Psi Omega".split())
MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$", re.S)
G_SIGMA = re.compile(r"g_\{?\\sigma")                          # the wrapped-normal score is s_σ
P_PROJ = re.compile(r"(?<![\\A-Za-z])P\((?:s_|-v|o\))")        # the mean-free projection is Π


def _markdown(path):
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")


def _maths(md):
    return [a or b for a, b in MATH.findall(md)]


def _greek(maths):
    return {g for m in maths for g in re.findall(r"\\([A-Za-z]+)", m) if g in GREEK}


OPS = re.compile(r"\\(operatorname|mathcal|mathbb)\s*(?:\{([A-Za-z]+)\}|([A-Za-z]))")


def _ops(maths):
    "The named operators and \\mathbb / \\mathcal symbols of some maths, as (command, name) pairs."
    return {(k, a or b) for m in maths for k, a, b in OPS.findall(m)}


@functools.lru_cache(maxsize=1)
def _table_maths():                     # read once, not once per chapter's test
    md = _markdown(ROOT / "nbs" / "01_notation.ipynb")
    sec = md.split("{#sec-notation-symbols}", 1)
    assert len(sec) == 2, "chapter 01 has no symbol table (a heading with {#sec-notation-symbols})"
    rows = [l for l in sec[1].splitlines() if l.startswith("| ")]
    assert len(rows) > 30, "the symbol table looks truncated"
    return tuple(_maths("\n".join(rows)))


def _table():
    return _greek(_table_maths())


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_greek_letters_are_in_the_symbol_table(path):
    missing = sorted(_greek(_maths(_markdown(path))) - _table())
    assert not missing, f"{path.name} uses {missing} in its maths; chapter 01's symbol table does not define them"


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_operators_and_sets_are_in_the_symbol_table(path):
    missing = sorted(_ops(_maths(_markdown(path))) - _ops(_table_maths()))
    assert not missing, f"{path.name} uses {missing} in its maths; chapter 01's symbol table does not define them"


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_known_drifts_stay_fixed(path):
    maths = _maths(_markdown(path))
    assert not [m for m in maths if G_SIGMA.search(m)], f"{path.name}: the wrapped-normal score is s_σ, not g_σ"
    assert not [m for m in maths if P_PROJ.search(m)], \
        f"{path.name}: the mean-free projection is Π; P is the torus period"
    if path.name == "33_kldm.ipynb":   # "$x_0$-prediction" names a parameterisation, not a position
        md = re.sub(r"\$x_0\$-prediction", "", _markdown(path))
        bad = [m for m in _maths(md) if re.search(r"(?<![\\A-Za-z])x_[0t]\b|\\operatorname\{wrap\}\(x", m)]
        assert not bad, f"33_kldm.ipynb: KLDM's positions are f (radians, period P = 2π), x is Cartesian: {bad[:3]}"


def test_the_check_can_fail():
    assert _ops(["\\mathbb E[x] + \\operatorname{sinc}(x) + \\mathcal{WN}"]) == {("mathbb", "E"), ("operatorname", "sinc"), ("mathcal", "WN")}
    assert ("operatorname", "sinc") not in _ops(_table_maths())
    assert _greek(["\\zeta + \\alpha"]) == {"zeta", "alpha"} and "zeta" not in _table()
    assert G_SIGMA.search("-g_{\\sigma_r(t)}(r)") and P_PROJ.search("\\kappa\\,P(s_{\\mathrm{WN}})")
    assert not P_PROJ.search("\\Pi(s_{\\mathrm{WN}})") and not P_PROJ.search("[-P/2, P/2)")
