"""The committed chapters are sources, not records: no outputs, a kernelspec, a title, one module."""
import json
from pathlib import Path

import pytest

NBS = sorted((Path(__file__).resolve().parents[1] / "nbs").glob("*.ipynb"))


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_chapter_is_clean_source(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    with_out = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count")]
    assert not with_out, f"{path.name}: code cells {with_out} carry outputs; run nbdev-clean"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", f"{path.name}: no python3 kernelspec (papermill needs it)"
    first = "".join(nb["cells"][0]["source"])
    assert first.startswith("# "), f"{path.name}: the first cell must be the chapter title"
    if path.name != "00_index.ipynb":
        exp = [c for c in code if "".join(c["source"]).startswith("#| default_exp ")]
        assert len(exp) == 1, f"{path.name}: a chapter exports exactly one module"


MAX_CELL_LINES = 45   # "one idea per cell": no exported cell much over 40 lines of code


def _code_lines(src: str) -> int:
    "Lines of an exported cell, not counting a documented multi-line signature (one argument per line, as nbdev's "
    "docments want) or a dataclass's documented fields (one per line): what a reader has to follow as code."
    import ast
    lines = src.splitlines()
    tree = ast.parse(src)
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body[0].lineno - node.lineno > 1:
            skip.update(range(node.lineno + 1, node.body[0].lineno))     # keep the def line, drop the argument lines
        if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
            for st in node.body:
                if isinstance(st, ast.AnnAssign): skip.update(range(st.lineno, st.end_lineno + 1))
    return len(lines) - len(skip)


def test_code_lines_counts_what_it_says():
    sig = "def f(\n    a,   # one\n    b,   # two\n):\n    return a + b\n"
    assert _code_lines(sig) == 2                          # 'def f(' and the body; the argument lines do not count
    dc = "@dataclass\nclass C:\n    a: int = 1   # one\n    b: int = 2   # two\n    def f(self): return 1\n"
    assert _code_lines(dc) == 3


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_exported_cells_hold_one_idea(path):
    nb = json.loads(path.read_text())
    long = []
    for c in nb["cells"]:
        src = "".join(c["source"])
        if c["cell_type"] == "code" and src.startswith("#| export"):
            n = _code_lines(src)
            if n > MAX_CELL_LINES: long.append((c.get("id"), n, src.splitlines()[1][:60]))
    assert not long, f"{path.name}: exported cells over {MAX_CELL_LINES} lines of code (split them): {long}"
