"""`make reproduce`: train, sample and score CSP models through the reproduction notebook, beside the published numbers.

    python ci/reproduce.py --dataset perov_5 --models kldm diffcsp --preset cpu [--jobs 2] [--out runs]

Builds a run matrix (one run of nbs/70_reproduce_csp.ipynb per model, plus KLDM's ablations with
--kldm-ablations), fetches the dataset once through the data registry so that parallel runs find it cached,
executes the matrix with ci/run_matrix.run_matrix (papermill, `--jobs` runs at a time), then writes
runs/<name>/results.md and results.json (our rows beside the published numbers, with status labels and
protocols) and copies every run's figures to runs/<name>/figures/. Exit status 1 if a run failed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ci"))
NOTEBOOK = "nbs/70_reproduce_csp.ipynb"
ABLATIONS = [  # KLDM switches (KLDM §4 ablations; method reference §2.1-2.3)
    ("direct", dict(parameterization="direct")),
    ("v0-1", dict(parameterization="direct", v0_scale=1.0)),
    ("not-mean-free", dict(mean_free=False)),
    ("tf-4", dict(t_f=4.0)),
]


def build_matrix(dataset: str, models: list, preset: str, seed: int, run_dir: Path, n_test=None, sampler_steps=None,
                 epochs=None, kldm_ablations=False) -> dict:
    "The run matrix (as a dict) of one reproduction: one run per model, optionally KLDM's ablations."
    extra = {k: v for k, v in dict(n_test=n_test, sampler_steps=sampler_steps, epochs=epochs).items() if v is not None}
    runs = []
    for m in models:
        if m not in ("diffcsp", "kldm"):
            raise ValueError(f"models must be among diffcsp, kldm; got {m!r}")
        variants = [("", {})] + (ABLATIONS if (m == "kldm" and kldm_ablations) else [])
        for tag, sw in variants:
            rid = f"{m}-{dataset}-{preset}-s{seed}" + (f"-{tag}" if tag else "")
            runs.append({"id": rid, "notebook": NOTEBOOK,
                         "parameters": {"dataset": dataset, "model": m, "preset": preset, "seed": seed,
                                        "out_dir": str((run_dir / rid).resolve()), **sw, **extra}})
    return {"name": run_dir.name, "runs": runs}


def collect(records: list, dataset: str, run_dir: Path) -> tuple:
    "Write results.md / results.json beside the published numbers and copy figures; return (markdown, data)."
    from crystal_diffusion_book.reproduce import results_table
    rows = []
    for r in records:
        res = dict(r.get("results") or {})
        if not res:   # a failed run: keep its parameters and error in the table
            res = {**r.get("parameters", {}), "match_rate": None, "rmse": None, "n_test": None}
        res["status"], res["error"] = r.get("status"), r.get("error")
        res["run_id"], res["notebook"], res["wall_seconds"] = r.get("id"), r.get("output"), r.get("seconds")
        rows.append(res)
    md, data = results_table(rows, dataset)
    data["runs"] = rows
    figs = run_dir / "figures"
    figs.mkdir(exist_ok=True)
    copied = []
    for res in rows:
        for f in res.get("figures", []) or []:
            f = Path(f)
            if f.exists():
                dest = figs / f"{res['run_id']}-{f.name}"
                shutil.copyfile(f, dest)
                copied.append(dest)
    md += "\n" + "\n".join(f"![{p.stem}](figures/{p.name})" for p in copied) + "\n"
    lines = [f"- `{r['run_id']}`: {r['status']}, {r.get('wall_seconds')} s, executed notebook `{r['notebook']}`"
             + (f"; error: {str(r['error'])[-300:]}" if r.get("error") else "") for r in rows]
    md = f"# Reproduction: {dataset}\n\n" + md + "\n## Runs\n\n" + "\n".join(lines) + "\n"
    (run_dir / "results.md").write_text(md)
    (run_dir / "results.json").write_text(json.dumps(data, indent=1, default=str))
    return md, data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="perov_5")
    ap.add_argument("--models", nargs="+", default=["kldm", "diffcsp"], help="space- or comma-separated")
    ap.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "paper"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-test", type=int, default=None, help="test crystals (default: the preset's)")
    ap.add_argument("--sampler-steps", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--kldm-ablations", action="store_true", help="also run KLDM's switches")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--out", type=Path, default=ROOT / "runs")
    ap.add_argument("--name", default=None, help="run folder name (default: reproduce-<dataset>-<preset>)")
    a = ap.parse_args(argv)
    models = [m for s in a.models for m in s.replace(",", " ").split()]
    name = a.name or f"reproduce-{a.dataset}-{a.preset}"
    run_dir = (a.out / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = build_matrix(a.dataset, models, a.preset, a.seed, run_dir, a.n_test, a.sampler_steps, a.epochs,
                        a.kldm_ablations)
    matrix = run_dir / "matrix.yaml"
    matrix.write_text(yaml.safe_dump(spec, sort_keys=False))
    # fetch and cache the splits once, so that parallel runs do not parse the same files at the same time
    from crystal_diffusion_book.data import load_dataset
    from crystal_diffusion_book.reproduce import get_preset
    p = get_preset(a.preset)
    for split, lim in (("train", p.n_train), ("val", p.n_val), ("test", None)):
        ds = load_dataset(a.dataset, split, limit=lim, progress=False)
        print(f"{a.dataset}/{split}: {len(ds)} crystals ready", flush=True)
    import run_matrix
    records = run_matrix.run_matrix(matrix, a.out.resolve(), jobs=a.jobs)
    md, _ = collect(records, a.dataset, run_dir)
    print(md)
    print(f"results: {run_dir / 'results.md'} and {run_dir / 'results.json'}")
    print(f"executed notebooks: {run_dir}/<run>.ipynb; figures: {run_dir / 'figures'}")
    return 1 if any(r["status"] != "ok" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
