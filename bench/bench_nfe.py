"""Match rate and RMSE of every sampler against its network calls (NFE) on the same seeded Perov-5 test crystals.

    OMP_NUM_THREADS=1 python bench/bench_nfe.py --diffcsp runs/cpu/diffcsp/train/model.pt \
        --kldm runs/cpu/kldm/train/model.pt [--tgdmat PATH] [--n-test 200] [--out ci/results/perov_5-nfe.json]

Prints one line per (sampler, step count) and writes the JSON record that chapter 72 reads. The sweep is
`crystal_diffusion_book.nfe.sweep`; this script only loads the checkpoints and the test crystals."""
import argparse, json, sys, time
from pathlib import Path

import torch

from crystal_diffusion_book.nfe import SamplerSetting, sweep
from crystal_diffusion_book.reproduce import environment, test_indices

DEFAULT_STEPS = {   # per sampler: step counts (NFE = steps, or 2 x steps for pc)
    ("diffcsp", "pc", "paper"): [5, 10, 25, 50, 100, 1000],
    ("diffcsp", "pc", "skip_end"): [5, 10, 25, 50, 100, 250, 1000],
    ("diffcsp", "predictor", "paper"): [10, 50, 100, 1000],
    ("diffcsp", "predictor", "skip_end"): [10, 25, 50, 100, 200, 1000],
    ("diffcsp", "ddim", "skip_end"): [10, 25, 50, 100, 200, 1000],          # ours (chapter 32), not DiffCSP's
    ("kldm", "pc", None): [5, 10, 25, 50, 100, 250, 1000],
    ("kldm", "em", None): [10, 25, 50, 100, 200, 1000],
    ("kldm", "ode", None): [10, 25, 50, 100, 200, 1000],
    ("tgdmat", "pc", "paper"): [5, 50, 1000],
    ("tgdmat", "pc", "skip_end"): [5, 10, 25, 50, 100, 1000],
}

LATTICE_PLAN = [   # KLDM's EM and ODE samplers with each lattice step (chapter 14, 33): (method, lattice_step, steps)
    (meth, ls, [10, 25, 50, 100, 200]) for meth in ("em", "ode") for ls in ("euler", "exponential")
] + [("pc", None, [100, 1000])]   # on the same checkpoint: the cpu preset's sampler and the 1000-step reference

CORRECTOR_PLAN = [   # corrector sizes at the cpu preset's 100 PC steps (200 calls): (model, grid, option, values)
    ("diffcsp", "skip_end", "step_lr", [0.0, 5e-7, 5e-6, 5e-5, 5e-4]),      # 5e-7: DiffCSP's Perov-5 CSP value
    ("kldm", None, "tau_corrector", [0.0, 0.0625, 0.125, 0.25, 0.5, 1.0]),   # 0.25: KLDM's
]

QUICK_PLAN = [   # (model, method, grid, steps), in the order run: the preset's and the short grids first
    ("diffcsp", "pc", "paper", 100), ("diffcsp", "pc", "skip_end", 100), ("kldm", "pc", None, 100),
    ("diffcsp", "pc", "skip_end", 10), ("diffcsp", "pc", "paper", 10), ("kldm", "pc", None, 10),
    ("kldm", "em", None, 200), ("kldm", "ode", None, 200), ("diffcsp", "predictor", "skip_end", 200),
    ("diffcsp", "pc", "skip_end", 50), ("kldm", "pc", None, 50), ("kldm", "em", None, 50), ("kldm", "ode", None, 50),
    ("diffcsp", "predictor", "skip_end", 50), ("diffcsp", "pc", "paper", 50), ("diffcsp", "predictor", "paper", 200),
    ("diffcsp", "pc", "skip_end", 25), ("kldm", "pc", None, 25), ("diffcsp", "pc", "skip_end", 1000),
    ("kldm", "pc", None, 1000), ("diffcsp", "pc", "paper", 1000),
]

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--diffcsp", type=Path, help="DiffCSP checkpoint (model.pt of a cpu run)")
    p.add_argument("--kldm", type=Path, help="KLDM checkpoint")
    p.add_argument("--tgdmat", type=Path, help="TGDMat checkpoint (optional)")
    p.add_argument("--dataset", default="perov_5")
    p.add_argument("--n-test", type=int, default=200, help="seeded test crystals (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test subset and of every sampler run")
    p.add_argument("--plan", choices=["full", "quick", "lattice", "corrector"], default="full",
                   help="full: every sampler at every step count of DEFAULT_STEPS; quick: QUICK_PLAN, most telling first; "
                        "lattice: KLDM EM and ODE with each lattice step (LATTICE_PLAN); "
                        "corrector: PC at 100 steps with each corrector size (CORRECTOR_PLAN)")
    p.add_argument("--only", default="", help="comma list of sampler labels to run (default: all with a checkpoint)")
    p.add_argument("--max-steps", type=int, default=None, help="skip step counts above this (quick runs)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=None, help="JSON record to write (default: none)")
    a = p.parse_args(argv)
    ckpts = {k: v for k, v in (("diffcsp", a.diffcsp), ("kldm", a.kldm), ("tgdmat", a.tgdmat)) if v is not None}
    if not ckpts: p.error("give at least one of --diffcsp, --kldm, --tgdmat")
    for k, v in ckpts.items():
        if not v.is_file(): p.error(f"--{k}: checkpoint {v} does not exist or is not a file")
    if a.n_test < 1: p.error(f"--n-test must be positive, got {a.n_test}")
    torch.set_num_threads(a.threads)
    from crystal_diffusion_book.model import load_model
    from crystal_diffusion_book.data import load_dataset
    models = {k: load_model(v) for k, v in ckpts.items()}
    if "tgdmat" in models and models["tgdmat"].config.text_dim > 0:
        p.error("--tgdmat: a text-conditioned TGDMat needs prompt embeddings, which this benchmark does not build")
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    settings = []
    if a.plan == "lattice":
        plan = [(("kldm", meth, None), steps, {"lattice_step": ls} if ls else {}) for meth, ls, steps in LATTICE_PLAN]
    elif a.plan == "corrector":
        plan = [((m, "pc", g), [100], {opt: v}) for m, g, opt, values in CORRECTOR_PLAN for v in values]
    elif a.plan == "full":
        plan = [(key, steps, {}) for key, steps in DEFAULT_STEPS.items()]
    else:
        plan = [((m, me, g), [S], {}) for m, me, g, S in QUICK_PLAN]
    for (m, meth, grid), steps, options in plan:
        if m not in models: continue
        st = SamplerSetting(m, meth, [s for s in steps if a.max_steps is None or s <= a.max_steps], grid, options=options)
        if (not only or st.label in only) and st.steps: settings.append(st)
    test_all = load_dataset(a.dataset, "test")
    idx = test_indices(len(test_all), a.n_test, a.seed)
    test = [test_all[i] for i in idx]
    print(f"{a.dataset}: {len(test)} seeded test crystals (seed {a.seed}); models {sorted(models)}; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    t0 = time.perf_counter()

    def write(rows):
        if a.out is None: return
        rec = {"dataset": a.dataset, "n_test": len(test), "seed": a.seed, "protocol": "diffcsp",
               "checkpoints": {k: {"file": v.name, "config": json.loads(json.dumps(models[k].config, default=lambda o: getattr(o, "__dict__", str(o))))}
                               for k, v in ckpts.items()},
               "plan": a.plan, "environment": environment(), "rows": rows}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=1) + "\n"); tmp.replace(a.out)   # a partial record survives an interruption

    rows = sweep(models, settings, test, seed=a.seed, log=lambda s: print(s, flush=True), on_row=write)
    print(f"total {time.perf_counter() - t0:.0f} s; wrote {a.out}", flush=True)

if __name__ == "__main__":
    sys.exit(main())
