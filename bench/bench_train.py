"""Training throughput of the trainer (`crystal_diffusion_book.train.train`) on Perov-5, CPU: ours beside today's, one run.

Usage:
    CDB_DATA_MIRROR=../shared/data .venv/bin/python bench/bench_train.py [--models diffcsp,kldm] [--threads 1]
        [--batch 256] [--steps 45] [--reps 3] [--size cpu]
    ... bench/bench_train.py --threads-grid [--size cpu|reference] [--steps 10]
    ... bench/bench_train.py --breakdown [--models diffcsp,kldm]
    ... bench/bench_train.py --compile [--models diffcsp,kldm]

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

--breakdown: where one optimiser step of ours goes (batch gather, loss forward of which the network, backward, the
trainer's gradient norm and clipping, Adam), ms per step over 35 steps after 5 warm-up steps, and the arithmetic rate
of the network's two largest matrix products measured alone (GFLOP/s): how far the step is from what this core can do.

--compile: the bare training step with `TrainConfig.compile`'s torch.compile of the message-passing layers against
eager, same batches: the first steps' seconds (the compilation) and the steady crystals/s over the rest of an epoch.

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


def bare_setup(name, a):
    "A model (lattice statistics fitted), its flat batches of epoch 0 and an Adam optimiser."
    from crystal_diffusion_book.train import _self_loops
    data = load_dataset("perov_5", "train", progress=False)
    model, flat = make_model(name, a.size), FlatCrystals(data)
    if not model.data_fitted: model.fit_data(data)
    idx = EpochBatchSampler(len(data), a.batch, seed=0).global_batches(0)
    return model, flat, idx, _self_loops(model)


def gemm_rate(shape_a, shape_b, reps=30):
    "GFLOP/s of one float32 matrix product of the given shapes, alone (median of `reps`)."
    x, w = torch.randn(*shape_a), torch.randn(*shape_b)
    x @ w
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); x @ w; ts.append(time.perf_counter() - t0)
    return 2 * shape_a[0] * shape_a[1] * shape_b[1] / statistics.median(ts) / 1e9


def breakdown(a):
    "Milliseconds per optimiser step in each stage of ours (flat gather, folded forward)."
    from torch import nn
    from crystal_diffusion_book.train import _grad_norm
    print(f"where a step goes: {a.threads} thread(s), batch {a.batch}, size {a.size}, 35 steps after 5 warm-up; load {load()}")
    for name in a.models.split(","):
        model, flat, idx, loops = bare_setup(name, a)
        net, params = model.net, list(model.parameters())
        opt = torch.optim.Adam(params, lr=1e-3)
        T = dict.fromkeys(("gather", "forward", "network", "backward", "grad norm", "clip", "adam"), 0.0)
        forward = net.forward
        def timed(*args, **kw):
            t0 = time.perf_counter(); out = forward(*args, **kw); T["network"] += time.perf_counter() - t0; return out
        net.forward = timed
        for s, i in enumerate(idx[:40]):
            if s == 5: T = dict.fromkeys(T, 0.0)
            t = [time.perf_counter()]
            b = flat.batch(i, loops); t.append(time.perf_counter())
            loss = model.loss(b)["loss"]; t.append(time.perf_counter())
            opt.zero_grad(set_to_none=True); loss.backward(); t.append(time.perf_counter())
            _grad_norm(params); t.append(time.perf_counter())
            nn.utils.clip_grad_value_(params, 0.5); t.append(time.perf_counter())
            opt.step(); t.append(time.perf_counter())
            for k, (t0, t1) in zip(("gather", "forward", "backward", "grad norm", "clip", "adam"), zip(t, t[1:])): T[k] += t1 - t0
        del net.forward
        total = sum(v for k, v in T.items() if k != "network")
        print(f"{name:8} ms/step: " + "  ".join(f"{k} {1e3 * v / 35:.1f}" for k, v in T.items())
              + f"  | total {1e3 * total / 35:.1f} ({35 * a.batch / total:.0f} crystals/s)", flush=True)
    E, N, H = a.batch * 25, a.batch * 5, SIZES["cpu"]["hidden_dim"] if a.size == "cpu" else 512
    F = 6 * (SIZES["cpu"]["num_freqs"] if a.size == "cpu" else 128)
    print(f"matrix products alone (Perov-5 batch: {E} edges, {N} atoms): Fourier features x W (E,{F})@({F},{H}) "
          f"{gemm_rate((E, F), (F, H)):.0f} GFLOP/s; edge MLP (E,{H})@({H},{H}) {gemm_rate((E, H), (H, H)):.0f} GFLOP/s; "
          f"node MLP (N,{2 * H})@({2 * H},{H}) {gemm_rate((N, 2 * H), (2 * H, H)):.0f} GFLOP/s")


def compiled(a):
    "Eager against torch.compile'd message-passing layers: compile seconds and steady crystals/s, same batches."
    from crystal_diffusion_book.train import _compile_layers
    print(f"torch.compile of the CSPLayers (dynamic shapes) against eager: {a.threads} thread(s), batch {a.batch}, "
          f"size {a.size}, one epoch of Perov-5; load {load()}")
    for name in a.models.split(","):
        res = {}
        for mode in ("eager", "compiled"):
            model, flat, idx, loops = bare_setup(name, a)
            if mode == "compiled": _compile_layers(model)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            batches = [flat.batch(i, loops) for i in idx]
            marks = [time.perf_counter()]
            for s, b in enumerate(batches):
                opt.zero_grad(set_to_none=True); model.loss(b)["loss"].backward(); opt.step()
                if s in (4, len(batches) - 1): marks.append(time.perf_counter())
            res[mode] = (marks[1] - marks[0], (len(batches) - 5) * a.batch / (marks[2] - marks[1]))
            print(f"{name:8} {mode:8} first 5 steps {res[mode][0]:6.1f} s; then {res[mode][1]:5.0f} crystals/s "
                  f"({len(batches) - 5} steps; the last batch is smaller)", flush=True)
        print(f"{name:8} compiled/eager steady rate {res['compiled'][1] / res['eager'][1]:.2f}x; load {load()}", flush=True)


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
    p.add_argument("--breakdown", action="store_true", help="where a step of ours goes")
    p.add_argument("--compile", action="store_true", help="torch.compile'd layers against eager")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-threads", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker: return grid_worker(a)
    if a.threads: torch.set_num_threads(a.threads)
    if a.breakdown: return breakdown(a)
    if a.compile: return compiled(a)
    return grid(a) if a.threads_grid else compare(a)


if __name__ == "__main__":
    main()
