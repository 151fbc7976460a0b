"""DiffCSP (crystal_diffusion_book.diffcsp): configuration, buffers, loss, sampler with an exact score, interface."""
import math

import numpy as np
import pytest
import torch

from crystal_diffusion_book.data import collate, synthetic_dataset
from crystal_diffusion_book.diffcsp import STEP_LR, DiffCSP, DiffCSPConfig, recommended_step_lr
from crystal_diffusion_book.model import load_model, spec_from_batch, spec_from_formulas
from crystal_diffusion_book.torus import wrap
from crystal_diffusion_book.wrapped_normal import wn_score, wn_score_norm_mc

TINY = dict(hidden_dim=16, num_layers=1, num_freqs=4, time_dim=8)


@pytest.fixture(scope="module")
def batch():
    return collate(list(synthetic_dataset(n=6, seed=0)))


def test_defaults_are_the_reference():
    c = DiffCSPConfig()
    assert (c.T, c.sigma_begin, c.sigma_end, c.cosine_s, c.cost_lattice, c.cost_coord, c.cost_type) == (1000, 0.005, 0.5, 0.008, 1, 1, 20)
    assert (c.network.hidden_dim, c.network.num_layers, c.network.num_freqs, c.network.time_dim) == (512, 6, 128, 256)
    assert recommended_step_lr("csp", "perov_5") == 5e-7 and recommended_step_lr("dng", "mp_20") == 5e-6
    assert STEP_LR["csp_multi"]["carbon_24"] == 5e-7
    with pytest.raises(ValueError, match="dataset"):
        recommended_step_lr("dng", "mpts_52")


def test_config_validation():
    with pytest.raises(ValueError, match="task"):
        DiffCSPConfig(task="gen")
    with pytest.raises(ValueError, match="type_input"):
        DiffCSPConfig(task="dng")                       # the CSP network cannot do DNG
    with pytest.raises(ValueError, match="sigma"):
        DiffCSPConfig(sigma_begin=0.6)


def test_buffers():
    m = DiffCSP(DiffCSPConfig.make(network=TINY))
    assert m.sigmas.shape == (1001,) and m.sigmas[0] == 0 and math.isclose(m.sigmas[-1].item(), 0.5, rel_tol=1e-12)
    assert math.isclose(m.sqrt_lambda[1].item() * 0.005, 1.0, rel_tol=1e-10)
    mc, se = wn_score_norm_mc(m.sigmas[700], 20_000, generator=torch.Generator().manual_seed(0))
    assert abs(mc - m.sqrt_lambda[700] ** 2) < 5 * se
    assert "sigmas" not in m.state_dict()               # constants follow from the config


@pytest.mark.parametrize("task", ["csp", "dng"])
def test_loss_terms_and_gradients(batch, task):
    torch.manual_seed(0)
    m = DiffCSP(DiffCSPConfig.make(task, network=TINY))
    terms = m.loss(batch)
    want = {"coord", "lattice", "loss"} | ({"type"} if task == "dng" else set())
    assert set(terms) == want and all(v.ndim == 0 and torch.isfinite(v) for v in terms.values())
    total = terms["coord"] + terms["lattice"] + (20 * terms["type"] if task == "dng" else 0)
    assert torch.allclose(terms["loss"], total)
    terms["loss"].backward()
    assert all(p.grad is not None for p in m.net.parameters() if p.requires_grad and p.ndim > 1 and p.grad is not None)
    with pytest.raises(ValueError, match="t must"):
        m.loss(batch, t=torch.zeros(batch.num_atoms.numel(), dtype=torch.long))


def test_loss_is_seeded(batch):
    m = DiffCSP(DiffCSPConfig.make(network=TINY))
    a = m.loss(batch, generator=torch.Generator().manual_seed(3))["loss"]
    b = m.loss(batch, generator=torch.Generator().manual_seed(3))["loss"]
    assert a == b


def test_target_is_noise_at_t1(batch):
    m = DiffCSP(DiffCSPConfig.make(network=TINY)).double()
    m.denoise = lambda t, a, f, L, i, e: {"coord": torch.zeros_like(f), "lattice": torch.zeros_like(L)}
    n = batch.num_atoms.numel()
    terms = m.loss(batch, t=torch.ones(n, dtype=torch.long), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    torch.randn(n, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(batch.num_nodes, 3, generator=g, dtype=torch.float64)
    assert abs(terms["coord"] - (eps ** 2).mean()) < 1e-10


def test_timesteps():
    m = DiffCSP(DiffCSPConfig.make(network=TINY))
    assert m.timesteps().tolist() == list(range(1000, 0, -1))
    ts = m.timesteps(10)
    assert ts[0] == 1000 and ts[-1] == 1 and len(ts) == 10 and bool((ts[1:] < ts[:-1]).all())
    with pytest.raises(ValueError, match="n_steps"):
        m.timesteps(0)


def _toy(m, n_cr, s0=0.05, sL=0.3):
    M = torch.tensor([[4.0, 0, 0], [0.5, 4.2, 0], [0.3, -0.2, 3.8]], dtype=torch.float64)
    sites = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.7, 0.95]], dtype=torch.float64).repeat(n_cr, 1)
    ab = m.lattice_schedule.alpha_bars
    def oracle(t, a, f, L, i, e):
        tt = int(t[0]); s = math.sqrt(s0 ** 2 + float(m.sigmas[tt]) ** 2); al = ab[tt]
        return {"coord": -wn_score(f - sites, s) / m.sqrt_lambda[tt],
                "lattice": (1 - al).sqrt() * (L - al.sqrt() * M) / (al * sL ** 2 + 1 - al)}
    return oracle, sites, M


def test_sampler_reproduces_toy_distribution_with_exact_score():
    "PC sampler + exact score: coordinates WN(site, 0.05²), lattice N(M, 0.3²); 5 standard errors."
    m = DiffCSP(DiffCSPConfig.make(network=TINY)).double()
    n_cr, s0, sL = 400, 0.05, 0.3
    oracle, sites, M = _toy(m, n_cr, s0, sL)
    out = m.sample_tensors(spec_from_formulas("LiO", n_cr), n_steps=1000, method="pc", denoiser=oracle,
                           generator=torch.Generator().manual_seed(0), step_lr=1e-5)
    d = wrap(out["frac"] - sites).flatten()
    assert abs(d.mean()) < 5 * s0 / math.sqrt(d.numel())
    assert abs((d ** 2).mean() / s0 ** 2 - 1) < 5 * math.sqrt(2 / d.numel())
    L = out["lattice"]
    assert ((L.mean(0) - M).abs() < 5 * sL / math.sqrt(n_cr)).all()
    pooled = ((L - M) ** 2).mean() / sL ** 2
    assert abs(pooled - 1) < 5 * math.sqrt(2 / (9 * n_cr))


def test_sampler_fails_with_wrong_sign():
    "The same toy with the score's sign flipped must fail the variance check (the check can fail)."
    m = DiffCSP(DiffCSPConfig.make(network=TINY)).double()
    oracle, sites, M = _toy(m, 100)
    flipped = lambda *a: {k: (-v if k == "coord" else v) for k, v in oracle(*a).items()}
    out = m.sample_tensors(spec_from_formulas("LiO", 100), n_steps=100, method="predictor", denoiser=flipped,
                           generator=torch.Generator().manual_seed(0))
    d = wrap(out["frac"] - sites).flatten()
    assert (d ** 2).mean() / 0.05 ** 2 > 2


@pytest.mark.parametrize("task", ["csp", "dng"])
def test_sample_interface_and_checkpoint(tmp_path, batch, task):
    m = DiffCSP(DiffCSPConfig.make(task, network=TINY, dataset="perov_5"))
    spec = spec_from_batch(batch)
    s, traj = m.sample(spec, n_steps=5, generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert len(s) == batch.num_atoms.numel()
    assert traj["frac"].shape[1:] == (batch.num_nodes, 3) and traj["lattice"].shape[1:] == (len(s), 3, 3)
    if task == "csp":
        assert torch.equal(traj["types"][-1], batch.atom_types)
    path = m.save(tmp_path / "m.pt")
    m2 = load_model(path)
    assert isinstance(m2, DiffCSP) and m2.config == m.config
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    a = m.sample_tensors(spec, n_steps=3, generator=torch.Generator().manual_seed(1))
    b = m2.sample_tensors(spec, n_steps=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["frac"], b["frac"]) and torch.equal(a["lattice"], b["lattice"])
    with pytest.raises(ValueError, match="method"):
        m.sample(spec, n_steps=2, method="ode")


def test_float32_and_float64():
    for dtype in (torch.float32, torch.float64):
        m = DiffCSP(DiffCSPConfig.make(network=TINY)).to(dtype)
        out = m.sample_tensors(spec_from_formulas("NaCl", 2), n_steps=3, generator=torch.Generator().manual_seed(0))
        assert out["frac"].dtype == dtype and out["lattice"].dtype == dtype
        assert bool(((out["frac"] >= 0) & (out["frac"] < 1)).all())


@pytest.mark.parametrize("n_steps", [100, 1000])
def test_lattice_sampler_recovers_a_point_mass_with_the_exact_noise(n_steps):
    "With the exact ε of a one-lattice data distribution, the ancestral lattice steps (full or respaced) must land on it."
    from crystal_diffusion_book.model import CompositionSpec
    m = DiffCSP(DiffCSPConfig.make(network=dict(hidden_dim=16, num_layers=1, num_freqs=4, time_dim=8), dataset="perov_5")).double()
    L0 = torch.tensor([[3.9, 0, 0], [0, 4.1, 0], [0.2, 0, 4.0]], dtype=torch.float64)
    ab = m.lattice_schedule.alpha_bars

    def exact(t, types_in, frac, lattice, index, edge_index):
        a = ab[t].to(lattice)[:, None, None]
        return {"coord": torch.zeros_like(frac), "lattice": (lattice - a.sqrt() * L0) / (1 - a).sqrt()}

    spec = CompositionSpec(torch.full((10,), 8), torch.full((2,), 5))
    out = m.sample_tensors(spec, n_steps=n_steps, denoiser=exact, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert (out["lattice"] - L0).abs().max().item() < 1e-10


def test_skip_end_grid():
    "grid='skip_end' drops the clipped t = T: S times below T (T - 1 for S = T), ending at 1; a bad grid name is refused."
    m = DiffCSP(DiffCSPConfig.make(network=TINY))
    ts = m.timesteps(100, "skip_end")
    assert len(ts) == 100 and int(ts[0]) == 990 and int(ts[-1]) == 1 and bool((ts[1:] < ts[:-1]).all())
    assert m.timesteps(1000, "skip_end").tolist() == list(range(999, 0, -1))
    assert m.timesteps(100, "paper").tolist() == m.timesteps(100).tolist() and int(m.timesteps(100)[0]) == 1000
    with pytest.raises(ValueError, match="grid must be one of"):
        m.timesteps(10, "trailing")


@pytest.mark.parametrize("grid, bounded", [("paper", False), ("skip_end", True)])
def test_first_step_lattice_error(grid, bounded):
    "A fixed ε̂ error δ at every step: the 100-step paper grid throws the lattice ~1000 δ away at its first step; skip_end stays below 3 δ."
    from crystal_diffusion_book.model import CompositionSpec
    m = DiffCSP(DiffCSPConfig.make(network=TINY, dataset="perov_5")).double()
    oracle, sites, M = _toy(m, 4)
    delta = 0.054
    pert = lambda *a: {**oracle(*a), "lattice": oracle(*a)["lattice"] + delta}
    spec = spec_from_formulas("LiO", 4)
    run = lambda d: m.sample_tensors(spec, n_steps=100, method="predictor", grid=grid, denoiser=d, return_trajectory=True,
                                     trajectory_every=1, generator=torch.Generator().manual_seed(0))["trajectory"]["lattice"]
    peak = (run(pert) - run(oracle)).abs().max().item() / delta
    assert (peak < 3) == bounded and (peak > 500) != bounded


def test_no_corrector_noise_at_the_last_step():
    "As the reference: with a zero score the last PC step leaves the coordinates unchanged (no √(2δ₁)·z)."
    m = DiffCSP(DiffCSPConfig.make(network=TINY, dataset="perov_5")).double()
    seen = []
    def zero(t, a, f, L, i, e):
        seen.append(f.clone()); return {"coord": torch.zeros_like(f), "lattice": torch.zeros_like(L)}
    out = m.sample_tensors(spec_from_formulas("LiO", 3), n_steps=5, method="pc", denoiser=zero,
                           generator=torch.Generator().manual_seed(0), step_lr=1e-2)
    assert torch.equal(seen[-2], seen[-1]) and torch.equal(out["frac"], seen[-1])   # corrector, then predictor: no noise
    assert not torch.equal(seen[-4], seen[-3])                                       # earlier correctors do add noise
