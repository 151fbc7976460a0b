"Tests of crystal_diffusion_book.kinetic: the closed-form TDM transition, exact sampling, the EM reference."
import math

import mpmath
import pytest
import torch
from torch_geometric.utils import scatter

from crystal_diffusion_book.kinetic import (
    TDMMoments, circular_moment, em_moments, sample_tdm, simulate_tdm, tdm_joint, tdm_moments,
    terminal_circular_moment,
)

mpmath.mp.dps = 40
P = 2 * math.pi


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _ref(t):
    t = mpmath.mpf(t)
    return [float(x) for x in (mpmath.exp(-t), mpmath.sqrt(-mpmath.expm1(-2 * t)), mpmath.tanh(t / 2),
                               mpmath.sqrt(2 * t - 4 * mpmath.tanh(t / 2)))]


@pytest.mark.parametrize("dtype,max_eps", [(torch.float32, 1.0), (torch.float64, 16.0)])
def test_moments_match_high_precision(dtype, max_eps):
    t = torch.logspace(-7, math.log10(30), 97, dtype=torch.float64).to(dtype)
    got = torch.stack(list(tdm_moments(t)), -1).to(torch.float64)                 # (97, 4)
    assert got.dtype == torch.float64 and tdm_moments(t).r_std.dtype == dtype
    ref = torch.tensor([_ref(float(u)) for u in t.tolist()], dtype=torch.float64)
    rel = ((got - ref).abs() / ref).max() / torch.finfo(dtype).eps
    assert rel <= max_eps, rel


def test_moments_floats_broadcast_and_zero():
    m = tdm_moments(0.0)
    assert isinstance(m, TDMMoments) and m.v_std.dtype == torch.float64
    assert m.v_mean_coef.item() == 1.0 and m.v_std.item() == 0.0 and m.r_mean_coef.item() == 0.0 and m.r_std.item() == 0.0
    m = tdm_moments(torch.rand(4, 1, 3) + 0.1)
    assert all(x.shape == (4, 1, 3) for x in m)
    # small-t limits: kappa ~ t/2, sigma_r^2 ~ t^3/6
    m = tdm_moments(torch.tensor(1e-5, dtype=torch.float64))
    assert abs(m.r_mean_coef.item() / 5e-6 - 1) < 1e-9 and abs(m.r_std.item() ** 2 / (1e-15 / 6) - 1) < 1e-9


@pytest.mark.parametrize("bad", [-1e-3, torch.tensor([0.5, -1.0]), float("nan")])
def test_negative_or_nan_time_raises(bad):
    with pytest.raises(ValueError, match="t "):
        tdm_moments(bad)


def test_joint_is_consistent_with_conditional():
    t = torch.tensor([1e-4, 0.01, 0.3, 1.0, 2.0, 7.0], dtype=torch.float64)
    j, m = tdm_joint(t, v0=0.3), tdm_moments(t)
    assert torch.allclose(j.rv_cov / j.v_var, m.r_mean_coef, rtol=1e-12, atol=0)
    assert torch.allclose(j.r_var - j.rv_cov ** 2 / j.v_var, m.r_std ** 2, rtol=1e-9, atol=1e-30)
    assert torch.allclose(j.r_mean, m.r_mean_coef * (0.3 + j.v_mean), rtol=1e-14, atol=0)
    assert (j.r_var * j.v_var - j.rv_cov ** 2 > 0).all()


def test_em_moments_converge_to_closed_form():
    errs = []
    for h in (4e-3, 2e-3):
        mu1, S1 = em_moments(1.5, round(1.5 / h), v0=-0.8)
        mu2, S2 = em_moments(1.5, round(3.0 / h), v0=-0.8)
        mu, S = 2 * mu2 - mu1, 2 * S2 - S1                                         # Richardson, O(h^2)
        j = tdm_joint(1.5, -0.8)
        exact_mu = torch.stack([j.r_mean, j.v_mean])
        exact_S = torch.stack([torch.stack([j.r_var, j.rv_cov]), torch.stack([j.rv_cov, j.v_var])])
        errs.append(max((mu - exact_mu).abs().max().item(), (S - exact_S).abs().max().item()))
    assert errs[1] < 1e-6 and 3.5 < errs[0] / errs[1] < 4.5


def test_sample_tdm_shapes_wrap_and_noise_relations():
    g = torch.Generator().manual_seed(0)
    f0 = (torch.rand(10, 3, generator=g, dtype=torch.float64) - 0.5) * P
    v0 = torch.randn(10, 3, generator=g, dtype=torch.float64)
    s = sample_tdm(f0, v0, 1.3, mean_free=False, generator=g)
    a, sv, k, sr = tdm_moments(1.3)
    assert all(x.shape == (10, 3) and x.dtype == torch.float64 for x in s)
    assert ((s.f_t >= -math.pi) & (s.f_t < math.pi)).all()
    assert torch.allclose(s.v_t, a * v0 + sv * s.eps_v, atol=1e-14)
    assert torch.allclose(s.r, k * (v0 + s.v_t) + sr * s.eps_r, atol=1e-14)
    d = torch.remainder(s.f_t - f0 - s.r + math.pi, P) - math.pi                   # f_t = f0 + r on the torus
    assert d.abs().max() < 1e-12
    s32 = sample_tdm(f0.float(), 0.0, 0.5, generator=g, period=1.0)
    assert s32.f_t.dtype == torch.float32 and ((s32.f_t >= -0.5) & (s32.f_t < 0.5)).all()


def test_sample_tdm_reproducible_and_mean_free_per_crystal():
    sizes = torch.tensor([1, 3, 6])
    index = torch.repeat_interleave(torch.arange(3), sizes)
    f0 = torch.zeros(10, 3, dtype=torch.float64)
    t = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    s1 = sample_tdm(f0, 0.0, t, index=index, generator=torch.Generator().manual_seed(3))
    s2 = sample_tdm(f0, 0.0, t, index=index, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(s1, s2))
    for x in (s1.v_t, s1.r, s1.eps_v, s1.eps_r):
        assert scatter(x, index, dim=0, reduce="mean").abs().max() < 1e-14
    assert (s1.r[0] == 0).all()                                                     # a one-atom crystal stays put


def test_sample_tdm_bad_arguments():
    f0 = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="index"):
        sample_tdm(f0, 0.0, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="t "):
        sample_tdm(f0, 0.0, torch.tensor([0.5, 1.0]), index=torch.tensor([0, 1, 2, 2]))
    with pytest.raises(ValueError, match="t "):
        sample_tdm(f0, 0.0, -0.1)
    with pytest.raises(ValueError, match="v0"):
        sample_tdm(f0, torch.zeros(5, 3), 0.5)
    with pytest.raises(ValueError, match="f0"):
        sample_tdm(torch.zeros(4), 0.0, 0.5)


def test_exact_sampler_moments_and_em_agree():
    n, t, v0 = 40_000, 1.0, 0.9
    g = torch.Generator().manual_seed(1)
    s = sample_tdm(torch.zeros(n, 1, dtype=torch.float64), v0, t, mean_free=False, generator=g)
    em = simulate_tdm(torch.zeros(n, 1, dtype=torch.float64), v0, t, n_steps=400, mean_free=False, generator=g)
    j = tdm_joint(t, v0)
    mu_em, S_em = em_moments(t, 400, v0)
    for r, v, bias_S in ((s.r[:, 0], s.v_t[:, 0], torch.zeros(2, 2, dtype=torch.float64)),
                         (em.r[-1, :, 0], em.v[-1, :, 0], None)):
        exp_S = torch.tensor([[j.r_var, j.rv_cov], [j.rv_cov, j.v_var]], dtype=torch.float64)
        exp_mu = torch.tensor([j.r_mean, j.v_mean], dtype=torch.float64)
        if bias_S is None:                                                           # compare the chain with its own exact moments
            exp_S, exp_mu = S_em, mu_em
        x = torch.stack([r, v])                                                      # (2, n)
        for i in range(2):
            assert abs(x[i].mean() - exp_mu[i]) < 5 * x[i].std() / math.sqrt(n)
            for k in range(2):
                terms = (x[i] - x[i].mean()) * (x[k] - x[k].mean())
                assert abs(terms.mean() - exp_S[i, k]) < 5 * terms.std() / math.sqrt(n)


def test_terminal_circular_moment():
    assert abs(terminal_circular_moment(2.0).item() - math.exp(-tdm_joint(2.0).r_var.item() / 2)) < 1e-15
    assert 0.466 < terminal_circular_moment(2.0).item() < 0.468
    tt = torch.linspace(0.1, 8, 50, dtype=torch.float64)
    rho = terminal_circular_moment(tt)
    assert (rho[1:] < rho[:-1]).all()
    assert (terminal_circular_moment(tt, n_atoms=2) > rho).all()
    assert torch.allclose(terminal_circular_moment(tt, period=1.0), rho ** (4 * math.pi ** 2))
    x = torch.linspace(-math.pi, math.pi, 1001, dtype=torch.float64)[:-1]
    assert circular_moment(x).item() < 1e-12 and abs(circular_moment(torch.full((5,), 1.0, dtype=torch.float64)).item() - 1) < 1e-15
    with pytest.raises(ValueError, match="period"):
        terminal_circular_moment(1.0, period=-1)
