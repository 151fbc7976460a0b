"""KLDM (crystal_diffusion_book.kldm): configuration, ν table, targets, loss, samplers with an exact score, ablations, checkpoints."""
import math

import pytest
import torch

from crystal_diffusion_book.data import collate, data_to_structure, synthetic_dataset
from crystal_diffusion_book.kinetic import sample_tdm, tdm_moments
from crystal_diffusion_book.kldm import KLDM, KLDMConfig, TWO_PI
from crystal_diffusion_book.model import CompositionSpec, load_model, spec_from_batch
from crystal_diffusion_book.tdm_score import nu, training_target
from crystal_diffusion_book.torus import wrap
from crystal_diffusion_book.wrapped_normal import wn_log_prob, wn_score

TINY = dict(hidden_dim=16, num_layers=1, num_freqs=4, time_dim=8)


@pytest.fixture(scope="module")
def crystals():
    return list(synthetic_dataset(n=8, seed=0))


@pytest.fixture(scope="module")
def batch(crystals):
    return collate(crystals, self_loops=False)


def model(crystals, task="csp", **kw):
    return KLDM(KLDMConfig.make(task, network=TINY, **kw)).fit_lattice_stats(crystals)


def test_defaults_are_the_reference():
    c = KLDMConfig()
    assert (c.t_f, c.v0_init_scale, c.simplified, c.mean_free, c.tau_min) == (2.0, 0.0, True, True, 1e-3)
    assert (c.n_steps, c.method, c.tau_corrector, c.correct_pos, c.t_end) == (1000, "pc", 0.25, True, 1e-3)
    assert (c.lattice_beta_min, c.lattice_beta_max, c.lr, c.weight_decay, c.amsgrad, c.batch_size) == (0.1, 20.0, 1e-3, 1e-12, True, 256)
    assert (c.ema_decay, c.ema_start_epoch) == (0.999, 500)
    n = c.network
    assert (n.hidden_dim, n.num_layers, n.num_freqs, n.time_dim) == (512, 6, 128, 256)
    assert n.velocity_input and n.center_coord_output and not n.self_loops and n.lattice_latent_dim == 6


@pytest.mark.parametrize("kw, name", [(dict(v0_init_scale=1.0), "v0_init_scale"), (dict(t_f=0.0), "t_f"),
                                      (dict(method="ddim"), "method"), (dict(tau_min=0.0), "tau_min"),
                                      (dict(task="xyz"), "task"), (dict(lattice_step="heun"), "lattice_step")])
def test_bad_config(kw, name):
    with pytest.raises(ValueError, match=name):
        KLDMConfig.make(**kw) if "task" not in kw else KLDMConfig.make(kw["task"])


def test_network_must_follow_mean_free():
    from crystal_diffusion_book.cspnet import kldm_config
    with pytest.raises(ValueError, match="center_coord_output"):
        KLDMConfig(mean_free=False, network=kldm_config())


def test_unfitted_lattice_stats_raise(batch):
    m = KLDM(KLDMConfig.make(network=TINY))
    with pytest.raises(ValueError, match="fit_lattice_stats"):
        m.loss(batch)


def test_nu_table_and_target(crystals, batch):
    m = model(crystals)
    g = torch.Generator().manual_seed(0)
    tau = 1e-3 + (1 - 1e-3) * torch.rand(300, generator=g, dtype=torch.float64)
    assert (m.nu_lookup(tau) / nu(2 * tau) - 1).abs().max() < 3e-5
    idx, tau8 = batch.batch, tau[:8]
    s = sample_tdm(TWO_PI * wrap(batch.frac_coords.double()), 0.0, 2 * tau8, idx, generator=g)
    ours = m.velocity_target(s.v_t, s.r, tau8, 0.0, idx)
    ref = training_target(s.v_t, s.r, 2 * tau8, 0.0, idx, "simplified")
    assert (ours - ref).abs().max() < 3e-5 * ref.abs().max()


@pytest.mark.parametrize("task", ["csp", "dng"])
def test_loss_terms_and_gradients(crystals, batch, task):
    m = model(crystals, task)
    terms = m.loss(batch, generator=torch.Generator().manual_seed(0))
    keys = {"v", "l", "loss"} | ({"h"} if task == "dng" else set())
    assert set(terms) == keys
    parts = [terms[k] for k in keys - {"loss"}]
    assert torch.isclose(terms["loss"], sum(parts) / len(parts))
    terms["loss"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())
    with pytest.raises(ValueError, match="tau"):
        m.loss(batch, tau=torch.zeros(batch.num_atoms.numel()))


MU = torch.tensor([-math.pi / 2, math.pi / 2], dtype=torch.float64)
W = torch.tensor([0.3, 0.7], dtype=torch.float64)


def _exact_denoiser(cfg, l0):
    "Direct-parameterisation output = the exact velocity score of the two-point toy; x̂0 = l0 for the lattice."
    def den(tau, types_in, pos, vel, lat, index, edge_index):
        mo = tdm_moments(cfg.t_f * float(tau[0]))
        k, sv, sr = float(mo.r_mean_coef), float(mo.v_std), float(mo.r_std)
        d = pos[..., None] - MU - k * vel[..., None]
        post = torch.softmax(torch.log(W) + wn_log_prob(d, sr, TWO_PI), -1)
        return {"coord": -vel / sv ** 2 + k * (post * -wn_score(d, sr, TWO_PI)).sum(-1), "lattice": l0.expand(lat.shape[0], 6)}
    return den


@pytest.mark.parametrize("method, n_steps, tol", [("em", 250, None), ("ode", 250, None), ("pc", 400, 0.12)])
def test_samplers_with_exact_score(crystals, method, n_steps, tol):
    m = model(crystals, simplified=False, mean_free=False, t_f=8.0)
    l0 = torch.randn(1, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    spec = CompositionSpec(torch.full((400,), 6), torch.ones(400, dtype=torch.long))
    out = m.sample_tensors(spec, n_steps=n_steps, method=method, generator=torch.Generator().manual_seed(1),
                           denoiser=_exact_denoiser(m.config, l0))
    x = TWO_PI * wrap(out["frac"])
    near = (wrap(x - MU[1], TWO_PI).abs() < 0.3).double().mean().item()
    far = (wrap(x - MU[0], TWO_PI).abs() < 0.3).double().mean().item()
    se = math.sqrt(0.21 / 1200)
    assert abs(near - 0.7) < (tol if tol else 4 * se) and near + far > 0.98   # PC is biased at few steps (see the chapter)
    assert (out["latent"] - l0).abs().max() < 0.25


@pytest.mark.parametrize("simplified, v0, mean_free, t_f", [(True, 0.0, True, 2.0), (False, 0.5, True, 2.0),
                                                            (False, 0.0, False, 1.0), (True, 0.0, False, 4.0)])
@pytest.mark.parametrize("task", ["csp", "dng"])
def test_ablation_switches_run(crystals, batch, task, simplified, v0, mean_free, t_f):
    m = model(crystals, task, simplified=simplified, v0_init_scale=v0, mean_free=mean_free, t_f=t_f)
    opt = m.make_optimizer()
    terms = m.loss(batch, generator=torch.Generator().manual_seed(0))
    terms["loss"].backward(); opt.step()
    assert torch.isfinite(terms["loss"])
    for method in ("em", "pc", "ode"):
        out = m.sample_tensors(spec_from_batch(batch), n_steps=2, method=method, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out["frac"]).all() and ((out["frac"] >= 0) & (out["frac"] < 1)).all()
        assert out["lattice"].shape == (8, 3, 3)
        if task == "csp":
            assert torch.equal(out["types"], batch.atom_types)
        else:
            assert ((out["types"] >= 1) & (out["types"] <= 100)).all()
        if mean_free:
            from torch_geometric.utils import scatter
            assert scatter(out["velocity"], out["index"], dim=0, reduce="mean").abs().max() < 1e-10


def test_sample_structures_trajectory_and_checkpoint(crystals, batch, tmp_path):
    m = model(crystals)
    structures, traj = m.sample(batch, n_steps=4, method="em", generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert len(structures) == 8 and traj["frac"].shape[1:] == (int(batch.num_atoms.sum()), 3)
    truth = [data_to_structure(d) for d in crystals]
    assert all(s is None or s.composition == t.composition for s, t in zip(structures, truth))
    m2 = load_model(m.save(tmp_path / "k.pt"))
    assert isinstance(m2, KLDM) and bool(m2.lat_fitted) and torch.equal(m2.lat_scale, m.lat_scale)
    spec = spec_from_batch(batch)
    a = m.sample_tensors(spec, n_steps=3, generator=torch.Generator().manual_seed(5))
    b = m2.sample_tensors(spec, n_steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a["frac"], b["frac"]) and torch.equal(a["lattice"], b["lattice"])


def test_bad_sampler_arguments(crystals, batch):
    m = model(crystals)
    spec = spec_from_batch(batch)
    for kw, name in [(dict(method="ddpm"), "method"), (dict(n_steps=0), "n_steps"), (dict(t_end=1.0), "t_end"),
                     (dict(method="em", lattice_step="rk4"), "lattice_step")]:
        with pytest.raises(ValueError, match=name):
            m.sample_tensors(spec, **kw)


@pytest.mark.parametrize("method", ["em", "ode"])
def test_exponential_lattice_step_is_exact_for_a_point_mass(crystals, method):
    "With a point-mass lattice the exponential step's law does not depend on the step count (chapter 14); Euler's does."
    m = model(crystals, simplified=False, mean_free=False, t_f=8.0)
    l0 = torch.randn(1, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    spec = CompositionSpec(torch.full((300,), 6), torch.ones(300, dtype=torch.long))
    def end(n, step):
        out = m.sample_tensors(spec, n_steps=n, method=method, lattice_step=step, generator=torch.Generator().manual_seed(2),
                               denoiser=_exact_denoiser(m.config, l0))
        return out["latent"]
    few, many = end(4, "exponential"), end(200, "exponential")
    if method == "ode":   # deterministic: the same end point from the same prior draw
        assert (few - many).abs().max() < 1e-10 and (end(4, "euler") - many).abs().max() > 1e-2
    else:   # the exact chain from x1 ~ N(0, I) at τ = 1: x_end ~ N(α_e l0 - k α_1 l0, k² + σ²_{1|e} σ_e² / σ_1²)
        vp, te = m.vpsde, torch.tensor([m.config.t_end, 1.0], dtype=torch.float64)
        (a_e, a_1), (s_e, s_1) = vp.alpha(te), vp.sigma(te)
        var_1e = 1 - (a_1 / a_e) ** 2
        k = (a_1 / a_e) * s_e**2 / s_1**2
        mean, std = a_e * l0[0] - k * a_1 * l0[0], torch.sqrt(k**2 + var_1e * s_e**2 / s_1**2)
        n = few.shape[0]
        for x in (few, many):   # 5 standard errors of the mean and of the standard deviation, per dimension
            assert ((x.mean(0) - mean).abs() < 5 * std / math.sqrt(n)).all()
            assert ((x.std(0) - std).abs() < 5 * std / math.sqrt(2 * (n - 1))).all()


def test_pc_ignores_lattice_step(crystals, batch):
    "PC's lattice moves are DDIM and Langevin whatever lattice_step says: the two settings give identical samples."
    m = model(crystals)
    spec = spec_from_batch(batch)
    a, b = (m.sample_tensors(spec, n_steps=3, method="pc", lattice_step=k, generator=torch.Generator().manual_seed(5))
            for k in ("euler", "exponential"))
    assert torch.equal(a["latent"], b["latent"]) and torch.equal(a["frac"], b["frac"])
