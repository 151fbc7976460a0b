"""Benchmark: CSP match rate over whole test splits, ours (1 and 2 processes) beside a plain serial loop.

Each test crystal is compared with a copy of itself whose Cartesian coordinates carry Gaussian noise
(sigma in Å) and whose sites are shuffled, so the answer is known and about the same work is done as
for model samples. The reference is the loop the published evaluation scripts run: one
`StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10).get_rms_dist(pred, gt)` call per pair, serially.
Ours is `crystal_diffusion_book.metrics.csp_metrics` with the ungated protocol (the same decisions),
with 1 and with 2 worker processes. The three must agree pair by pair; the script exits 1 otherwise.

    CDB_DATA_MIRROR=/work/shared/data .venv/bin/python bench/bench_match_rate.py            # full splits
    CDB_DATA_MIRROR=/work/shared/data .venv/bin/python bench/bench_match_rate.py --limit 200 # a quick look
"""
import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["perov_5", "mp_20"])
    ap.add_argument("--limit", type=int, default=None, help="first N test crystals only (default: all)")
    ap.add_argument("--sigma", type=float, default=0.1, help="Cartesian noise of the copies, Å")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--chunksize", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from pymatgen.analysis.structure_matcher import StructureMatcher
    from crystal_diffusion_book.data import load_structures
    from crystal_diffusion_book.metrics import csp_metrics, perturb_structure, shuffle_sites

    print(f"# bench_match_rate: python {platform.python_version()}, {os.cpu_count()} CPUs visible, "
          f"torch threads {torch.get_num_threads()} in the parent, 1 per worker; sigma = {args.sigma} Å; "
          f"chunksize {args.chunksize}; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    rows, ok = [], True
    for ds in args.datasets:
        gts = load_structures(ds, "test", limit=args.limit, progress=False)
        rng = np.random.default_rng(args.seed)
        preds = [shuffle_sites(perturb_structure(g, args.sigma, rng), rng) for g in gts]
        n = len(gts)

        matcher = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)
        t0 = time.perf_counter()
        ref = np.full(n, np.nan)
        for i, (p, g) in enumerate(zip(preds, gts)):
            r = matcher.get_rms_dist(p, g)
            if r is not None:
                ref[i] = r[0]
        t_ref = time.perf_counter() - t0
        m = np.isfinite(ref)
        rows.append((ds, n, "serial StructureMatcher loop (reference)", 1, m.mean(), ref[m].mean(), t_ref))
        print(rows[-1], flush=True)

        for p in args.procs:
            res = csp_metrics(preds, gts, "ungated", n_procs=p, chunksize=args.chunksize)
            same = np.array_equal(np.isfinite(res.rms), m) and np.allclose(res.rms[m], ref[m], atol=1e-10, rtol=0)
            ok &= same
            rows.append((ds, n, f"csp_metrics, {p} process{'es' if p > 1 else ''}", p, res.match_rate, res.rmse, res.seconds))
            print(rows[-1], "agrees pair by pair:", same, flush=True)

    print("\n| dataset | pairs | method | processes | match rate | RMSE | seconds | pairs/s | speed-up vs reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    ref_t = {r[0]: r[6] for r in rows if r[3] == 1 and "reference" in r[2]}
    for ds, n, name, p, mr, rmse, t in rows:
        print(f"| {ds} | {n} | {name} | {p} | {100 * mr:.2f} % | {rmse:.4f} | {t:.1f} | {n / t:.0f} | {ref_t[ds] / t:.2f}× |")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}; all runs agree pair by pair: {ok}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
