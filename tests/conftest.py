"""Shared fixtures: the chapters are executed once per test session (two at a time) and reused."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CDB_CACHE_DIR", str(ROOT / "_build" / "cache"))
_mirror = ROOT.parent / "shared" / "data"
if _mirror.is_dir():
    os.environ.setdefault("CDB_DATA_MIRROR", str(_mirror))


def pytest_addoption(parser):
    parser.addoption("--nb-flags", default="", help='notebook flags to run too, e.g. "slow" or "slow gpu"')
    parser.addoption("--nb-jobs", default=2, type=int, help="chapters executed at the same time")
    parser.addoption("--nb-glob", default="[0-9]*.ipynb", help="which chapters to execute, e.g. '1*_*.ipynb'")


@pytest.fixture(scope="session")
def nb_flags(request):
    return request.config.getoption("--nb-flags").strip()


@pytest.fixture(scope="session")
def executed(request, nb_flags):
    "Every chapter executed in its quick tier (plus any --nb-flags); results by file name."
    import nbrun
    paths = nbrun.notebooks(request.config.getoption("--nb-glob"))
    return nbrun.run_all(paths, jobs=request.config.getoption("--nb-jobs"), flags=nb_flags)


@pytest.fixture
def one_thread():
    "Many small tensor operations: one torch thread is faster than several on a shared machine."
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
