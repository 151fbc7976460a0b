"""Training throughput of the trainer (`crystal_diffusion_book.train.train`) on Perov-5, CPU.

Usage:
    CDB_DATA_MIRROR=/work/shared/data .venv/bin/python bench/bench_train.py [--models diffcsp,kldm] [--threads N]
        [--batch 128] [--steps 200] [--limit 2048] [--size cpu]

For each model it trains `--steps` optimiser steps through `train()` on the first `--limit` crystals of the Perov-5
train split (the model's own preset: DiffCSP Adam with clipping by value, KLDM AdamW amsgrad without clipping; no
validation; one checkpoint, at the end: with a small --limit an "epoch" is a few steps, and per-epoch checkpoints
would weigh far more than in a real Perov-5 epoch of ~90-180 steps; the cost of one checkpoint is printed apart),
after a 5-step
warm-up run, and prints:
  * crystals per second (wall clock, time.perf_counter) and CPU seconds per 1000 crystals (time.process_time, the
    sum over all threads of this process: the honest figure on a machine shared with other jobs);
  * the time of one Perov-5 epoch (11,356 crystals), EXTRAPOLATED linearly from the measured steps (the cost of a
    step does not depend on which crystals it holds: Perov-5 crystals all have 5 atoms);
  * beside it, the same number of steps of a bare loop (pre-collated batches, loss, backward, Adam step, nothing
    else), and of the bare loop collating each batch from the dataset (`+collate`), so the trainer's own overhead
    (clipping, gradient norm, logging) and the data pipeline's share are both visible in the same run.
The thread count is printed. Sizes: "cpu" = CSPNet hidden 128, 4 layers, 32 frequencies (the CPU size of
bench_models.py); "reference" = hidden 512, 6 layers, 128 frequencies (the papers').
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from crystal_diffusion_book.data import collate, load_dataset
from crystal_diffusion_book.train import EpochBatchSampler, load_checkpoint, preset, save_checkpoint, train

PEROV5_TRAIN = 11_356
SIZES = {"cpu": dict(hidden_dim=128, num_layers=4, num_freqs=32), "reference": {}}


def make_model(name, size, data):
    model = _make_model(name, size)
    if hasattr(model, "fit_lattice_stats"):       # KLDM standardises its lattice latent with training-set statistics
        model.fit_lattice_stats(list(data))
    return model


def _make_model(name, size):
    if name == "diffcsp":
        from crystal_diffusion_book.diffcsp import DiffCSP, DiffCSPConfig
        return DiffCSP(DiffCSPConfig.make("csp", network=SIZES[size], dataset="perov_5"))
    if name == "kldm":
        from crystal_diffusion_book.kldm import KLDM, KLDMConfig   # the KLDM chapter's module
        return KLDM(KLDMConfig.make("csp", network=SIZES[size]))
    raise ValueError(f"unknown model {name!r}")


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def bare_loop(model, data, batch_size, steps, seed, collate_each_step=False):
    "The same optimiser steps without the trainer: loss, backward, Adam on pre-collated (or freshly collated) batches."
    sampler = EpochBatchSampler(len(data), batch_size, seed)
    idx = sampler.global_batches(0)
    batches = None if collate_each_step else [collate([data[i] for i in b]) for b in idx]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    def run():
        for s in range(steps):
            batch = collate([data[i] for i in idx[s % len(idx)]]) if collate_each_step else batches[s % len(batches)]
            opt.zero_grad(set_to_none=True)
            model.loss(batch)["loss"].backward()
            opt.step()
    return timed(run)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="diffcsp,kldm")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--limit", type=int, default=2048)
    p.add_argument("--size", default="cpu", choices=sorted(SIZES))
    args = p.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    nthreads = torch.get_num_threads()
    data = load_dataset("perov_5", "train", limit=args.limit, progress=False)
    print(f"torch {torch.__version__}, {nthreads} thread(s); Perov-5 train, first {len(data)} crystals; "
          f"batch {args.batch}; {args.steps} timed steps; size {args.size} {SIZES[args.size] or '(reference)'}")
    print(f"{'model':8} {'loop':8} {'steps':>5} {'wall s':>8} {'cryst/s wall':>12} {'CPU s/1000 cryst':>16} "
          f"{'epoch wall (extrap.)':>21} {'epoch CPU (extrap.)':>20}")
    for name in args.models.split(","):
        try:
            model = make_model(name, args.size, data)
        except (ImportError, AttributeError, TypeError) as e:
            print(f"{name:8} skipped: {type(e).__name__}: {e}")
            continue
        n_par = sum(q.numel() for q in model.parameters())
        with tempfile.TemporaryDirectory() as tmp:
            cfg = preset(name, epochs=None, batch_size=args.batch, seed=0, progress=False, val_every=0,
                         tensorboard=False, threads=args.threads, ckpt_every_epochs=10**6)   # one checkpoint, at the end
            from dataclasses import replace
            train(make_model(name, args.size, data), data, None, replace(cfg, max_steps=5), Path(tmp) / "warm")
            wall, cpu = timed(lambda: train(model, data, None, replace(cfg, max_steps=args.steps), Path(tmp) / "run"))
            ck = Path(tmp) / "run" / "last.pt"
            w_ck, c_ck = timed(lambda: save_checkpoint(load_checkpoint(ck), Path(tmp) / "copy" / "last.pt"))
            ck_mb = ck.stat().st_size / 1e6
        n_cr = args.steps * args.batch
        rows = [("train()", wall, cpu)]
        rows.append(("bare", *bare_loop(make_model(name, args.size, data), data, args.batch, args.steps, 0)))
        rows.append(("+collate", *bare_loop(make_model(name, args.size, data), data, args.batch, args.steps, 0, True)))
        for label, w, c in rows:
            print(f"{name:8} {label:8} {args.steps:5d} {w:8.1f} {n_cr / w:12.0f} {1000 * c / n_cr:16.2f} "
                  f"{w / n_cr * PEROV5_TRAIN / 60:17.2f} min {c / n_cr * PEROV5_TRAIN / 60:16.2f} min")
        print(f"{name:8} {n_par / 1e6:.2f} M parameters; trainer overhead vs bare loop: {100 * (wall / rows[1][1] - 1):+.0f} % wall, "
              f"{100 * (cpu / rows[1][2] - 1):+.0f} % CPU; one checkpoint (load + atomic save, "
              f"{ck_mb:.1f} MB): {w_ck:.2f} s wall, {c_ck:.2f} s CPU")


if __name__ == "__main__":
    main()
