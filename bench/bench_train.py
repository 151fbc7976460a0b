"""Training throughput of the trainer (`crystal_diffusion_book.train.train`) on Perov-5, CPU: ours beside today's, one run.

Usage:
    CDB_DATA_MIRROR=../shared/data .venv/bin/python bench/bench_train.py [--models diffcsp,kldm] [--threads 1]
        [--batch 256] [--steps 45] [--reps 3] [--size cpu]
    ... bench/bench_train.py --threads-grid [--size cpu|reference] [--steps 10]

Default mode. For each model, `--reps` interleaved repetitions of two whole trainer runs of `--steps` optimiser steps
on the Perov-5 train split (all 11,356 crystals, the model's preset, no validation, one checkpoint at the end), from
the same initial weights and seed:
  * today: `batching="pyg"` (PyG collation of every batch) and today's CSPNet forward (bench/legacy_cspnet.py: unfolded
    layer, host read-backs in every forward);
  * ours: `batching="flat"` (index gathers from the split as flat tensors) and the folded, sync-free forward.
Printed: crystals/s (wall clock) and CPU s per 1000 crystals (time.process_time, all threads of this process), their
medians, the ratio ours/today of each repetition, and the final-step loss of both (the same batches and noise: the
two must agree to float32 rounding, ~1e-7). The load average is printed at the start and end: on a shared machine
only the ratios, measured interleaved, carry over.

--threads-grid: crystals/s of the bare training step (flat batches, loss, backward, Adam) for P processes x T threads,
(P, T) in (1,1) (1,2) (2,1) (2,2), each cell run in fresh processes, cells interleaved over --reps rounds; printed as total
crystals/s and as a ratio to 1x1 measured in the same round.
"""
import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from legacy_cspnet import legacy   # noqa: E402

from crystal_diffusion_book.data import load_dataset   # noqa: E402
from crystal_diffusion_book.train import EpochBatchSampler, FlatCrystals, preset, train   # noqa: E402

SIZES = {"cpu": dict(hidden_dim=128, num_layers=4, num_freqs=32, time_dim=64), "reference": {}}


def make_model(name, size, seed=0):
    torch.manual_seed(seed)
    if name == "diffcsp":
        from crystal_diffusion_book.diffcsp import DiffCSP, DiffCSPConfig
        return DiffCSP(DiffCSPConfig.make("csp", network=SIZES[size], dataset="perov_5"))
    if name == "kldm":
        from crystal_diffusion_book.kldm import KLDM, KLDMConfig
        return KLDM(KLDMConfig.make("csp", network=SIZES[size]))
    raise ValueError(f"unknown model {name!r}")


def load():
    return f"{os.getloadavg()[0]:.2f}"


def run_trainer(name, size, data, cfg, out, today):
    "One whole trainer run; (wall s, CPU s, final loss)."
    model = make_model(name, size)
    w0, c0 = time.perf_counter(), time.process_time()
    with legacy(today):
        train(model, data, None, replace(cfg, batching="pyg" if today else "flat"), out)
    w, c = time.perf_counter() - w0, time.process_time() - c0
    import csv
    with open(Path(out) / "steps.csv") as f:
        last = list(csv.DictReader(f))[-1]
    return w, c, float(last["loss"])


def compare(a):
    data = load_dataset("perov_5", "train", progress=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} cores, load {load()} at start; "
          f"Perov-5 train ({len(data)} crystals), batch {a.batch}, {a.steps} steps per run, {a.reps} interleaved reps, "
          f"size {a.size} {SIZES[a.size] or '(reference)'}")
    for name in a.models.split(","):
        cfg = preset(name, epochs=None, max_steps=a.steps, batch_size=a.batch, seed=0, progress=False, val_every=0,
                     tensorboard=False, threads=a.threads, ckpt_every_epochs=10**6)
        res = {"today": [], "ours": []}
        with tempfile.TemporaryDirectory() as tmp:
            run_trainer(name, a.size, data, replace(cfg, max_steps=2), Path(tmp) / "warm", False)   # warm-up
            for r in range(a.reps):
                for label in (("today", "ours") if r % 2 == 0 else ("ours", "today")):   # alternate who goes first
                    res[label].append(run_trainer(name, a.size, data, cfg, Path(tmp) / f"{label}{r}", label == "today"))
        n_cr = a.steps * a.batch
        for label in ("today", "ours"):
            w = [x[0] for x in res[label]]; c = [x[1] for x in res[label]]
            print(f"{name:8} {label:6} crystals/s wall: {' '.join(f'{n_cr / x:7.0f}' for x in w)}  (median {n_cr / statistics.median(w):7.0f}); "
                  f"CPU s/1000 crystals: median {1000 * statistics.median(c) / n_cr:6.2f}; final loss {res[label][-1][2]:.9g}")
        rw = [t[0] / o[0] for t, o in zip(res["today"], res["ours"])]
        rc = [t[1] / o[1] for t, o in zip(res["today"], res["ours"])]
        dl = max(abs(t[2] - o[2]) / abs(t[2]) for t, o in zip(res["today"], res["ours"]))
        print(f"{name:8} ours/today: wall {' '.join(f'{x:.2f}x' for x in rw)} (median {statistics.median(rw):.2f}x); "
              f"CPU {' '.join(f'{x:.2f}x' for x in rc)} (median {statistics.median(rc):.2f}x); "
              f"final loss relative difference {dl:.1e}; load {load()}", flush=True)


def grid_worker(a):
    "One process of a grid cell: a bare training loop on flat batches; prints its crystals/s."
    torch.set_num_threads(a.worker_threads)
    data = load_dataset("perov_5", "train", limit=4096, progress=False)
    flat, model = FlatCrystals(data), make_model("diffcsp", a.size)
    batches = [flat.batch(b) for b in EpochBatchSampler(len(data), a.batch, seed=0).global_batches(0)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    def step(s):
        opt.zero_grad(set_to_none=True); model.loss(batches[s % len(batches)])["loss"].backward(); opt.step()
    step(0)
    t0 = time.perf_counter()
    for s in range(a.steps): step(s + 1)
    print(a.steps * a.batch / (time.perf_counter() - t0))


def grid(a):
    cells = [(1, 1), (1, 2), (2, 1), (2, 2)]
    print(f"threads x processes, DiffCSP {a.size} network, batch {a.batch}, {a.steps} steps per process; "
          f"{os.cpu_count()} cores, load {load()} at start")
    rows = {c: [] for c in cells}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for r in range(a.reps):
        for P, T in cells:
            cmd = [sys.executable, __file__, "--worker", "--worker-threads", str(T), "--steps", str(a.steps),
                   "--batch", str(a.batch), "--size", a.size]
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(P)]
            rows[(P, T)].append(sum(float(p.communicate()[0].split()[-1]) for p in procs))
        print(f"round {r}: " + "  ".join(f"{P}p x {T}t {rows[(P, T)][-1]:6.0f} ({rows[(P, T)][-1] / rows[(1, 1)][-1]:.2f}x)"
                                         for P, T in cells) + f"; load {load()}", flush=True)
    print("median ratio to 1 process x 1 thread: " + "  ".join(
        f"{P}p x {T}t {statistics.median(x / y for x, y in zip(rows[(P, T)], rows[(1, 1)])):.2f}x" for P, T in cells))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="diffcsp,kldm")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=45)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--size", default="cpu", choices=sorted(SIZES))
    p.add_argument("--threads-grid", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-threads", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker: return grid_worker(a)
    if a.threads: torch.set_num_threads(a.threads)
    return grid(a) if a.threads_grid else compare(a)


if __name__ == "__main__":
    main()
