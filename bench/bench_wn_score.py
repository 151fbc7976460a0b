"""Benchmark: `wn_score` against the naive 2N+1-image sum (N = 10, as DiffCSP) on 10^6 elements.

Run from the repository root:  .venv/bin/python bench/bench_wn_score.py [--threads 2] [--repeats 5]
Two kinds of input: `sigma*eps` (the unwrapped displacement DiffCSP feeds its score during training)
and `uniform` (points spread over the whole period, as when the score is evaluated at a wrapped
difference, e.g. KLDM's r - mu_r, or at sampling time). For each input, dtype and sigma it prints the
best-of-`repeats` wall time of both, the speed-up, how many of the outputs are NaN/inf, and the largest
error against an independent float64 reference (softmax over 101 images, evaluated at the same
rounded inputs), in units of the largest score magnitude s_max = 1/(2 sigma^2) + 1/sigma.
"""
import argparse, math, platform, time
import torch
from crystal_diffusion_book.wrapped_normal import wn_score, wn_score_naive, n_images, n_fourier


def reference_score(x, sigma, n=50):
    "Independent float64 reference: softmax over 2n+1 images with the maximum subtracted (no underflow)."
    k = torch.arange(-n, n + 1, dtype=torch.float64)
    d = x.double()[:, None] + k                                  # (n_elements, 2n+1)
    w = torch.softmax(-d ** 2 / (2 * sigma ** 2), dim=-1)
    return -(w * d).sum(-1) / sigma ** 2


def best_time(fn, repeats):
    "Best wall time of `repeats` calls of fn() (after one warm-up call), and the last result."
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=1_000_000, help="number of elements")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[1e-4, 0.005, 0.1, 0.5, 2.0])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"n = {args.n:,} elements, N = 10 images each side for the naive sum, best of {args.repeats}")
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(args.n, generator=g, dtype=torch.float64)
    unif = torch.rand(args.n, generator=g, dtype=torch.float64) - 0.5
    hdr = f"{'input':9} {'dtype':8} {'sigma':>7} {'terms':>8} {'ours ms':>8} {'naive ms':>9} {'speed-up':>8} " \
          f"{'ours bad':>8} {'naive bad':>9} {'ours err':>9} {'naive err':>9}"
    print(hdr)
    print("-" * len(hdr))
    for mode in ("sigma*eps", "uniform"):
        for dtype in (torch.float32, torch.float64):
            for sigma in args.sigmas:
                x64 = sigma * eps if mode == "sigma*eps" else unif
                x = x64.to(dtype)
                ref = torch.cat([reference_score(c, sigma) for c in x.split(100_000)])  # at the same (rounded) inputs
                s = torch.tensor(sigma, dtype=dtype)
                t_ours, ours = best_time(lambda: wn_score(x, s), args.repeats)
                t_naive, naive = best_time(lambda: wn_score_naive(x, s, n=10), args.repeats)
                terms = (f"K={int(n_images(s))}" if sigma <= 1 / math.sqrt(2 * math.pi) else f"M={int(n_fourier(s))}")
                bad_o = int((~torch.isfinite(ours)).sum())
                bad_n = int((~torch.isfinite(naive)).sum())
                scale = 0.5 / sigma ** 2 + 1 / sigma                # s_max: the attainable accuracy is eps * s_max
                err_o = ((ours.double() - ref).abs().nan_to_num(nan=math.inf).max() / scale).item()
                err_n = ((naive.double() - ref).abs().nan_to_num(nan=math.inf).max() / scale).item()
                print(f"{mode:9} {str(dtype)[6:]:8} {sigma:7.4g} {terms:>8} {1e3 * t_ours:8.1f} {1e3 * t_naive:9.1f} "
                      f"{t_naive / t_ours:7.1f}x {bad_o:8d} {bad_n:9d} {err_o:9.1e} {err_n:9.1e}")
    print("terms: K = images on each side (2K+1 in all), M = Fourier terms; err: max |score - reference| / s_max, s_max = 1/(2 sigma^2) + 1/sigma")


if __name__ == "__main__":
    main()
