"""The common model interface (crystal_diffusion_book.model): specs, tensors -> structures, checkpoints, command line."""
import math

import numpy as np
import pytest
import torch
from pymatgen.core import Structure

from crystal_diffusion_book.model import (CompositionSpec, UniformBaseline, UniformBaselineConfig, config_from_dict,
                                          config_to_dict, load_model, parse_formula, spec_from_batch,
                                          spec_from_formulas, structures_from_tensors)


def test_spec_from_formulas_layout():
    spec = spec_from_formulas(["LiFePO4", "NaCl"], n_samples=3)
    assert spec.num_atoms.tolist() == [7, 7, 7, 2, 2, 2]
    assert spec.atom_types.shape == (27,) and spec.atom_types.dtype == torch.long
    assert spec.index.tolist()[:8] == [0] * 7 + [1]
    assert spec.labels[0] == "LiFePO4_0" and spec.labels[-1] == "NaCl_2"
    assert parse_formula("Li2O", formula_units=2) == parse_formula("Li4O2") == [3, 3, 3, 3, 8, 8]


@pytest.mark.parametrize("bad", ["", "LiQq", "Li0.5O", "   "])
def test_bad_formulas_raise(bad):
    with pytest.raises(ValueError, match="formula"):
        spec_from_formulas(bad)


def test_spec_validation():
    with pytest.raises(ValueError, match="num_atoms"):
        CompositionSpec(torch.tensor([3, 8]), torch.tensor([3]))
    with pytest.raises(ValueError, match="n_samples"):
        spec_from_formulas("NaCl", 0)


def test_structures_from_tensors_roundtrip():
    lat = torch.diag(torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64)).expand(2, 3, 3)
    frac = torch.tensor([[0.1, 0.2, 0.3], [1.6, -0.3, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    s = structures_from_tensors(frac, lat, torch.tensor([11, 17, 26]), torch.tensor([0, 0, 1]))
    assert [x.composition.reduced_formula for x in s] == ["NaCl", "Fe"]
    assert np.allclose(s[0].frac_coords[1], [0.6, 0.7, 0.5])
    assert structures_from_tensors(frac[:1], torch.zeros(1, 3, 3), torch.tensor([3]), torch.tensor([0])) == [None]
    with pytest.raises(ValueError, match="frac"):
        structures_from_tensors(frac[:, :2], lat, torch.tensor([11, 17, 26]), torch.tensor([0, 0, 1]))


def test_config_dict_roundtrip_nested():
    from crystal_diffusion_book.diffcsp import DiffCSPConfig
    cfg = DiffCSPConfig.make("dng", network=dict(hidden_dim=16, num_layers=1), dataset="perov_5")
    back = config_from_dict(DiffCSPConfig, config_to_dict(cfg))
    assert back == cfg and back.network.hidden_dim == 16
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict(UniformBaselineConfig, {"nope": 1})


def test_checkpoint_roundtrip_and_sampling(tmp_path):
    m = UniformBaseline(UniformBaselineConfig(init_log_volume_per_atom=2.9))
    path = m.save(tmp_path / "sub" / "m.pt")
    assert path.exists() and not list(path.parent.glob(".*tmp*"))
    ck = torch.load(path, weights_only=True)
    assert ck["class"] == "UniformBaseline" and ck["config"] == {"init_log_volume_per_atom": 2.9} and "version" in ck
    m2 = load_model(path)
    assert isinstance(m2, UniformBaseline) and torch.equal(m2.log_vpa, m.log_vpa)
    spec = spec_from_formulas("SrTiO3", 2)
    a = m.sample(spec, generator=torch.Generator().manual_seed(0))
    b, traj = m2.sample(spec, generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert all(np.allclose(x.frac_coords, y.frac_coords) for x, y in zip(a, b))
    assert math.isclose(a[0].volume / 5, math.exp(2.9), rel_tol=1e-6)
    assert traj["frac"].shape == (1, 10, 3) and traj.structures(-1)[0].composition.reduced_formula == "SrTiO3"


def test_load_refuses_foreign_modules(tmp_path):
    m = UniformBaseline()
    ck = m.checkpoint_dict()
    ck["module"] = "os"
    torch.save(ck, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not part of"):
        load_model(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(ValueError):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_spec_from_batch():
    from crystal_diffusion_book.data import collate, synthetic_dataset
    ds = synthetic_dataset(n=3, seed=1)
    b = collate(list(ds))
    spec = spec_from_batch(b)
    assert torch.equal(spec.atom_types, b.atom_types) and torch.equal(spec.num_atoms, b.num_atoms)


def test_generate_cli(tmp_path, capsys):
    "`cdb generate` (another name for `cdb sample`): CIFs per formula, exit 2 with one line for bad input."
    from crystal_diffusion_book.cli import main
    ck = UniformBaseline().save(tmp_path / "m.pt")
    out = tmp_path / "cifs"
    assert main(["generate", "--checkpoint", str(ck), "--formula", "LiFePO4,NaCl", "--n-samples", "2", "--out", str(out),
                 "--quiet"]) == 0
    names = sorted(p.name for p in out.glob("*.cif"))
    assert names == ["LiFePO4_0.cif", "LiFePO4_1.cif", "NaCl_0.cif", "NaCl_1.cif"]
    assert Structure.from_file(out / "NaCl_1.cif").composition.reduced_formula == "NaCl"
    assert main(["generate", "--checkpoint", str(ck), "--formula", "Xx2", "--out", str(tmp_path / "a")]) == 2
    assert main(["generate", "--checkpoint", str(tmp_path / "no.pt"), "--formula", "NaCl", "--out", str(tmp_path / "b")]) == 2
    (tmp_path / "file").write_text("")
    assert main(["generate", "--checkpoint", str(ck), "--formula", "NaCl", "--out", str(tmp_path / "file")]) == 2
    assert main(["generate"]) == 2          # argparse: missing required options
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_spec_cond_is_checked_and_carried():
    "A per-crystal condition must have one float row per crystal; spec_from_batch takes it from text_emb."
    spec = CompositionSpec(torch.tensor([3, 8, 8]), torch.tensor([1, 2]), cond=torch.zeros(2, 4))
    assert spec.cond.shape == (2, 4)
    with pytest.raises(ValueError, match="cond must be a float tensor of shape \\(2, d\\)"):
        CompositionSpec(torch.tensor([3, 8, 8]), torch.tensor([1, 2]), cond=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="cond must be a float tensor"):
        CompositionSpec(torch.tensor([3, 8, 8]), torch.tensor([1, 2]), cond=torch.zeros(2, 4, dtype=torch.long))


def test_write_cifs_counts_unbuildable_and_checks_labels(tmp_path):
    "One CIF per built structure, None counted, labels must match the structures."
    from crystal_diffusion_book.model import write_cifs
    s = Structure([[4, 0, 0], [0, 4, 0], [0, 0, 4]], ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert write_cifs([s, None, s], ["a", "b", "c"], tmp_path / "out") == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.cif", "c.cif"]
    assert Structure.from_file(tmp_path / "out" / "a.cif").composition.reduced_formula == "NaCl"
    with pytest.raises(ValueError, match="labels must hold one entry per structure"):
        write_cifs([s], ["a", "b"], tmp_path / "x")
