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
    only = run_matrix.run_matrix(m, tmp_path / "only", jobs=1, progress="off", only=["a"])
    assert [r["id"] for r in only] == ["a"] and not (tmp_path / "only" / "t" / "b.ipynb").exists()
    with pytest.raises(ValueError, match="does not hold"):
        run_matrix.run_matrix(m, tmp_path / "only", only=["c"])


def test_matrix_runs_share_the_cores(tmp_path, monkeypatch):
    "Runs side by side get cores // (runs at a time) threads each; a caller's OMP_NUM_THREADS wins."
    sys.path.insert(0, str(ROOT / "ci"))
    import run_matrix
    assert [run_matrix.job_threads(j, n, cores=c) for j, n, c in ((2, 2, 2), (2, 1, 2), (4, 9, 2), (1, 5, 8), (3, 6, 8))] \
        == [1, 2, 1, 8, 2]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    rec = run_matrix._run("nbs/no_such.ipynb", str(tmp_path / "x.ipynb"), {}, threads=3)
    assert rec["status"] == "failed" and run_matrix.os.environ["OMP_NUM_THREADS"] == "3"   # set before the kernel starts
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    run_matrix._run("nbs/no_such.ipynb", str(tmp_path / "y.ipynb"), {}, threads=3)
    assert run_matrix.os.environ["OMP_NUM_THREADS"] == "5"


def test_a_kernel_that_fails_to_start_is_started_again(tmp_path, monkeypatch):
    "Two kernels started at once can race for a TCP port; the run is retried, other errors are not."
    sys.path.insert(0, str(ROOT / "ci"))
    import papermill
    import run_matrix
    calls = []
    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1: raise RuntimeError("Kernel didn't respond in 60 seconds")
    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    monkeypatch.setattr(run_matrix.time, "sleep", lambda s: None)
    rec = run_matrix._run("nbs/01_notation.ipynb", str(tmp_path / "a.ipynb"), {})
    assert rec["status"] == "ok" and rec["kernel_restarts"] == 1 and "error" not in rec and len(calls) == 2
    def broken(*a, **k):
        calls.append(1); raise ValueError("a cell failed")
    calls.clear(); monkeypatch.setattr(papermill, "execute_notebook", broken)
    rec = run_matrix._run("nbs/01_notation.ipynb", str(tmp_path / "b.ipynb"), {})
    assert rec["status"] == "failed" and "a cell failed" in rec["error"] and len(calls) == 1


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


FAKE_RUN = '''import json, os, time
from pathlib import Path
out = Path(out_dir); (out / "train").mkdir(parents=True, exist_ok=True)
def stage(s, **kw):
    (out / "p.tmp").write_text(json.dumps({"stage": s, **kw})); os.replace(out / "p.tmp", out / "progress.json")
stage("data"); time.sleep(pause)
stage("train", epochs=epochs)
(out / "train" / "epochs.csv").write_text("epoch,step,train_loss,val_loss\\n")
for k in range(1, epochs + 1):
    time.sleep(pause)
    with open(out / "train" / "epochs.csv", "a") as f:
        f.write(f"{k - 1},{10 * k},{1 / k:.4f},{2 / k:.4f}\\n")   # the trainer numbers epochs from 0
time.sleep(pause)
stage("sampling", n_test=5); time.sleep(pause)
stage("scoring", n_test=5); time.sleep(pause)
stage("done")'''


def _fake_matrix(tmp_path):
    "A matrix of one notebook that writes progress.json and train/epochs.csv as run_csp and the trainer do."
    import nbformat
    import yaml
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("out_dir = None\nepochs = 3\npause = 0.8")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(FAKE_RUN)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, tmp_path / "fake.ipynb")
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"name": "p", "runs": [
        {"id": "fake", "notebook": str(tmp_path / "fake.ipynb"), "parameters": {"out_dir": str(tmp_path / "out")}}]}))
    return m


def test_matrix_progress_lines_and_quiet(tmp_path, capfd):
    "The driver shows each stage and training epoch k of n with the loss, read from the run's files; no kernel warnings; quiet is quiet."
    sys.path.insert(0, str(ROOT / "ci"))
    import run_matrix
    m = _fake_matrix(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "progress.json").write_text('{"stage": "done"}')   # a stale record from an earlier run
    recs = run_matrix.run_matrix(m, tmp_path / "runs", jobs=1, progress="lines", poll=0.1)
    out, err = capfd.readouterr()
    assert recs[0]["status"] == "ok", recs
    lines = [l for l in err.splitlines() if l.startswith("fake: ")]
    phrases = [l[len("fake: "):] for l in lines]
    assert phrases[0] == "starting" and "data" in phrases, phrases     # the stale "done" was not shown first
    assert any(p.startswith("train epoch 2/3, loss 0.5, ETA ") for p in phrases), phrases
    assert "sampling 5 crystals" in phrases and "scoring 5 crystals" in phrases, phrases
    assert phrases.index("data") < phrases.index("sampling 5 crystals") < phrases.index("scoring 5 crystals")
    assert phrases[-1].startswith("ok, ") and phrases[-1].endswith(" s")
    assert "without encryption" not in err + out and "IPKernelApp" not in err + out
    run_matrix.run_matrix(m, tmp_path / "runs", jobs=1, progress="off", poll=0.1)
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)


def test_run_state_reads_the_trainer_log(tmp_path):
    "run_state: nothing before progress.json exists; the epoch and losses from the last row of epochs.csv while training."
    sys.path.insert(0, str(ROOT / "ci"))
    import run_matrix
    assert run_matrix.run_state(tmp_path) == {} and run_matrix.describe({}) == "starting"
    (tmp_path / "progress.json").write_text(json.dumps({"stage": "train", "epochs": 100}))
    assert run_matrix.run_state(tmp_path)["epoch"] == 0     # training started, no epoch finished
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "epochs.csv").write_text("epoch,step,train_loss,val_loss\n0,10,0.9,1.1\n1,20,0.8125,\n")
    st = run_matrix.run_state(tmp_path)
    assert (st["epoch"], st["train_loss"], "val_loss" in st) == (2, 0.8125, False)   # an empty cell is left out
    assert run_matrix.describe(st, eta=3725) == "train epoch 2/100, loss 0.8125, ETA 1:02:05"
    (tmp_path / "progress.json").write_text("{half")                    # torn write: treated as not yet written
    assert run_matrix.run_state(tmp_path) == {}


def test_lines_show_a_training_that_ended_between_polls(tmp_path):
    "A run that trains faster than the poll still shows its last epoch once, before its next stage or its end."
    import io
    sys.path.insert(0, str(ROOT / "ci"))
    import run_matrix
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "epochs.csv").write_text("epoch,step,train_loss,val_loss\n0,10,0.9,1.1\n1,20,0.5,0.6\n")
    (tmp_path / "progress.json").write_text(json.dumps({"stage": "sampling", "n_test": 8}))
    s = io.StringIO()
    view = run_matrix.MatrixProgress([{"id": "r"}], mode="lines", stream=s)
    view.update("r", "running", tmp_path)
    view.update("r", "running", tmp_path)                        # the same stage again: nothing new
    view.finish("r", {"status": "ok", "seconds": 1.0}, tmp_path)
    assert s.getvalue().splitlines() == ["r: train epoch 2/2, loss 0.5 (done)", "r: sampling 8 crystals", "r: ok, 1.0 s"]
    s2 = io.StringIO()                                           # no poll saw the run at all: finish still shows it
    view = run_matrix.MatrixProgress([{"id": "q"}], mode="lines", stream=s2)
    view.finish("q", {"status": "ok", "seconds": 2.0}, tmp_path)
    assert s2.getvalue().splitlines() == ["q: train epoch 2/2, loss 0.5 (done)", "q: ok, 2.0 s"]
