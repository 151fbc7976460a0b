"""A chapter runs under papermill with a parameter overridden on the command line."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_papermill_override_visible(tmp_path):
    out = tmp_path / "notation.ipynb"
    exe = Path(sys.executable).parent / "papermill"
    subprocess.run([str(exe), str(ROOT / "nbs" / "01_notation.ipynb"), str(out), "-p", "n_atoms", "7", "-p", "seed", "3",
                    "--cwd", str(ROOT / "nbs"), "-k", "python3"], check=True, capture_output=True, text=True)
    nb = json.loads(out.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "n_atoms = 7" in "".join(injected[0]["source"])
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert "n_atoms = 7, seed = 3" in text, "the overridden parameter is not visible in the outputs"
    assert "(7, 3)" in json.dumps(nb), "the shape computed from the override is not in the outputs"


def test_matrix_driver_runs_and_collects(tmp_path):
    import yaml
    sys.path.insert(0, str(ROOT / "ci"))
    import run_matrix
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"name": "t", "runs": [
        {"id": "a", "notebook": "nbs/01_notation.ipynb", "parameters": {"n_atoms": 5}},
        {"id": "b", "notebook": "nbs/01_notation.ipynb", "parameters": {"n_atoms": -1}}]}))
    recs = {r["id"]: r for r in run_matrix.run_matrix(m, tmp_path / "runs", jobs=2)}
    assert recs["a"]["status"] == "ok" and recs["b"]["status"] == "failed"  # a negative size cannot run
    assert "n_atoms = 5" in (tmp_path / "runs" / "t" / "a.ipynb").read_text()
    assert (tmp_path / "runs" / "t" / "results.md").read_text().count("\n") == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs: [{id: x}]")
    import pytest
    with pytest.raises(ValueError, match="no `notebook`"):
        run_matrix.run_matrix(bad, tmp_path / "runs")


def test_matrix_parameters_exist_in_the_notebooks():
    "Every parameter a run matrix passes is a name of its notebook's `parameters` cell (papermill would add an unknown one silently)."
    import ast
    import yaml
    for f in sorted((ROOT / "ci").glob("matrix-*.yaml")):
        for r in yaml.safe_load(f.read_text())["runs"]:
            nb = json.loads((ROOT / r["notebook"]).read_text())
            cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
            names = {t.id for n in ast.parse("".join(cell["source"])).body for t in getattr(n, "targets", [])}
            unknown = set(r.get("parameters", {})) - names
            assert not unknown, f"{f.name}: run {r['id']} passes {sorted(unknown)}, not in {r['notebook']}'s parameters"
