"""The reproduction layer: presets, the published-numbers table, results rendering, prompts of the text models,
and the smoke preset end to end through papermill for the four models (ci/reproduce.py), with the table of their
rows beside the published numbers."""
import functools
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from crystal_diffusion_book import reproduce as rp

ROOT = Path(__file__).resolve().parents[1]


def test_presets_and_errors():
    assert set(rp.PRESETS) == {"smoke", "cpu", "cpu-long", "cpu-large", "paper"}
    lg = rp.PRESETS["cpu-large"]          # the cpu network on the larger datasets, the val substitute where needed
    assert lg.train_source == "auto" and lg.epochs == rp.EPOCHS_LARGE and lg.n_test == 1000
    with pytest.raises(ValueError, match="train_source"):
        rp.get_preset("cpu", train_source="test")
    with pytest.raises(ValueError, match="text_out_dim"):
        rp.get_preset("cpu", text_out_dim=0)
    cl, c = rp.PRESETS["cpu-long"], rp.PRESETS["cpu"]   # the cpu network, trained longer, on the whole test split
    assert (cl.hidden_dim, cl.num_layers, cl.num_freqs, cl.time_dim) == (c.hidden_dim, c.num_layers, c.num_freqs, c.time_dim)
    assert cl.epochs > c.epochs and cl.n_test is None and cl.n_train is None
    p = rp.PRESETS["paper"]
    assert (p.hidden_dim, p.num_layers, p.num_freqs, p.epochs, p.batch_size, p.sample_steps) == (512, 6, 128, 3000, 1024, 1000)
    assert rp.get_preset("cpu", n_test=7).n_test == 7
    with pytest.raises(ValueError, match="preset"):
        rp.get_preset("laptop")
    with pytest.raises(ValueError, match="n_test"):
        rp.get_preset("cpu", n_test=0)
    with pytest.raises(ValueError, match="model"):
        rp.train_config("cdvae", rp.PRESETS["smoke"])
    cfg = rp.train_config("kldm", rp.PRESETS["cpu"], seed=3)
    assert (cfg.optimizer, cfg.amsgrad, cfg.epochs, cfg.seed) == ("adamw", True, rp.PRESETS["cpu"].epochs, 3)
    assert rp.train_config("tgdmat", rp.PRESETS["cpu"]).plateau_monitor == "train_loss"
    assert rp.train_config("kldm-text", rp.PRESETS["cpu"]).amsgrad
    with pytest.raises(ValueError, match="model"):
        rp.build_model("cdvae", rp.PRESETS["smoke"])
    with pytest.raises(ValueError, match="train_data"):
        rp.build_model("kldm-text", rp.PRESETS["smoke"])
    with pytest.raises(ValueError, match="text_dim"):
        rp.build_model("tgdmat", rp.PRESETS["smoke"], text_dim=-1)
    with pytest.raises(ValueError, match="guidance_scale"):
        rp.run_csp(model="tgdmat", guidance_scale=-1.0)
    with pytest.raises(ValueError, match="text_kind"):
        rp.run_csp(model="tgdmat", text_kind="medium")


def test_preset_time_grid_reaches_the_samplers_that_have_one(monkeypatch):
    "cpu presets sample DiffCSP/TGDMat on the skip_end grid (chapter 72); KLDM has no grid; paper keeps the reference's."
    assert {n: p.time_grid for n, p in rp.PRESETS.items()} == {
        "smoke": "paper", "cpu": "skip_end", "cpu-long": "skip_end", "cpu-large": "skip_end", "paper": "paper"}
    with pytest.raises(ValueError, match="time_grid"):
        rp.get_preset("cpu", time_grid="log")
    # z-scored text embeddings at CPU scale (chapter 74's measurement); the paper preset keeps TGDMat's raw input
    assert {n: p.text_standardise for n, p in rp.PRESETS.items()} == {
        "smoke": False, "cpu": True, "cpu-long": True, "cpu-large": True, "paper": False}
    from crystal_diffusion_book.data import load_dataset
    crystals = load_dataset("perov_5", "val", limit=3, progress=False, n_jobs=1)
    seen = {}
    for name in ("diffcsp", "kldm"):
        net = rp.build_model(name, rp.PRESETS["smoke"], train_data=crystals)
        @functools.wraps(net.sample_tensors)                    # keeps the real signature, which sample_csp reads
        def spy(spec, name=name, **kw):
            seen[name] = kw.get("grid"); raise StopIteration   # stop before sampling: only the options matter here
        monkeypatch.setattr(net, "sample_tensors", spy)
        for run in (rp.get_preset("smoke", time_grid="skip_end"), rp.PRESETS["smoke"]):
            with pytest.raises(StopIteration):
                rp.sample_csp(net, crystals, run)
            seen[name, run.time_grid] = seen.pop(name)
    assert seen == {("diffcsp", "skip_end"): "skip_end", ("diffcsp", "paper"): None,
                    ("kldm", "skip_end"): None, ("kldm", "paper"): None}


def test_prompt_fields():
    from crystal_diffusion_book.text import DATASET_FIELDS
    assert rp.prompt_fields_for(None, "mp_20") == DATASET_FIELDS["mp_20"][0]
    assert rp.prompt_fields_for("none", "perov_5") == () == rp.prompt_fields_for([], "perov_5")
    assert rp.prompt_fields_for("crystal_system, formula", "carbon_24") == ("crystal_system", "formula")
    for bad in ("band_gap", "formula,formula", ["nope"]):
        with pytest.raises(ValueError, match="prompt_fields"):
            rp.prompt_fields_for(bad, "perov_5")
    assert rp.test_indices(100, 5, seed=3) == rp.test_indices(100, 5, seed=3) == sorted(rp.test_indices(100, 5, seed=3))
    assert rp.test_indices(10, None) == list(range(10)) and rp.test_indices(10, 99) == list(range(10))


def test_published_table_matches_the_doc():
    doc = Path("/work/shared/docs/published-numbers.md")
    rows = {(p.model, p.dataset, p.k): p for p in rp.PUBLISHED_CSP}
    assert rows[("DiffCSP", "mp_20", 1)].match_rate == 51.49 and rows[("DiffCSP", "mp_20", 1)].status == "U"
    assert rows[("KLDM", "mp_20", 1)].rmse == 0.0517 and rows[("KLDM", "mp_20", 1)].status == "S"
    assert rows[("KLDM", "perov_5", 1)].status == "NF"
    assert rows[("TGDMat, short prompt", "mp_20", 20)].status == "R"
    assert rows[("TGDMat, short prompt, crystal system dropped at evaluation", "mp_20", 1)].match_rate == 41.34
    assert all(p.status in ("P", "S", "R", "U", "NF") and p.protocol for p in rp.PUBLISHED_CSP)
    assert all((p.match_rate is None) == (p.status == "NF") for p in rp.PUBLISHED_CSP)
    if doc.exists():   # every non-NF number is printed in the project's published-numbers file
        text = doc.read_text()
        for p in rp.PUBLISHED_CSP:
            if p.match_rate is not None and p.rmse is not None:
                assert f"{p.match_rate:.2f} / {p.rmse:.4f}" in text, p
        for name, mr in rp.TGDMAT_FIELD_ABLATION.values():   # the README's ablation gives match rates only
            assert f"{name} {mr:.2f}" in text, name


def test_results_table_layout():
    md, js = rp.results_table([{"model": "kldm", "mean_free": False, "preset": "x", "protocol": "diffcsp",
                                "n_test": 100, "match_rate": 0.5, "rmse": 0.05}], "mp_20")
    assert js["ours"][0]["label"] == "KLDM (not mean-free)"
    assert math.isclose(js["ours"][0]["match_rate_se_pct"], 5.0)
    assert "| KLDM | 1 | 65.83 | 0.0517 | S |" in md
    md, js = rp.results_table([{"model": "kldm-text", "dataset": "mp_20", "prompt_fields": ["formula"], "text_kind": "long",
                                "text_encoder": "enc", "guidance_scale": 3.0, "t_f": 4.0, "n_test": 4, "match_rate": 0.25}], "mp_20")
    assert js["ours"][0]["label"] == "KLDM + text (t_f 4.0, long prompt: formula, enc, w 3)"
    assert js["ours"][0]["prompt_fields"] == ["formula"] and js["ours"][0]["guidance_scale"] == 3.0
    assert "| TGDMat, short prompt, space group dropped at evaluation | 1 | 41.95 | — | R |" in md
    with pytest.raises(ValueError, match="dataset"):
        rp.published("qm9")
    json.dumps(js)


def test_matrices_are_valid():
    for f, models in (("matrix-smoke-csp.yaml", {"diffcsp", "kldm", "tgdmat", "kldm-text"}), ("matrix-cpu.yaml", {"diffcsp", "kldm"})):
        spec = yaml.safe_load((ROOT / "ci" / f).read_text())
        assert spec["runs"] and all((ROOT / r["notebook"]).exists() for r in spec["runs"])
        assert {r["parameters"]["model"] for r in spec["runs"]} == models


@pytest.mark.skipif(not os.environ.get("CDB_DATA_MIRROR"), reason="needs the data mirror (CDB_DATA_MIRROR)")
def test_text_rows_are_the_split_prompts(one_thread):
    "The test subset of a text run has the prompts (and embeddings) the whole split gives those rows."
    from crystal_diffusion_book.text import TextEncoder, text_dataset
    enc = TextEncoder()
    fields = rp.prompt_fields_for(None, "perov_5")
    full, _ = text_dataset("perov_5", "val", fields=fields, encoder=enc, limit=6, progress=False)
    rows, texts = rp.text_rows("perov_5", "val", [1, 4], fields, "short", enc)
    assert texts == [full[1].text, full[4].text] and [d.material_id for d in rows] == [full[1].material_id, full[4].material_id]
    # MiniLM in float32, the same text in another batch (other padding): equal to float32 rounding (1e-5 on unit vectors)
    assert torch.allclose(rows[1].text_emb, full[4].text_emb, atol=1e-5)
    with pytest.raises(ValueError, match="rows"):
        rp.text_rows("perov_5", "val", [10**6], fields, "short", enc)


@pytest.mark.skipif(not os.environ.get("CDB_DATA_MIRROR"), reason="needs the data mirror (CDB_DATA_MIRROR)")
def test_smoke_reproduce_end_to_end(tmp_path, capfd):
    sys.path.insert(0, str(ROOT / "ci"))
    import reproduce as drv
    models = ["diffcsp", "kldm", "tgdmat", "kldm-text"]
    rc = drv.main(["--preset", "smoke", "--models", *models, "--out", str(tmp_path), "--jobs", "2"])
    shown = capfd.readouterr()
    for m in models:   # the driver showed each run's training epochs (lines: stderr is not a terminal here)
        assert f"{m}-perov_5-smoke-s0: train epoch " in shown.err, shown.err[-2000:]
    assert "without encryption" not in shown.err
    out = tmp_path / "reproduce-perov_5-smoke"
    data = json.loads((out / "results.json").read_text())
    assert rc == 0, [r.get("error") for r in data["runs"]]
    assert [r["model"] for r in data["ours"]] == models
    for r in data["runs"]:
        assert r["status"] == "ok" and r["n_test"] == rp.PRESETS["smoke"].n_test and 0 <= r["match_rate"] <= 1
        assert r["val_loss_after"] < r["val_loss_before"]
        assert (out / f"{r['run_id']}.ipynb").exists()
        assert json.loads((out / r["run_id"] / "progress.json").read_text())["stage"] == "done"   # run_csp's last stage
        assert r["n_same_composition"] == r["n_test"] and len(list(Path(r["predictions_dir"]).glob("*.cif"))) <= r["n_test"]
    runs = {r["model"]: r for r in data["runs"]}
    assert len({tuple(r["test_rows"]) for r in data["runs"]}) == 1       # every model scored the same crystals
    from crystal_diffusion_book.text import DATASET_FIELDS
    for m in ("tgdmat", "kldm-text"):
        assert runs[m]["prompt_fields"] == list(DATASET_FIELDS["perov_5"][0]) and runs[m]["text_dim"] == 384
        assert runs[m]["text_encoder"] == "all-MiniLM-L6-v2" and runs[m]["guidance_scale"] == 1.0
    assert (runs["tgdmat"]["p_uncond"], runs["kldm-text"]["p_uncond"]) == (0.0, 0.1)
    assert runs["diffcsp"]["prompt_fields"] is None
    md = (out / "results.md").read_text()
    assert "| DiffCSP | 1 | 52.02 | 0.0760 | U |" in md and "| KLDM | smoke | 3 |" in md and "| DiffCSP | smoke | 3 |" in md
    assert "| TGDMat (short prompt: all fields, all-MiniLM-L6-v2, w 1) | smoke | 3 |" in md
    assert len(list((out / "figures").glob("*.png"))) == 2 * len(models)


def test_collect_results_record(tmp_path):
    "ci/collect_results.py keeps the tabulated fields of finished runs and refuses a run without results.json."
    import importlib.util
    spec = importlib.util.spec_from_file_location("collect_results", Path(__file__).resolve().parents[1] / "ci" / "collect_results.py")
    cr = importlib.util.module_from_spec(spec); spec.loader.exec_module(cr)
    run = tmp_path / "run-a"; run.mkdir()
    (run / "results.json").write_text(json.dumps({"model": "kldm", "match_rate": 0.5, "n_test": 10, "figures": ["x.png"]}))
    out = tmp_path / "rec.json"
    assert cr.main([str(out), str(run)]) == 0
    rec = json.loads(out.read_text())["runs"]
    assert rec == [{"run_id": "run-a", "model": "kldm", "n_test": 10, "match_rate": 0.5}]
    assert cr.main([str(out), str(tmp_path / "missing")]) == 2
    run_b = tmp_path / "run-b"; run_b.mkdir()                     # --update: run-a replaced in place, run-b appended
    (run_b / "results.json").write_text(json.dumps({"model": "diffcsp", "match_rate": 0.25, "n_invalid": 3}))
    (run / "results.json").write_text(json.dumps({"model": "kldm", "match_rate": 0.75, "time_grid": "paper"}))
    assert cr.main(["--update", str(out), str(run_b), str(run)]) == 0
    assert json.loads(out.read_text())["runs"] == [
        {"run_id": "run-a", "model": "kldm", "match_rate": 0.75, "time_grid": "paper"},
        {"run_id": "run-b", "model": "diffcsp", "match_rate": 0.25, "n_invalid": 3}]


def test_committed_cpu_record_is_complete():
    "The committed record the Experiments chapter plots holds every run it tabulates, each on 500 test crystals."
    rec = json.loads((Path(__file__).resolve().parents[1] / "ci" / "results" / "perov_5-cpu.json").read_text())["runs"]
    ids = {r["run_id"] for r in rec}
    assert {"kldm-perov_5-cpu-s0", "diffcsp-perov_5-cpu-s0", "diffcsp-perov_5-cpu-s0-reference-grid", "tgdmat-no-text"} <= ids
    assert all(r["n_test"] == 500 and 0 <= r["match_rate"] <= 1 for r in rec)


def test_driver_matrix_ablations(tmp_path):
    "ci/reproduce.py's matrix: KLDM's four switches after its main run, or (ablations only) without it."
    sys.path.insert(0, str(ROOT / "ci"))
    import reproduce as drv
    ids = lambda spec: [r["id"] for r in spec["runs"]]
    full = drv.build_matrix("perov_5", ["kldm", "diffcsp"], "cpu", 0, tmp_path, kldm_ablations=True)
    only = drv.build_matrix("perov_5", ["kldm"], "cpu", 0, tmp_path, kldm_ablations="only")
    tags = [f"kldm-perov_5-cpu-s0-{t}" for t, _ in drv.ABLATIONS]
    assert ids(full) == ["kldm-perov_5-cpu-s0", *tags, "diffcsp-perov_5-cpu-s0"] and ids(only) == tags
    assert only["runs"][0]["parameters"]["parameterization"] == "direct"
