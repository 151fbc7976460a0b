"""Time robocrys descriptions + short prompts (`text.describe_split`) with 1 and 2 worker processes on the
first N crystals of the Perov-5 and MP-20 test splits, with chapter 60's speed-ups off (robocrys and pymatgen as
installed) and on, side by side; check that both write the same descriptions; extrapolate to whole splits.

    CDB_DATA_MIRROR=/work/shared/data .venv/bin/python bench/bench_text.py --n 16

The cache goes to a fresh temporary folder, so every crystal is described. The extrapolation assumes the
time per crystal of the sample holds for the whole split (MP-20's larger cells take longer on average).
CPU seconds per crystal (this process plus its reaped workers) do not depend on how loaded the machine is;
an unloaded machine with k free cores needs about cpu_s/crystal * rows / k seconds for a split."""
import argparse
import os
import resource
import tempfile
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.simplefilter("ignore")

import torch

from crystal_diffusion_book import data, text


def split_rows(dataset):
    "Rows of train, val and test as the data registry records them."
    return {sp: data.REGISTRY.variants(dataset, sp)[0].rows for sp in ("train", "val", "test")}


def cpu_seconds():
    "CPU seconds used by this process and its reaped children (the worker processes)."
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16, help="crystals per dataset and setting")
    ap.add_argument("--datasets", default="perov_5,mp_20")
    ap.add_argument("--jobs", default="1,2")
    ap.add_argument("--speedups", default="off,on", help="text.set_robocrys_speedups settings to time")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter(); text._robocrys(); t_import = time.perf_counter() - t0
    print(f"cores visible: {os.cpu_count()}, torch threads 1, load average {os.getloadavg()}, "
          f"robocrys import {t_import:.1f} s")
    print("dataset  speedups n_jobs  crystals  wall_s  s/crystal  cpu_s/crystal  failures  mean_atoms  | hours at this wall rate: train val test")
    for ds in args.datasets.split(","):
        rows = split_rows(ds)
        data.load_dataset(ds, "test", limit=args.n, progress=False)  # parse outside the timing
        structures = data.load_structures(ds, "test", limit=args.n, progress=False)   # the crystals described below
        natoms = sum(len(s) for s in structures) / len(structures)
        written = {}
        for sp_on in [x.strip() == "on" for x in args.speedups.split(",")]:
            text.set_robocrys_speedups(sp_on)          # worker processes are forked after this and inherit it
            for j in map(int, args.jobs.split(",")):
                with tempfile.TemporaryDirectory() as tmp:
                    t0, c0 = time.perf_counter(), cpu_seconds()
                    df = text.describe_split(ds, "test", limit=args.n, n_jobs=j, cache_dir=tmp, progress=False)
                    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
                written.setdefault(sp_on, list(df["long"]))
                per = wall / len(df)
                hours = " ".join(f"{per * rows[sp] / 3600:6.1f}" for sp in ("train", "val", "test"))
                print(f"{ds:8s} {'on' if sp_on else 'off':8s} {j:6d} {len(df):9d} {wall:7.1f} {per:10.2f} {cpu / len(df):14.2f} "
                      f"{int(df['long'].isna().sum()):9d} {natoms:11.1f}  | {hours}   (load avg {os.getloadavg()[0]:.1f})", flush=True)
        if len(written) == 2:
            same = written[True] == written[False]
            print(f"{ds}: descriptions with and without the speed-ups {'identical' if same else 'DIFFER'}", flush=True)
            if not same: raise SystemExit(f"{ds}: the speed-ups changed a description")
        text.set_robocrys_speedups(True)


if __name__ == "__main__":
    main()
