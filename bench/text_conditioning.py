"""Does the network read the text? TGDMat at a reduced cpu budget, with its text conditioning as published and with
our two options (z-scored embeddings, a narrower projected text), judged by the validation loss with the right
prompts against the same crystals with shuffled prompts.

    OMP_NUM_THREADS=1 python bench/text_conditioning.py [--n-train 2048] [--steps 480] [--n-val 512]
        [--variants raw,zscore,width64,zscore-width64] [--eval-seeds 5] [--out ci/results/text_conditioning-perov_5.json]

Every variant trains the cpu network (hidden 128, 4 layers) from the same seed on the first --n-train Perov-5 training
crystals with TGDMat's short prompts (all fields, MiniLM), for --steps optimiser steps at batch 256, TGDMat's optimiser.
With --sample-test N, each variant also samples N seeded test crystals twice from the same generator seed, in
evaluation mode (ours) and with the projection's dropout on (`text_dropout=True`, as TGDMat's evaluate.py samples),
and scores both with every column (match rate, ungated, RMSE, invalid, volume ratio). Then, for each of --eval-seeds
noise seeds, the validation loss of --n-val crystals with their own prompts and with the
prompts permuted among them (one fixed derangement). The gap shuffled - right is paired (same crystals, same noise);
its mean and standard deviation over the seeds say whether the text matters beyond the loss's own noise. A gap of
zero means the network ignores the text. Prints one line per variant and writes the JSON record.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from crystal_diffusion_book.reproduce import (build_model, environment, get_preset, load_csp_data, prompt_fields_for,
                                              train_config)
from crystal_diffusion_book.text import TextEncoder
from crystal_diffusion_book.text_experiments import derangement, shuffled_prompts
from crystal_diffusion_book.train import train, validation_loss

VARIANTS = {   # name: (text_standardise, text_out_dim); "raw" is TGDMat's conditioning at the cpu network
    "raw": (False, None), "zscore": (True, None), "width64": (False, 64), "zscore-width64": (True, 64)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="perov_5")
    p.add_argument("--n-train", type=int, default=2048)
    p.add_argument("--n-val", type=int, default=512)
    p.add_argument("--steps", type=int, default=480)
    p.add_argument("--variants", default="raw,zscore,width64,zscore-width64")
    p.add_argument("--eval-seeds", type=int, default=5)
    p.add_argument("--sample-test", type=int, default=0, help="test crystals to sample with and without text dropout")
    p.add_argument("--sample-steps", type=int, default=100, help="PC steps of those samples (default 100)")
    p.add_argument("--grid", default="skip_end", choices=["paper", "skip_end"], help="time grid of those samples "
                   "(default skip_end: the paper grid's first step blows up short-grid lattices, chapter 32)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad: p.error(f"--variants: unknown {bad}; choose from {sorted(VARIANTS)}")
    for k in ("n_train", "n_val", "steps", "eval_seeds"):
        if getattr(a, k) < 1: p.error(f"--{k.replace('_', '-')} must be positive, got {getattr(a, k)}")
    torch.set_num_threads(1)
    enc = TextEncoder()
    fields = prompt_fields_for(None, a.dataset)
    t0 = time.perf_counter()
    base = get_preset("cpu", n_train=a.n_train, n_val=a.n_val, max_steps=a.steps, n_test=a.sample_test or None,
                      sample_steps=a.sample_steps)
    train_data, val_data, test_data, _ = load_csp_data(a.dataset, base, 0, fields, "short", enc, test=a.sample_test > 0)
    print(f"{a.dataset}: {len(train_data)} training, {len(val_data)} validation crystals, short prompts "
          f"({', '.join(fields)}), {enc.name} ({time.perf_counter() - t0:.0f} s)", flush=True)
    perm = derangement(len(val_data), seed=0)
    val_shuffled = shuffled_prompts(val_data, perm)
    rec = {"dataset": a.dataset, "model": "tgdmat", "n_train": len(train_data), "n_val": len(val_data),
           "steps": a.steps, "batch_size": base.batch_size, "network": base.network, "prompt_fields": list(fields),
           "encoder": enc.name, "eval_seeds": a.eval_seeds, "sample_test": a.sample_test, "sample_steps": a.sample_steps,
           "grid": a.grid, "environment": environment(), "rows": []}
    for name in names:
        std, width = VARIANTS[name]
        run = get_preset("cpu", n_train=a.n_train, n_val=a.n_val, max_steps=a.steps, text_standardise=std,
                         text_out_dim=width)
        torch.manual_seed(0)
        net = build_model("tgdmat", run, a.dataset, train_data=train_data, text_dim=enc.dim)
        cfg = train_config("tgdmat", run, seed=0, val_every=0)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            train(net, train_data, None, cfg, out_dir=d)
        sec = time.perf_counter() - t0
        right = [validation_loss(net, val_data, seed=s)["loss"] for s in range(a.eval_seeds)]
        wrong = [validation_loss(net, val_shuffled, seed=s)["loss"] for s in range(a.eval_seeds)]
        gaps = [w - r for r, w in zip(right, wrong)]
        row = {"variant": name, "text_standardise": std, "text_out_dim": width or net.config.text_out_dim,
               "n_params": sum(q.numel() for q in net.parameters()), "train_seconds": sec,
               "val_loss_right": statistics.fmean(right), "val_loss_shuffled": statistics.fmean(wrong),
               "gap_mean": statistics.fmean(gaps), "gap_sd": statistics.stdev(gaps) if len(gaps) > 1 else None,
               "gaps": gaps}
        if a.sample_test > 0:
            from crystal_diffusion_book.nfe import score_predictions
            from crystal_diffusion_book.reproduce import sample_csp
            net.eval()
            for mode, kw in (("eval", {"grid": a.grid}), ("text_dropout", {"grid": a.grid, "text_dropout": True})):
                torch.manual_seed(0)                              # the dropout masks' stream
                t1 = time.perf_counter()
                preds = sample_csp(net, test_data, base, seed=0, **kw)
                row[f"sample_{mode}"] = sc = score_predictions(preds, test_data, time.perf_counter() - t1)
                print(f"{name:15s} sampled {len(test_data)} test crystals ({mode}): MR {100 * sc['match_rate']:.1f} "
                      f"± {100 * sc['match_rate_se']:.1f}, ungated {100 * sc['match_rate_ungated']:.1f}, RMSE "
                      f"{sc['rmse'] if sc['rmse'] is None else round(sc['rmse'], 4)}, invalid {sc['n_invalid']}, "
                      f"V/V0 {sc['volume_ratio_median']:.3g}", flush=True)
        rec["rows"].append(row)
        sd = row["gap_sd"]
        print(f"{name:15s} val loss right {row['val_loss_right']:.4f}, shuffled {row['val_loss_shuffled']:.4f}, "
              f"gap {row['gap_mean']:+.4f}" + (f" (SD over seeds {sd:.4f})" if sd is not None else "")
              + f"; {row['n_params']:,} params, {sec:.0f} s", flush=True)
        if a.out is not None:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(rec, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
