"""Does classifier-free guidance make a text-conditioned KLDM follow its prompt? (chapter 62)

Trains a small `TextKLDM` (CSP) on Perov-5 train with TGDMat's short prompts (formula, elements, formation energy,
space group, crystal system; MiniLM embeddings) and condition dropout p_uncond, then samples a fixed seeded subset of
Perov-5 test crystals from their compositions and prompts at several guidance scales w (same sampler seed for every w,
so the runs share their prior draws), and measures with spglib (pymatgen's SpacegroupAnalyzer) at two tolerances the
fraction of samples whose space group / crystal system equals the one the prompt states, with binomial standard errors,
plus the match rate (`metrics.csp_metrics`, protocol diffcsp). Prints a Markdown table and writes
runs/guidance/results.json and runs/guidance/per_crystal.csv.

    OMP_NUM_THREADS=1 CDB_DATA_MIRROR=../shared/data .venv/bin/python bench/guidance_perov5.py

A rerun resumes training from runs/guidance/train/last.pt (a finished run is not retrained).
"""
import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch


def symmetry(structure, symprec):
    "(space group number, crystal system) of a structure at tolerance `symprec` Å; (None, None) if spglib fails."
    from crystal_diffusion_book.text_experiments import symmetry_of
    return symmetry_of(structure, symprec)


def binom(k, n):
    "Fraction and its binomial standard error."
    from crystal_diffusion_book.text_experiments import binomial_se
    return binomial_se(k, n)


def pattern(d):
    "The composition's multiplicity pattern, e.g. (1, 1, 1, 2): in Perov-5 it fixes how many distinct anions there are."
    return tuple(sorted(Counter(d.atom_types.tolist()).values()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--scales", default="0,1,2,4")
    ap.add_argument("--steps", type=int, default=100, help="sampler steps (the cpu preset's 100)")
    ap.add_argument("--method", default="pc")
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--symprecs", default="0.1,0.01")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None, help="cap on optimiser steps (smoke runs)")
    ap.add_argument("--out", default="runs/guidance")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from crystal_diffusion_book import train as trainer
    from crystal_diffusion_book.data import collate, data_to_structure
    from crystal_diffusion_book.metrics import csp_metrics
    from crystal_diffusion_book.reproduce import PRESETS
    from crystal_diffusion_book.text import TextEncoder, text_dataset
    from crystal_diffusion_book.text_kldm import TextKLDM, TextKLDMConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scales = [float(w) for w in args.scales.split(",")]
    symprecs = [float(s) for s in args.symprecs.split(",")]
    t_all = time.perf_counter()

    # ---- data: prompts (TGDMat's Perov-5 fields, symprec 0.01 for the stated symmetry) and MiniLM embeddings --------
    t0 = time.perf_counter()
    enc = TextEncoder()
    train, _ = text_dataset("perov_5", "train", encoder=enc, progress=False)
    test, test_df = text_dataset("perov_5", "test", encoder=enc, progress=False)
    t_data = time.perf_counter() - t0
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[:args.n_test].sort().values.tolist()
    gts = [test[i] for i in idx]
    sub = test_df.iloc[idx].reset_index(drop=True)
    print(f"data: {len(train)} train, {len(test)} test crystals, {len(gts)} sampled; {t_data:.0f} s", flush=True)

    # ---- model and training -----------------------------------------------------------------------------------------
    cpu = PRESETS["cpu"]
    torch.manual_seed(args.seed)
    model = TextKLDM(TextKLDMConfig.make("csp", network=cpu.network, text_dim=enc.dim, p_uncond=args.p_uncond))
    model.fit_lattice_stats(train)
    cfg = trainer.preset("kldm", epochs=args.epochs, batch_size=cpu.batch_size, threads=args.threads, val_every=0,
                         sample_every=0, progress=False, tensorboard=False, seed=args.seed,
                         max_steps=args.max_steps)
    t0 = time.perf_counter()
    res = trainer.train(model, train, None, cfg, out_dir=out / "train", resume=True)
    t_train = time.perf_counter() - t0
    import pandas as pd
    ep = pd.read_csv(res["epochs_csv"]) if Path(res["epochs_csv"]).exists() else pd.DataFrame(columns=["seconds", "train_loss"])
    # seconds since the start of the training call that wrote the last epoch (a resumed run restarts this clock)
    train_seconds = float(ep["seconds"].iloc[-1]) if len(ep) else t_train
    print(f"trained {res['epoch']} epochs, {res['step']} steps; {train_seconds:.0f} s of training "
          f"(this call {t_train:.0f} s); epoch losses {[round(x, 4) for x in ep['train_loss']]}", flush=True)

    # ---- what the prompts say, and what the test crystals themselves are at each tolerance --------------------------
    stated_sg = sub["spacegroup"].tolist()
    stated_cs = sub["crystal_system"].tolist()
    gt_struct = [data_to_structure(d) for d in gts]
    base = {"crystal_system": dict(Counter(stated_cs)), "spacegroup": {str(k): v for k, v in Counter(stated_sg).items()}}
    gt_sym = {sp: [symmetry(s, sp) for s in gt_struct] for sp in symprecs}
    # how much the composition alone says: the most common crystal system of train crystals with the same pattern
    train_df_cs, atypical = None, None
    try:
        from crystal_diffusion_book.text import describe_split
        tr_df = describe_split("perov_5", "train", long=False, progress=False)
        by_pat = {}
        for d, cs in zip(train, tr_df["crystal_system"]):
            by_pat.setdefault(pattern(d), Counter())[cs] += 1
        pred_cs = [by_pat.get(pattern(d), Counter({None: 1})).most_common(1)[0][0] for d in gts]
        # "atypical" prompts state a crystal system that is not the majority one of their composition pattern: a model
        # that read only the composition would get them wrong, so following them needs the text
        atypical = np.array([p != s for p, s in zip(pred_cs, stated_cs)])
        train_df_cs = sum(p == s for p, s in zip(pred_cs, stated_cs))
        base["composition_pattern_predictor"] = {"correct": train_df_cs, "n": len(gts),
                                                 "table": {str(k): dict(v) for k, v in by_pat.items()}}
    except Exception as e:  # the baseline is a diagnostic only
        base["composition_pattern_predictor"] = {"error": repr(e)}

    # ---- sampling at each guidance scale (same seed) and measurement -------------------------------------------------
    batch = collate(gts, self_loops=False)
    rows, per_crystal = [], {"row": idx, "material_id": sub["material_id"].tolist(),
                             "prompt_spacegroup": stated_sg, "prompt_crystal_system": stated_cs}
    for sp in symprecs:
        per_crystal[f"gt_spacegroup@{sp}"] = [g[0] for g in gt_sym[sp]]
        per_crystal[f"gt_crystal_system@{sp}"] = [g[1] for g in gt_sym[sp]]
    hits = {}
    for w in scales:
        t0 = time.perf_counter()
        preds = model.sample(batch, n_steps=args.steps, method=args.method,
                             generator=torch.Generator().manual_seed(args.seed), guidance_scale=w)
        t_sample = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = csp_metrics(preds, gts, protocol="diffcsp")
        t_match = time.perf_counter() - t0
        row = {"w": w, "n": len(gts), "n_built": sum(p is not None for p in preds), "match_rate": m.match_rate,
               "match_se": binom(round(m.match_rate * len(gts)), len(gts))[1], "rmse": m.rmse,
               "sample_seconds": t_sample, "match_seconds": t_match}
        for sp in symprecs:
            sym = [symmetry(p, sp) for p in preds]
            sg_hit = [s[0] == t for s, t in zip(sym, stated_sg)]
            cs_hit = [s[1] == t for s, t in zip(sym, stated_cs)]
            # the same question against the true crystal analysed at the same tolerance (the prompt states 0.01 Å)
            sg_gt = [s[0] == g[0] for s, g in zip(sym, gt_sym[sp])]
            cs_gt = [s[1] == g[1] for s, g in zip(sym, gt_sym[sp])]
            hits[(w, sp)] = (np.array(sg_hit), np.array(cs_hit), np.array(sg_gt), np.array(cs_gt))
            row[f"sg@{sp}"], row[f"sg_se@{sp}"] = binom(sum(sg_hit), len(gts))
            row[f"cs@{sp}"], row[f"cs_se@{sp}"] = binom(sum(cs_hit), len(gts))
            row[f"sg_gt@{sp}"], row[f"sg_gt_se@{sp}"] = binom(sum(sg_gt), len(gts))
            row[f"cs_gt@{sp}"], row[f"cs_gt_se@{sp}"] = binom(sum(cs_gt), len(gts))
            row[f"sample_crystal_system@{sp}"] = dict(Counter(s[1] for s in sym))
            per_crystal[f"w{w:g}_spacegroup@{sp}"] = [s[0] for s in sym]
            per_crystal[f"w{w:g}_crystal_system@{sp}"] = [s[1] for s in sym]
        rows.append(row)
        print(f"w = {w:g}: sampled in {t_sample:.0f} s, matched in {t_match:.0f} s; match rate {m.match_rate:.3f}; "
              + "; ".join(f"sg@{sp} {row[f'sg@{sp}']:.3f}, cs@{sp} {row[f'cs@{sp}']:.3f}" for sp in symprecs), flush=True)
    # the crystal-system agreement split by typical / atypical prompts (composition-pattern majority or not)
    split = []
    if atypical is not None:
        for w in scales:
            for sp in symprecs:
                _, cs_hit, _, cs_gt = hits[(w, sp)]
                for name, mask in (("atypical", atypical), ("typical", ~atypical)):
                    k = int(mask.sum())
                    split.append({"w": w, "symprec": sp, "prompts": name, "n": k,
                                  "cs": float(cs_hit[mask].mean()), "cs_se": binom(int(cs_hit[mask].sum()), k)[1],
                                  "cs_gt": float(cs_gt[mask].mean()), "cs_gt_se": binom(int(cs_gt[mask].sum()), k)[1]})
        per_crystal["atypical_prompt"] = atypical.tolist()
        for w in scales[1:]:                  # paired differences of the crystal-system agreement, per prompt group
            for sp in symprecs:
                for name, mask in (("atypical", atypical), ("typical", ~atypical)):
                    d = hits[(w, sp)][1][mask].astype(float) - hits[(scales[0], sp)][1][mask].astype(float)
                    split.append({"w": w, "vs": scales[0], "symprec": sp, "prompts": name, "n": int(mask.sum()),
                                  "paired_cs_diff": float(d.mean()), "paired_cs_se": float(d.std(ddof=1) / math.sqrt(len(d)))})
    # paired differences against w = scales[0] (same prior draws: the standard error of the mean paired difference)
    paired = []
    for w in scales[1:]:
        for sp in symprecs:
            for j, name in enumerate(("sg", "cs", "sg_gt", "cs_gt")):
                d = hits[(w, sp)][j].astype(float) - hits[(scales[0], sp)][j].astype(float)
                paired.append({"w": w, "vs": scales[0], "symprec": sp, "what": name, "diff": float(d.mean()),
                               "se": float(d.std(ddof=1) / math.sqrt(len(d)))})

    # ---- report ---------------------------------------------------------------------------------------------------
    n = len(gts)
    lines = [f"Perov-5 test subset: {n} crystals (seed {args.seed}); TextKLDM hidden {cpu.hidden_dim}, "
             f"{cpu.num_layers} layers, {res['epoch']} epochs, p_uncond {args.p_uncond}; sampler {args.method}, "
             f"{args.steps} steps", "",
             "Prompt crystal systems (symprec 0.01, as stated): "
             + ", ".join(f"{k} {v} ({v / n:.1%})" for k, v in sorted(base["crystal_system"].items(), key=lambda kv: -kv[1])), ""]
    for sp in symprecs:
        gsg = sum(g[0] == t for g, t in zip(gt_sym[sp], stated_sg)) / n
        gcs = sum(g[1] == t for g, t in zip(gt_sym[sp], stated_cs)) / n
        lines.append(f"The true test crystals at symprec {sp}: space group = prompt {gsg:.1%}, crystal system = prompt {gcs:.1%}")
    if train_df_cs is not None:
        lines.append(f"Composition-pattern predictor of the crystal system (train majority): {train_df_cs / n:.1%}")
    loose = [sp for sp in symprecs if sp != 0.01]   # at 0.01 Å the truth is the prompt (checked above)
    lines += ["", "Percent of samples (± binomial s.e.) whose space group (SG) / crystal system (CS), found at the tolerance "
              "in brackets, equals the prompt's (stated at 0.01 Å) or the true crystal's at the same tolerance:", "",
              "| w | " + " | ".join(f"SG = prompt ({sp} Å) | CS = prompt ({sp} Å)" for sp in symprecs)
              + "".join(f" | SG = truth ({sp} Å) | CS = truth ({sp} Å)" for sp in loose)
              + " | match rate (diffcsp) | RMSE |",
              "|---|" + "---|---|" * (len(symprecs) + len(loose)) + "---|---|"]
    for r in rows:
        cells = []
        for sp in symprecs:
            cells += [f"{100 * r[f'sg@{sp}']:.1f} ± {100 * r[f'sg_se@{sp}']:.1f}",
                      f"{100 * r[f'cs@{sp}']:.1f} ± {100 * r[f'cs_se@{sp}']:.1f}"]
        for sp in loose:
            cells += [f"{100 * r[f'sg_gt@{sp}']:.1f} ± {100 * r[f'sg_gt_se@{sp}']:.1f}",
                      f"{100 * r[f'cs_gt@{sp}']:.1f} ± {100 * r[f'cs_gt_se@{sp}']:.1f}"]
        lines.append(f"| {r['w']:g} | " + " | ".join(cells)
                     + f" | {100 * r['match_rate']:.1f} ± {100 * r['match_se']:.1f} | {r['rmse']:.4f} |")
    ceil = []
    for sp in symprecs:
        ceil += [f"{100 * sum(g[0] == t for g, t in zip(gt_sym[sp], stated_sg)) / n:.1f}",
                 f"{100 * sum(g[1] == t for g, t in zip(gt_sym[sp], stated_cs)) / n:.1f}"]
    lines.append("| true crystals | " + " | ".join(ceil) + " | 100 | 100" * len(loose) + " | 100 | 0 |")
    for sp in symprecs:
        lines.append(f"Crystal systems of the true crystals at {sp} Å: "
                     + ", ".join(f"{k} {v}" for k, v in Counter(g[1] for g in gt_sym[sp]).most_common()))
    if split:
        n_a = int(atypical.sum())
        lines += ["", f"Crystal system agreement at 0.1 Å, split by prompt: {n_a} atypical prompts (the stated system is not "
                  "the train majority of the composition pattern) and %d typical ones:" % (n - n_a), "",
                  "| w | atypical: CS = prompt | atypical: CS = truth | typical: CS = prompt | typical: CS = truth |",
                  "|---|---|---|---|---|"]
        for w in scales:
            r = {x["prompts"]: x for x in split if x["w"] == w and x["symprec"] == max(symprecs) and "cs" in x}
            lines.append(f"| {w:g} | " + " | ".join(f"{100 * r[k][m]:.1f} ± {100 * r[k][m + '_se']:.1f}"
                                                    for k in ("atypical", "typical") for m in ("cs", "cs_gt")) + " |")
        lines += ["", "Paired change of CS = prompt at %g Å against w = %g (percentage points ± s.e.): " % (max(symprecs), scales[0])
                  + "; ".join(f"w = {x['w']:g} {x['prompts']} {100 * x['paired_cs_diff']:+.1f} ± {100 * x['paired_cs_se']:.1f}"
                              for x in split if "paired_cs_diff" in x and x["symprec"] == max(symprecs))]
    lines += ["", "Paired differences against w = %g (percentage points ± s.e.):" % scales[0]]
    for p in paired:
        lines.append(f"  w = {p['w']:g}, {p['what']} @ {p['symprec']}: {100 * p['diff']:+.1f} ± {100 * p['se']:.1f}")
    wall = time.perf_counter() - t_all
    lines.append(f"\nwall time of this call: {wall:.0f} s (data {t_data:.0f} s, training call {t_train:.0f} s); "
                 f"threads {torch.get_num_threads()}")
    report = "\n".join(lines)
    print(report, flush=True)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(args),
              "epochs": res["epoch"], "steps": res["step"], "train_seconds": train_seconds, "wall_seconds": wall,
              "data_seconds": t_data, "n_train": len(train), "n_test_split": len(test), "n": n, "rows": rows,
              "paired": paired, "split": split, "base_rates": base,
              "gt_vs_prompt": {str(sp): {"sg": sum(g[0] == t for g, t in zip(gt_sym[sp], stated_sg)) / n,
                                          "cs": sum(g[1] == t for g, t in zip(gt_sym[sp], stated_cs)) / n} for sp in symprecs},
              "train_loss": ep["train_loss"].tolist(), "platform": platform.platform(), "torch": torch.__version__,
              "load_average": os.getloadavg(), "report": report}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    pd.DataFrame(per_crystal).to_csv(out / "per_crystal.csv", index=False)
    print(f"wrote {out / 'results.json'} and {out / 'per_crystal.csv'}")


if __name__ == "__main__":
    main()
