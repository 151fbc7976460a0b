"""The trainer fits the data statistics a model needs (`CrystalModel.fit_data`) before the first step: a KLDM whose
lattice statistics were never fitted trains, and ends with the statistics a direct fit gives; a fitted one is left
alone; models without statistics are untouched."""
import pytest
import torch

from crystal_diffusion_book.data import collate, synthetic_dataset
from crystal_diffusion_book.kldm import KLDM, KLDMConfig
from crystal_diffusion_book.model import UniformBaseline
from crystal_diffusion_book.train import TrainConfig, train

NET = dict(hidden_dim=16, num_layers=1, num_freqs=4, time_dim=8)


def _cfg(**kw):
    return TrainConfig(**{**dict(epochs=1, batch_size=16, progress=False, tensorboard=False, val_every=0), **kw})


def test_unfitted_kldm_is_fitted_by_train(tmp_path, one_thread):
    data = synthetic_dataset(n=32, seed=0)
    torch.manual_seed(0)
    m = KLDM(KLDMConfig.make(task="csp", network=NET))
    assert not m.data_fitted
    with pytest.raises(ValueError, match="not fitted"):   # without the hook the first loss call fails
        m.loss(collate(list(data)[:2], self_loops=False))
    res = train(m, data, None, _cfg(), out_dir=tmp_path / "a")
    assert res["step"] == 2 and m.data_fitted
    ref = KLDM(KLDMConfig.make(task="csp", network=NET)).fit_lattice_stats(list(data))
    for name in ("lat_loc", "lat_scale", "lat_count", "lat_coef", "lat_pooled_scale"):
        # float64 means of a few dozen values: the fit's reduction order can move the last bit (1e-15), not more
        assert torch.allclose(getattr(m, name).double(), getattr(ref, name).double(), rtol=1e-12, atol=1e-12), name


def test_fitted_model_is_left_alone(tmp_path, one_thread):
    data = synthetic_dataset(n=32, seed=0)
    other = synthetic_dataset(n=16, seed=1)
    m = KLDM(KLDMConfig.make(task="csp", network=NET)).fit_lattice_stats(list(other))
    before = m.lat_loc.clone()
    train(m, data, None, _cfg(), out_dir=tmp_path / "b")
    assert torch.equal(m.lat_loc, before)              # statistics of `other`, not refitted on `data`
    u = UniformBaseline()
    assert u.data_fitted and u.fit_data(data) is u      # the base class: nothing to fit
