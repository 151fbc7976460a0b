"Tests of the public API of crystal_diffusion_book.torus: group axioms, round trips, projections, errors."
import math

import pytest
import torch

from crystal_diffusion_book import torus as T

DTYPES = [torch.float32, torch.float64]


def tol(dtype, scale=1.0):
    "A few ulps of numbers of size `scale` in `dtype`."
    return 16 * torch.finfo(dtype).eps * scale


def torus_err(a, b):
    return T.wrap(a - b).abs().max().item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_axioms(dtype):
    g = torch.Generator().manual_seed(0)
    f, h, k = (torch.rand(500, 3, generator=g, dtype=dtype) * 6 - 3 for _ in range(3))
    e = T.identity((500, 3), dtype=dtype)
    assert torus_err(T.compose(T.compose(f, h), k), T.compose(f, T.compose(h, k))) < tol(dtype, 4)
    assert torus_err(T.compose(f, e), f) < tol(dtype, 4)
    assert torus_err(T.compose(f, T.inverse(f)), e) < tol(dtype, 4)
    assert torus_err(T.compose(f, h), T.compose(h, f)) < tol(dtype, 4)
    c = T.compose(f, h)
    assert c.dtype == dtype and bool(((c >= 0) & (c < 1)).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("period", [1.0, 2 * math.pi])
def test_wrap_range_idempotent_same_class(dtype, period):
    g = torch.Generator().manual_seed(1)
    x = torch.cat([(torch.rand(10_000, generator=g, dtype=dtype) - 0.5) * 200 * period,
                   torch.tensor([period / 2, -period / 2, 1.5 * period, -1e-30, 1e-30, 0.0], dtype=dtype)])
    y = T.wrap(x, period)
    assert y.dtype == dtype and y.shape == x.shape
    assert bool((y >= -period / 2).all()) and bool((y < period / 2).all())
    assert torch.equal(T.wrap(y, period), y)
    n = (x - y) / period
    assert (n - n.round()).abs().max().item() < tol(dtype, 100)


def test_wrap_accepts_python_floats_and_edge_values():
    assert T.wrap(0.5).item() == -0.5
    assert T.wrap(-0.5).item() == -0.5
    assert abs(T.wrap(0.75).item() + 0.25) < 1e-7
    m = T.mod1(torch.tensor(-1e-20, dtype=torch.float64)).item()
    assert 0 <= m < 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_log_round_trips(dtype):
    g = torch.Generator().manual_seed(2)
    f = torch.rand(1000, 3, generator=g, dtype=dtype)
    assert torus_err(T.exp(T.log(f)), f) < tol(dtype)
    v = torch.rand(1000, 3, generator=g, dtype=dtype) - 0.5
    assert (T.log(T.exp(v)) - v).abs().max().item() < tol(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_distances_translation_invariant(dtype):
    g = torch.Generator().manual_seed(3)
    f = torch.rand(10, 3, generator=g, dtype=dtype)
    a = torch.rand(3, generator=g, dtype=dtype) * 5
    d0 = T.torus_distance(f[:, None], f[None, :])
    fa = T.compose(f, a)
    d1 = T.torus_distance(fa[:, None], fa[None, :])
    assert (d0 - d1).abs().max().item() < tol(dtype, 8)
    assert torch.allclose(T.shortest_displacement(f[0], f[1]), T.wrap(f[1] - f[0]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_center_projection(dtype):
    g = torch.Generator().manual_seed(4)
    index = torch.tensor([0, 0, 0, 2, 2, 3])          # crystal 1 is empty
    x = torch.randn(6, 3, generator=g, dtype=dtype)
    p = T.center(x, index, num_crystals=4)
    assert p.dtype == dtype and p.shape == x.shape
    assert (T.center(p, index) - p).abs().max().item() < tol(dtype, 4)
    for c in (0, 2, 3):
        assert p[index == c].mean(0).abs().max().item() < tol(dtype, 4)
    assert p[index == 3].abs().max().item() == 0      # a single atom has no mean-free part
    w = torch.randn(6, 3, generator=g, dtype=dtype)
    assert abs(((x - p) * T.center(w, index)).sum().item()) < tol(dtype, 16)
    # one crystal when index is None
    q = T.center(x)
    assert q.mean(0).abs().max().item() < tol(dtype, 4)


def test_circular_and_frechet_means():
    g = torch.Generator().manual_seed(5)
    cluster = T.mod1(0.03 * torch.randn(40, 1, generator=g, dtype=torch.float64))   # straddles 0
    target = T.wrap(cluster).mean()
    assert torus_err(T.frechet_mean(cluster), target) < 1e-12
    assert torus_err(T.circular_mean(cluster), target) < 1e-3
    assert torus_err(cluster.mean(), target) > 0.3
    index = torch.tensor([0, 0, 1, 1, 1])
    f = torch.rand(5, 3, generator=g, dtype=torch.float64)
    a = torch.rand(3, generator=g, dtype=torch.float64)
    assert torus_err(T.circular_mean(T.compose(f, a), index), T.compose(T.circular_mean(f, index), a)) < 1e-12
    assert torus_err(T.frechet_mean(T.compose(f, a), index), T.compose(T.frechet_mean(f, index), a)) < 1e-12
    m, R = T.circular_mean(f, index, return_length=True)
    assert m.shape == (2, 3) and bool(((R >= 0) & (R <= 1 + 1e-12)).all())


def test_value_errors_name_the_argument():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="period"):
        T.wrap(x, period=-1.0)
    with pytest.raises(ValueError, match="period"):
        T.wrap(x, period=0.0)
    with pytest.raises(ValueError, match="index"):
        T.center(x, torch.tensor([0, 0, 1]))              # wrong length
    with pytest.raises(ValueError, match="index"):
        T.center(x, torch.tensor([0.0, 0.0, 1.0, 1.0]))   # not long
    with pytest.raises(ValueError, match="index"):
        T.center(x, torch.tensor([0, 0, -1, 1]))
    with pytest.raises(ValueError, match="num_crystals"):
        T.center(x, torch.tensor([0, 0, 1, 2]), num_crystals=2)
    with pytest.raises(ValueError, match="f"):
        T.compose(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="f_i"):
        T.shortest_displacement(torch.zeros(4, 3), torch.zeros(2, 3))
