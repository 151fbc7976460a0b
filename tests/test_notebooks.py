"""Every chapter's checks: each notebook runs with nbdev's test semantics (cells flagged `slow` or
`gpu` skipped unless `make test FLAGS=slow`), and every assert in it must hold."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import nbrun  # noqa: E402

CHAPTERS = [p.name for p in nbrun.notebooks()]


def test_there_are_chapters():
    assert "00_index.ipynb" in CHAPTERS and "01_notation.ipynb" in CHAPTERS


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter(executed, name):
    if name not in executed:
        pytest.skip(f"{name} not selected by --nb-glob")
    res = executed[name]
    if not res.ok:
        pytest.fail(f"{name} failed after {res.seconds:.1f} s:\n{res.error}", pytrace=False)
    assert res.n_cells > 0, f"{name} executed no code cell"
