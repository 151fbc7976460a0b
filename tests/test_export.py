"""The package is in step with the notebooks: exporting them again changes nothing."""
import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "crystal_diffusion_book"


def test_export_changes_nothing(tmp_path):
    for name in ("nbs", PKG):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    exe = Path(sys.executable).parent / "nbdev-export"
    subprocess.run([str(exe)], cwd=tmp_path, check=True, capture_output=True, text=True)
    ours = {p.relative_to(ROOT / PKG) for p in (ROOT / PKG).rglob("*.py") if "__pycache__" not in p.parts}
    fresh = {p.relative_to(tmp_path / PKG) for p in (tmp_path / PKG).rglob("*.py") if "__pycache__" not in p.parts}
    changed = sorted(str(p) for p in ours & fresh if not filecmp.cmp(ROOT / PKG / p, tmp_path / PKG / p, shallow=False))
    problems = [f"{PKG}/{p}: differs from what nbdev-export writes" for p in changed]
    problems += [f"{PKG}/{p}: written by nbdev-export but not in the repository" for p in sorted(map(str, fresh - ours))]
    problems += [f"{PKG}/{p}: in the repository but no notebook exports it" for p in sorted(map(str, ours - fresh))
                 if p.name != "__init__.py"]
    assert not problems, "the package is out of step with nbs/; run `make export` and commit:\n" + "\n".join(problems)
