"""Training and sampling throughput of the book's models on fixed batches of real crystals (CPU).

Usage:
    CDB_DATA_MIRROR=/work/shared/data .venv/bin/python bench/bench_models.py [--models diffcsp] [--threads N]
        [--batch 64] [--train-reps 3] [--sample-steps 4] [--configs small,reference] [--datasets perov_5,mp_20]

For every model entry in MODELS, configuration and dataset it prints, on one fixed batch:
  * training: steps/s and crystals/s of one forward + backward + Adam step (median of --train-reps after a warm-up);
  * sampling: crystals/s for a 1000-step sampler, EXTRAPOLATED from --sample-steps steps (the per-step cost does not
    depend on which times are visited), with the number of network calls per step.
Timing is wall clock by default; --clock cpu measures the process's CPU time instead (with --threads 1 this is the
wall time the work would take on an idle core, which is what to quote when the machine is shared and overloaded).
Then, for each model, "before/after" rows for the obvious costs removed in our implementation (each the same
computation done the slow way beside ours, in the same run).

Models are entries of the dict MODELS: name -> ModelEntry(make(config_name, dataset) -> CrystalModel, configs,
sample_kwargs, nfe_per_step, extras(model, batch) -> list of (label, seconds_before, seconds_after)).
Add a model by adding an entry (the KLDM chapter adds "kldm").
The MP-20 batch comes from the test split (the train split is not on the local mirror); the crystals are the first
--batch rows of each split, so the batch is the same in every run.
"""
import argparse
import os
import statistics
import time
from dataclasses import dataclass, field

import torch

from crystal_diffusion_book.cspnet import count_parameters, naive_cspnet_forward
from crystal_diffusion_book.data import collate, fully_connected_edges, load_dataset
from crystal_diffusion_book.model import spec_from_batch

SPLITS = {"perov_5": "train", "mp_20": "test"}


@dataclass
class ModelEntry:
    make: callable                      # (config_name, dataset) -> model
    configs: tuple = ("small", "reference")
    sample_kwargs: dict = field(default_factory=dict)
    nfe_per_step: int = 1
    extras: callable = None             # (model, batch, args) -> [(label, before_s, after_s)]


CLOCK = time.perf_counter   # --clock cpu switches to time.process_time (CPU seconds of this process)


def median_time(fn, reps, warmup=1):
    "Median time of fn() over reps runs after warm-up runs, on CLOCK."
    for _ in range(warmup): fn()
    times = []
    for _ in range(reps):
        t0 = CLOCK(); fn(); times.append(CLOCK() - t0)
    return statistics.median(times)


def train_step_fn(model, batch, opt):
    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(batch)["loss"].backward()
        opt.step()
    return step


def sample_seconds(model, spec, n_steps, **kw):
    "Seconds for a sampler run of n_steps steps (after one short warm-up)."
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.sample_tensors(spec, n_steps=1, generator=gen, **kw)
        t0 = CLOCK()
        model.sample_tensors(spec, n_steps=n_steps, generator=gen, **kw)
    return CLOCK() - t0


# ---------------------------------------------------------------------------------------------- DiffCSP
def make_diffcsp(config_name, dataset):
    from crystal_diffusion_book.diffcsp import DiffCSP, DiffCSPConfig
    net = {"small": dict(hidden_dim=128, num_layers=4, num_freqs=32),
           "reference": {}}[config_name]
    return DiffCSP(DiffCSPConfig.make("csp", network=net, dataset=dataset))


def diffcsp_extras(model, batch, args):
    "Before/after rows: edges every sampler step vs once; λ recomputed per loss call vs a buffer; naive vs our forward."
    from crystal_diffusion_book.wrapped_normal import wn_score_norm
    rows = []
    spec = spec_from_batch(batch)
    n = args.sample_steps
    # 1. edges rebuilt at every network call in the sampler (a Python loop over crystals, as a literal port does)
    def loop_edges(num_atoms):
        blocks, start = [], 0
        for k in num_atoms.tolist():
            i, j = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
            blocks.append(torch.stack([j.reshape(-1), i.reshape(-1)]) + start); start += k
        return torch.cat(blocks, 1)
    def den_loop(t, a, f, L, i, e):
        return model.denoise(t, a, f, L, i, loop_edges(spec.num_atoms))
    def den_vec(t, a, f, L, i, e):
        return model.denoise(t, a, f, L, i, fully_connected_edges(spec.num_atoms))
    s_loop = sample_seconds(model, spec, n, denoiser=den_loop)
    s_vec = sample_seconds(model, spec, n, denoiser=den_vec)
    s_once = sample_seconds(model, spec, n)
    rows.append((f"sampler, {n} steps: edges by Python loop every call -> once per call", s_loop, s_once))
    rows.append((f"sampler, {n} steps: edges vectorised every call -> once per call", s_vec, s_once))
    # 2. score normaliser λ(σ_t) recomputed inside every loss call instead of a constant buffer
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = train_step_fn(model, batch, opt)
    def step_recompute():
        lam = torch.ones_like(model.sigmas); lam[1:] = wn_score_norm(model.sigmas[1:])
        model.sqrt_lambda.copy_(lam.sqrt())
        step()
    rows.append(("train step: λ(σ) by quadrature every call -> buffer", median_time(step_recompute, args.train_reps),
                 median_time(step, args.train_reps)))
    # 3. the literal CSPNet forward (edges by a loop over crystals, Fourier features per layer) inside the loss
    def naive_denoise(t, a, f, L, i, e):
        return naive_cspnet_forward(model.net, t, a, f, L, i)
    model.denoise = naive_denoise
    t_naive = median_time(step, args.train_reps)
    del model.denoise
    rows.append(("train step: literal CSPNet forward -> ours", t_naive, median_time(step, args.train_reps)))
    return rows


MODELS = {
    "diffcsp": ModelEntry(make=make_diffcsp, sample_kwargs=dict(method="pc"), nfe_per_step=2, extras=diffcsp_extras),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--configs", default="small,reference")
    p.add_argument("--datasets", default="perov_5,mp_20")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--train-reps", type=int, default=3)
    p.add_argument("--sample-steps", type=int, default=4, help="sampler steps timed (extrapolated to 1000)")
    p.add_argument("--no-extras", action="store_true")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time; cpu: CPU seconds of this process (use with --threads 1 on a shared, "
                        "overloaded machine: it approximates the wall time of an idle core)")
    args = p.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads: torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}, float32, batch = {args.batch} crystals, "
          f"clock = {args.clock}, load average = {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    batches = {}
    for ds in args.datasets.split(","):
        data = load_dataset(ds, SPLITS[ds], limit=args.batch, progress=False)
        batches[ds] = collate(list(data))
        print(f"  {ds}/{SPLITS[ds]}: {len(data)} crystals, {int(batches[ds].num_atoms.sum())} atoms, "
              f"{batches[ds].edge_index.shape[1]} edges")
    header = f"{'model':8s} {'config':10s} {'params':>8s} {'dataset':8s} {'train steps/s':>13s} {'train cryst/s':>13s} " \
             f"{'sample cryst/s (1000 steps)':>28s} {'NFE/step':>8s}"
    print(header); print("-" * len(header))
    for name in args.models.split(","):
        entry = MODELS[name]
        for cfg in args.configs.split(","):
            for ds, batch in batches.items():
                model = entry.make(cfg, ds)
                opt = torch.optim.Adam(model.parameters(), lr=1e-4)
                model.train()
                t_step = median_time(train_step_fn(model, batch, opt), args.train_reps)
                model.eval()
                s = sample_seconds(model, spec_from_batch(batch), args.sample_steps, **entry.sample_kwargs)
                per_1000 = s / args.sample_steps * 1000
                n_cr = batch.num_atoms.numel()
                print(f"{name:8s} {cfg:10s} {count_parameters(model) / 1e6:7.2f}M {ds:8s} {1 / t_step:13.2f} "
                      f"{n_cr / t_step:13.1f} {n_cr / per_1000:28.3f} {entry.nfe_per_step:8d}", flush=True)
        if entry.extras is not None and not args.no_extras:
            model = entry.make("small", "perov_5")
            batch = batches.get("perov_5", next(iter(batches.values())))
            print(f"\n{name}: before -> after (small config, {batch.num_atoms.numel()} crystals of "
                  f"{'perov_5' if 'perov_5' in batches else next(iter(batches))}), seconds")
            for label, before, after in entry.extras(model, batch, args):
                print(f"  {label:70s} {before:8.4f} -> {after:8.4f}  ({before / after:5.2f}x)", flush=True)
            print()



# ---------------------------------------------------------------------------------------------- KLDM (nbs/33_kldm.ipynb)
def make_kldm(config_name, dataset, batch=None):
    "KLDM for CSP; the lattice statistics are fitted on the benchmark batch itself (only their shapes matter for speed)."
    from crystal_diffusion_book.kldm import KLDM, KLDMConfig
    net = {"small": dict(hidden_dim=128, num_layers=4, num_freqs=32),
           "reference": {}}[config_name]
    model = KLDM(KLDMConfig.make("csp", network=net))
    data = list(load_dataset(dataset, SPLITS[dataset], limit=64, progress=False))
    return model.fit_lattice_stats(data)


def kldm_extras(model, batch, args):
    "Before/after rows: ν(t_f τ) by quadrature for every crystal in every loss call vs the table; EM/ODE vs PC."
    from crystal_diffusion_book.tdm_score import nu
    from crystal_diffusion_book.data import collate as _collate
    batch = _collate(batch.to_data_list(), self_loops=False)
    rows = []
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = train_step_fn(model, batch, opt)
    table = model.nu_lookup
    model.nu_lookup = lambda tau: nu(model.config.t_f * tau)
    t_quad = median_time(step, args.train_reps)
    del model.nu_lookup
    rows.append(("train step: ν(t_f τ) by quadrature per crystal -> table lookup", t_quad, median_time(step, args.train_reps)))
    spec = spec_from_batch(batch)
    n = args.sample_steps
    rows.append((f"sampler, {n} steps: PC (2 NFE/step) -> EM (1 NFE/step)", sample_seconds(model, spec, n, method="pc"),
                 sample_seconds(model, spec, n, method="em")))
    return rows


MODELS["kldm"] = ModelEntry(make=make_kldm, sample_kwargs=dict(method="pc"), nfe_per_step=2, extras=kldm_extras)

if __name__ == "__main__":
    main()
