"""`pip install crystal-diffusion-book` works from a wheel, with no repository on the path."""
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with the setuptools of this venv instead of downloading a fresh one
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--sdist", "--no-isolation", "--outdir", str(out)],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory):
    "A fresh virtualenv with the wheel installed; the dependencies come from this venv's site-packages."
    d = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
    py = d / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # a plain path entry: the dependencies are importable, but this venv's editable finder for our
    # own package (a .pth *inside* that folder) is not processed, so only the wheel provides it
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(dist.glob("*.whl"))
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    return d


def run(venv, *args, cwd):
    return subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, capture_output=True, text=True)


def test_wheel_contents(dist):
    wheel = next(dist.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "crystal_diffusion_book/__init__.py" in names and "crystal_diffusion_book/notation.py" in names
    bad = [n for n in names if n.endswith((".ipynb", ".pt", ".csv.gz")) or "__pycache__" in n or "_build" in n]
    assert not bad, bad
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    for field in ("License-Expression: MIT", "Requires-Python: >=3.11", "Provides-Extra: eval", "Provides-Extra: text",
                  "Provides-Extra: dev", "Classifier: Intended Audience :: Science/Research"):
        assert field in meta, field
    sdist = next(dist.glob("*.tar.gz"))
    assert any(n.endswith("pyproject.toml") for n in tarfile.open(sdist).getnames())


def test_installed_wheel_imports_and_runs(venv, tmp_path):
    r = run(venv, "-c", "import crystal_diffusion_book as c; print(c.__file__); print(c.__version__)", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    path, version = r.stdout.split()
    assert str(venv) in path and str(ROOT) not in path, path
    import crystal_diffusion_book
    assert version == crystal_diffusion_book.__version__
    # the index chapter's example, and a conversion from the notation chapter
    code = ("import torch\nfrom crystal_diffusion_book.notation import frac_to_cart\n"
            "x = frac_to_cart(torch.tensor([[0.5, 0.5, 0.5]]), 2 * torch.eye(3)[None], torch.zeros(1, dtype=torch.long))\n"
            "assert torch.allclose(x, torch.ones(1, 3)); print('ok')")
    r = run(venv, "-c", code, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_installed_cli(venv, tmp_path):
    import os
    cdb = str(venv / "bin" / "cdb")
    r = subprocess.run([cdb, "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and "evaluate-csp" in r.stdout and "fetch" in r.stdout, r.stderr
    r = subprocess.run([cdb, "datasets"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and "perov_5" in r.stdout, r.stderr
    r = subprocess.run([cdb, "fetch", "nonexistent_set", "--split", "val", "--no-download", "--cache-dir", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and "nonexistent_set" in r.stderr
    mirror = os.environ.get("CDB_DATA_MIRROR")
    if mirror:  # real work: fetch and verify a split from the mirror into an empty cache
        r = subprocess.run([cdb, "fetch", "perov_5", "--split", "val", "--no-download", "--mirror", mirror,
                            "--cache-dir", str(tmp_path / "cache")], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0 and "3787 rows" in r.stdout, r.stdout + r.stderr


def test_installed_cli_trains_samples_reproduces(venv, tmp_path):
    """The jobs of chapter 90 from the wheel alone (no nbs/, no ci/): train, sample from the checkpoint, reproduce.
    (tests/test_cli.py checks the bad arguments in-process; one here, from the installed script.)"""
    import os
    cdb = str(venv / "bin" / "cdb")
    def call(*args):
        return subprocess.run([cdb, *map(str, args)], cwd=tmp_path, capture_output=True, text=True)
    r = call("sample", "--checkpoint", tmp_path / "missing.pt", "--formula", "SrTiO3", "--out", tmp_path / "x")
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr
    if not os.environ.get("CDB_DATA_MIRROR"):
        pytest.skip("needs the data mirror (CDB_DATA_MIRROR)")
    r = call("train", "--dataset", "perov_5", "--model", "kldm", "--preset", "smoke", "--epochs", "1",
             "--out", tmp_path / "run", "--quiet", "--threads", "1")
    assert r.returncode == 0 and "steps 8, epochs 1" in r.stdout, r.stdout + r.stderr
    r = call("sample", "--checkpoint", tmp_path / "run" / "model.pt", "--formula", "SrTiO3", "-n", "2", "--steps", "20",
             "--out", tmp_path / "cifs")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "cifs").glob("*.cif")) == ["SrTiO3_0.cif", "SrTiO3_1.cif"]
    r = call("reproduce", "--models", "kldm", "--preset", "smoke", "--epochs", "1", "--n-test", "2",
             "--out", tmp_path / "rep", "--quiet")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "| KLDM | smoke | 1 | diffcsp | 1 | 2 |" in (tmp_path / "rep" / "results.md").read_text()
