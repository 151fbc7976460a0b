"""Every bad input of `cdb` a user hit in issue 16: the command, its exit code, and that the one-line message names
what was wrong. Argument ranges are argparse's (exit 2, before torch or pymatgen are imported); resume compatibility is
read from the checkpoint before any data; nothing already on disk is overwritten; evaluate-csp says what it scored."""
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crystal_diffusion_book.cli import main

NET = dict(hidden_dim=16, num_layers=1, num_freqs=4, time_dim=8)
needs_mirror = pytest.mark.skipif(not os.environ.get("CDB_DATA_MIRROR"), reason="needs the data mirror (CDB_DATA_MIRROR)")


def run(*argv):
    "main(argv) with stdout and stderr captured: (exit code, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


SAMPLE = ["sample", "--checkpoint", "{d}/ck.pt", "--formula", "SrTiO3", "--out", "{d}/c"]
TRAIN = ["train", "--dataset", "perov_5", "--model", "kldm", "--out", "{d}/run"]
EVAL = ["evaluate-csp", "--pred", "{d}", "--dataset", "perov_5"]
RANGES = [
    (SAMPLE + ["--steps", "0"], "--steps"), (SAMPLE + ["--threads", "-1"], "--threads"),
    (SAMPLE + ["--seed", str(2 ** 40)], "--seed"), (SAMPLE + ["--seed", "-3"], "--seed"), (SAMPLE + ["-n", "0"], "-n"),
    (SAMPLE + ["--guidance", "-1"], "--guidance"), (SAMPLE + ["--guidance", "nan"], "--guidance"),
    (SAMPLE + ["--batch-size", "0"], "--batch-size"), (SAMPLE + ["--formula-units", "0"], "--formula-units"),
    (["sample", "--checkpoint", "{d}/ck.pt", "--atoms", "0", "--out", "{d}/c"], "--atoms"),
    (TRAIN + ["--p-uncond", "5"], "--p-uncond"), (TRAIN + ["--t-f", "-1"], "--t-f"),
    (TRAIN + ["--ckpt-every-steps", "-1"], "--ckpt-every-steps"), (TRAIN + ["--threads", "-1"], "--threads"),
    (TRAIN + ["--seed", str(2 ** 64)], "--seed"), (TRAIN + ["--epochs", "0"], "--epochs"),
    (TRAIN + ["--v0-scale", "inf"], "--v0-scale"),
    (["reproduce", "--n-test", "0", "--out", "{d}/r"], "--n-test"),
    (["reproduce", "--sampler-steps", "0", "--out", "{d}/r"], "--sampler-steps"),
    (["reproduce", "--guidance", "inf", "--out", "{d}/r"], "--guidance"),
    (["describe", "--dataset", "perov_5", "--jobs", "0"], "--jobs"),
    (["describe", "--dataset", "perov_5", "--timeout", "0"], "--timeout"),
    (EVAL + ["--limit", "0"], "--limit"), (EVAL + ["--procs", "0"], "--procs"), (EVAL + ["--timeout", "-1"], "--timeout"),
]


@pytest.mark.parametrize("argv, option", RANGES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in RANGES])
def test_argument_ranges_exit_2(tmp_path, argv, option):
    code, out, err = run(*[a.format(d=tmp_path) for a in argv])
    assert code == 2, (code, err)
    last = err.strip().splitlines()[-1]                # argparse: usage, then one line naming the option
    assert f"argument {option}" in last and "must be" in last, last
    assert not any(p.name in ("c", "run", "r") for p in tmp_path.iterdir())


def test_argument_checks_import_nothing_heavy(tmp_path):
    "A bad argument is answered before torch or pymatgen is imported (what made each check wait 20-30 s)."
    code = ("import sys; from crystal_diffusion_book.cli import main\n"
            f"rc = main(['sample', '--checkpoint', {str(tmp_path / 'ck.pt')!r}, '--formula', 'SrTiO3', '--out', "
            f"{str(tmp_path / 'c')!r}, '--steps', '0'])\n"
            "heavy = [m for m in ('torch', 'pymatgen', 'pandas') if m in sys.modules]\n"
            "print(rc, heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split("\n")[0] == "2 []", r.stdout + r.stderr


@pytest.fixture(scope="module")
def diffcsp_ck(tmp_path_factory):
    from crystal_diffusion_book.diffcsp import DiffCSP, DiffCSPConfig
    torch.manual_seed(0)
    return DiffCSP(DiffCSPConfig.make(network=NET, dataset="perov_5")).save(tmp_path_factory.mktemp("ck") / "diffcsp.pt")


def cif_names(folder):
    return sorted(p.name for p in Path(folder).glob("*.cif"))


def test_sample_repeated_formulas_get_distinct_files(diffcsp_ck, tmp_path, one_thread):
    "`--formula SrTiO3 --formula SrTiO3` wrote one file and said two; batches of one are each written as produced."
    code, out, err = run("sample", "--checkpoint", diffcsp_ck, "--formula", "SrTiO3", "--formula", "SrTiO3,NaCl",
                         "--steps", "3", "--batch-size", "1", "--out", tmp_path / "c")   # with its progress bar
    assert "sampling 3 crystal(s), 3 steps" in err and "18/18" in err, err    # 3 batches x 3 steps x 2 calls (PC)
    assert code in (0, 1), err
    assert "wrote " in out, (code, out, err)
    n = int(out.split("wrote ")[1].split()[0])
    names = cif_names(tmp_path / "c")    # an untrained network's cell may be unbuildable (exit 1, said so): no file then
    assert len(names) == n and set(names) <= {"NaCl_0.cif", "SrTiO3_0.cif", "SrTiO3_1.cif"} and n >= 2, out
    assert (code == 0) == (n == 3) and (n == 3 or "could not be built" in out)


def test_sample_never_overwrites_and_checks_out_first(diffcsp_ck, tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "SrTiO3_0.cif").write_text("earlier work")
    code, _, err = run("sample", "--checkpoint", diffcsp_ck, "--formula", "SrTiO3", "--steps", "3", "--out", out)
    assert code == 2 and "SrTiO3_0.cif" in err and (out / "SrTiO3_0.cif").read_text() == "earlier work", err
    (tmp_path / "file").write_text("x")          # an --out that cannot be a folder: refused before sampling
    code, _, err = run("sample", "--checkpoint", diffcsp_ck, "--formula", "SrTiO3", "--out", tmp_path / "file" / "c")
    assert code == 2 and "--out" in err and "not a writable folder" in err, err
    code, _, err = run("sample", "--checkpoint", diffcsp_ck, "--formula", "SrTiO3", "--steps", "5000", "--out", tmp_path / "d")
    assert code == 2 and "--steps" in err and "1..1000" in err and not (tmp_path / "d").exists(), err


def test_generate_repeated_formula_and_existing_files(diffcsp_ck, tmp_path):
    "`cdb generate` is `cdb sample`: a repeated formula gets distinct files, --method is passed on, --steps is checked."
    code, out, err = run("generate", "--checkpoint", diffcsp_ck, "--formula", "NaCl", "--formula", "NaCl",
                         "--steps", "3", "--method", "pc", "--out", tmp_path / "g", "--quiet")
    n = len(cif_names(tmp_path / "g"))
    assert f"wrote {n} CIF" in out and set(cif_names(tmp_path / "g")) <= {"NaCl_0.cif", "NaCl_1.cif"}, err
    assert code == (0 if n == 2 else 1)
    code, _, err = run("generate", "--checkpoint", diffcsp_ck, "--formula", "NaCl", "--steps", "0", "--out", tmp_path / "h")
    assert code == 2 and "--steps" in err


def _training_checkpoint(model, path):
    "A training checkpoint as `train` writes it (the fields `load_checkpoint` requires), for a model never trained."
    from crystal_diffusion_book import __version__
    from crystal_diffusion_book.train import save_checkpoint
    state = {"format": 1, "kind": "crystal_diffusion_book.train", "version": __version__, "model": model.checkpoint_dict(),
             "optimizer": {}, "scheduler": None, "ema": None, "rng": [], "epoch": 1, "batch_in_epoch": 0, "step": 8,
             "train_config": {}}
    return save_checkpoint(state, path, keep_previous=False)


def test_resume_checks_the_checkpoint_before_any_data(tmp_path, monkeypatch):
    "Wrong model, wrong preset, corrupt last.pt: one line, exit 2, and no data read (an empty cache, no mirror)."
    from crystal_diffusion_book.diffcsp import DiffCSP, DiffCSPConfig
    from crystal_diffusion_book.reproduce import get_preset
    monkeypatch.setenv("CDB_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("CDB_DATA_MIRROR", raising=False)
    run_dir = tmp_path / "run"
    smoke = get_preset("smoke").network
    _training_checkpoint(DiffCSP(DiffCSPConfig.make(network=dict(smoke), dataset="perov_5")), run_dir / "last.pt")
    base = ["train", "--dataset", "perov_5", "--out", run_dir, "--resume", "--quiet"]
    code, _, err = run(*base, "--model", "kldm")
    assert code == 2 and "DiffCSP" in err and "--model kldm" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run(*base, "--model", "diffcsp", "--preset", "cpu")
    assert code == 2 and "different network" in err and "--preset cpu" in err and len(err.strip().splitlines()) == 1, err
    os.replace(run_dir / "last.pt", run_dir / "prev.pt")
    (run_dir / "last.pt").write_bytes(b"truncated")
    code, _, err = run(*base, "--model", "diffcsp")
    assert code == 2 and "corrupt" in err and f"--resume-from {run_dir / 'prev.pt'}" in err, err
    code, _, err = run(*base[:-2], "--model", "diffcsp", "--resume-from", run_dir / "nope.pt")
    assert code == 2 and "--resume-from" in err and "nope.pt" in err, err
    code, _, err = run(*base[:-2], "--model", "kldm", "--resume-from", run_dir / "prev.pt")   # checked the same way
    assert code == 2 and "DiffCSP" in err, err


@needs_mirror
def test_evaluate_csp_reports_itself(tmp_path):
    "Predictions for 3 of 6 crystals (one of them an empty file), a binary file, a stray `.cif`: no crash, counts on screen."
    from crystal_diffusion_book.data import load_dataset, data_to_structure
    gts = list(load_dataset("perov_5", "test", limit=6))
    pred = tmp_path / "pred"
    pred.mkdir()
    for d in gts[:2]:
        data_to_structure(d).to(filename=str(pred / f"{d.material_id}.cif"))
    (pred / f"{gts[2].material_id}.cif").write_text("")
    (pred / f"{gts[0].material_id}_1.cif").write_bytes(b"\x00\x01garbage\xff")
    (pred / ".cif").write_text("data_x\n")
    (tmp_path / "file").write_text("x")
    code, out, err = run("evaluate-csp", "--pred", pred, "--dataset", "perov_5", "--limit", "6",
                         "--out", tmp_path / "file" / "r.json")
    assert code == 2 and "--out" in err and "cannot be written" in err and out == "", (out, err)
    code, out, err = run("evaluate-csp", "--pred", pred, "--dataset", "perov_5", "--limit", "6", "--quiet",
                         "--out", tmp_path / "r.json")
    assert code == 0, err
    assert "6 test crystals: 3 with a prediction (4 file(s)), 3 without; 3 file(s) unreadable; 2 crystal(s) scored" in out, out
    assert "match rate 66.67 % over the 3 predicted crystals (2 matched), 33.33 % over the whole split of 6" in out, out
    r = json.loads((tmp_path / "r.json").read_text())
    reasons = {Path(u["file"]).name: u["reason"] for u in r["unreadable"]}
    assert reasons == {".cif": "name is not <material_id>.cif or <material_id>_<k>.cif",
                       f"{gts[2].material_id}.cif": "empty file", f"{gts[0].material_id}_1.cif": "binary file, not a CIF"}
    assert (r["n_predicted"], r["n_scored"], r["missing"], r["n_matched"]) == (3, 2, 3, 2)
    assert abs(r["match_rate_predicted"] - 2 / 3) < 1e-12 and abs(r["match_rate"] - 2 / 6) < 1e-12
    code, out, err = run("evaluate-csp", "--pred", pred, "--dataset", "perov_5", "--protocol", "nope")
    assert code == 2 and "--protocol" in err


@pytest.mark.parametrize("content, msg", [(b"", "not a readable CSV"), (b"\xff\xfe\x00binary", "not a text CSV"),
                                          (b'material_id,cif\nx,y\n', "missing column")])
def test_load_dataset_bad_csv_names_the_file(tmp_path, content, msg):
    from crystal_diffusion_book.data import load_dataset, DataFileError
    f = tmp_path / "mine.csv"
    f.write_bytes(content)
    with pytest.raises(DataFileError, match=msg) as e:
        load_dataset("perov_5", "test", path=f, cache_dir=tmp_path / "cache")
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataFileError, match="does not exist"):
        load_dataset("perov_5", "test", path=tmp_path / "nope.csv", cache_dir=tmp_path / "cache")


@needs_mirror
def test_datasets_check_copies_nothing_and_prints_integers(tmp_path):
    code, out, err = run("datasets", "--check", "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []        # "without downloading": no copy
    line = next(l for l in out.splitlines() if l.split()[:2] == ["perov_5", "train"])
    assert " 11356 " in line and "11356.0" not in out and "not copied" in line, out
