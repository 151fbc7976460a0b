"Tests of crystal_diffusion_book.cspnet: symmetries, batch independence, the literal oracle, sizes, errors."
import pytest
import torch

from crystal_diffusion_book import cspnet as C
from crystal_diffusion_book.data import collate, fully_connected_edges, synthetic_dataset

SMALL = dict(hidden_dim=32, num_layers=2, num_freqs=8, time_dim=16)
# float64: the two sides of every identity round differently, by a few hundred ulps at most
# (ten dense layers); float32 likewise, relative to its own eps.
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


@pytest.fixture(scope="module")
def crystals():
    return synthetic_dataset(n=10, seed=3)


def rel(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def random_orthogonal(det, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def make(kldm, dtype, crystals, seed=0):
    "A small network, a batch and extra inputs (velocity, latent) for the DiffCSP or KLDM variant."
    torch.manual_seed(seed)
    cfg = C.kldm_config(**SMALL) if kldm else C.CSPNetConfig(type_head=True, **SMALL)
    net = C.CSPNet(cfg).to(dtype)
    b = collate(list(crystals), self_loops=not kldm)
    g = torch.Generator().manual_seed(seed + 1)
    n_c = b.num_graphs
    if kldm:
        t = torch.rand(n_c, generator=g, dtype=dtype)
        lat = torch.randn(n_c, 6, generator=g, dtype=dtype)
        vel = torch.randn(b.num_nodes, 3, generator=g, dtype=dtype)
    else:
        t, lat, vel = torch.randint(1, 1001, (n_c,), generator=g), b.lattice.to(dtype), None
    return net, b, t, lat, vel


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kldm", [False, True])
def test_permutation_translation_independence(dtype, kldm, crystals):
    net, b, t, lat, vel = make(kldm, dtype, crystals)
    frac = b.frac_coords.to(dtype)
    out = net(t, b.atom_types, frac, lat, b.batch, b.edge_index, velocity=vel)
    # permutation inside crystals
    g = torch.Generator().manual_seed(5)
    perm = torch.argsort(b.batch.double() + 0.5 * torch.rand(b.num_nodes, generator=g, dtype=torch.float64))
    out_p = net(t, b.atom_types[perm], frac[perm], lat, b.batch[perm],
                fully_connected_edges(b.num_atoms, self_loops=not kldm),
                velocity=None if vel is None else vel[perm])
    for k in out:
        ref = out[k] if k == "lattice" else out[k][perm]
        assert rel(out_p[k], ref) < TOL[dtype], k
    # common torus translation of each crystal
    shift = torch.rand(b.num_graphs, 3, generator=g, dtype=dtype)[b.batch]
    out_s = net(t, b.atom_types, (frac + shift) % 1.0, lat, b.batch, b.edge_index, velocity=vel)
    for k in out:
        assert rel(out_s[k], out[k]) < TOL[dtype], k
    # changing crystal 0 leaves the others alone, and does change crystal 0
    sel = b.batch == 0
    frac_c = frac.clone()
    frac_c[sel] = torch.rand(int(sel.sum()), 3, generator=g, dtype=dtype)
    out_c = net(t, b.atom_types, frac_c, lat, b.batch, b.edge_index, velocity=vel)
    assert rel(out_c["coord"][~sel], out["coord"][~sel]) < TOL[dtype]
    assert rel(out_c["lattice"][1:], out["lattice"][1:]) < TOL[dtype]
    if int(sel.sum()) > 1:
        assert rel(out_c["coord"][sel], out["coord"][sel]) > 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("det", [1, -1])
def test_orthogonal_frame_change(dtype, det, crystals):
    net, b, t, lat, _ = make(False, dtype, crystals)
    Q = random_orthogonal(det, 7, dtype)
    frac = b.frac_coords.to(dtype)
    out = net(t, b.atom_types, frac, lat, b.batch, b.edge_index)
    out_q = net(t, b.atom_types, frac, lat @ Q, b.batch, b.edge_index)
    assert rel(out_q["coord"], out["coord"]) < TOL[dtype]
    assert rel(out_q["types"], out["types"]) < TOL[dtype]
    assert rel(out_q["lattice"], out["lattice"] @ Q) < TOL[dtype]
    assert rel(out_q["lattice"], out["lattice"]) > 1e-2      # the lattice output really transforms


def test_batch_equals_separate_passes(crystals):
    net, b, t, lat, _ = make(False, torch.float64, crystals)
    out = net(t, b.atom_types, b.frac_coords, lat, b.batch, b.edge_index)
    coords, lats = [], []
    for c, d in enumerate(crystals):
        one = collate([d])
        o = net(t[c:c + 1], one.atom_types, one.frac_coords, one.lattice, one.batch, one.edge_index)
        coords.append(o["coord"]); lats.append(o["lattice"])
    assert rel(torch.cat(coords), out["coord"]) < 1e-10
    assert rel(torch.cat(lats), out["lattice"]) < 1e-10


@pytest.mark.parametrize("kldm", [False, True])
def test_factorised_equals_literal(kldm, crystals):
    net, b, t, lat, vel = make(kldm, torch.float64, crystals)
    fast = net(t, b.atom_types, b.frac_coords, lat, b.batch, b.edge_index, velocity=vel)
    slow = C.naive_cspnet_forward(net, t, b.atom_types, b.frac_coords, lat, b.batch, velocity=vel)
    for k in fast:
        assert rel(fast[k], slow[k]) < 1e-12, k
    if kldm:   # centred per-atom output
        from torch_geometric.utils import scatter
        assert float(scatter(fast["coord"].detach(), b.batch, dim=0, reduce="mean").abs().max()) < 1e-12


def test_onehot_input_matches_embedding(crystals):
    "A hard one-hot through the linear type map equals a table lookup with the same weights."
    torch.manual_seed(0)
    emb = C.CSPNet(**SMALL).double()
    lin = C.CSPNet(type_input="onehot", **SMALL).double()
    sd = emb.state_dict()
    sd["type_embedding.weight"] = sd["type_embedding.weight"].T.contiguous()
    lin.load_state_dict(sd)
    b = collate(list(crystals))
    onehot = torch.nn.functional.one_hot(b.atom_types - 1, 100).double()
    t = torch.full((b.num_graphs,), 500)
    a = emb(t, b.atom_types, b.frac_coords, b.lattice, b.batch, b.edge_index)
    c = lin(t, onehot, b.frac_coords, b.lattice, b.batch, b.edge_index)
    assert rel(c["coord"], a["coord"]) < 1e-12 and rel(c["lattice"], a["lattice"]) < 1e-12


def test_condition_and_mixed_dtypes(crystals):
    torch.manual_seed(0)
    net = C.CSPNet(cond_dim=4, **SMALL)                       # float32 network, float64 inputs
    b = collate(list(crystals))
    cond = torch.randn(b.num_graphs, 4, dtype=torch.float64)
    out = net(10.0, b.atom_types, b.frac_coords, b.lattice, b.batch, b.edge_index, cond=cond)
    assert out["coord"].dtype == torch.float32 and out["coord"].shape == (b.num_nodes, 3)
    assert out["lattice"].shape == (b.num_graphs, 3, 3)
    cond2 = cond.clone(); cond2[1] += 1.0
    out2 = net(10.0, b.atom_types, b.frac_coords, b.lattice, b.batch, b.edge_index, cond=cond2)
    sel = b.batch == 1
    assert rel(out2["coord"][~sel], out["coord"][~sel]) < 1e-6
    assert rel(out2["coord"][sel], out["coord"][sel]) > 1e-4


def test_parameter_counts():
    assert C.count_parameters(C.CSPNet()) == 12_294_656            # DiffCSP's CSP network, ~12.3 M
    assert C.count_parameters(C.CSPNet(C.kldm_config())) == 14_924_800   # KLDM's CSPVNet, ~14.9 M


def test_feature_maps():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(50, 3, generator=g, dtype=torch.float64) * 4 - 2
    psi = C.fourier_features(d, 16)
    assert psi.shape == (50, 96)
    assert (C.fourier_features(d + torch.randint(-3, 4, (50, 3), generator=g), 16) - psi).abs().max() < 1e-12
    assert torch.allclose(psi[:, :48].pow(2) + psi[:, 48:].pow(2), torch.ones(50, 48, dtype=torch.float64))
    L = torch.randn(4, 3, 3, generator=g, dtype=torch.float64)
    Q = random_orthogonal(-1, 1, torch.float64)
    assert (C.lattice_gram(L @ Q) - C.lattice_gram(L)).abs().max() < 1e-12
    te = C.sinusoidal_time_embedding(torch.tensor([1, 1000]), 256)
    assert te.shape == (2, 256) and abs(float(te[0, 0]) - float(torch.sin(torch.tensor(1.0)))) < 1e-6


def test_errors(crystals):
    with pytest.raises(ValueError, match="hidden_dim"):
        C.CSPNetConfig(hidden_dim=0)
    with pytest.raises(ValueError, match="type_input"):
        C.CSPNetConfig(type_input="bits")
    with pytest.raises(ValueError, match="time_dim"):
        C.CSPNetConfig(time_dim=7)
    with pytest.raises(ValueError, match="d must"):
        C.fourier_features(torch.zeros(4, 2), 8)
    with pytest.raises(ValueError, match="lattice"):
        C.lattice_gram(torch.zeros(3, 3))
    net = C.CSPNet(**SMALL).double()
    b = collate(list(crystals), self_loops=False)           # KLDM's graph for DiffCSP's network
    with pytest.raises(ValueError, match="self-loops"):
        net(1, b.atom_types, b.frac_coords, b.lattice, b.batch, b.edge_index)
    b = collate(list(crystals))
    with pytest.raises(ValueError, match="velocity"):
        net(1, b.atom_types, b.frac_coords, b.lattice, b.batch, b.edge_index, velocity=b.frac_coords)
    with pytest.raises(ValueError, match="cond"):
        net(1, b.atom_types, b.frac_coords, b.lattice, b.batch, b.edge_index, cond=torch.zeros(b.num_graphs, 2))
    with pytest.raises(ValueError, match="t must"):
        net(torch.ones(3), b.atom_types, b.frac_coords, b.lattice, b.batch, b.edge_index)
    with pytest.raises(ValueError, match="atom_types"):
        net(1, b.atom_types + 200, b.frac_coords, b.lattice, b.batch, b.edge_index)


@pytest.mark.parametrize("kldm", [False, True])
def test_folded_layer_equals_todays_unfolded_forward_and_gradients(kldm, crystals):
    "The folded, sync-free forward against a verbatim copy of the previous one (bench/legacy_cspnet.py), float64."
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from legacy_cspnet import legacy
    net, b, t, lat, vel = make(kldm, torch.float64, crystals)
    res = []
    for old in (True, False):
        net.zero_grad(set_to_none=True)
        with legacy(old):
            out = net(t, b.atom_types, b.frac_coords, lat, b.batch, b.edge_index, velocity=vel)
        sum(v.pow(2).sum() for v in out.values()).backward()
        res.append(({k: v.detach() for k, v in out.items()}, {n: p.grad.clone() for n, p in net.named_parameters()}))
    (o_old, g_old), (o_new, g_new) = res
    # equal in exact arithmetic (sums regrouped): a few ulps per layer, 1e-12 leaves three orders of margin
    assert max(rel(o_new[k], o_old[k]) for k in o_old) < 1e-12
    assert max(float((g_new[k] - g_old[k]).abs().max() / g_old[k].abs().max().clamp(min=1e-300)) for k in g_old) < 1e-12
    assert C.CSPNet.forward is not None and "legacy" not in C.CSPLayer.forward.__module__   # the patch is undone
