"""The `cpu-long` record's tools (ci/long_run.py, ci/collect_long.py): the joined record, its seed summary, and
the errors a bad input gets. The long runs themselves are commands (chapter 72), not tests."""
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ci"))
import collect_long  # noqa: E402


def _record(model, mrs, n_test=10, dataset="perov_5", train_source="train"):
    seeds = [{"seed": i, "match_rate": mr, "match_rate_ungated": mr + 0.01, "rmse": 0.1 + i / 100, "n_invalid": i,
              "volume_ratio_median": 1.0} for i, mr in enumerate(mrs)]
    return {"dataset": dataset, "model": model, "n_test": n_test, "train_source": train_source, "seeds": seeds,
            "environment": {"platform": "x"}}


def test_collect_long_summarises_seeds(tmp_path):
    for m, mrs in {"diffcsp": [0.5, 0.52, 0.55], "kldm": [0.6]}.items():
        (tmp_path / f"{m}.json").write_text(json.dumps(_record(m, mrs)))
    out = tmp_path / "rec.json"
    subprocess.run([sys.executable, str(ROOT / "ci/collect_long.py"), str(tmp_path / "diffcsp.json"),
                    str(tmp_path / "kldm.json"), "--out", str(out)], check=True, capture_output=True, text=True)
    rec = json.loads(out.read_text())
    s = rec["runs"]["diffcsp"]["summary"]["match_rate"]
    assert s["mean"] == pytest.approx(statistics.fmean([0.5, 0.52, 0.55]), abs=1e-15)
    assert s["std"] == pytest.approx(statistics.stdev([0.5, 0.52, 0.55]), abs=1e-15) and s["n_seeds"] == 3
    assert rec["runs"]["kldm"]["summary"]["match_rate"]["std"] == 0.0          # one seed: no spread to report
    assert "platform" not in rec["runs"]["kldm"]["environment"]                # no machine names in the record


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"), ("not_json", "not JSON"), ("no_field", "missing field 'seeds'"),
    ("no_seed", "no sampling seed finished"), ("other_split", "test crystals, the others"), ("twice", "given twice"),
    ("other_source", "never mixes them")])
def test_collect_long_errors_name_the_file(tmp_path, case, message):
    good = tmp_path / "good.json"; good.write_text(json.dumps(_record("kldm", [0.5])))
    bad = tmp_path / "bad.json"
    if case == "not_json": bad.write_text("{")
    elif case == "no_field": bad.write_text(json.dumps({k: v for k, v in _record("diffcsp", [0.5]).items() if k != "seeds"}))
    elif case == "no_seed": bad.write_text(json.dumps(_record("diffcsp", [])))
    elif case == "other_split": bad.write_text(json.dumps(_record("diffcsp", [0.5], n_test=20)))
    elif case == "twice": bad.write_text(json.dumps(_record("kldm", [0.5])))
    elif case == "other_source": bad.write_text(json.dumps(_record("diffcsp", [0.5], train_source="val")))
    r = subprocess.run([sys.executable, str(ROOT / "ci/collect_long.py"), str(good), str(bad), "--out",
                        str(tmp_path / "o.json")], capture_output=True, text=True)
    assert r.returncode != 0 and message in r.stderr and str(bad) in r.stderr, r.stderr
    assert not (tmp_path / "o.json").exists()                                  # nothing half-written


def test_long_run_command_end_to_end(tmp_path):
    "One epoch, four test crystals, two sampling seeds: the record has every column the chapter reads."
    out = tmp_path / "long.json"
    r = subprocess.run([sys.executable, str(ROOT / "ci/long_run.py"), "--model", "kldm", "--epochs", "1",
                        "--run-dir", str(tmp_path / "run"), "--seeds", "0", "1", "--n-test", "4", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["epochs"] == 1 and rec["n_test"] == 4 and [s["seed"] for s in rec["seeds"]] == [0, 1]
    assert rec["train_seconds"] > 0 and rec["lr_final"] > 0 and rec["lr_drops_at_epoch"] == []
    for s in rec["seeds"]:
        assert {"match_rate", "match_rate_ungated", "rmse", "n_invalid", "volume_ratio_median"} <= set(s)
        assert 0 <= s["match_rate"] <= s["match_rate_ungated"] + 1e-12 <= 1 + 1e-12
    assert "mean MR" in r.stdout and "seed 1:" in r.stdout                     # progress, one line per stage
    r = subprocess.run([sys.executable, str(ROOT / "ci/long_run.py"), "--model", "kldm", "--epochs", "0",
                        "--run-dir", str(tmp_path / "run"), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "--epochs must be positive" in r.stderr


def test_long_run_trains_on_the_val_substitute(tmp_path):
    "Carbon-24 has no train split here: `auto` trains on the val substitute, and the record and the log say so."
    out = tmp_path / "long.json"
    r = subprocess.run([sys.executable, str(ROOT / "ci/long_run.py"), "--preset", "smoke", "--dataset", "carbon_24",
                        "--model", "diffcsp", "--epochs", "1", "--train-source", "auto", "--run-dir", str(tmp_path / "run"),
                        "--seeds", "0", "--n-test", "3", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["train_source"] == "val" and "TRAINED ON VAL" in r.stdout
    assert rec["n_train"] == 256 and rec["n_val"] == 64 and rec["n_test"] == 3   # smoke's sizes, from carbon_24/val


def test_training_log_adds_up_resumed_segments(tmp_path):
    "A resumed trainer restarts its seconds: the total is the sum of each segment's last time."
    sys.path.insert(0, str(ROOT / "ci"))
    import long_run
    rows = ["epoch,step,lr,train_loss,val_loss,match_rate,rmse,n_sampled,protocol,sample_seconds,seconds"]
    for e, sec, lr in ((0, 10.0, 1e-3), (1, 20.0, 1e-3), (2, 5.0, 6e-4), (3, 11.0, 6e-4)):   # resumed after epoch 1
        rows.append(f"{e},{e + 1},{lr},1.0,{1.0 - e / 10},,,,,,{sec}")
    (tmp_path / "epochs.csv").write_text("\n".join(rows) + "\n")
    log = long_run.training_log(tmp_path / "epochs.csv", marks=(1, 2))
    assert log["train_seconds"] == 31.0 and log["train_segments"] == 2
    assert log["lr_drops_at_epoch"] == [3] and log["val_loss_at_epoch"] == {"1": 1.0, "2": 0.9, "4": 0.7}


def test_text_runs_end_to_end_and_collected(tmp_path, one_thread):
    "ci/text_runs.py at the smoke preset (guidance 0 and 2, two seeds), then ci/collect_text.py: the record's summary."
    import collect_text
    import text_runs
    out = tmp_path / "kldm-text.json"
    text_runs.main(["--model", "kldm-text", "--preset", "smoke", "--guidance", "0", "2", "--seeds", "0", "1",
                    "--run-dir", str(tmp_path / "k"), "--out", str(out)])
    r = json.loads(out.read_text())
    assert [(s["guidance_scale"], s["seed"]) for s in r["samples"]] == [(0.0, 0), (0.0, 1), (2.0, 0), (2.0, 1)]
    assert r["fields"] == ["formula", "elements", "formation_energy", "spacegroup", "crystal_system"] and r["p_uncond"] == 0.1
    sym = r["samples"][0]["symmetry"]
    assert set(sym) == {"0.1", "0.01"} and all(0 <= sym[sp][k] <= 1 for sp in sym for k in collect_text.SYMMETRY_KEYS)
    assert sum(r["prompt_crystal_systems"].values()) == r["n_test"] == 8
    assert set(r["prompt_gap"]) >= {"gap_mean", "gap_sd", "gaps"} and len(r["prompt_gap"]["gaps"]) == 5
    text_runs.main(["--model", "kldm-text", "--preset", "smoke", "--guidance", "0", "2", "--seeds", "0", "1", "2",
                    "--run-dir", str(tmp_path / "k"), "--out", str(out)])     # resumed: four samples kept, one new
    again = json.loads(out.read_text())
    assert again["samples"][:2] + again["samples"][3:5] == r["samples"] and len(again["samples"]) == 6
    out.write_text(json.dumps({k: v for k, v in again.items() if k != "prompt_gap"}))
    text_runs.main(["--model", "kldm-text", "--preset", "smoke", "--guidance", "0", "2", "--seeds", "0", "1", "2",
                    "--run-dir", str(tmp_path / "k"), "--out", str(out)])     # nothing to sample: the record is still written
    assert json.loads(out.read_text())["prompt_gap"] == again["prompt_gap"]
    rec = collect_text.collect_text([out])
    s = rec["variants"]["kldm-text"]["summary"]
    assert set(s) == {"0", "2"} and s["2"]["match_rate"]["n_seeds"] == 3
    mrs = [x["match_rate"] for x in again["samples"] if x["guidance_scale"] == 2.0]
    assert s["2"]["match_rate"]["mean"] == pytest.approx(statistics.fmean(mrs), abs=1e-15)
    assert s["0"]["sg_prompt@0.1"]["mean"] == pytest.approx(statistics.fmean(
        x["symmetry"]["0.1"]["sg_prompt"] for x in again["samples"][:3]), abs=1e-15)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**r, "test_rows": r["test_rows"][:-1]}))
    with pytest.raises(ValueError, match="test rows differ"):
        collect_text.collect_text([out, other])


def test_long_run_best_of_k_saves_and_resumes(tmp_path, one_thread):
    "--k: each seed's structures saved as it finishes; a rerun reads them back and scores the same best-of-k record."
    import long_run
    args = ["--preset", "smoke", "--model", "diffcsp", "--run-dir", str(tmp_path / "r"), "--k", "2", "--out", str(tmp_path / "k.json")]
    long_run.main(args)
    first = json.loads((tmp_path / "k.json").read_text())
    assert sorted(p.name for p in (tmp_path / "r" / "k2").iterdir()) == ["seed_0.json.gz", "seed_1.json.gz"]
    assert first["k"] == 2 and first["protocol"] == "diffcsp_multi" and 0 <= first["match_rate"] <= first["match_rate_ungated"] <= 1
    long_run.main(args)                          # resumed: nothing trained or sampled again, the same numbers
    again = json.loads((tmp_path / "k.json").read_text())
    assert again["sample_seconds_this_call"] == 0.0
    assert {k: again[k] for k in ("match_rate", "match_rate_ungated", "n_invalid")} == \
        {k: first[k] for k in ("match_rate", "match_rate_ungated", "n_invalid")}
