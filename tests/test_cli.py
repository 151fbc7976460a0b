"""`cdb train`, `sample`, `reproduce` and `describe`: bad arguments exit with 2 before any work, a checkpoint's
abilities (task, text input) decide what `sample` accepts, and Ctrl-C during `cdb train` exits with 130 and leaves
a run that `--resume` finishes."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crystal_diffusion_book.cli import main, sample_spec

NET = dict(hidden_dim=16, num_layers=1, num_freqs=4, time_dim=8)
needs_mirror = pytest.mark.skipif(not os.environ.get("CDB_DATA_MIRROR"), reason="needs the data mirror (CDB_DATA_MIRROR)")


def run(*argv):
    "main(argv) with stdout and stderr captured: (exit code, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv, msg", [
    (["train", "--dataset", "perov_6", "--model", "kldm", "--out", "{d}"], "--dataset"),
    (["train", "--dataset", "perov_5", "--model", "cdvae", "--out", "{d}"], "--model"),
    (["train", "--dataset", "perov_5", "--model", "kldm", "--prompt-fields", "formula", "--out", "{d}"], "text models"),
    (["train", "--dataset", "perov_5", "--model", "tgdmat", "--prompt-fields", "band_gap", "--out", "{d}"], "--prompt-fields"),
    (["train", "--dataset", "perov_5", "--model", "kldm", "--epochs", "0", "--out", "{d}"], "--epochs"),
    (["train", "--dataset", "perov_5", "--model", "kldm", "--resume", "--out", "{d}"], "no checkpoint"),
    (["train", "--dataset", "perov_5", "--model", "kldm", "--preset", "laptop", "--out", "{d}"], "invalid choice"),
    (["train", "--dataset", "perov_5", "--out", "{d}"], "--model"),
    (["sample", "--checkpoint", "{d}/missing.pt", "--formula", "SrTiO3", "--out", "{d}/c"], "does not exist"),
    (["sample", "--checkpoint", "{d}/missing.pt", "--formula", "SrTiO3", "--atoms", "5", "--out", "{d}/c"], "not allowed"),
    (["sample", "--checkpoint", "{d}/missing.pt", "--out", "{d}/c"], "--formula --atoms"),
    (["reproduce", "--models", "kldm,cdvae", "--out", "{d}"], "cdvae"),
    (["reproduce", "--preset", "smoke", "--n-test", "0", "--out", "{d}"], "--n-test"),
    (["describe", "--dataset", "perov_5", "--fields", "band_gap"], "--fields"),
    (["describe", "--dataset", "perov_5", "--limit", "0"], "--limit"),
])
def test_bad_arguments_exit_2(tmp_path, argv, msg):
    code, out, err = run(*[a.format(d=tmp_path) for a in argv])
    assert code == 2 and msg in err, (code, err)
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "c").exists()


def cif_composition(path):
    "The composition on a CIF's formula line (an untrained sampler's cell may be too odd for pymatgen to parse back)."
    import re
    from pymatgen.core import Composition
    return Composition(re.search(r"_chemical_formula_sum\s+'([^']+)'", Path(path).read_text())[1])


def _save(model, path):
    model.save(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    "Untrained tiny checkpoints: a CSP model without text, TGDMat CSP with 384-d and 16-d text, TGDMat DNG with text."
    from crystal_diffusion_book.diffcsp import DiffCSP, DiffCSPConfig
    from crystal_diffusion_book.tgdmat import TGDMat, TGDMatConfig
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    return {"diffcsp": _save(DiffCSP(DiffCSPConfig.make(network=NET, dataset="perov_5")), d / "diffcsp.pt"),
            "tgdmat": _save(TGDMat(TGDMatConfig.make("csp", network=NET, text_dim=384)), d / "tgdmat.pt"),
            "tgdmat16": _save(TGDMat(TGDMatConfig.make("csp", network=NET, text_dim=16)), d / "tgdmat16.pt"),
            "dng": _save(TGDMat(TGDMatConfig.make("dng", network=NET, text_dim=384)), d / "dng.pt")}


class StubEncoder:
    "A text encoder without weights: a fixed unit vector of `dim` entries per text."
    name = "stub"
    def __init__(self, dim): self.dim = dim
    def encode(self, texts): return torch.nn.functional.normalize(torch.ones(len(texts), self.dim), dim=-1)


def test_sample_spec_follows_the_checkpoint(checkpoints):
    from crystal_diffusion_book.model import load_model
    csp, tg, dng = (load_model(checkpoints[k]) for k in ("diffcsp", "tgdmat", "dng"))
    s = sample_spec(csp, ["SrTiO3", "NaCl"], n=2)
    assert s.n_crystals == 4 and s.cond is None and s.labels[2] == "NaCl_0"
    s = sample_spec(tg, ["SrTiO3"], n=3, prompt="a cubic perovskite", encoder=StubEncoder(384))
    assert s.cond.shape == (3, 384) and torch.equal(s.cond[0], s.cond[2])
    s = sample_spec(dng, atoms=5, n=2, prompt="a cubic perovskite", encoder=StubEncoder(384))
    assert s.num_atoms.tolist() == [5, 5] and s.cond.shape == (2, 384) and s.labels == ["atoms5_0", "atoms5_1"]
    for model, kw, msg in [(csp, dict(formulas=["SrTiO3"], prompt="x"), "no text input"),
                           (tg, dict(formulas=["SrTiO3"]), "--prompt is needed"),
                           (csp, dict(atoms=5), "CSP model"),
                           (dng, dict(formulas=["SrTiO3"], prompt="x"), "--atoms N"),
                           (tg, dict(formulas=["SrTiO3"], prompt="x", encoder=StubEncoder(16)), "384-d"),
                           (tg, dict(formulas=["SrTiO3"], prompt="   ", encoder=StubEncoder(384)), "empty"),
                           (csp, dict(formulas=["SrTiO3"], n=0), "-n")]:
        with pytest.raises(ValueError, match=msg):
            sample_spec(model, **kw)


def test_sample_with_a_prompt_writes_cifs(checkpoints, tmp_path, one_thread):
    "The real path: the default encoder embeds the prompt, the text model samples, CIFs keep the composition."
    code, out, err = run("sample", "--checkpoint", checkpoints["tgdmat"], "--formula", "SrTiO3,NaCl", "--prompt",
                         "The space group number is 221.", "--steps", "5", "--guidance", "1.0", "--out", tmp_path / "c")
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "c").glob("*.cif"))
    assert files == ["NaCl_0.cif", "SrTiO3_0.cif"]
    assert cif_composition(tmp_path / "c" / "NaCl_0.cif").reduced_formula == "NaCl"
    code, out, err = run("sample", "--checkpoint", checkpoints["dng"], "--atoms", "5", "-n", "2", "--prompt",
                         "A cubic perovskite oxide.", "--steps", "5", "--out", tmp_path / "g")   # generation from text alone
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "g").glob("*.cif")) == ["atoms5_0.cif", "atoms5_1.cif"]
    assert cif_composition(tmp_path / "g" / "atoms5_0.cif").num_atoms == 5
    code, out, err = run("sample", "--checkpoint", checkpoints["tgdmat16"], "--formula", "SrTiO3", "--prompt", "x",
                         "--out", tmp_path / "d")
    assert code == 2 and "trained on 16-d" in err and not (tmp_path / "d").exists()
    code, out, err = run("sample", "--checkpoint", checkpoints["diffcsp"], "--formula", "SrTiO3", "--guidance", "2",
                         "--out", tmp_path / "e")
    assert code == 2 and "--guidance" in err


@needs_mirror
def test_train_refuses_to_overwrite_and_ctrl_c_resumes(tmp_path):
    "Ctrl-C (SIGINT) during `cdb train`: exit 130 and a hint; --resume finishes the run from the last checkpoint."
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "crystal_diffusion_book.cli", "train", "--dataset", "perov_5", "--model", "kldm",
           "--preset", "smoke", "--out", str(run_dir), "--quiet", "--threads", "1"]
    # a shell that starts the suite in the background ignores SIGINT for its children; start this one with the default
    p = subprocess.Popen(cmd + ["--epochs", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while not (run_dir / "epochs.csv").exists() or len((run_dir / "epochs.csv").read_text().splitlines()) < 3:
        assert p.poll() is None and time.time() - t0 < 120, p.communicate()
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    try:                  # generous: on a loaded machine (CI beside other jobs) an epoch of the smoke run is slow
        out, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        p.kill(); out, err = p.communicate()
        raise AssertionError(f"cdb train did not stop within 240 s of SIGINT; stderr: {err[-2000:]}")
    assert p.returncode == 130 and "--resume" in err, (p.returncode, err[-2000:])
    from crystal_diffusion_book.train import load_checkpoint
    done = int(load_checkpoint(run_dir / "last.pt")["epoch"])
    assert 1 <= done < 1000 and not (run_dir / "run.json").exists()   # the CSV row of an epoch precedes its checkpoint
    args = cmd[3:] + ["--epochs", str(done + 1)]                  # the same command, in this process
    code, out, err = run(*args)                                    # without --resume: refused before any work
    assert code == 2 and "--resume" in err
    code, out, err = run(*args, "--resume")
    assert code == 0, err[-2000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["resumed"] and (info["epochs"], info["steps"]) == (done + 1, 8 * (done + 1))
    import pandas as pd   # the epoch log of the interrupted run was cut back to the checkpoint, then continued
    assert pd.read_csv(run_dir / "epochs.csv")["epoch"].tolist() == list(range(done + 1))
    assert Path(info["checkpoint"]).exists()


@needs_mirror
def test_train_on_the_val_substitute_says_so(tmp_path):
    "`--train-source val` trains on the val split minus a held-out slice, and both the log and run.json say so."
    code, out, err = run("train", "--dataset", "carbon_24", "--model", "diffcsp", "--preset", "smoke", "--epochs", "1",
                         "--train-source", "val", "--out", tmp_path / "r", "--quiet")
    assert code == 0, err
    assert "TRAINED ON VAL" in out and "256 training and 64 validation crystals" in out
    assert json.loads((tmp_path / "r" / "run.json").read_text())["train_source"] == "val"
    code, _, err = run("train", "--dataset", "carbon_24", "--model", "diffcsp", "--train-source", "maybe", "--out", tmp_path / "x")
    assert code == 2 and "--train-source" in err


def test_prompt_style_choices_follow_the_text_module():
    "`cdb`'s --prompt-style lists text.PROMPT_STYLES literally (so --help does not import torch): they must agree."
    from crystal_diffusion_book.cli import parser
    from crystal_diffusion_book.text import PROMPT_STYLES
    train = parser()._subparsers._group_actions[0].choices["train"]
    (opt,) = [a for a in train._actions if "--prompt-style" in a.option_strings]
    assert tuple(opt.choices) == PROMPT_STYLES
