"Tests of crystal_diffusion_book.tdm_score: training targets, the rebuilt score and the normaliser."
import math

import pytest
import torch
from torch_geometric.utils import scatter

from crystal_diffusion_book.kinetic import sample_tdm, tdm_moments
from crystal_diffusion_book.tdm_score import nu, rebuild_velocity_score, training_target
from crystal_diffusion_book.wrapped_normal import wn_log_prob

P = 2 * math.pi


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_nu_small_and_large_t():
    t = torch.tensor([1e-3, 1e-2], dtype=torch.float64)
    # no wrapping at small t: nu = 1 / sigma_r^2
    assert torch.allclose(nu(t), 1 / tdm_moments(t).r_std ** 2, rtol=1e-8)
    assert nu(torch.tensor(0.5, dtype=torch.float32)).dtype == torch.float32
    big = nu(torch.tensor([2.0, 4.0, 8.0], dtype=torch.float64))
    assert (big[1:] < big[:-1]).all() and (big > 0).all()
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="t "):
            nu(bad)


@pytest.mark.parametrize("t", [1e-3, 0.3, 2.0, 5.0])
def test_direct_target_is_autograd_score(t):
    g = torch.Generator().manual_seed(0)
    a, s_v, k, s_r = tdm_moments(torch.tensor(t, dtype=torch.float64))
    v0 = torch.randn(20, 3, generator=g, dtype=torch.float64)
    v_t = (a * v0 + s_v * torch.randn(20, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    r = k * (v0 + v_t.detach()) + s_r * torch.randn(20, 3, generator=g, dtype=torch.float64) + P
    logp = (-(v_t - a * v0) ** 2 / (2 * s_v ** 2) + wn_log_prob(r - k * (v0 + v_t), s_r, P)).sum()
    auto, = torch.autograd.grad(logp, v_t)
    ours = training_target(v_t.detach(), r, t, v0=v0, parameterization="direct", mean_free=False)
    assert ((ours - auto).abs().max() / auto.abs().max()) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mean_free", [True, False])
def test_rebuilt_simplified_equals_direct_when_v0_is_zero(dtype, mean_free):
    sizes = torch.tensor([2, 5, 3])
    index = torch.repeat_interleave(torch.arange(3), sizes)
    t = torch.tensor([0.05, 0.7, 1.9], dtype=dtype)
    f0 = torch.rand(10, 3, dtype=dtype, generator=torch.Generator().manual_seed(1)) * P - math.pi
    s = sample_tdm(f0, 0.0, t, index=index, mean_free=mean_free, generator=torch.Generator().manual_seed(2))
    y_s = training_target(s.v_t, s.r, t, index=index, mean_free=mean_free)
    y_d = training_target(s.v_t, s.r, t, index=index, parameterization="direct", mean_free=mean_free)
    rebuilt = rebuild_velocity_score(y_s, s.v_t, t, index=index, mean_free=mean_free)
    assert y_s.dtype == dtype and y_d.dtype == dtype and rebuilt.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert ((rebuilt - y_d).abs().max() / y_d.abs().max()) < tol
    direct_out = rebuild_velocity_score(y_d, s.v_t, t, index=index, parameterization="direct", mean_free=mean_free)
    assert torch.allclose(direct_out, y_d, rtol=0, atol=tol * y_d.abs().max().item())   # direct output is used as is (centred)
    if mean_free:
        for y in (y_s, y_d, rebuilt):
            assert scatter(y, index, dim=0, reduce="mean").abs().max() < 100 * torch.finfo(dtype).eps * (1 + y.abs().max())


def test_simplified_target_has_unit_second_moment():
    n = 100_000
    g = torch.Generator().manual_seed(3)
    for t in (0.05, 1.0, 3.0):
        s = sample_tdm(torch.zeros(n, 1, dtype=torch.float64), 0.0, t, mean_free=False, generator=g)
        y2 = training_target(s.v_t, s.r, t, mean_free=False).pow(2)[:, 0]
        assert abs(y2.mean() - 1) < 5 * y2.std() / math.sqrt(n)


def test_denoising_identity_on_discrete_data():
    sites = torch.tensor([-2.0, 0.4, 2.9], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    for t in (0.3, 1.5):
        a, s_v, k, s_r = tdm_moments(torch.tensor(t, dtype=torch.float64))
        V, F = torch.meshgrid(torch.linspace(-2, 2, 15, dtype=torch.float64),
                              torch.linspace(-3, 3, 17, dtype=torch.float64), indexing="ij")
        v = V.reshape(-1, 1).requires_grad_(True)
        f = F.reshape(-1, 1)
        lj = torch.log(weights) + wn_log_prob(f - sites - k * v, s_r, P)                 # (n, J)
        logp = -v[:, 0] ** 2 / (2 * s_v ** 2) + torch.logsumexp(lj, 1)
        exact = torch.autograd.grad(logp.sum(), v)[0][:, 0]
        post = torch.softmax(lj.detach(), 1)
        vd = v.detach()
        for par in ("direct", "simplified"):
            ys = torch.stack([training_target(vd, f - b, t, parameterization=par, mean_free=False)[:, 0] for b in sites], 1)
            mean = (post * ys).sum(1, keepdim=True)
            score = rebuild_velocity_score(mean, vd, t, parameterization=par, mean_free=False)[:, 0]
            assert ((score - exact).abs().max() / exact.abs().max()) < 1e-9, (t, par)


def test_bad_arguments():
    v = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="parameterization"):
        training_target(v, v, 1.0, parameterization="eps")
    with pytest.raises(ValueError, match="v0"):
        training_target(v, v, 1.0, v0=torch.ones(4, 3, dtype=torch.float64), parameterization="simplified")
    with pytest.raises(ValueError, match="t "):
        training_target(v, v, 0.0)
    with pytest.raises(ValueError, match="r "):
        training_target(v, torch.zeros(3, 3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="v_t"):
        training_target(torch.zeros(4), torch.zeros(4), 1.0)
    with pytest.raises(ValueError, match="output"):
        rebuild_velocity_score(torch.zeros(3, 3, dtype=torch.float64), v, 1.0)
    with pytest.raises(ValueError, match="parameterization"):
        rebuild_velocity_score(v, v, 1.0, parameterization="x0")
