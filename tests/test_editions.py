"""The course kit: every chapter has exercises with solutions, and the student edition drops the
solutions and nothing else."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import editions  # noqa: E402

CHAPTERS = sorted((ROOT / "nbs").glob("[0-9]*.ipynb"))


def _appendix() -> set[str]:
    "The notebooks of the book's Appendix part (reference pages: sources, published numbers, bibliography)."
    import yaml
    book = yaml.safe_load((ROOT / "_quarto.yml").read_text())["book"]
    part = [p for p in book["chapters"] if isinstance(p, dict) and p.get("part") == "Appendix"]
    assert len(part) == 1, "_quarto.yml has no Appendix part"
    return {Path(c).name for c in part[0]["chapters"] if c.endswith(".ipynb")}


# Every teaching chapter has exercises; the index and the appendix's reference pages do not teach.
TEACHING = [p for p in CHAPTERS if p.name != "00_index.ipynb" and p.name not in _appendix()]


@pytest.mark.parametrize("path", TEACHING, ids=lambda p: p.name)
def test_chapter_has_exercises_with_solutions(path):
    nb = json.loads(path.read_text())
    pairs = editions.exercises(nb)
    assert len(pairs) >= 2, f"{path.name}: fewer than two exercises with solutions"
    for e, s in pairs:
        assert nb["cells"][e]["cell_type"] == "markdown"
        assert "".join(nb["cells"][s]["source"]).strip(), f"{path.name}: empty solution in cell {s}"


def test_student_edition_removes_solutions_and_nothing_else(tmp_path):
    written = editions.build(tmp_path)
    assert len(written) == len(CHAPTERS)
    for src, dst in zip(CHAPTERS, sorted(written)):
        a, b = json.loads(src.read_text()), json.loads(dst.read_text())
        assert len(a["cells"]) == len(b["cells"]), src.name
        sol = {s for _, s in editions.exercises(a)}
        for i, (ca, cb) in enumerate(zip(a["cells"], b["cells"])):
            if i in sol:
                assert "solution" not in editions.tags(cb) and "student-stub" in editions.tags(cb)
                assert "write your solution here" in "".join(cb["source"])
            else:
                assert ca == cb, f"{src.name}: cell {i} changed in the student edition"


def test_solution_without_exercise_is_refused():
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["solution"]}, "source": "1", "outputs": []}]}
    with pytest.raises(ValueError, match="cell 0 is tagged `solution`"):
        editions.exercises(nb)
