"""The trainer: presets, the batch order, checkpoints (atomic, damaged files), a SIGKILLed run resumed bit for bit,
and two-process DDP with gloo on the CPU."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from crystal_diffusion_book.train import (CheckpointError, EpochBatchSampler, TrainConfig, load_checkpoint, preset,
                                          save_checkpoint, train)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import train_worker  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_presets_carry_the_published_settings():
    d = preset("diffcsp", "perov_5")
    assert (d.epochs, d.batch_size, d.optimizer, d.lr, d.grad_clip, d.grad_clip_mode) == (3000, 1024, "adam", 1e-3, 0.5, "value")
    assert (d.scheduler, d.plateau_monitor, d.plateau_factor, d.plateau_patience, d.plateau_min_lr, d.ema_decay) == \
        ("plateau", "val_loss", 0.6, 30, 1e-4, None)
    t = preset("tgdmat")
    assert (t.epochs, t.batch_size, t.grad_clip, t.plateau_monitor, t.ema_decay) == (500, 512, 1.0, "train_loss", None)
    k = preset("kldm")
    assert (k.optimizer, k.amsgrad, k.weight_decay, k.scheduler, k.grad_clip, k.ema_decay, k.ema_start_epoch, k.batch_size) == \
        ("adamw", True, 1e-12, "none", None, 0.999, 500, 256)
    with pytest.raises(ValueError, match="reference"):
        preset("cdvae")
    with pytest.raises(ValueError, match="grad_clip_mode"):
        TrainConfig(grad_clip_mode="both")


def test_sampler_splits_global_batches_and_resumes():
    single = EpochBatchSampler(50, 8, seed=4)
    ranks = [EpochBatchSampler(50, 8, seed=4, rank=r, world_size=2) for r in range(2)]
    for e in (0, 7):
        for s in [single, *ranks]: s.set_epoch(e)
        for g, a, b in zip(single, *ranks):
            assert sorted(g) == sorted(a + b) and len(a) == len(b)
    single.set_epoch(7, start=3)
    assert list(single) == EpochBatchSampler(50, 8, seed=4).global_batches(7)[3:]
    assert single.global_batches(0) != single.global_batches(1)      # reshuffled every epoch
    with pytest.raises(ValueError, match="multiple"):
        EpochBatchSampler(50, 9, world_size=2)


def test_damaged_checkpoint_is_named_and_previous_survives(tmp_path):
    save_checkpoint({"a": torch.zeros(3)}, tmp_path / "last.pt")
    good = {"format": 1, "kind": "crystal_diffusion_book.train", "version": "x", "model": {}, "optimizer": {},
            "scheduler": None, "ema": None, "rng": [], "epoch": 1, "batch_in_epoch": 0, "step": 5, "train_config": {}}
    save_checkpoint(good, tmp_path / "last.pt")       # the first file becomes prev.pt
    save_checkpoint({**good, "step": 6}, tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "prev.pt")["step"] == 5
    raw = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(raw[:len(raw) - 100])   # truncated
    with pytest.raises(CheckpointError, match=r"last\.pt.*prev\.pt"):
        load_checkpoint(tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "prev.pt")["step"] == 5
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    assert not list(tmp_path.glob(".*tmp*"))             # no temporary files left behind


def test_sigkill_then_resume_is_bit_exact(tmp_path):
    # reference: the same run, uninterrupted, in this process
    model, data, cfg = train_worker.kill_setup()
    train(model, data, None, cfg, tmp_path / "ref")
    torch.use_deterministic_algorithms(False)
    n_steps = 5 * 6
    # the killed run: a child process (0.5 s per step), SIGKILLed as soon as step 5 is logged: its last checkpoint is
    # then the step checkpoint of step 4, in the middle of epoch 0, and step 5 is work the resume must redo
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(HERE / "train_worker.py"), "kill", str(run)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0, log = time.time(), run / "steps.csv"
    while not (log.exists() and len(log.read_text().splitlines()) >= 1 + 5):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() - t0 < 240, "the child logged no steps"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ck = load_checkpoint(run / "last.pt")
    logged = pd.read_csv(run / "steps.csv")
    assert 0 < ck["step"] < n_steps and ck["batch_in_epoch"] > 0, f"checkpoint at step {ck['step']} is not mid-epoch"
    assert len(logged) > ck["step"], "the kill must come after steps that no checkpoint holds"
    print(f"killed at checkpoint step {ck['step']} (epoch {ck['epoch']}, batch {ck['batch_in_epoch']}); "
          f"{len(logged)} steps logged before the kill")
    # resume in this process, from a model with different initial weights
    resumed = train_worker.tiny_diffcsp(seed=123)
    res = train(resumed, data, None, cfg, run, resume=True)
    torch.use_deterministic_algorithms(False)
    assert res["step"] == n_steps
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs after resume"
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(run / "last.pt")
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ref_log, res_log = pd.read_csv(tmp_path / "ref" / "steps.csv"), pd.read_csv(run / "steps.csv")
    assert list(res_log.step) == list(range(1, n_steps + 1))      # rows of the killed tail were dropped
    assert (ref_log.loss.values == res_log.loss.values).all()


def test_two_process_ddp_matches_single_process(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "train_worker.py"), "ddp", str(out)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    # 1. both processes hold identical weights (bit for bit), for the test model and for DiffCSP
    for name in ("tiny", "diffcsp"):
        w0, w1 = (torch.load(out / f"{name}_rank{i}.pt", weights_only=True) for i in range(2))
        assert all(torch.equal(w0[k], w1[k]) for k in w0), f"{name}: ranks disagree"
    # 2. the loss and the weights match one process with the same global batch. The test model's loss is a mean
    #    over crystals and each rank holds 8 of the 16, so the average of the rank gradients IS the gradient of the
    #    global mean; only float64 rounding (different summation order) separates the runs.
    model, tr, va, cfg = ddp_setup = train_worker.ddp_setup()
    train(model, tr, va, cfg, tmp_path / "single")
    torch.use_deterministic_algorithms(False)
    ddp_log, one_log = pd.read_csv(out / "tiny" / "steps.csv"), pd.read_csv(tmp_path / "single" / "steps.csv")
    assert list(ddp_log.step) == list(one_log.step) == list(range(1, 10))
    rel = ((ddp_log.loss - one_log.loss).abs() / one_log.loss.abs()).max()
    w = torch.load(out / "tiny_rank0.pt", weights_only=True)
    dw = max(float((w[k] - v).abs().max()) for k, v in model.state_dict().items())
    print(f"max relative loss difference {rel:.2e}, max weight difference {dw:.2e}")
    assert rel < 1e-12 and dw < 1e-10
    ddp_ep, one_ep = pd.read_csv(out / "tiny" / "epochs.csv"), pd.read_csv(tmp_path / "single" / "epochs.csv")
    assert ((ddp_ep.val_loss - one_ep.val_loss).abs() / one_ep.val_loss).max() < 1e-12
    assert list(ddp_ep.lr) == list(one_ep.lr)                          # the plateau scheduler took the same decisions


def _same_batch(a, b):
    assert type(a) is type(b) and sorted(a.keys()) == sorted(b.keys()) and a.num_graphs == b.num_graphs
    for k in b.keys():
        x, y = a[k], b[k]
        if torch.is_tensor(y): assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), k
        else: assert x == y, k
    for k in b._slice_dict:
        assert torch.equal(a._slice_dict[k], b._slice_dict[k]), k
        assert (a._inc_dict[k] is None) if b._inc_dict[k] is None else torch.equal(a._inc_dict[k], b._inc_dict[k]), k


@pytest.mark.parametrize("dataset", ["perov_5", "mp_20"])
def test_flat_batches_equal_pyg_collation_in_the_same_order(dataset):
    "Every field of every batch of an epoch, both DDP ranks, store path and generic path, equal to make_loader's."
    from crystal_diffusion_book.data import load_dataset, make_loader
    from crystal_diffusion_book.train import FlatCrystals
    ds = load_dataset(dataset, "val", limit=150, progress=False)
    for flat in (FlatCrystals(ds), FlatCrystals(list(ds))):
        for rank in (0, 1):
            for self_loops in (True, False):
                s = EpochBatchSampler(len(ds), 32, seed=5, rank=rank, world_size=2)
                s.set_epoch(3, 1)
                ref = list(make_loader(ds, sampler=s, self_loops=self_loops))
                ours = [flat.batch(ix, self_loops) for ix in s]
                assert len(ours) == len(ref) == 4
                for a, b in zip(ours, ref): _same_batch(a, b)
    with pytest.raises(ValueError, match="at least one"):
        FlatCrystals(ds).batch([])


def test_flat_and_pyg_batching_train_to_the_same_numbers(tmp_path, one_thread):
    "Same losses, gradient norms and final weights with batching='flat' and 'pyg' (validation loss included)."
    from crystal_diffusion_book.data import synthetic_dataset
    from crystal_diffusion_book.diffcsp import DiffCSP, DiffCSPConfig
    data = synthetic_dataset(48, seed=1)
    runs = {}
    for mode in ("flat", "pyg"):
        torch.manual_seed(0)
        m = DiffCSP(DiffCSPConfig.make(network=dict(hidden_dim=16, num_layers=1, num_freqs=4, time_dim=8)))
        cfg = preset("diffcsp", epochs=2, batch_size=16, seed=0, threads=1, progress=False, tensorboard=False, batching=mode)
        train(m, data[:32], data[32:], cfg, tmp_path / mode)
        runs[mode] = (pd.read_csv(tmp_path / mode / "steps.csv"), pd.read_csv(tmp_path / mode / "epochs.csv"), m.state_dict())
    (s1, e1, w1), (s2, e2, w2) = runs["flat"], runs["pyg"]
    assert len(s1) == 4 and s1[["loss", "grad_norm"]].equals(s2[["loss", "grad_norm"]])
    assert e1[["train_loss", "val_loss"]].equals(e2[["train_loss", "val_loss"]])
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    with pytest.raises(ValueError, match="batching"):
        TrainConfig(batching="dense")


def test_default_threads_rule(monkeypatch):
    from crystal_diffusion_book.train import default_threads
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert default_threads() == 4 and default_threads(jobs=8) == 2 and default_threads(cap=16) == 16
    monkeypatch.setattr(os, "getloadavg", lambda: (15.0, 0.0, 0.0))
    assert default_threads() == 1
