"""Text-conditioned KLDM (crystal_diffusion_book.text_kldm): configuration, missing text, shapes, guidance identities, checkpoints."""
import pytest
import torch

from crystal_diffusion_book.data import collate, synthetic_dataset
from crystal_diffusion_book.kldm import KLDM, KLDMConfig
from crystal_diffusion_book.model import CompositionSpec, load_model, spec_from_batch
from crystal_diffusion_book.text import attach_text_embeddings
from crystal_diffusion_book.text_kldm import TextKLDM, TextKLDMConfig

TINY = dict(hidden_dim=16, num_layers=1, num_freqs=4, time_dim=8)
D = 10


@pytest.fixture(scope="module")
def crystals():
    cr = list(synthetic_dataset(n=8, seed=0))
    return attach_text_embeddings(cr, torch.randn(len(cr), D, generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def batch(crystals):
    return collate(crystals, self_loops=False)


def model(crystals, **kw):
    torch.manual_seed(0)
    cfg = TextKLDMConfig.make(network=TINY, **{"text_dim": D, "text_out_dim": 6, **kw})
    return TextKLDM(cfg).fit_lattice_stats(crystals)


def sample(m, spec, w, steps=3, method="pc"):
    return m.sample_tensors(spec, n_steps=steps, method=method, generator=torch.Generator().manual_seed(0), guidance_scale=w)


def test_defaults_and_make():
    c = TextKLDMConfig.make(network=TINY)
    assert isinstance(c, KLDMConfig) and TextKLDM.config_class is TextKLDMConfig
    assert (c.text_dim, c.text_out_dim, c.text_dropout, c.p_uncond) == (384, 256, 0.1, 0.1)
    assert c.network.cond_dim == 256 and c.network.velocity_input and c.network.center_coord_output
    assert TextKLDMConfig.make(network=TINY, text_out_dim=32).network.cond_dim == 32
    assert TextKLDMConfig.make("dng", network=TINY).network.type_head
    assert KLDMConfig.make(network=TINY).network.cond_dim == 0       # KLDM itself is unconditioned
    assert TextKLDMConfig().network.cond_dim == 256 and TextKLDMConfig().network == TextKLDMConfig.make().network


@pytest.mark.parametrize("kw, name", [(dict(p_uncond=1.0), "p_uncond"), (dict(p_uncond=-0.1), "p_uncond"),
                                      (dict(text_dim=-1), "text_dim"), (dict(text_out_dim=0), "text_out_dim"),
                                      (dict(text_dropout=1.0), "text_dropout"),
                                      (dict(network=dict(TINY, cond_dim=3)), "cond_dim"), (dict(t_f=0.0), "t_f")])
def test_bad_config(kw, name):
    with pytest.raises(ValueError, match=name):
        TextKLDMConfig.make(**kw)


def test_missing_text_raises(crystals):
    m = model(crystals)
    plain = collate(list(synthetic_dataset(n=4, seed=1)), self_loops=False)
    with pytest.raises(ValueError, match="text_emb"):
        m.loss(plain)
    with pytest.raises(ValueError, match="spec.cond"):
        sample(m.eval(), spec_from_batch(plain), 1.0, steps=1)
    out = sample(m, spec_from_batch(plain), 0.0, steps=1)       # w = 0 needs no text
    assert out["frac"].shape == (int(plain.num_atoms.sum()), 3)


def test_wrong_text_size_raises(crystals):
    m = model(crystals).eval()
    spec = spec_from_batch(collate(crystals[:2], self_loops=False))
    spec.cond = torch.randn(2, D + 1)
    with pytest.raises(ValueError, match="text_emb"):
        sample(m, spec, 1.0, steps=1)


@pytest.mark.parametrize("w", [-1.0, float("nan")])
def test_bad_guidance_scale(crystals, batch, w):
    with pytest.raises(ValueError, match="guidance_scale"):
        sample(model(crystals).eval(), spec_from_batch(batch), w, steps=1)


def test_loss_terms_and_shapes(crystals, batch):
    m = model(crystals)
    terms = m.loss(batch, generator=torch.Generator().manual_seed(0))
    assert set(terms) == {"v", "l", "loss"} and all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    assert m.conditioner.head.projection.weight.grad is not None
    cond = m._condition(batch)
    assert cond.shape == (batch.num_atoms.numel(), 6)
    for method in ("pc", "em", "ode"):
        out = sample(m.eval(), spec_from_batch(batch), 2.0, steps=2, method=method)
        n_at, n_cr = int(batch.num_atoms.sum()), batch.num_atoms.numel()
        assert out["frac"].shape == (n_at, 3) and out["lattice"].shape == (n_cr, 3, 3)
        assert torch.equal(out["types"], batch.atom_types) and torch.isfinite(out["frac"]).all()


def test_text_changes_output_only_with_text(crystals, batch):
    other = collate(attach_text_embeddings(crystals, torch.randn(len(crystals), D)), self_loops=False)
    for text_dim, changes in ((D, True), (0, False)):
        m = model(crystals, text_dim=text_dim).eval()
        a = m.loss(batch, generator=torch.Generator().manual_seed(0))["loss"]
        b = m.loss(other, generator=torch.Generator().manual_seed(0))["loss"]
        assert (not torch.equal(a, b)) == changes


def test_w1_is_the_conditional_model_bit_for_bit(crystals, batch):
    m = model(crystals).eval()
    spec = spec_from_batch(batch)
    cond, null = m.conditions(spec)
    ref = KLDM.sample_tensors(m, spec, n_steps=3, method="pc", generator=torch.Generator().manual_seed(0),
                              denoiser=lambda *a: m.denoise(*a, cond=cond))
    for out in (sample(m, spec, 1.0), m.sample_tensors(spec, n_steps=3, method="pc", generator=torch.Generator().manual_seed(0))):
        assert all(torch.equal(out[k], ref[k]) for k in ("frac", "lattice", "velocity", "latent"))


def test_w0_is_the_null_model_and_guidance_differs(crystals, batch):
    m = model(crystals).eval()
    spec = spec_from_batch(batch)
    no_text = CompositionSpec(spec.atom_types, spec.num_atoms)
    o0, o0n, o1, o3 = sample(m, spec, 0.0), sample(m, no_text, 0.0), sample(m, spec, 1.0), sample(m, spec, 3.0)
    assert torch.equal(o0["frac"], o0n["frac"]) and torch.equal(o0["lattice"], o0n["lattice"])
    assert not torch.equal(o3["frac"], o1["frac"]) and not torch.equal(o3["frac"], o0["frac"])


def test_network_calls_per_step(crystals, batch):
    m = model(crystals).eval()
    calls = []
    h = m.net.register_forward_hook(lambda *a: calls.append(1))
    counts = {}
    for w in (0.0, 1.0, 2.5):
        calls.clear(); sample(m, spec_from_batch(batch), w, steps=2, method="em"); counts[w] = len(calls)
    h.remove()
    assert counts == {0.0: 2, 1.0: 2, 2.5: 4}


def test_condition_dropout_reaches_null(crystals, batch):
    for p, moves in ((0.5, True), (0.0, False)):
        m = model(crystals, p_uncond=p, text_dropout=0.0).train()
        big = collate(list(crystals) * 8, self_loops=False)           # 64 crystals: P(no drop at p = 0.5) = 2^-64
        m.loss(big, generator=torch.Generator().manual_seed(0))["loss"].backward()
        g = m.conditioner.null.grad
        assert (g is not None and g.abs().sum() > 0) == moves
    m = model(crystals, p_uncond=0.5, text_dropout=0.0).train()
    l1 = m.loss(batch, generator=torch.Generator().manual_seed(3))["loss"]
    l2 = m.loss(batch, generator=torch.Generator().manual_seed(3))["loss"]
    assert torch.equal(l1, l2)                                         # the dropout draw follows the generator


def test_save_load_round_trip(crystals, batch, tmp_path):
    m = model(crystals, p_uncond=0.2).eval()
    path = m.save(tmp_path / "tk.pt")
    m2 = load_model(path)
    assert isinstance(m2, TextKLDM) and m2.config == m.config and m2.config.p_uncond == 0.2
    spec = spec_from_batch(batch)
    a, b = sample(m, spec, 2.0), sample(m2, spec, 2.0)
    assert torch.equal(a["frac"], b["frac"]) and torch.equal(a["lattice"], b["lattice"])
    structures = m2.sample(batch, n_steps=2, guidance_scale=2.0)
    assert len(structures) == batch.num_atoms.numel()


def test_trainer_runs(crystals, tmp_path):
    from crystal_diffusion_book import train as trainer
    m = model(crystals)
    cfg = trainer.preset("kldm", epochs=None, max_steps=3, batch_size=4, threads=1, val_every=0, sample_every=0,
                         progress=False, tensorboard=False, ema_decay=None)
    res = trainer.train(m, crystals, None, cfg, out_dir=tmp_path / "run")
    assert res["step"] == 3 and isinstance(load_model(tmp_path / "run" / "model.pt"), TextKLDM)


def test_dng_guides_type_logits_too(crystals, batch):
    m = model(crystals, task="dng")
    terms = m.loss(batch, generator=torch.Generator().manual_seed(0))
    assert set(terms) == {"v", "l", "h", "loss"} and torch.isfinite(terms["loss"])
    m.eval()
    o1, o3 = sample(m, spec_from_batch(batch), 1.0), sample(m, spec_from_batch(batch), 3.0)
    assert o3["types"].shape == batch.atom_types.shape and int(o3["types"].min()) >= 1 and int(o3["types"].max()) <= 100
    assert not torch.equal(o1["frac"], o3["frac"])
