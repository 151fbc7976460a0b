"""The student edition: every chapter with the solutions removed and everything else intact.

    python tools/editions.py            # writes _build/student/nbs/*.ipynb

The chapters in `nbs/` are the instructor's edition. Exercises are Markdown cells tagged
`exercise`; each is followed by its solution, a code cell tagged `solution`. The student edition
keeps every cell but replaces the source of each solution cell by a stub that says which exercise
it answers, and clears its outputs (the fastbook practice: one source, two editions, kept in step
by a test).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "_build" / "student"
STUB = "# Exercise {n}: write your solution here.\n"


def tags(cell: dict) -> set[str]:
    "The tags of a cell."
    return set(cell.get("metadata", {}).get("tags", []))


def exercises(nb: dict) -> list[tuple[int, int]]:
    "Pairs (exercise cell, solution cell) of indices; raise ValueError on a solution with no exercise."
    pairs, last = [], None
    for i, c in enumerate(nb["cells"]):
        if "exercise" in tags(c):
            last = i
        elif "solution" in tags(c):
            if last is None:
                raise ValueError(f"cell {i} is tagged `solution` but no `exercise` cell comes before it")
            pairs.append((last, i))
    return pairs


def student_notebook(nb: dict) -> dict:
    "The student copy of one notebook: solution cells replaced by stubs, all other cells unchanged."
    nb = json.loads(json.dumps(nb))
    pairs = exercises(nb)
    for n, (_, i) in enumerate(pairs, 1):
        cell = nb["cells"][i]
        cell["source"] = STUB.format(n=n)
        cell["metadata"]["tags"] = [t for t in tags(cell) if t != "solution"] + ["student-stub"]
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def build(out: Path = OUT) -> list[Path]:
    "Write the student edition of every chapter; return the files written."
    written = []
    for p in sorted((ROOT / "nbs").glob("[0-9]*.ipynb")):
        dest = out / "nbs" / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(student_notebook(json.loads(p.read_text())), indent=1) + "\n")
        written.append(dest)
    return written


if __name__ == "__main__":
    files = build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"student edition: {len(files)} chapters in {files[0].parent if files else OUT}")
