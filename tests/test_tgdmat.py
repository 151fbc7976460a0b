"""TGDMat (crystal_diffusion_book.tgdmat): configuration, the text condition, CSP and DNG losses, both type
samplers, guidance identities and checkpoints. The chapter nbs/61_tgdmat.ipynb checks more on real prompts."""
import warnings

import pytest
import torch

from crystal_diffusion_book.data import collate, synthetic_dataset
from crystal_diffusion_book.diffcsp import DiffCSP
from crystal_diffusion_book.model import load_model, spec_from_batch
from crystal_diffusion_book.text import attach_text_embeddings
from crystal_diffusion_book.tgdmat import AbsorbingTypes, TGDMat, TGDMatConfig, spec_from_text

TINY = dict(hidden_dim=16, num_layers=1, num_freqs=4, time_dim=8)
D = 8   # a small text width keeps the tests fast


def make(task="csp", **kw):
    kw.setdefault("text_dim", D)
    torch.manual_seed(0)
    return TGDMat(TGDMatConfig.make(task, network=TINY, dataset="perov_5", **kw))


@pytest.fixture(scope="module")
def data():
    ds = list(synthetic_dataset(n=5, seed=0))
    return attach_text_embeddings(ds, torch.randn(5, D, generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def batch(data):
    return collate(data)


def test_defaults_are_the_reference():
    c = TGDMatConfig()
    assert (c.task, c.T, c.sigma_begin, c.sigma_end, c.cosine_s) == ("csp", 1000, 0.005, 0.5, 0.008)
    assert (c.cost_lattice, c.cost_coord, c.cost_type, c.type_vb_weight) == (1, 1, 1, 0.001)
    assert (c.text_dim, c.text_out_dim, c.text_dropout, c.p_uncond, c.types, c.step_lr) == (384, 256, 0.1, 0.0, "corrected", None)
    n = c.network
    assert (n.hidden_dim, n.num_layers, n.num_freqs, n.time_dim, n.cond_dim) == (512, 6, 128, 256, 256)
    d = TGDMatConfig.make("dng", types="published", text_dim=768)
    assert d.network.type_head and not d.network.mask_token and d.network.type_input == "embedding"
    assert TGDMatConfig.make("dng").network.mask_token
    assert TGDMatConfig.make(text_out_dim=64).network.cond_dim == 64


@pytest.mark.parametrize("kw, match", [
    (dict(types="exact"), "types"),
    (dict(type_schedule="sqrt"), "type_schedule"),
    (dict(types="published", type_schedule="cosine"), "type_schedule"),
    (dict(text_dim=-1), "text_dim"),
    (dict(text_out_dim=0), "text_out_dim"),
    (dict(p_uncond=1.0), "p_uncond"),
    (dict(text_dropout=1.0), "text_dropout"),
    (dict(type_vb_weight=-1.0), "type_vb_weight"),
    (dict(task="gen"), "task"),
    (dict(sigma_begin=0.6), "sigma"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        TGDMatConfig(**kw)


def test_network_must_match_the_task():
    with pytest.raises(ValueError, match="make"):
        TGDMatConfig(task="dng")                           # the CSP network has no type head
    with pytest.raises(ValueError, match="cond_dim"):
        TGDMatConfig(text_out_dim=128)                     # the network still expects 256
    with pytest.raises(ValueError, match="mask_token"):
        TGDMatConfig.make("dng", types="published", network=dict(mask_token=True))


def test_fusion_width_and_parameter_count():
    ref = TGDMat(TGDMatConfig(text_dim=768))
    assert ref.net.node_in.in_features == 512 + 256 + 256
    n = sum(p.numel() for p in ref.parameters())
    assert n == sum(p.numel() for p in DiffCSP().parameters()) + 394_496 == 12_689_152


def test_missing_text_is_refused(data):
    bare = collate([d.clone() for d in data])
    del bare.text_emb
    with pytest.raises(ValueError, match="text_emb"):
        make().loss(bare)
    spec = spec_from_batch(bare)
    with pytest.raises(ValueError, match="spec.cond"):
        make().sample_tensors(spec, n_steps=2)
    blind = make(text_dim=0)                               # no text: the batch may lack it
    assert torch.isfinite(blind.loss(bare)["loss"])


@pytest.mark.parametrize("task, types", [("csp", "corrected"), ("dng", "corrected"), ("dng", "published")])
def test_loss_terms(batch, task, types):
    m = make(task, types=types)
    terms = m.loss(batch, generator=torch.Generator().manual_seed(0))
    want = {"lattice", "coord", "loss"} | ({"type", "type_ce", "type_vb"} if task == "dng" else set())
    assert set(terms) == want and all(v.ndim == 0 and torch.isfinite(v) for v in terms.values())
    total = terms["lattice"] + terms["coord"] + (terms["type"] if task == "dng" else 0)
    assert torch.allclose(terms["loss"], total)
    if task == "dng":
        assert torch.allclose(terms["type"], terms["type_ce"] + 0.001 * terms["type_vb"])
    terms["loss"].backward()
    assert m.conditioner.head.projection.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="t must"):
        m.loss(batch, t=torch.zeros(batch.num_atoms.numel(), dtype=torch.long))


def test_loss_is_seeded_and_reads_the_text(batch):
    m = make("dng").eval()
    a = m.loss(batch, generator=torch.Generator().manual_seed(3))["loss"]
    assert a == m.loss(batch, generator=torch.Generator().manual_seed(3))["loss"]
    other = batch.clone()
    other.text_emb = batch.text_emb.flip(0)
    assert a != m.loss(other, generator=torch.Generator().manual_seed(3))["loss"]
    blind = make("dng", text_dim=0).eval()
    assert blind.loss(batch, generator=torch.Generator().manual_seed(3))["loss"] == \
        blind.loss(other, generator=torch.Generator().manual_seed(3))["loss"]


def test_forward_types_at_T():
    for types, absorbing in [("corrected", 100), ("published", 99)]:
        m = make("dng", types=types)
        Z = torch.arange(1, 51).repeat(20)                 # (1000,)
        x = m.noise_types(Z, torch.full_like(Z, 1000), torch.Generator().manual_seed(0))
        assert int((x != absorbing).sum()) <= 1            # ᾱ_T = 2.4e-6
        x1 = m.noise_types(Z, torch.ones_like(Z), torch.Generator().manual_seed(0))
        assert torch.equal(x1, Z - 1)                      # Q_1 = I


@pytest.mark.parametrize("task, types", [("csp", "corrected"), ("dng", "corrected"), ("dng", "published")])
def test_sampling_shapes(batch, task, types):
    m = make(task, types=types)
    spec = spec_from_batch(batch)
    out = m.sample_tensors(spec, n_steps=5, generator=torch.Generator().manual_seed(0), return_trajectory=True)
    n_at, n_cr = int(batch.num_atoms.sum()), batch.num_atoms.numel()
    assert out["frac"].shape == (n_at, 3) and out["lattice"].shape == (n_cr, 3, 3) and out["types"].shape == (n_at,)
    assert torch.isfinite(out["frac"]).all() and torch.isfinite(out["lattice"]).all()
    assert int(out["types"].min()) >= 1 and int(out["types"].max()) <= 100
    tr = out["trajectory"]
    if task == "csp":
        assert torch.equal(out["types"], batch.atom_types)
    else:
        assert tr["masked"].shape == (tr.n_frames, n_at)
        if types == "corrected":                           # all mask -> none left
            assert tr["masked"][0].all() and not tr["masked"][-1].any()
        else:                                              # uniform start: no class 99 (which may be drawn at the end)
            assert not tr["masked"][0].any()
    structures = m.sample(batch, n_steps=3, generator=torch.Generator().manual_seed(0))
    assert len(structures) == n_cr


def test_dng_ignores_the_spec_types(batch):
    m = make("dng")
    spec = spec_from_text(batch.text_emb, batch.num_atoms)
    a = m.sample_tensors(spec, n_steps=4, generator=torch.Generator().manual_seed(1))
    b = m.sample_tensors(spec_from_batch(batch), n_steps=4, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a[k], b[k]) for k in ("frac", "lattice", "types"))
    with pytest.raises(ValueError, match="num_atoms"):
        spec_from_text(batch.text_emb, [5, 5])


def test_guidance_identities(batch):
    m = make("dng").eval()
    spec = spec_from_batch(batch)
    g = lambda: torch.Generator().manual_seed(2)
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in ("frac", "lattice", "types"))
    w1 = m.sample_tensors(spec, n_steps=6, generator=g())
    cond = m.condition(spec.cond, spec.n_crystals)
    direct = DiffCSP.sample_tensors(m, spec, n_steps=6, generator=g(), denoiser=lambda *a: m.denoise(*a, cond=cond),
                                    type_process=AbsorbingTypes(*m.type_grid(6)))
    assert same(w1, direct)
    with pytest.warns(UserWarning, match="p_uncond"):
        w0 = m.sample_tensors(spec, n_steps=6, generator=g(), guidance_scale=0.0)
    dropped = m.sample_tensors(spec, n_steps=6, generator=g(), drop=torch.ones(spec.n_crystals, dtype=torch.bool))
    assert same(w0, dropped) and not same(w0, w1)
    guided = make("dng", p_uncond=0.1).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # trained with condition dropout: no warning
        guided.sample_tensors(spec, n_steps=3, generator=g(), guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        m.sample_tensors(spec, n_steps=3, guidance_scale=float("nan"))


def test_condition_dropout_is_seeded(batch):
    m = make("csp", p_uncond=0.5, text_dropout=0.0).train()
    a = m.loss(batch, generator=torch.Generator().manual_seed(4))["loss"]
    assert a == m.loss(batch, generator=torch.Generator().manual_seed(4))["loss"]


@pytest.mark.parametrize("types", ["corrected", "published"])
def test_save_load_round_trip(tmp_path, batch, types):
    m = make("dng", types=types)
    with torch.no_grad():
        m.conditioner.null.normal_()                      # a non-default parameter must travel too
    back = load_model(m.save(tmp_path / "tgdmat.pt"))
    assert type(back) is TGDMat and back.config == m.config
    spec = spec_from_batch(batch)
    a = m.sample_tensors(spec, n_steps=4, generator=torch.Generator().manual_seed(5))
    b = back.sample_tensors(spec, n_steps=4, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in ("frac", "lattice", "types"))
    assert torch.equal(back.conditioner.null, m.conditioner.null)
