"""Time loading MP-20 test (9046 crystals): cold (parse, serial and parallel) and warm (processed cache).

Run: CDB_DATA_MIRROR=/work/shared/data .venv/bin/python bench/bench_data_load.py [--dataset mp_20 --split test]
Prints the thread/process counts with the timings. Uses a fresh temporary cache folder, so the raw
file is first copied (and decompressed) from the mirror; that step is timed separately.
"""
import argparse, os, resource, tempfile, time

import torch

from crystal_diffusion_book.data import fetch, load_dataset, _n_jobs


def _cpu():
    "CPU seconds used by this process and its finished child processes."
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mp_20")
    ap.add_argument("--split", default="test")
    ap.add_argument("--serial", action="store_true", help="also time n_jobs=1")
    a = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="cdb-bench-")
    print(f"torch threads {torch.get_num_threads()}, cores available {_n_jobs(None)}, cache {cache}")
    t = time.perf_counter(); fetch(a.dataset, a.split, cache_dir=cache, download=False)
    print(f"fetch from mirror (copy + gunzip + sha256): {time.perf_counter() - t:.2f} s")
    runs = [("cold, serial (n_jobs=1)", dict(n_jobs=1, use_cache=False))] if a.serial else []
    runs += [(f"cold, parallel (n_jobs={_n_jobs(None)})", dict(n_jobs=None)),
             ("warm (processed cache)", dict(n_jobs=None))]
    for label, kw in runs:
        t, c = time.perf_counter(), _cpu()
        ds = load_dataset(a.dataset, a.split, cache_dir=cache, download=False, progress=False, **kw)
        print(f"{label}: wall {time.perf_counter() - t:.2f} s, CPU (this process + workers) {_cpu() - c:.1f} s, "
              f"{len(ds)} crystals; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
