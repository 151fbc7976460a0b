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
