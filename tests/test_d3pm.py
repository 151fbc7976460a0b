"""The public API of `crystal_diffusion_book.d3pm`: stochastic matrices, products, Bayes posteriors,
sampling, argument validation and dtype handling (the chapter nbs/15_d3pm.ipynb derives and checks more)."""
import math

import pytest
import torch
import torch.nn.functional as F

from crystal_diffusion_book.d3pm import D3PM, MaskingDiffusion, categorical_kl, ddpm_cosine_betas

EPS64 = torch.finfo(torch.float64).eps
KINDS = [("absorbing", "cosine"), ("absorbing", "linear"), ("absorbing", "tgdmat"),
         ("uniform", "cosine"), ("uniform", "linear"), ("uniform", "tgdmat")]


@pytest.mark.parametrize("kind,schedule", KINDS)
def test_rows_sum_to_one_and_qbar_is_the_product(kind, schedule):
    d = D3PM(7, 30, kind=kind, schedule=schedule)
    S = d.num_states
    Qs = d.Q(torch.arange(1, 31))
    Qbs = d.Qbar(torch.arange(0, 31))
    assert Qs.shape == (30, S, S) and Qbs.shape == (31, S, S)
    assert torch.all(Qs >= 0) and torch.all(Qbs >= 0)
    assert (Qs.sum(-1) - 1).abs().max() < 100 * EPS64
    assert (Qbs.sum(-1) - 1).abs().max() < 100 * EPS64
    prod = torch.eye(S, dtype=torch.float64)
    assert torch.equal(Qbs[0], prod)
    for t in range(1, 31):
        prod = prod @ d.Q(t)
        assert (prod - d.Qbar(t)).abs().max() < 1000 * EPS64


def test_mask_token_and_states():
    d = D3PM(100, 1000)
    assert d.kind == "absorbing" and d.mask_token == 100 and d.num_states == 101
    assert d.alpha_bar[-1] == 0 and d.alpha_bar[0] == 1
    assert torch.all(d.Qbar(1000)[:, 100] == 1)          # everything is masked at t = T
    u = D3PM(100, 1000, kind="uniform")
    assert u.mask_token is None and u.num_states == 100
    assert (u.Qbar(1000) - 1 / 100).abs().max() < 1e-12
    r = D3PM(100, 1000, schedule="tgdmat", absorbing_state=99)
    assert r.mask_token == 99 and r.num_states == 100
    assert torch.equal(r.Q(1), torch.eye(100, dtype=torch.float64))   # TGDMat's off-by-one: Q_1 = I


@pytest.mark.parametrize("kind,schedule", KINDS)
def test_posterior_is_bayes(kind, schedule):
    d = D3PM(5, 12, kind=kind, schedule=schedule)
    S = d.num_states
    x0 = torch.arange(5).repeat_interleave(S)
    xt = torch.arange(S).repeat(5)
    for t in range(1, 13):
        joint = d.Qbar(t - 1)[x0] * d.Q(t)[:, xt].T            # (pairs, S): q(x_{t-1}, x_t | x_0)
        z = joint.sum(-1, keepdim=True)
        ok = z[:, 0] > 0
        want = joint[ok] / z[ok]
        got = d.q_posterior(F.one_hot(x0, 5).double(), xt, t)[ok]
        assert (got - want).abs().max() < 1000 * EPS64
        # batched t gives the same answer
        got_b = d.q_posterior(F.one_hot(x0, 5).double(), xt, torch.full(xt.shape, t))[ok]
        assert torch.equal(got, got_b)
        assert (d.q_posterior(torch.full((len(x0), 5), 0.2, dtype=torch.float64), xt, t).sum(-1) - 1).abs().max() < 1e-12


def test_q_probs_rows_and_q_sample_frequencies():
    d = D3PM(6, 40, kind="absorbing")
    x0 = torch.tensor([0, 3, 5])
    p = d.q_probs(x0, 20)
    assert p.shape == (3, 7)
    assert (p.sum(-1) - 1).abs().max() < 1e-14
    ab = d.alpha_bar[20].item()
    assert abs(p[1, 3].item() - ab) < 1e-14 and abs(p[1, 6].item() - (1 - ab)) < 1e-14
    g = torch.Generator().manual_seed(0)
    n = 100_000
    xt = d.q_sample(torch.full((n,), 3), 20, generator=g)
    frac_masked = (xt == d.mask_token).double().mean().item()
    se = math.sqrt(ab * (1 - ab) / n)
    assert abs(frac_masked - (1 - ab)) < 5 * se
    assert set(xt.unique().tolist()) <= {3, 6}
    # t per row
    tt = torch.tensor([0, 40, 40])
    assert torch.equal(d.q_sample(x0, tt, generator=g)[1:], torch.tensor([6, 6]))
    assert d.q_sample(x0, tt, generator=g)[0] == 0


def test_plugin_equals_mixture_for_absorbing_only():
    g = torch.Generator().manual_seed(1)
    for kind, same in (("absorbing", True), ("uniform", False)):
        d = D3PM(6, 30, kind=kind)
        p0 = torch.softmax(torch.randn(200, 6, generator=g, dtype=torch.float64), -1)
        xt = torch.randint(0, d.num_states, (200,), generator=g)
        t = torch.randint(2, 31, (200,), generator=g)
        diff = (d.q_posterior(p0, xt, t) - d.q_posterior(p0, xt, t, form="plugin")).abs().max().item()
        assert (diff < 1e-12) if same else (diff > 1e-3)


def test_float32_follows_input_dtype():
    d = D3PM(10, 100)
    p0 = torch.softmax(torch.randn(8, 10), -1)
    xt = torch.full((8,), d.mask_token)
    p32 = d.q_posterior(p0, xt, 50)
    p64 = d.q_posterior(p0.double(), xt, 50)
    assert p32.dtype == torch.float32 and p64.dtype == torch.float64
    assert (p32.double() - p64).abs().max() < 1e-6


def test_hybrid_loss_and_sampling_run():
    d = D3PM(4, 20)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, 4, (16, 3), generator=g)
    t = torch.randint(1, 21, (16, 1), generator=g)
    xt = d.q_sample(x0, t, generator=g)
    logits = torch.zeros(16, 3, 4, requires_grad=True)
    loss, ce, vb = d.hybrid_loss(logits, x0, xt, t)
    loss.backward()
    assert abs(ce.item() - math.log(4)) < 1e-6 and vb.item() >= 0 and logits.grad is not None
    # a perfect denoiser of a point mass returns that point mass from the all-mask start
    target = torch.tensor([1, 3, 0])
    fn = lambda x, t: F.one_hot(target, 4).double().expand(x.shape[0], -1, -1)
    for skip in (False, True):
        out = d.sample(fn, (5, 3), generator=g, skip_idle=skip)
        assert torch.equal(out, target.expand(5, -1))


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="num_classes"):
        D3PM(1, 10)
    with pytest.raises(ValueError, match="timesteps"):
        D3PM(5, 0)
    with pytest.raises(ValueError, match="kind"):
        D3PM(5, 10, kind="gaussian")
    with pytest.raises(ValueError, match="schedule"):
        D3PM(5, 10, schedule="quadratic")
    with pytest.raises(ValueError, match="absorbing_state"):
        D3PM(5, 10, absorbing_state=5)
    d = D3PM(5, 10)
    with pytest.raises(ValueError, match="t must lie"):
        d.Q(0)
    with pytest.raises(ValueError, match="t must lie"):
        d.Qbar(11)
    with pytest.raises(ValueError, match="x0"):
        d.q_probs(torch.tensor([5]), 3)              # the mask token is not a clean class
    with pytest.raises(ValueError, match="x0"):
        d.q_sample(torch.tensor([0.5]), 3)
    with pytest.raises(ValueError, match="x_t"):
        d.q_posterior(torch.full((1, 5), 0.2), torch.tensor([6]), 3)
    with pytest.raises(ValueError, match="x0_probs"):
        d.q_posterior(torch.full((1, 4), 0.25), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="t must lie"):
        d.q_posterior(torch.full((1, 5), 0.2), torch.tensor([0]), 0)


def test_masking_diffusion_matches_absorbing_d3pm():
    md = MaskingDiffusion(6, "cosine")
    assert md.mask_token == 6
    assert abs(md.alpha(0.0).item() - (1 - 1e-4)) < 1e-15 and abs(md.alpha(1.0).item() - 1e-4) < 1e-15
    # the derivative is the derivative
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    fd = (md.alpha(t + h) - md.alpha(t - h)) / (2 * h)
    assert (fd - md.dalpha(t)).abs().max() < 1e-8
    assert torch.all(md.weight(t) > 0)
    T = 100
    d = D3PM(6, T, "absorbing", schedule=lambda s: md.alpha(s))
    k = torch.arange(2, T + 1)
    p = d.q_posterior(F.one_hot(torch.zeros(len(k), dtype=torch.long), 6).double(), torch.full((len(k),), 6), k)[:, 0]
    a_t, a_s = md.alpha(k.double() / T), md.alpha((k.double() - 1) / T)
    assert (p - (a_s - a_t) / (1 - a_t)).abs().max() < 1e-13
    with pytest.raises(ValueError, match="schedule"):
        MaskingDiffusion(6, "poly3")
    with pytest.raises(ValueError, match="t must lie"):
        md.alpha(1.5)


def test_ddpm_betas_and_kl():
    b = ddpm_cosine_betas(1000)
    assert b.shape == (1001,) and b[0] == 0 and b[1:].min() >= 1e-4 and b.max() <= 0.9999
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    assert abs(categorical_kl(p, q).item() - math.log(2)) < 1e-15
    assert categorical_kl(p, p).item() == 0
