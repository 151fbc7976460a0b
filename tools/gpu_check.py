"""GPU check: the training and sampling paths on a CUDA device, in a few minutes, with a JSON record of what ran.

Usage:  make gpu-check            (= .venv/bin/python tools/gpu_check.py --out ci/results/gpu_check.json)
        .venv/bin/python tools/gpu_check.py --device cpu --tiny --out /tmp/gpu_check.json   (CPU dry run of the same code)

On a CUDA machine, for DiffCSP and KLDM at the papers' network size (hidden 512, 6 layers, 128 frequencies):
  1. train steps through `train.train` with bf16 autocast: every logged loss finite, crystals/s;
  2. a sampler run with a torch.Generator on the device (fails if a sampler draws noise on the CPU with it);
  3. checkpoint save and resume on the device: 2 steps, resume to 4, compared with 4 uninterrupted steps;
  4. a one-process DistributedDataParallel step with NCCL (gloo in the CPU dry run).
Each check is recorded (ok, seconds, figures, or the error) and the record is written even when a check fails; the exit
code is 1 if any check failed. Without CUDA (and without --device cpu) it prints that and exits 0.
Crystals: Perov-5 train rows through the data registry when available, else the package's synthetic crystals.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

PAPER = dict(hidden_dim=512, num_layers=6, num_freqs=128, time_dim=256)
TINY = dict(hidden_dim=16, num_layers=1, num_freqs=4, time_dim=8)


def write_record(record: dict, path) -> Path:
    "Write the record as JSON atomically (temporary file, then rename); returns the path."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def make_model(name, net):
    import torch
    torch.manual_seed(0)
    if name == "diffcsp":
        from crystal_diffusion_book.diffcsp import DiffCSP, DiffCSPConfig
        return DiffCSP(DiffCSPConfig.make("csp", network=net, dataset="perov_5"))
    from crystal_diffusion_book.kldm import KLDM, KLDMConfig
    return KLDM(KLDMConfig.make("csp", network=net))


def crystals(n):
    "Perov-5 train crystals through the registry if it can serve them, else synthetic ones; (data, source)."
    try:
        from crystal_diffusion_book.data import load_dataset
        return load_dataset("perov_5", "train", limit=n, progress=False), "perov_5/train"
    except Exception as e:   # no mirror on this machine: the check is about devices, not about the data
        from crystal_diffusion_book.data import synthetic_dataset
        return synthetic_dataset(n, seed=0), f"synthetic ({type(e).__name__})"


def check(record, name, fn):
    "Run one check, store ok/seconds/result or the error under record['checks'][name]."
    t0 = time.perf_counter()
    try:
        out = {"ok": True, **(fn() or {})}
    except Exception as e:
        out = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    record["checks"][name] = out
    print(f"{name:28s} {'ok' if out['ok'] else 'FAILED'} ({out['seconds']:.1f} s) "
          f"{ {k: v for k, v in out.items() if k not in ('ok', 'seconds', 'traceback')} }", flush=True)
    return out


def run_checks(device, tiny, steps, batch, sample_n, sample_steps):
    import pandas as pd
    import torch
    from crystal_diffusion_book.train import preset, train
    net = TINY if tiny else PAPER
    data, source = crystals(max(batch * 2, sample_n))
    rec = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "network": net, "data": source,
           "batch": batch, "steps": steps, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "checks": {}}
    if device.startswith("cuda"):
        rec["gpu"] = torch.cuda.get_device_name(0)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    for name in ("diffcsp", "kldm"):
        cfg = preset(name, epochs=None, max_steps=steps, batch_size=batch, seed=0, device=device, amp=True, progress=False,
                     val_every=0, tensorboard=False, ckpt_every_epochs=10**6)

        def train_steps(name=name, cfg=cfg):
            train(make_model(name, net), data, None, cfg, tmp / f"{name}_train")
            s = pd.read_csv(tmp / f"{name}_train" / "steps.csv")
            if not all(math.isfinite(x) for x in s["loss"]): raise FloatingPointError(f"non-finite loss: {list(s['loss'])}")
            return {"autocast_bf16": device.startswith("cuda"), "final_loss": float(s["loss"].iloc[-1]),
                    "crystals_per_s_median_after_first": float(s["crystals_per_s"].iloc[1:].median() if len(s) > 1 else s["crystals_per_s"].iloc[0])}
        check(rec, f"{name}_train_bf16", train_steps)

        def sampler(name=name):
            from crystal_diffusion_book.data import collate
            model = make_model(name, net).to(device)
            if not model.data_fitted: model.fit_data(data)
            gen = torch.Generator(device=device).manual_seed(0)
            t0 = time.perf_counter()
            out = model.sample(collate([data[i] for i in range(sample_n)]), n_steps=sample_steps, generator=gen)
            return {"n": sample_n, "n_steps": sample_steps, "built": sum(s is not None for s in out),
                    "crystals_per_s": sample_n / (time.perf_counter() - t0), "generator_device": str(gen.device)}
        check(rec, f"{name}_sample_device_generator", sampler)

        def resume(name=name, cfg=cfg):
            d = tmp / f"{name}_resume"
            full = make_model(name, net); train(full, data, None, replace(cfg, max_steps=4), d / "full")
            part = make_model(name, net); train(part, data, None, replace(cfg, max_steps=2), d / "part")
            res = train(make_model(name, net), data, None, replace(cfg, max_steps=4), d / "part", resume=True)
            a, b = full.state_dict(), torch.load(d / "part" / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
            diff = max(float((a[k].cpu().double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
            if res["step"] != 4: raise RuntimeError(f"resumed run ended at step {res['step']}, not 4")
            return {"resumed_to_step": res["step"], "max_weight_diff_vs_uninterrupted": diff}
        check(rec, f"{name}_checkpoint_resume", resume)

    def ddp():
        import torch.distributed as dist
        from torch import nn
        from crystal_diffusion_book.data import collate
        from crystal_diffusion_book.train import LossModule
        backend = "nccl" if device.startswith("cuda") else "gloo"
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
        dist.init_process_group(backend, rank=0, world_size=1)
        try:
            model = make_model("diffcsp", net).to(device)
            dev = torch.device(device)
            m = nn.parallel.DistributedDataParallel(LossModule(model), device_ids=[dev.index or 0] if dev.type == "cuda" else None)
            loss = m(collate([data[i] for i in range(8)]).to(device))["loss"]
            loss.backward()
            v = torch.ones(1, device=device); dist.all_reduce(v)
            return {"backend": backend, "loss": float(loss.detach()), "all_reduce": float(v)}
        finally:
            dist.destroy_process_group()
    check(rec, "ddp_one_process", ddp)
    rec["ok"] = all(c["ok"] for c in rec["checks"].values())
    return rec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run of the same code)")
    p.add_argument("--tiny", action="store_true", help="tiny networks (CPU dry run) instead of the papers' size")
    p.add_argument("--steps", type=int, default=10, help="train steps per model")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--sample-n", type=int, default=64)
    p.add_argument("--sample-steps", type=int, default=100)
    p.add_argument("--out", default="ci/results/gpu_check.json")
    a = p.parse_args(argv)
    import torch
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing to check, exiting 0")
        return 0
    if a.device not in ("cpu",) and not a.device.startswith("cuda"):
        print(f"gpu-check: --device must be cuda, cuda:N or cpu, got {a.device!r}", file=sys.stderr)
        return 2
    rec = run_checks(a.device, a.tiny, a.steps, a.batch, a.sample_n, a.sample_steps)
    print(f"record written to {write_record(rec, a.out)}; {'all checks passed' if rec['ok'] else 'SOME CHECKS FAILED'}")
    return 0 if rec["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
