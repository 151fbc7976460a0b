"""One text-model variant at a CSP preset: train it once (resuming the run folder), then sample the preset's seeded test
crystals once per sampling seed (and, for a guided model, per guidance scale w) and score every sample with the columns a
match rate hides (ungated twin, invalid count, predicted/true volume) and with the prompt's symmetry: the fraction of
samples whose space group and crystal system, found by spglib at two tolerances, equal the ones the prompt states.

    # chapter 74: TGDMat with all prompt fields, z-scored embeddings (the cpu preset's choice)
    OMP_NUM_THREADS=1 python ci/text_runs.py --model tgdmat --run-dir runs/text/tgdmat-all --out runs/text/tgdmat-all.json
    # no text, and without the structural fields (space group, crystal system)
    ... --model tgdmat --fields none --run-dir runs/text/tgdmat-none --out runs/text/tgdmat-none.json
    ... --model tgdmat --fields formation_energy,formula,elements --run-dir ... --out ...
    # text-guided KLDM (condition dropout 0.1) and the guidance sweep
    ... --model kldm-text --guidance 0 1 2 4 --run-dir runs/text/kldm-text-all --out runs/text/kldm-text-all.json
    # TGDMat with robocrys's long descriptions (fill the cache first: cdb describe --long, train, val and test)
    ... --model tgdmat --text-kind long --run-dir runs/text/tgdmat-long --out runs/text/tgdmat-long.json

`ci/collect_text.py` joins the variants' JSON into one committed record. One network per variant (training seed 0);
the seeds are sampling seeds. Progress goes to stdout, one line per stage. A text variant also records the prompt gap
(validation loss with shuffled minus right prompts, five paired noise seeds; `text_experiments.prompt_gap`). A rerun
resumes: training from the run folder, and the samples already in --out are kept when the variant's settings (model,
fields, text kind, standardisation, wording, grid, test rows, epochs) are the same."""
import argparse, json, sys, time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from crystal_diffusion_book.data import data_to_structure
from crystal_diffusion_book.nfe import score_predictions
from crystal_diffusion_book.reproduce import (TEXT_MODELS, _fmt, build_model, default_p_uncond, environment,
                                              get_preset, load_csp_data, prompt_fields_for, resolve_train_source,
                                              sample_csp, train_config)
from crystal_diffusion_book.text import PROMPT_STYLES
from crystal_diffusion_book.text_experiments import prompt_gap, stated_symmetry, symmetries, symmetry_agreement, token_stats
from crystal_diffusion_book.train import default_threads, train, validation_loss


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


SAME_VARIANT = ("model", "fields", "text_standardise", "prompt_style", "time_grid", "test_rows", "epochs", "sample_steps",
                "text_kind", "n_train")
KIND_DEFAULT = {"text_kind": "short"}   # records written before the long prompts existed are short-prompt records


def finished_samples(out: Path, record: dict) -> dict:
    "The samples an earlier call of the same variant wrote into `out`: {(w, seed): row}; empty if any setting differs."
    try: old = json.loads(out.read_text())
    except (OSError, ValueError): return {}
    if any(old.get(k, KIND_DEFAULT.get(k)) != record.get(k, KIND_DEFAULT.get(k)) for k in SAME_VARIANT): return {}
    return {(float(r["guidance_scale"]), int(r["seed"])): r for r in old.get("samples", [])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=TEXT_MODELS, required=True)
    p.add_argument("--dataset", default="perov_5")
    p.add_argument("--preset", default="cpu", help="the run's scale (reproduce.PRESETS)")
    p.add_argument("--fields", default=None, help="prompt fields: comma-separated, 'none' (no text), default TGDMat's")
    p.add_argument("--standardise", choices=("preset", "yes", "no"), default="preset",
                   help="z-score the text embeddings with training statistics (default: the preset's choice)")
    p.add_argument("--prompt-style", choices=PROMPT_STYLES, default="ours",
                   help="the short prompt's wording: ours or TGDMat's code's (text.short_prompt)")
    p.add_argument("--text-kind", choices=("short", "long"), default="short",
                   help="short: the templated prompt; long: robocrys's description (the short prompt where robocrys failed)")
    p.add_argument("--grid", choices=("preset", "paper", "skip_end"), default="preset",
                   help="TGDMat's sampler time grid (default: the preset's; KLDM has none)")
    p.add_argument("--p-uncond", type=float, default=None, help="condition dropout (default: the model's)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="guidance scales w to sample at")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds")
    p.add_argument("--n-test", type=int, default=None, help="test crystals (default: the preset's)")
    p.add_argument("--n-train", type=int, default=None,
                   help="train on the split's first N crystals only (default: the preset's, all of them)")
    p.add_argument("--run-dir", type=Path, required=True, help="the run folder (train/ inside is resumed)")
    p.add_argument("--out", type=Path, required=True, help="JSON written after every sample")
    a = p.parse_args(argv)
    if a.epochs is not None and a.epochs < 1: p.error(f"--epochs must be positive, got {a.epochs}")
    if any(w < 0 for w in a.guidance): p.error(f"--guidance scales must be >= 0, got {a.guidance}")
    if a.n_train is not None and a.n_train < 1: p.error(f"--n-train must be positive, got {a.n_train}")
    run = get_preset(a.preset, epochs=a.epochs, n_test=a.n_test, n_train=a.n_train)   # None keeps the preset's
    if a.standardise != "preset": run = replace(run, text_standardise=a.standardise == "yes")
    if a.grid != "preset": run = replace(run, time_grid=a.grid)
    fields = prompt_fields_for(a.fields, a.dataset)
    pu = default_p_uncond(a.model) if a.p_uncond is None else a.p_uncond
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(run.threads or default_threads())
    source = resolve_train_source(a.dataset, run.train_source)
    encoder = None
    if fields:
        from crystal_diffusion_book.text import TextEncoder
        encoder = TextEncoder()
    t0 = time.perf_counter()
    train_data, val_data, test_data, test_idx = load_csp_data(a.dataset, replace(run, train_source=source), 0,
                                                              fields or None, a.text_kind, encoder, style=a.prompt_style)
    stated_sg, stated_cs = stated_symmetry(a.dataset, test_idx, a.prompt_style if fields else "ours")
    truths = [data_to_structure(d) for d in test_data]
    truth_sym = symmetries(truths)                     # once, not once per (w, seed) sample
    log(f"data: train {len(train_data)}, val {len(val_data)}, test {len(test_data)}; fields {list(fields) or 'none'}; "
        f"standardise {run.text_standardise}; p_uncond {pu} ({time.perf_counter() - t0:.0f} s)")
    torch.manual_seed(0)
    net = build_model(a.model, run, a.dataset, train_data=train_data,
                      text_dim=encoder.dim if encoder is not None else 0, p_uncond=pu)
    t0 = time.perf_counter()
    res = train(net, train_data, val_data, train_config(a.model, run, seed=0), out_dir=a.run_dir / "train", resume=True)
    net.eval()
    val = validation_loss(net, val_data, batch_size=256, seed=0)["loss"]
    log(f"trained to epoch {res['epoch']} (this call {time.perf_counter() - t0:.0f} s); validation loss {val:.4f}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from long_run import training_log
    record = {"dataset": a.dataset, "model": a.model, "preset": run.name, "train_source": source,
              "fields": list(fields), "text_kind": a.text_kind if fields else "short",
              "prompt_style": a.prompt_style if fields else None, "text_standardise": bool(run.text_standardise) if fields else None,
              "text_out_dim": run.text_out_dim, "p_uncond": pu, "epochs": int(res["epoch"]), "steps": int(res["step"]),
              "n_params": sum(q.numel() for q in net.parameters()), "n_train": len(train_data), "n_train_limit": run.n_train, "n_val": len(val_data),
              "n_test": len(test_data), "test_rows": test_idx, "sample_steps": run.sample_steps,
              "time_grid": run.time_grid if a.model == "tgdmat" else None, "val_loss": val,
              "prompt_spacegroups": dict(Counter(map(str, stated_sg))), "prompt_crystal_systems": dict(Counter(stated_cs)),
              **training_log(a.run_dir / "train" / "epochs.csv"), "train_seed": 0, "environment": environment(),
              "samples": []}
    if fields:
        record["test_prompt_tokens"] = token_stats([d.text for d in test_data], encoder)   # what the encoder truncates
        record["prompt_gap"] = gap = prompt_gap(net, val_data)
        log(f"prompt gap (shuffled - right validation loss): {gap['gap_mean']:+.4f} (SD over seeds {gap['gap_sd']:.4f})")
    done = finished_samples(a.out, record)
    for w in a.guidance:
        for seed in a.seeds:
            if (w, seed) in done:                 # the same variant sampled this already: keep it
                record["samples"].append(done[w, seed])
                continue
            t0 = time.perf_counter()
            preds = sample_csp(net, test_data, run, seed=seed, guidance_scale=w if fields else None)
            sec = time.perf_counter() - t0
            row = {"guidance_scale": w, "seed": seed, **score_predictions(preds, test_data, sec),
                   "symmetry": symmetry_agreement(preds, truths, stated_sg, stated_cs, truth_symmetry=truth_sym)}
            record["samples"].append(row)
            a.out.write_text(json.dumps(record, indent=1, default=str))
            sym = row["symmetry"]
            log(f"w {w:g} seed {seed}: MR {100 * row['match_rate']:.2f}, ungated {100 * row['match_rate_ungated']:.2f}, "
                f"RMSE {_fmt(row['rmse'], 4)}, invalid {row['n_invalid']}, V/V0 {_fmt(row['volume_ratio_median'], 3)}; "
                + "; ".join(f"sg=prompt@{sp} {100 * sym[sp]['sg_prompt']:.1f}" for sp in sym) + f" ({sec:.0f} s)")
        if not fields: break                      # guidance needs a condition: one pass for a model without text
    a.out.write_text(json.dumps(record, indent=1, default=str))   # also when every sample was kept from an earlier call


if __name__ == "__main__":
    main()
