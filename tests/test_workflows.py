"""The publishing workflows cannot run here; check that they parse and say what they must."""
from pathlib import Path

import pytest
import yaml

WF = Path(__file__).resolve().parents[1] / ".github" / "workflows"


def load(name):
    d = yaml.safe_load((WF / name).read_text())
    d["on"] = d.pop(True, d.get("on"))  # YAML 1.1 reads the key `on` as True
    return d


@pytest.mark.parametrize("name", ["test.yml", "book.yml", "release.yml"])
def test_workflow_is_valid(name):
    d = load(name)
    assert isinstance(d["on"], dict) and d["jobs"], name
    for job, spec in d["jobs"].items():
        assert "runs-on" in spec and isinstance(spec["steps"], list) and spec["steps"], f"{name}:{job}"
        for step in spec["steps"]:
            assert ("uses" in step) != ("run" in step), f"{name}:{job}: a step needs exactly one of uses/run"


def test_workflows_do_the_right_jobs():
    assert "pull_request" in load("test.yml")["on"]
    assert any(s.get("run") == "make test" for s in load("test.yml")["jobs"]["test"]["steps"])
    book = load("book.yml")
    assert book["on"]["push"]["branches"] == ["main"]
    assert any("quarto" in s.get("uses", "") for s in book["jobs"]["book"]["steps"])
    rel = load("release.yml")
    assert rel["on"]["push"]["tags"] == ["v*"]
    assert any("pypi-publish" in s.get("uses", "") for s in rel["jobs"]["release"]["steps"])
