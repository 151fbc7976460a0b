"""What one training step costs against atoms per cell: CPU seconds and counted FLOPs per crystal (chapter 73's cost model).

Usage:
    .venv/bin/python bench/bench_size_cost.py [--out ci/results/cost_per_size.json] [--reps 3]

For DiffCSP and KLDM, at the cpu-preset network and at the reference network (12.3 M / 14.9 M parameters), and for
crystals of N atoms (synthetic cubic cells of random atoms: a training step's cost depends on the graph's shape, not on
the chemistry), one bare training step (loss, backward, Adam) on a batch of B crystals, B chosen so a batch holds
about the same number of edges at every N (fully connected graphs: N^2 edges per crystal, self-loops for DiffCSP):
  * CPU seconds per crystal: `time.process_time` of the step / B, the median over --reps steps after one warm-up, one
    torch thread. CPU time, not wall time, so other jobs on the machine inflate it less (they still share caches and
    memory bandwidth: the load average is recorded at the start and the end);
  * FLOPs per crystal: `torch.utils.flop_counter.FlopCounterMode` over one step / B (matrix products only; gathers,
    scatters and elementwise work are not counted: they are why seconds per FLOP differs between sizes).
The JSON record holds one row per (model, size, N). The same command in one run prints both models and sizes side by
side; chapter 73 fits seconds(N) and FLOPs(N) from it and prices each dataset's reference recipe.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import make_model   # noqa: E402

from crystal_diffusion_book.data import collate, structure_to_data   # noqa: E402

GRID = {"cpu": [4, 8, 12, 16, 20, 24, 32, 40, 52], "reference": [5, 12, 20, 36, 52]}
EDGES_PER_BATCH = {"cpu": 32768, "reference": 8192}   # edges per step (B = this // N^2, clamped to [1, 256])


def synthetic_batch(n_atoms, n_crystals, seed, self_loops):
    "n_crystals random cubic cells of n_atoms atoms each (about 15 A^3 per atom), collated as the trainer does."
    from pymatgen.core import Lattice, Structure
    rng = np.random.default_rng(seed)
    data = []
    for i in range(n_crystals):
        a = (15.0 * n_atoms) ** (1 / 3)
        s = Structure(Lattice.cubic(a), rng.integers(1, 84, n_atoms).tolist(), rng.random((n_atoms, 3)))
        data.append(structure_to_data(s, material_id=f"synthetic-{n_atoms}-{i}"))
    return data, collate(data, self_loops=self_loops)


def measure(name, size, n_atoms, reps):
    torch.manual_seed(0)
    model = make_model(name, size)
    n_params = sum(p.numel() for p in model.parameters())
    b = int(min(256, max(1, EDGES_PER_BATCH[size] // n_atoms ** 2)))
    data, batch = synthetic_batch(n_atoms, b, seed=n_atoms, self_loops=model.config.network.self_loops)
    model.fit_data(data)   # data statistics (KLDM's lattice latent); not part of a step's cost
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(batch)["loss"].backward()
        opt.step()

    step()   # warm-up (allocator, lazy initialisation)
    times = []
    for _ in range(reps):
        c0 = time.process_time()
        step()
        times.append(time.process_time() - c0)
    with FlopCounterMode(display=False) as fc:
        opt.zero_grad(set_to_none=True)
        model.loss(batch)["loss"].backward()
    return {"model": name, "size": size, "n_params": n_params, "n_atoms": n_atoms, "batch": b,
            "edges_per_crystal": n_atoms ** 2 - (0 if model.config.network.self_loops else n_atoms),
            "cpu_s_per_crystal": statistics.median(times) / b, "cpu_s_per_crystal_all": [t / b for t in times],
            "flops_per_crystal": fc.get_total_flops() / b}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("ci/results/cost_per_size.json"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--models", default="diffcsp,kldm")
    p.add_argument("--sizes", default="cpu,reference")
    a = p.parse_args(argv)
    if a.reps < 1: p.error(f"--reps must be positive, got {a.reps}")
    torch.set_num_threads(1)
    rec = {"command": "python bench/bench_size_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "torch": torch.__version__, "threads": 1, "machine": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "load_at_start": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M"),
           "rows": []}
    print(f"torch {torch.__version__}, 1 thread, load {rec['load_at_start']:.2f} at start")
    print(f"{'model':8} {'size':9} {'N':>3} {'B':>4} {'CPU ms/crystal':>15} {'GFLOP/crystal':>14} {'GFLOP/s':>8}")
    for size in a.sizes.split(","):
        for n in GRID[size]:
            for name in a.models.split(","):
                r = measure(name, size, n, a.reps)
                rec["rows"].append(r)
                print(f"{name:8} {size:9} {n:3d} {r['batch']:4d} {1e3 * r['cpu_s_per_crystal']:15.2f} "
                      f"{r['flops_per_crystal'] / 1e9:14.3f} {r['flops_per_crystal'] / r['cpu_s_per_crystal'] / 1e9:8.1f}",
                      flush=True)
    rec["load_at_end"] = os.getloadavg()[0]
    print(f"load {rec['load_at_end']:.2f} at end")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(rec, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
