"""Does grouping crystals of similar size into batches speed up an epoch? (MP-20 test, fully connected graphs)

Run: CDB_DATA_MIRROR=/work/shared/data .venv/bin/python bench/bench_size_sampler.py
Compares, in one run, an epoch over the first 3000 MP-20 test crystals of (collate + a small
CSPNet-shaped edge-MLP forward/backward, hidden 64) with
random batches against batches of crystals sorted by size (chunks of a size-sorted, locally shuffled
order, then the batches shuffled). Prints the thread count and the median of 3 epochs each.
"""
import os
import time

import numpy as np
import torch
from torch_geometric.utils import scatter

from crystal_diffusion_book.data import collate, load_dataset


def size_grouped_batches(num_atoms, batch_size, seed):
    "Batches of crystals with similar atom counts (sorted by size with random tie-breaks), in random order."
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(num_atoms)), num_atoms))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def random_batches(n, batch_size, seed):
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


class EdgeMLP(torch.nn.Module):
    "A throwaway layer shaped like one CSPNet message-passing step (not our model)."
    def __init__(self, h=64):
        super().__init__()
        self.emb = torch.nn.Embedding(101, h)
        self.edge = torch.nn.Sequential(torch.nn.Linear(2 * h + 9 + 3, h), torch.nn.SiLU(), torch.nn.Linear(h, h))
        self.node = torch.nn.Sequential(torch.nn.Linear(2 * h, h), torch.nn.SiLU(), torch.nn.Linear(h, 1))

    def forward(self, b):
        x = self.emb(b.atom_types)
        src, dst = b.edge_index
        gram = (b.lattice @ b.lattice.transpose(1, 2)).reshape(-1, 9).float()[b.batch[src]]
        df = (b.frac_coords[dst] - b.frac_coords[src]).float()
        m = self.edge(torch.cat([x[src], x[dst], gram, df], 1))
        x = torch.cat([x, scatter(m, dst, 0, dim_size=x.shape[0], reduce="mean")], 1)
        return self.node(x).sum()


def epoch(ds, batches, model, opt):
    t = time.perf_counter()
    for idx in batches:
        b = collate([ds[int(i)] for i in idx])
        opt.zero_grad(); model(b).backward(); opt.step()
    return time.perf_counter() - t


def main(batch_size=256, n_crystals=3000):
    torch.manual_seed(0)
    ds = load_dataset("mp_20", "test", limit=n_crystals, progress=False, download=False)
    n = ds.store["num_atoms"].numpy()
    model = EdgeMLP(); opt = torch.optim.Adam(model.parameters(), 1e-3)
    print(f"torch threads {torch.get_num_threads()}, {len(ds)} crystals, batch {batch_size}, "
          f"load average {os.getloadavg()[0]:.1f}")
    res = {"random": [], "size-grouped": []}
    for rep in range(3):
        rb, gb = random_batches(len(ds), batch_size, rep), size_grouped_batches(n, batch_size, rep)
        res["random"].append(epoch(ds, rb, model, opt))
        res["size-grouped"].append(epoch(ds, gb, model, opt))
    edges = {k: sum(int((n[i] ** 2).sum()) for i in b) for k, b in [("random", rb), ("size-grouped", gb)]}
    for k, v in res.items():
        print(f"{k:13s}: median epoch {np.median(v):.2f} s (runs {', '.join(f'{x:.2f}' for x in v)}), "
              f"edges per epoch {edges[k]}")


if __name__ == "__main__":
    main()
