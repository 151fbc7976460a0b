"""Tests of crystal_diffusion_book.metrics against the installed package (real Perov-5 and MP-20 crystals)."""
import os

os.environ.setdefault("CDB_DATA_MIRROR", "/work/shared/data")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure
from scipy.stats import wasserstein_distance

from crystal_diffusion_book import metrics as M


@pytest.fixture(scope="module")
def crystals():
    from crystal_diffusion_book.data import load_structures
    return (load_structures("perov_5", "test", limit=30, progress=False),
            load_structures("mp_20", "test", limit=30, progress=False))


def rocksalt(a=5.64):
    fcc = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return Structure(Lattice.cubic(a), ["Na"] * 4 + ["Cl"] * 4, np.vstack([fcc, (fcc + [0.5, 0, 0]) % 1]))


def test_build_structure_reasons_never_raise():
    L = np.eye(3) * 4
    f = np.array([[0, 0, 0], [0.5, 0.5, 0.5]])
    assert M.build_structure(f, [11, 17], L)[1] == "ok"
    assert M.build_structure(torch.tensor(f, dtype=torch.float32), torch.tensor([11, 17]), torch.tensor(L)[None])[1] == "ok"
    assert M.build_structure(f * np.nan, [11, 17], L)[1] == "non_finite"
    assert M.build_structure(f, [11, 17], np.zeros((3, 3)))[1] == "degenerate_lattice"
    assert M.build_structure(np.zeros((0, 3)), [], L)[1] == "empty"
    assert M.build_structure(f, [0, 17], L)[1] == "bad_atom_type"
    assert M.build_structure(f, [11.5, 17], L)[1] == "bad_atom_type"
    assert M.build_structure(f[:1], [11, 17], L)[1] == "bad_shape"
    assert M.as_structure(None) == (None, "empty")
    assert M.as_structure({"frac_coords": f})[1] == "bad_shape"


def test_structure_validity_rules():
    nacl = rocksalt()
    assert M.structure_validity(nacl) == (True, "ok")
    bad = nacl.copy(); bad.translate_sites([4], [-0.45, 0, 0], frac_coords=True)
    assert M.structure_validity(bad) == (False, "overlap")
    assert M.structure_validity(Structure(Lattice.cubic(0.36), ["Na"], [[0, 0, 0]])) == (False, "small_volume")
    long_cell = Structure(Lattice.tetragonal(5.64, 45.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.06]])
    assert M.structure_validity(long_cell)[0] and M.structure_validity(long_cell, max_length=40)[1] == "long_lattice"
    with pytest.raises(ValueError, match="min_dist"):
        M.structure_validity(nacl, min_dist=-1)


def test_smact_rules():
    assert M.smact_validity({"Na": 1, "Cl": 1}) == (True, "charge_balanced")
    assert M.smact_validity({"Na": 1, "Cl": 2}) == (False, "not_charge_neutral")
    assert M.smact_validity({"Cl": 1, "N": 3}) == (False, "electronegativity")
    assert M.smact_validity({"Fe": 3, "Al": 1}) == (True, "all_metals")
    assert M.smact_validity({"Si": 8}) == (True, "single_element")
    assert M.smact_validity({"Ne": 1, "O": 1}) == (False, "no_oxidation_states")
    assert M.smact_validity([8, 8, 22]) == M.smact_validity(Composition("TiO2"))
    with pytest.raises(ValueError, match="integer"):
        M.smact_validity(Composition("Na0.5Cl"))


def test_gcd_variant_same_decision(crystals):
    for s in crystals[0] + crystals[1]:
        assert M.smact_validity(s, use_gcd=True)[0] == M.smact_validity(s, use_gcd=False)[0]


def test_ground_truth_matches_itself(crystals):
    for S in crystals:
        r = M.csp_metrics(S, S, "ungated")
        assert r.match_rate == 1.0 and r.rmse < 1e-6 and r.n_crystals == len(S)
        s = r.summary()
        assert s["protocol.gate"] == "none" and s["protocol.stol"] == 0.5 and s["k"] == 1


def test_diffcsp_gate_caps_at_valid_share(crystals):
    S = crystals[1]
    r = M.csp_metrics(S, S, "diffcsp")
    share = np.mean([M.crystal_validity(s)["valid"] for s in S])
    assert r.match_rate == share


def test_agrees_with_structure_matcher_pair_by_pair(crystals):
    rng = np.random.default_rng(0)
    gts = crystals[0][:15] + crystals[1][:15]
    preds = []
    for i, g in enumerate(gts):
        if i % 3 == 0: preds.append(M.perturb_structure(g, 0.3, rng))
        elif i % 3 == 1: preds.append(M.shuffle_sites(M.perturb_structure(g, 0.6, rng, strain=0.05), rng))
        else: preds.append(gts[(i + 5) % len(gts)])
    ref = StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)
    direct = np.array([np.nan if (r := ref.get_rms_dist(p, g)) is None else r[0] for p, g in zip(preds, gts)])
    for n_procs in (1, 2):
        ours = M.csp_metrics(preds, gts, "ungated", n_procs=n_procs, chunksize=4)
        assert np.array_equal(np.isfinite(direct), np.isfinite(ours.rms))
        assert np.allclose(direct[np.isfinite(direct)], ours.rms[np.isfinite(ours.rms)], atol=1e-10, rtol=0)


def test_supercell_and_shuffle_match(crystals):
    rng = np.random.default_rng(1)
    S = crystals[1][:10]
    assert M.csp_metrics([s.make_supercell([1, 2, 1], in_place=False) for s in S], S, "ungated").match_rate == 1.0
    assert M.csp_metrics([M.shuffle_sites(s, rng) for s in S], S, "ungated").match_rate == 1.0


def test_best_of_k_is_union(crystals):
    rng = np.random.default_rng(2)
    S = crystals[0][:12]
    samples = [[M.perturb_structure(s, 0.6, rng) for _ in range(3)] for s in S]
    singles = np.stack([M.csp_metrics([x[j] for x in samples], S, "ungated").rms for j in range(3)])
    best = M.csp_metrics(samples, S, "ungated")
    assert best.k == 3
    assert np.array_equal(np.isfinite(best.rms), np.isfinite(singles).any(0))


def test_bad_predictions_counted(crystals):
    g = crystals[0][0]
    preds = [None, {"frac_coords": np.full((5, 3), np.nan), "atom_types": [z.Z for z in g.species], "lattice": g.lattice.matrix}, g]
    r = M.csp_metrics(preds, [g] * 3, "diffcsp")
    assert r.n_matched == 1 and r.reasons == {"pred_empty": 1, "pred_non_finite": 1}
    with pytest.raises(ValueError, match="protocol"):
        M.csp_metrics(preds, [g] * 3, "nonsense")
    with pytest.raises(ValueError, match="same length"):
        M.csp_metrics(preds, [g], "diffcsp")


def test_parallel_map_order_and_errors():
    assert M.parallel_map(lambda i: i + 1, 50, n_procs=2, chunksize=3) == list(range(1, 51))
    assert "error" in M.parallel_map(lambda i: 1 / 0, 1)[0]
    with pytest.raises(ValueError, match="n_procs"):
        M.parallel_map(lambda i: i, 3, n_procs=0)


def test_wasserstein_matches_scipy():
    rng = np.random.default_rng(3)
    for n, m in [(1, 1), (5, 8), (300, 200)]:
        u, v = rng.normal(size=n), rng.exponential(size=m)
        assert abs(M.wasserstein_1d(u, v) - wasserstein_distance(u, v)) <= 1e-12 * max(1, wasserstein_distance(u, v))
        ui, vi = rng.integers(1, 5, n), rng.integers(1, 5, m)
        assert abs(M.wasserstein_1d(ui, vi) - wasserstein_distance(ui, vi)) <= 1e-12
    with pytest.raises(ValueError):
        M.wasserstein_1d([], [1.0])


def test_property_statistics_self_zero(crystals):
    p = M.property_statistics(crystals[0], crystals[0], subset="all")
    assert p.wdist_density == 0.0 and p.wdist_num_elements == 0.0 and p.n_used == len(crystals[0])


def test_coverage_self_and_failures(crystals):
    sf, cf = M.fingerprints(crystals[0][:8], n_procs=2)
    assert sf.shape == (8, 61) and cf.shape == (8, 132) and np.isfinite(sf).all()
    for variant in ("baseline", "tgdmat"):
        for rule in ("separate", "joint"):
            c = M.coverage(sf, cf, sf, cf, dataset="perov_5", variant=variant, rule=rule)
            assert c.cov_recall == 1.0 and c.cov_precision == 1.0
    c = M.coverage(np.vstack([sf, np.full((2, 61), np.nan)]), np.vstack([cf, np.full((2, 132), np.nan)]), sf, cf, dataset="perov_5")
    assert c.cov_recall == 1.0 and c.cov_precision == 0.8 and c.n_generated_failed == 2
    with pytest.raises(ValueError, match="dataset"):
        M.coverage(sf, cf, sf, cf, dataset="nope")


def test_uniqueness_novelty(crystals):
    rng = np.random.default_rng(4)
    S = crystals[0][:8]
    gen = S + [M.shuffle_sites(s, rng) for s in S[:3]] + [None]
    u = M.uniqueness(gen)
    assert u[:8].all() and not u[8:].any()
    nov = M.novelty(gen, S)
    assert not nov.any()
    assert M.novelty(crystals[1][:5], S).all()


def test_hull_and_sun():
    hull = M.build_hull(["LiF"], [-3.0], elemental={"Li": 0.0, "F": 0.0})
    eh, why = M.e_above_hull(["LiF", "Li3F", "NaF"], [-2.9, -1.6, -1.0], hull)
    assert np.allclose(eh[:2], [0.1, -0.1], atol=1e-12) and np.isnan(eh[2]) and why[2] == "element_not_in_hull"
    s = M.sun_metrics(eh, [True, True, True], [True, False, True], threshold=0.15)
    assert s.stable_rate == pytest.approx(2 / 3) and s.sun_rate == pytest.approx(1 / 3) and s.n_no_energy == 1
    with pytest.raises(ValueError, match="equal lengths"):
        M.sun_metrics(eh, [True], [True])
