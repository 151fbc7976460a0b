"""Child processes for tests/test_train.py (not a test module itself).

    python tests/train_worker.py kill OUT_DIR        # a slowed-down training run that the test kills with SIGKILL
    torchrun --standalone --nproc_per_node 2 tests/train_worker.py ddp OUT_DIR   # the two-process gloo run

The settings shared with the in-process reference runs of the test live here (`kill_setup`, `ddp_setup`), so the
child and the reference cannot drift apart.
"""
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch_geometric.utils import scatter

from crystal_diffusion_book.data import synthetic_dataset
from crystal_diffusion_book.diffcsp import DiffCSP, DiffCSPConfig
from crystal_diffusion_book.model import CrystalModel
from crystal_diffusion_book.train import preset, train


def tiny_diffcsp(seed=0):
    "DiffCSP at a toy size, float64, with fixed initial weights."
    torch.manual_seed(seed)
    cfg = DiffCSPConfig.make(network=dict(hidden_dim=16, num_layers=2, num_freqs=4, time_dim=8), dataset="perov_5")
    return DiffCSP(cfg).double()


def kill_setup():
    "Model, data and config of the SIGKILL/resume test: 5 epochs of 6 steps, a checkpoint every 4 steps."
    data = synthetic_dataset(n=96, seed=1)
    cfg = preset("diffcsp", epochs=5, batch_size=16, seed=11, threads=1, deterministic=True, progress=False,
                 val_every=0, ckpt_every_steps=4)
    return tiny_diffcsp(), data, cfg


class TinyRegressor(CrystalModel):
    "A deterministic test model: predicts each crystal's log volume per atom; loss = mean over crystals."
    def __init__(self, config=None):
        super().__init__(config)
        self.embed = nn.Embedding(100, 8)
        self.head = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def loss(self, batch):
        h = scatter(self.embed(batch.atom_types - 1), batch.batch, dim=0, reduce="mean")      # (n_crystals, 8)
        pred = self.head(h).squeeze(-1)                                                       # (n_crystals,)
        vol = torch.linalg.det(batch.lattice.reshape(-1, 3, 3).to(pred.dtype)).abs()
        target = torch.log(vol / batch.num_atoms.to(pred.dtype))
        mse = ((pred - target) ** 2).mean()
        return {"mse": mse, "loss": mse}


def ddp_setup():
    "Model, data and config of the DDP equivalence test (global batch 16 = 2 x 8)."
    torch.manual_seed(0)
    model = TinyRegressor().double()
    data = synthetic_dataset(n=64, seed=2)
    cfg = preset("diffcsp", epochs=3, batch_size=16, seed=5, threads=1, deterministic=True, progress=False,
                 lr=1e-2, val_every=1, plateau_patience=1)
    return model, data[:48], data[48:], cfg


def main(mode, out):
    out = Path(out)
    if mode == "kill":
        model, data, cfg = kill_setup()
        slow = model.loss
        def loss(batch):                      # same numbers, slower: leaves time to kill between checkpoints
            time.sleep(0.5)
            return slow(batch)
        model.loss = loss
        train(model, data, None, cfg, out)
    elif mode == "ddp":
        import torch.distributed as dist
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        model, tr, va, cfg = ddp_setup()
        train(model, tr, va, cfg, out / "tiny")
        torch.save(model.state_dict(), out / f"tiny_rank{rank}.pt")
        dmodel = tiny_diffcsp()
        data = synthetic_dataset(n=32, seed=3)
        dcfg = preset("diffcsp", epochs=2, batch_size=8, seed=5, threads=1, progress=False, val_every=0)
        train(dmodel, data, None, dcfg, out / "diffcsp")
        torch.save(dmodel.state_dict(), out / f"diffcsp_rank{rank}.pt")
        dist.destroy_process_group()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
