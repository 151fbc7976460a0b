"Tests of `crystal_diffusion_book.lattice`: conversions, invariances, DDPM schedule, KLDM latent and VP-SDE."
import math

import numpy as np
import pytest
import torch

from crystal_diffusion_book.lattice import (
    ANGLE_SCALE, DDPMSchedule, LatticeLatentStats, VPSDE, angle_triple_det, angles_to_latent,
    canonical_lattice, cosine_beta_schedule, gram, lattice_to_params, latent_to_angles,
    linear_beta_schedule, niggli_reduce, params_to_lattice, params_valid, volume,
)

EPS64 = torch.finfo(torch.float64).eps


def _random_params(n, seed, lo=20.0, hi=160.0, min_D=1e-3):
    rng = np.random.default_rng(seed)
    ang = rng.uniform(lo, hi, size=(20 * n, 3))
    ang = ang[angle_triple_det(torch.tensor(ang)).numpy() > min_D][:n]
    assert len(ang) == n
    return torch.tensor(rng.uniform(2, 12, size=(n, 3))), torch.tensor(ang)


def _random_orthogonal(n, seed):
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar on O(3), both signs of det


# ---------------------------------------------------------------- representations
def test_params_to_lattice_matches_pymatgen():
    from pymatgen.core import Lattice
    lengths, angles = _random_params(200, 0)
    L = params_to_lattice(lengths, angles)
    ref = np.stack([Lattice.from_parameters(*l, *a).matrix for l, a in zip(lengths.tolist(), angles.tolist())])
    assert L.shape == (200, 3, 3) and L.dtype == torch.float64
    assert np.abs(L.numpy() - ref).max() < 1e-12


def test_params_round_trip_including_near_degenerate():
    lengths, angles = _random_params(300, 1)
    rng = np.random.default_rng(2)
    al, be = rng.uniform(20, 80, 40), rng.uniform(20, 80, 40)
    near = torch.tensor(np.stack([al, be, al + be - 1e-3], -1))  # close to the flat-cell boundary
    extreme = torch.tensor([[0.5, 90.0, 90.0], [179.5, 90.0, 90.0], [60.0, 60.0, 119.999]])
    angles = torch.cat([angles, near, extreme])
    lengths = torch.cat([lengths, torch.tensor(rng.uniform(2, 12, (len(near) + len(extreme), 3)))])
    lb, ab = lattice_to_params(params_to_lattice(lengths, angles))
    assert ((lb - lengths).abs() / lengths).max() < 100 * EPS64
    # the azimuth amplifies rounding by ~1/sin(phi) ~ 1/sqrt(D)
    tol = 100 * EPS64 / angle_triple_det(angles).sqrt()
    assert (torch.deg2rad((ab - angles).abs()).amax(-1) < tol).all()


def test_matrix_round_trip_is_an_orthogonal_change():
    M = 3 * torch.randn(300, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    M2 = params_to_lattice(*lattice_to_params(M))
    assert torch.allclose(gram(M2), gram(M), rtol=1e-10, atol=1e-10)
    assert (torch.linalg.det(M2) > 0).all()  # canonical orientation is right-handed
    assert torch.allclose(volume(M2), volume(M), rtol=1e-10)


def test_gram_invariant_under_O3_and_volume_sign():
    L = params_to_lattice(*_random_params(100, 4))
    Q = _random_orthogonal(100, 5)
    assert (torch.linalg.det(Q) < 0).any() and (torch.linalg.det(Q) > 0).any()
    G = gram(L)
    assert ((gram(L @ Q) - G).abs().amax((-1, -2)) / G.abs().amax((-1, -2))).max() < 1e-13
    assert torch.allclose(volume(L @ Q), volume(L), rtol=1e-12)
    assert torch.allclose(volume(L @ Q, signed=True), volume(L) * torch.linalg.det(Q), rtol=1e-12)


def test_volume_formula_and_validity():
    lengths, angles = _random_params(50, 6)
    V = lengths.prod(-1) * angle_triple_det(angles).sqrt()
    assert torch.allclose(volume(params_to_lattice(lengths, angles)), V, rtol=1e-12)
    assert params_valid(lengths, angles).all()
    bad = torch.tensor([[100.0, 100.0, 170.0], [10.0, 20.0, 40.0], [90.0, 90.0, 0.0]])  # sum > 360, triangle, range
    assert not params_valid(torch.ones(3, 3), bad).any()
    assert not params_valid(torch.tensor([[-1.0, 2, 3]]), torch.tensor([[90.0, 90, 90]])).any()


def test_float32_and_python_floats():
    L32 = params_to_lattice(torch.tensor([4.0, 5.0, 6.0], dtype=torch.float32), [80.0, 95.0, 100.0])
    assert L32.dtype == torch.float32 and L32.shape == (3, 3)
    L64 = params_to_lattice([4.0, 5.0, 6.0], [80.0, 95.0, 100.0])
    assert L64.dtype == torch.float64
    assert torch.allclose(L32.double(), L64, atol=1e-5)
    l, a = lattice_to_params(L32)
    assert torch.allclose(a.double(), torch.tensor([80.0, 95.0, 100.0], dtype=torch.float64), atol=1e-3)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="lengths"):
        params_to_lattice([1.0, -2.0, 3.0], [90.0, 90.0, 90.0])
    with pytest.raises(ValueError, match="angles"):
        params_to_lattice([1.0, 2.0, 3.0], [10.0, 20.0, 40.0])
    with pytest.raises(ValueError, match="lattice"):
        gram(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="angles"):
        angles_to_latent(torch.tensor([0.0, 90.0, 90.0]))


def test_niggli_canonical_form_is_basis_independent():
    rng = np.random.default_rng(7)
    L0 = params_to_lattice(*_random_params(40, 8, lo=50, hi=130, min_D=0.05))
    U = np.tile(np.eye(3, dtype=np.int64), (40, 1, 1))
    for _ in range(6):
        i, j = rng.choice(3, 2, replace=False)
        E = np.tile(np.eye(3, dtype=np.int64), (40, 1, 1))
        E[:, i, j] = rng.choice([-2, -1, 1, 2], size=40)
        U = E @ U
    L1 = torch.tensor(U, dtype=torch.float64) @ L0
    assert torch.allclose(canonical_lattice(L0), canonical_lattice(L1), atol=1e-8)
    red = niggli_reduce(L1)
    assert red.shape == L1.shape and torch.allclose(volume(red), volume(L0), rtol=1e-10)
    with pytest.raises(ValueError, match="lattice"):
        niggli_reduce(torch.zeros(3, 3))


# ---------------------------------------------------------------- DDPM on the matrix
def test_cosine_schedule_properties():
    b = cosine_beta_schedule(1000, 0.008)
    assert b.shape == (1001,) and b.dtype == torch.float64 and b[0] == 0
    assert b[1:].min() >= 1e-4 and b[1:].max() <= 0.9999 and b[-1] == 0.9999
    s = DDPMSchedule(b)
    assert torch.allclose(s.alpha_bars, torch.cumprod(1 - b, 0), rtol=0, atol=0)
    assert s.sigma_tilde_sq[1] == 0 and (s.sigma_tilde_sq[2:] > 0).all()
    assert s.T == 1000 and DDPMSchedule.cosine().T == 1000
    lin = linear_beta_schedule(1000)
    assert lin[1] == 1e-4 and abs(lin[-1].item() - 0.02) < 1e-15
    for bad in (0, 2.5, -3):
        with pytest.raises(ValueError, match="T"):
            cosine_beta_schedule(bad)
    with pytest.raises(ValueError, match="betas"):
        DDPMSchedule(torch.tensor([0.1, 0.2]))


def test_q_sample_and_ancestral_step_algebra():
    s = DDPMSchedule.cosine()
    g = torch.Generator().manual_seed(9)
    L0 = params_to_lattice(*_random_params(32, 10))
    eps = torch.randn(32, 3, 3, generator=g, dtype=torch.float64)
    t = torch.randint(1, 1001, (32,), generator=g)
    Lt = s.q_sample(L0, t, eps)
    ab = s.alpha_bars[t][:, None, None]
    assert torch.allclose(Lt, ab.sqrt() * L0 + (1 - ab).sqrt() * eps, rtol=0, atol=1e-14)
    assert torch.allclose(s.predict_x0(Lt, eps, t), L0, atol=1e-8)
    step = s.ancestral_step(Lt, eps, t, torch.zeros_like(Lt))
    assert ((step - s.posterior_mean(L0, Lt, t)).abs().max() / Lt.abs().max()) < 1e-10
    # scalar t broadcasts; t = 1 adds no noise
    L1 = s.q_sample(L0, 1, eps)
    assert torch.equal(s.ancestral_step(L1, eps, 1, torch.randn_like(L1)), s.ancestral_step(L1, eps, 1, torch.zeros_like(L1)))
    for bad_t in (0, 1001):
        with pytest.raises(ValueError, match="t"):
            s.q_sample(L0, bad_t, eps)
    with pytest.raises(ValueError, match="eps"):
        s.q_sample(L0, 5, eps[:3])
    # float32 works and keeps its dtype
    assert s.q_sample(L0.float(), t, eps.float()).dtype == torch.float32


def test_ddpm_marginal_matches_markov_chain():
    s = DDPMSchedule.cosine()
    torch.manual_seed(11)
    L0 = params_to_lattice([4.0, 5.5, 7.0], [90.0, 104.0, 90.0])
    n = 3000
    x = L0.expand(n, 3, 3).clone()
    for t in range(1, 301):
        x = s.alphas[t].sqrt() * x + s.betas[t].sqrt() * torch.randn_like(x)
    ab = s.alpha_bars[300]
    z_mean = (x.mean(0) - ab.sqrt() * L0) / ((1 - ab) / n).sqrt()
    z_var = (x.var(0) - (1 - ab)) / ((1 - ab) * math.sqrt(2 / (n - 1)))
    assert z_mean.abs().max() < 5 and z_var.abs().max() < 5


# ---------------------------------------------------------------- KLDM latent
def test_angle_transform():
    ang = torch.tensor([[1e-3, 90.0, 179.999], [60.0, 120.0, 89.0]], dtype=torch.float64)
    assert torch.allclose(latent_to_angles(angles_to_latent(ang)), ang, atol=1e-9)
    x = torch.linspace(-1e6, 1e6, 101, dtype=torch.float64)
    a = latent_to_angles(x)
    assert ((a > 0) & (a < 180)).all()
    assert torch.allclose(angles_to_latent(torch.tensor([90.0 + math.degrees(math.atan(ANGLE_SCALE))])),
                          torch.tensor([1.0]), atol=1e-12)


def _synthetic(counts, seed):
    rng = np.random.default_rng(seed)
    n_at = np.concatenate([np.full(n, N) for N, n in counts.items()])
    y = np.log(2.6) + np.log(n_at)[:, None] / 3 + rng.normal(size=(len(n_at), 3)) * 0.15
    return torch.tensor(np.exp(y)), torch.tensor(n_at)


def test_latent_stats_rich_counts_match_trimmed_recipe():
    lengths, n_at = _synthetic({2: 80, 4: 200, 6: 41}, 12)
    st = LatticeLatentStats.fit(lengths, n_at)
    for N in (2, 4, 6):
        y = np.sort(np.log(lengths[n_at == N].numpy()), axis=0)
        k = int(0.025 * len(y))
        assert np.allclose(st.loc[N].numpy(), y[k:len(y) - k].mean(0), atol=1e-12)
        assert np.allclose(st.scale[N].numpy(), y[k:len(y) - k].std(0), atol=1e-12)


def test_latent_stats_thin_and_unseen_counts_are_finite_and_shrunk():
    lengths, n_at = _synthetic({1: 60, 3: 150, 5: 300, 8: 100, 11: 3, 20: 1}, 13)
    st = LatticeLatentStats.fit(lengths, n_at, prior_count=20.0)
    assert torch.isfinite(st.loc).all() and (st.scale > 0).all()
    assert st.loc.shape == (21, 3) and st.count[20] == 1 and st.count[9] == 0
    # thin N: convex combination of its own mean and the pooled fit
    prior = st.coef[0] + math.log(11) * st.coef[1]
    own = torch.log(lengths[n_at == 11]).mean(0)
    w = 3 / 23
    assert torch.allclose(st.loc[11], w * own + (1 - w) * prior, atol=1e-12)
    # unseen N inside the table and beyond it: the pooled fit
    assert torch.allclose(st.loc[9], st.coef[0] + math.log(9) * st.coef[1], atol=1e-12)
    loc, scale = st.loc_scale(torch.tensor([40, 5]))
    assert torch.allclose(loc[0], st.coef[0] + math.log(40) * st.coef[1]) and torch.equal(scale[0], st.pooled_scale)
    assert torch.equal(loc[1], st.loc[5])
    # pooled slope close to the true 1/3
    assert (st.coef[1] - 1 / 3).abs().max() < 0.05


def test_latent_encode_decode_round_trip_and_errors():
    lengths, n_at = _synthetic({2: 100, 4: 100, 7: 10}, 14)
    st = LatticeLatentStats.fit(lengths, n_at)
    angles = torch.tensor(np.random.default_rng(15).uniform(60, 120, (len(n_at), 3)))
    z = st.encode(lengths, angles, n_at)
    assert z.shape == (len(n_at), 6)
    l2, a2 = st.decode(z, n_at)
    assert torch.allclose(l2, lengths, rtol=1e-12) and torch.allclose(a2, angles, atol=1e-10)
    L = params_to_lattice(lengths, angles)
    assert torch.allclose(st.decode_lattice(st.encode_lattice(L, n_at), n_at), L, atol=1e-10)
    z32 = st.encode(lengths.float(), angles.float(), n_at)
    assert z32.dtype == torch.float32 and torch.allclose(z32.double(), z, atol=1e-4)
    with pytest.raises(ValueError, match="num_atoms"):
        st.encode(lengths, angles, torch.zeros_like(n_at))
    with pytest.raises(ValueError, match="lengths"):
        LatticeLatentStats.fit(lengths[:, :2], n_at)
    with pytest.raises(ValueError, match="num_atoms"):
        LatticeLatentStats.fit(lengths, n_at[:-1])


# ---------------------------------------------------------------- VP-SDE
def test_vpsde_closed_form_solves_the_moment_odes():
    from scipy.integrate import solve_ivp
    vp = VPSDE(0.1, 20.0)
    beta = lambda t: 0.1 + 19.9 * t
    sol = solve_ivp(lambda t, y: [-0.5 * beta(t) * y[0], -beta(t) * y[1] + beta(t)], (0, 1), [1.0, 0.0],
                    t_eval=[0.05, 0.3, 0.7, 1.0], rtol=1e-11, atol=1e-13)
    t = torch.tensor(sol.t, dtype=torch.float64)
    assert np.allclose(vp.alpha(t).numpy(), sol.y[0], rtol=1e-8, atol=1e-12)
    assert np.allclose(vp.sigma(t).numpy() ** 2, sol.y[1], rtol=1e-8, atol=1e-12)
    assert abs(vp.alpha(1.0).item() - math.exp(-0.5 * (0.1 + 0.5 * 19.9))) < 1e-15
    assert torch.allclose(vp.alpha(t) ** 2 + vp.sigma(t) ** 2, torch.ones_like(t), atol=1e-14)


def test_vpsde_q_sample_score_and_errors():
    vp = VPSDE()
    g = torch.Generator().manual_seed(16)
    x0 = torch.randn(8, 6, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 6, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.9 + 0.05
    xt = vp.q_sample(x0, t, eps)
    a, s = vp.alpha(t)[:, None], vp.sigma(t)[:, None]
    assert torch.allclose(xt, a * x0 + s * eps, atol=1e-14)
    # with the true x0 the score of the conditional Gaussian is -eps/sigma
    assert torch.allclose(vp.score_from_x0(xt, x0, t), -eps / s, atol=1e-10)
    # one reverse step: deterministic part
    h = 1e-3
    step = vp.reverse_em_step(xt, -eps / s, t, h, torch.zeros_like(xt))
    b = vp.beta(t)[:, None]
    assert torch.allclose(step, xt + h * b * (0.5 * xt - eps / s), atol=1e-14)
    assert vp.q_sample(x0.float(), 0.5, eps.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="t"):
        vp.alpha(1.5)
    with pytest.raises(ValueError, match="t"):
        vp.score_from_x0(xt, x0, 0.0)
    with pytest.raises(ValueError, match="h"):
        vp.reverse_em_step(xt, x0, t, -0.1, eps)
    with pytest.raises(ValueError, match="beta"):
        VPSDE(1.0, 0.5)


def test_latent_stats_json_round_trip():
    import json
    lengths, n_at = _synthetic({2: 100, 4: 50, 9: 3}, 17)
    st = LatticeLatentStats.fit(lengths, n_at)
    st2 = LatticeLatentStats.from_dict(json.loads(json.dumps(st.to_dict())))
    for name in ("loc", "scale", "count", "coef", "pooled_scale"):
        assert torch.equal(getattr(st, name), getattr(st2, name)), name
    with pytest.raises(ValueError, match="d is missing"):
        LatticeLatentStats.from_dict({"loc": []})


def test_x0_from_score_inverts_score_from_x0():
    vp, g = VPSDE(), torch.Generator().manual_seed(0)
    x, x0 = torch.randn(7, 6, generator=g, dtype=torch.float64), torch.randn(7, 6, generator=g, dtype=torch.float64)
    t = torch.rand(7, generator=g, dtype=torch.float64) * 0.98 + 0.01
    back = vp.x0_from_score(x, vp.score_from_x0(x, x0, t), t)
    assert back.dtype == torch.float64 and torch.allclose(back, x0, rtol=0, atol=1e3 * EPS64 / vp.alpha(t).min())


def test_bridge_steps_compose():
    "Two bridge steps with the same x̂0 equal one (the forward bridge is a Markov chain): means, variances, DDIM points."
    vp, x0 = VPSDE(), torch.tensor([0.3], dtype=torch.float64)
    x, zero, one = torch.tensor([1.1], dtype=torch.float64), torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    flow_two = vp.flow_step(vp.flow_step(x, x0, 0.8, 0.3), x0, 0.5, 0.2)
    assert torch.allclose(flow_two, vp.flow_step(x, x0, 0.8, 0.5), rtol=0, atol=1e-13)
    mean1, std1 = vp.posterior_step(x, x0, 0.8, 0.3, zero), vp.posterior_step(x, x0, 0.8, 0.3, one) - vp.posterior_step(x, x0, 0.8, 0.3, zero)
    lin = vp.posterior_step(one, x0, 0.5, 0.2, zero) - vp.posterior_step(zero, x0, 0.5, 0.2, zero)   # coefficient on x
    mean2 = vp.posterior_step(mean1, x0, 0.5, 0.2, zero)
    var2 = lin**2 * std1**2 + (vp.posterior_step(x, x0, 0.5, 0.2, one) - vp.posterior_step(x, x0, 0.5, 0.2, zero))**2
    m_direct = vp.posterior_step(x, x0, 0.8, 0.5, zero)
    v_direct = (vp.posterior_step(x, x0, 0.8, 0.5, one) - m_direct) ** 2
    assert torch.allclose(mean2, m_direct, rtol=0, atol=1e-13) and torch.allclose(var2, v_direct, rtol=0, atol=1e-13)


def test_bridge_steps_refuse_bad_steps():
    vp, x = VPSDE(), torch.zeros(2, 6, dtype=torch.float64)
    for t, h in ((0.5, 0.0), (0.5, 0.6), (0.5, -0.1)):
        with pytest.raises(ValueError, match="h"):
            vp.flow_step(x, x, t, h)
    assert torch.allclose(vp.posterior_step(x, x + 2, 0.5, 0.5, torch.ones_like(x)), x + 2)   # to τ = 0: exactly x̂0
