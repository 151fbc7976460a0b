"""`make reproduce`: train, sample and score CSP models through the reproduction notebook, beside the published numbers.

    python ci/reproduce.py --dataset perov_5 --models kldm diffcsp --preset cpu [--jobs 2] [--out runs]
    python ci/reproduce.py --preset smoke --models tgdmat kldm-text [--prompt-fields formula,spacegroup]

Builds a run matrix (one run of nbs/70_reproduce_csp.ipynb per model, plus KLDM's ablations with
--kldm-ablations), fetches the dataset once through the data registry so that parallel runs find it cached
(and, for the text models tgdmat and kldm-text, writes the prompts and their embeddings into the caches once),
executes the matrix with ci/run_matrix.run_matrix (papermill, `--jobs` runs at a time), then writes
runs/<name>/results.md and results.json (our rows beside the published numbers, with status labels and
protocols; `reproduce.write_results`) and copies every run's figures to runs/<name>/figures/. Exit status 1 if a
run failed. Each run's stage (data, train epoch k of n with its loss and ETA, sampling, scoring) is shown while
it executes (tqdm bars on a terminal, a line per stage otherwise; ci/run_matrix.MatrixProgress); `--quiet` prints
nothing but failures. `cdb reproduce` runs the same pipeline in-process, without papermill.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ci"))
NOTEBOOK = "nbs/70_reproduce_csp.ipynb"
ABLATIONS = [  # KLDM switches (KLDM paper §4 ablations; the book's appendix, chapter 95 §2.1-2.3)
    ("direct", dict(parameterization="direct")),
    ("v0-1", dict(parameterization="direct", v0_scale=1.0)),
    ("not-mean-free", dict(mean_free=False)),
    ("tf-4", dict(t_f=4.0)),
]


def build_matrix(dataset: str, models: list, preset: str, seed: int, run_dir: Path, n_test=None, sampler_steps=None,
                 epochs=None, kldm_ablations=False, prompt_fields=None, text_kind=None, guidance_scale=None) -> dict:
    "The run matrix (as a dict) of one reproduction: one run per model, optionally KLDM's ablations (\"only\": just those)."
    from crystal_diffusion_book.reproduce import MODELS, TEXT_MODELS
    extra = {k: v for k, v in dict(n_test=n_test, sampler_steps=sampler_steps, epochs=epochs).items() if v is not None}
    text = {k: v for k, v in dict(prompt_fields=prompt_fields, text_kind=text_kind,
                                  guidance_scale=guidance_scale).items() if v is not None}
    runs = []
    for m in models:
        if m not in MODELS:
            raise ValueError(f"models must be among {', '.join(MODELS)}; got {m!r}")
        variants = [("", {})] + (ABLATIONS if (m == "kldm" and kldm_ablations) else [])
        if m == "kldm" and kldm_ablations == "only": variants = variants[1:]   # the switches without the main run
        for tag, sw in variants:
            rid = f"{m}-{dataset}-{preset}-s{seed}" + (f"-{tag}" if tag else "")
            runs.append({"id": rid, "notebook": NOTEBOOK,
                         "parameters": {"dataset": dataset, "model": m, "preset": preset, "seed": seed,
                                        "out_dir": str((run_dir / rid).resolve()), **sw, **extra,
                                        **(text if m in TEXT_MODELS else {})}})
    return {"name": run_dir.name, "runs": runs}


def collect(records: list, dataset: str, run_dir: Path) -> tuple:
    "Write results.md / results.json beside the published numbers and copy figures; return (markdown, data)."
    from crystal_diffusion_book.reproduce import write_results
    rows = []
    for r in records:
        res = dict(r.get("results") or {})
        if not res:   # a failed run: keep its parameters and error in the table
            res = {**r.get("parameters", {}), "match_rate": None, "rmse": None, "n_test": None}
        res["status"], res["error"] = r.get("status"), r.get("error")
        res["run_id"], res["notebook"], res["wall_seconds"] = r.get("id"), r.get("output"), r.get("seconds")
        rows.append(res)
    return write_results(rows, dataset, run_dir)


def warm_text_caches(dataset: str, preset: str, seed: int, n_test=None, prompt_fields=None, text_kind=None,
                     say=print) -> None:
    "Write the text models' prompts and embeddings into the caches once, before parallel runs read them."
    from crystal_diffusion_book import reproduce as rp
    fields = rp.prompt_fields_for(prompt_fields, dataset)
    if not fields:
        return
    from crystal_diffusion_book.text import TextEncoder
    run = rp.get_preset(preset, n_test=n_test)
    tr, va, te, _ = rp.load_csp_data(dataset, run, seed, fields, text_kind or "short", TextEncoder())
    say(f"{dataset}: prompts and embeddings cached for {len(tr)} + {len(va)} + {len(te)} crystals")


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
    ap.add_argument("--ablations-only", action="store_true", help="run KLDM's switches without the main KLDM run")
    ap.add_argument("--prompt-fields", default=None,
                    help="text models: comma-separated prompt fields (default: TGDMat's for the dataset; 'none': no text)")
    ap.add_argument("--text-kind", default=None, choices=["short", "long"], help="text models: prompt kind (default short)")
    ap.add_argument("--guidance-scale", type=float, default=None, help="text models: guidance scale w (default 1)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--out", type=Path, default=ROOT / "runs")
    ap.add_argument("--name", default=None, help="run folder name (default: reproduce-<dataset>-<preset>)")
    ap.add_argument("--quiet", action="store_true", help="print nothing but failures")
    a = ap.parse_args(argv)
    say = (lambda *_: None) if a.quiet else (lambda msg: print(msg, flush=True))
    models = [m for s in a.models for m in s.replace(",", " ").split()]
    name = a.name or f"reproduce-{a.dataset}-{a.preset}"
    run_dir = (a.out / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        spec = build_matrix(a.dataset, models, a.preset, a.seed, run_dir, a.n_test, a.sampler_steps, a.epochs,
                            "only" if a.ablations_only else a.kldm_ablations, a.prompt_fields, a.text_kind,
                            a.guidance_scale)
        from crystal_diffusion_book.reproduce import TEXT_MODELS, prompt_fields_for
        if any(m in TEXT_MODELS for m in models):
            prompt_fields_for(a.prompt_fields, a.dataset)
    except ValueError as e:
        ap.error(str(e))          # exit status 2, as for any other bad argument
    matrix = run_dir / "matrix.yaml"
    matrix.write_text(yaml.safe_dump(spec, sort_keys=False))
    # fetch and cache the splits once, so that parallel runs do not parse the same files at the same time
    from crystal_diffusion_book.data import load_dataset
    from crystal_diffusion_book.reproduce import get_preset
    p = get_preset(a.preset)
    for split, lim in (("train", p.n_train), ("val", p.n_val), ("test", None)):
        ds = load_dataset(a.dataset, split, limit=lim, progress=False)
        say(f"{a.dataset}/{split}: {len(ds)} crystals ready")
    from crystal_diffusion_book.reproduce import TEXT_MODELS
    if any(m in TEXT_MODELS for m in models):
        warm_text_caches(a.dataset, a.preset, a.seed, a.n_test, a.prompt_fields, a.text_kind, say)
    import run_matrix
    records = run_matrix.run_matrix(matrix, a.out.resolve(), jobs=a.jobs, progress="off" if a.quiet else "auto")
    md, _ = collect(records, a.dataset, run_dir)
    say(md)
    say(f"results: {run_dir / 'results.md'} and {run_dir / 'results.json'}")
    say(f"executed notebooks: {run_dir}/<run>.ipynb; figures: {run_dir / 'figures'}")
    return 1 if any(r["status"] != "ok" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
