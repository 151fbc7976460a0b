"Tests of the public API of crystal_diffusion_book.wrapped_normal: normalisation, periodicity, scores, bounds."
import math

import numpy as np
import pytest
import torch

from crystal_diffusion_book import wrapped_normal as W

DTYPES = [torch.float32, torch.float64]


def reference_log_prob(x, sigma, period=1.0, n=60):
    "Direct float64 image sum with many images, in log-sum-exp form (independent of the package code)."
    x = np.asarray(x, dtype=np.float64)
    k = np.arange(-n, n + 1)
    z = -((x[..., None] + k * period) ** 2) / (2 * sigma ** 2)
    m = z.max(-1, keepdims=True)
    return (m[..., 0] + np.log(np.exp(z - m).sum(-1))) - math.log(sigma * math.sqrt(2 * math.pi))


@pytest.mark.parametrize("sigma", [0.01, 0.1, 0.3, 0.45, 1.0, 3.0])
@pytest.mark.parametrize("period", [1.0, 2 * math.pi])
def test_integrates_to_one(sigma, period):
    n = 4096                                           # periodic trapezoid: spectrally accurate
    x = (torch.arange(n, dtype=torch.float64) / n - 0.5) * period
    total = torch.exp(W.wn_log_prob(x, sigma * period, period)).sum().item() * period / n
    assert abs(total - 1) < 1e-12


@pytest.mark.parametrize("sigma", [0.003, 0.05, 0.2, 0.39, 0.41, 0.7, 2.0])
def test_log_prob_matches_direct_image_sum(sigma):
    x = np.linspace(-0.5, 0.5, 101)
    ours = W.wn_log_prob(torch.tensor(x), sigma).numpy()
    ref = reference_log_prob(x, sigma, n=60 if sigma < 1 else 200)
    assert np.abs(ours - ref).max() < 1e-12 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_periodic_and_even(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1000, generator=g, dtype=dtype) - 0.5
    for sigma in (0.02, 0.3, 1.5):
        s = torch.tensor(sigma, dtype=dtype)
        base = W.wn_score(x, s)
        shifted = W.wn_score(x + 3.0, s)
        # x + 3 is rounded by up to ulp(4)/2; the score's slope is s' = -1/sigma^2 + Var(image shift)/sigma^4,
        # at most 1/sigma^2 + 1/(4 sigma^4) in size (the shift's variance is at most (P/2)^2)
        slope = 1 / sigma ** 2 + 1 / (4 * sigma ** 4)
        ulp = 4 * torch.finfo(dtype).eps
        assert (base - shifted).abs().max().item() < 4 * ulp * slope + 64 * torch.finfo(dtype).eps / sigma
        assert (W.wn_score(-x, s) + base).abs().max().item() < 64 * torch.finfo(dtype).eps * slope * 0.5


@pytest.mark.parametrize("sigma", [0.005, 0.08, 0.35, 0.5, 1.2])
def test_score_is_gradient_of_log_prob(sigma):
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(500, generator=g, dtype=torch.float64) - 0.5).requires_grad_(True)
    (grad,) = torch.autograd.grad(W.wn_log_prob(x, sigma).sum(), x)
    score = W.wn_score(x.detach(), sigma)
    assert (grad - score).abs().max().item() < 1e-10 / sigma ** 2
    h = 1e-5 * sigma                                   # central difference: error h^2 |f'''| / 6 + eps/h
    fd = (W.wn_log_prob(x.detach() + h, sigma) - W.wn_log_prob(x.detach() - h, sigma)) / (2 * h)
    assert (fd - score).abs().max().item() < 1e-6 / sigma


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_for_extreme_inputs_and_matches_float64(dtype):
    x = torch.linspace(-100, 100, 20_001, dtype=torch.float64)
    for sigma in (1e-4, 1e-3, 0.01, 0.5, 10.0):
        lp = W.wn_log_prob(x.to(dtype), sigma)
        sc = W.wn_score(x.to(dtype), sigma)
        assert lp.dtype == dtype and sc.dtype == dtype
        assert bool(torch.isfinite(lp).all()) and bool(torch.isfinite(sc).all())
    # the naive sum fails where ours does not
    naive = W.wn_score_naive(torch.tensor([0.3], dtype=dtype), 1e-3)
    assert not bool(torch.isfinite(naive).all())


def test_broadcasting_and_python_floats():
    x = torch.linspace(-0.5, 0.5, 7, dtype=torch.float64)
    sig = torch.tensor([[0.01], [0.2], [0.6], [2.0]], dtype=torch.float64)   # images and Fourier mixed
    out = W.wn_score(x, sig)
    assert out.shape == (4, 7)
    for i in range(4):
        assert torch.allclose(out[i], W.wn_score(x, sig[i, 0].item()), rtol=1e-12, atol=1e-12)
    assert isinstance(W.wn_log_prob(0.1, 0.2), torch.Tensor)
    assert W.wn_score_norm(torch.tensor([0.1, 0.2])).shape == (2,)
    assert W.wn_score_norm(torch.tensor([0.1, 0.2])).dtype == torch.float32


def test_score_norm_limits_and_monte_carlo():
    s = torch.tensor([1e-4, 1e-3, 0.01], dtype=torch.float64)
    assert torch.allclose(W.wn_score_norm(s) * s ** 2, torch.ones(3, dtype=torch.float64), rtol=1e-12)
    big = torch.tensor([1.0, 1.5], dtype=torch.float64)
    q = torch.exp(-2 * math.pi ** 2 * big ** 2)
    assert torch.allclose(W.wn_score_norm(big), 8 * math.pi ** 2 * q ** 2, rtol=1e-6)
    # 2 pi period: lambda(sigma; P) = lambda(sigma / P; 1) / P^2
    assert torch.allclose(W.wn_score_norm(torch.tensor(0.3 * 2 * math.pi, dtype=torch.float64), 2 * math.pi),
                          W.wn_score_norm(torch.tensor(0.3, dtype=torch.float64)) / (2 * math.pi) ** 2,
                          rtol=1e-12)
    sig = torch.tensor([0.005, 0.1, 0.3, 0.5], dtype=torch.float64)
    est, se = W.wn_score_norm_mc(sig, 40_000, torch.Generator().manual_seed(2))
    z = ((est - W.wn_score_norm(sig)) / se).abs()
    assert bool((z < 5).all()), z


def test_truncation_bounds_hold():
    x = torch.linspace(-0.5, 0.5, 1001, dtype=torch.float64)
    for sigma in (0.05, 0.2, 0.35, 0.5, 0.8):
        ref = torch.tensor(reference_log_prob(x.numpy(), sigma, n=80))
        for tol in (1e-3, 1e-8, 1e-14):
            K = int(W.n_images(torch.tensor(sigma, dtype=torch.float64), tol))
            approx = torch.tensor(reference_log_prob(x.numpy(), sigma, n=K))
            assert (ref - approx).abs().max().item() <= tol + 1e-15
    assert int(W.n_images(0.01)) == 1          # at least one image on each side
    assert W.n_images(torch.tensor([0.1, 0.3, 0.5], dtype=torch.float64)).tolist() == [1, 3, 4]


def test_ve_sigma_schedule():
    s = W.ve_sigma_schedule()
    assert s.shape == (1001,) and s[0] == 0
    assert abs(s[1].item() - 0.005) < 1e-15 and abs(s[-1].item() - 0.5) < 1e-15
    r = s[2:] / s[1:-1]
    assert (r - r[0]).abs().max().item() < 1e-12


def test_value_errors_name_the_argument():
    with pytest.raises(ValueError, match="sigma"):
        W.wn_score(0.1, -1.0)
    with pytest.raises(ValueError, match="sigma"):
        W.wn_log_prob(torch.zeros(3), torch.tensor([0.1, 0.0, 0.2]))
    with pytest.raises(ValueError, match="sigma"):
        W.wn_score_norm(0.0)
    with pytest.raises(ValueError, match="period"):
        W.wn_score(0.1, 0.2, period=-1)
    with pytest.raises(ValueError, match="x"):
        W.wn_score(torch.zeros(4), torch.ones(3))
    with pytest.raises(ValueError, match="tol"):
        W.n_images(0.1, tol=2.0)
    with pytest.raises(ValueError, match="n_samples"):
        W.wn_score_norm_mc(0.1, 1)
