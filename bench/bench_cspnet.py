"""Forward + backward throughput of CSPNet (ours) beside the literal version (naive), in one run.

Usage: CDB_DATA_MIRROR=/work/shared/data .venv/bin/python bench/bench_cspnet.py [--threads N] [--batch 64] [--reps 5]

Ours: `CSPNet.forward` (edges built once per batch by `data.collate`, Fourier features once per call,
first edge layer split into per-atom / per-crystal / per-edge blocks).
Naive: `naive_cspnet_forward` with the same parameters (edges rebuilt every call by a Python loop over
crystals, Fourier features recomputed in every layer, concatenated edge input).
Both run in float32 on the same batch of real validation crystals; the loss is a sum of squared outputs.

Two rates are printed: crystals per wall-clock second, and crystals per CPU-second of this process
(process_time, all threads). On a machine shared with other jobs the wall-clock rate drops with the
load; the CPU-time rate barely moves, and with --threads 1 it is the single-core wall-clock rate of an idle machine.
"""
import argparse
import os
import statistics
import time

import torch

from crystal_diffusion_book.cspnet import CSPNet, count_parameters, kldm_config, naive_cspnet_forward
from crystal_diffusion_book.data import collate, load_dataset

CONFIGS = {"small 128/4/32": dict(hidden_dim=128, num_layers=4, num_freqs=32),
           "reference 512/6/128": dict(hidden_dim=512, num_layers=6, num_freqs=128)}

def step_ours(net, x):
    return net(x["t"], x["types"], x["frac"], x["lattice"], x["index"], x["edge_index"], velocity=x["velocity"])

def step_naive(net, x):
    return naive_cspnet_forward(net, x["t"], x["types"], x["frac"], x["lattice"], x["index"], velocity=x["velocity"])

def time_fb(fn, net, x, reps):
    "Median wall-clock and process-CPU seconds of one forward + backward pass."
    wall, cpu = [], []
    for r in range(reps + 1):                        # the first run is a warm-up
        net.zero_grad(set_to_none=True)
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn(net, x)
        loss = out["coord"].pow(2).sum() + out["lattice"].pow(2).sum()
        loss.backward()
        if r: wall.append(time.perf_counter() - w0); cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--batch", type=int, default=64, help="crystals per batch")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    p.add_argument("--datasets", default="perov_5,mp_20")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--model", default="diffcsp", choices=["diffcsp", "kldm"],
                   help="DiffCSP's network, or KLDM's variant (velocities, 6-D lattice latent, no self-loops)")
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    os.environ.setdefault("CDB_DATA_MIRROR", "/work/shared/data")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {a.batch}, median of {a.reps}, "
          f"float32, CPU, model {a.model}")
    kldm = a.model == "kldm"
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'dataset':8s} {'config':20s} {'params':>10s} {'atoms':>6s} {'edges':>7s} | crystals per wall-s: "
          f"{'ours':>6s} {'naive':>6s} | crystals per CPU-s: {'ours':>6s} {'naive':>6s} {'speed-up':>9s}")
    for ds_name in a.datasets.split(","):
        ds = load_dataset(ds_name, "val", limit=4 * a.batch, progress=False)
        g = torch.Generator().manual_seed(0)
        pick = torch.randperm(len(ds), generator=g)[:a.batch].tolist()
        b = collate([ds[i] for i in pick], self_loops=not kldm)
        x = dict(types=b.atom_types, frac=b.frac_coords.float(), index=b.batch, edge_index=b.edge_index)
        if kldm:   # τ in (0, 1], KLDM's 6-number lattice latent, per-atom velocities
            x.update(t=torch.rand(b.num_graphs, generator=g), lattice=torch.randn(b.num_graphs, 6, generator=g),
                     velocity=torch.randn(b.num_nodes, 3, generator=g))
        else:
            x.update(t=torch.randint(1, 1001, (b.num_graphs,), generator=g), lattice=b.lattice.float(), velocity=None)
        for name in a.configs.split(","):
            torch.manual_seed(0)
            net = CSPNet(kldm_config(**CONFIGS[name])) if kldm else CSPNet(**CONFIGS[name])
            w_ours, c_ours = time_fb(step_ours, net, x, a.reps)
            w_naive, c_naive = time_fb(step_naive, net, x, a.reps)
            n = b.num_graphs
            print(f"{ds_name:8s} {name:20s} {count_parameters(net):10,d} {b.num_nodes:6d} {b.edge_index.shape[1]:7d} | "
                  f"{'':20s} {n / w_ours:6.0f} {n / w_naive:6.0f} | {'':19s} {n / c_ours:6.0f} {n / c_naive:6.0f} "
                  f"{c_naive / c_ours:8.2f}x", flush=True)

if __name__ == "__main__":
    main()
