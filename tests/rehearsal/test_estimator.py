"""The reference-sample estimator f_c(u) = f(u) − f'(1)(u − 1), y ~ ρ, against float64 autograd on small
categoricals (computed exactly as a sum over the categorical), DPH-RL's generator identities, and the clamps."""

from __future__ import annotations

import math

import pytest
import torch

import trl_divergences as td
from trl_divergences.rehearsal import REHEARSAL_DIVERGENCES, build_rehearsal_loss

CASES = [(name, {}) for name in td.list_divergences() if name != "lp_reg"] + [
    ("js", {"beta": 0.3}),
    ("alpha", {"alpha": 0.8}),
    ("alpha", {"alpha": 0.2}),
]


def _categoricals(seed: int, positions: int = 3, vocab: int = 7):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(positions, vocab, generator=gen, dtype=torch.float64).requires_grad_()
    ref = torch.randn(positions, vocab, generator=gen, dtype=torch.float64).log_softmax(-1)
    return z, ref


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}{k or ''}" for n, k in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_expectation_under_reference_is_exact_divergence_and_gradient(name, kwargs, seed):
    if name not in td.list_divergences():
        pytest.skip(f"{name} not registered")
    div = td.get_divergence(name, **kwargs)
    z, lr = _categoricals(seed)
    lp = z.log_softmax(-1)
    # teacher-forced: every position's token drawn from ρ; the expectation is the ρ-weighted sum over the vocabulary
    expected = (lr.exp() * div.reference_sampled(lp, lr)).sum()
    exact = div.rows(lp, lr).sum()
    assert expected.dtype == torch.float64
    torch.testing.assert_close(expected, exact, rtol=1e-10, atol=1e-12)
    (g_est,) = torch.autograd.grad(expected, z)
    (g_exact,) = torch.autograd.grad(div.rows(z.log_softmax(-1), lr).sum(), z)
    torch.testing.assert_close(g_est, g_exact, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}{k or ''}" for n, k in CASES])
def test_estimator_is_nonnegative_and_zero_at_reference(name, kwargs):
    div = td.get_divergence(name, **kwargs)
    _, lr = _categoricals(3)
    lp = torch.randn(3, 7, dtype=torch.float64).log_softmax(-1)
    assert (div.reference_sampled(lp, lr) >= -1e-12).all()
    torch.testing.assert_close(div.reference_sampled(lr, lr), torch.zeros_like(lr))


def _log_u(n: int = 41) -> torch.Tensor:
    return torch.linspace(-6.0, 6.0, n, dtype=torch.float64)


def test_dphrl_generator_identities():
    log_u = _log_u()
    u, zero = log_u.exp(), torch.zeros_like(log_u)
    fkl = td.get_divergence("forward_kl").reference_sampled(log_u, zero)
    torch.testing.assert_close(fkl, u - 1 - log_u)
    js = td.get_divergence("js", beta=0.5).reference_sampled(log_u, zero)
    torch.testing.assert_close(2 * js, u * log_u - (u + 1) * torch.log((u + 1) / 2))  # DPH-RL's JS generator = 2×
    for ours in (0.8, 0.5, 0.3):
        theirs = 1.0 - ours
        alpha = td.get_divergence("alpha", alpha=ours).reference_sampled(log_u, zero)
        official = (u ** (1 - theirs) - (1 - theirs) * u - theirs) / (theirs * (theirs - 1))
        torch.testing.assert_close(alpha, official)


def test_forward_kl_rehearsal_clamps_follow_the_official_code():
    loss = build_rehearsal_loss("forward_kl")
    assert (loss.log_ratio_clamp, loss.value_clamp) == (20.0, 10.0)
    ref = torch.zeros(4, dtype=torch.float64)
    lp = torch.tensor([-30.0, -12.0, 0.5, 25.0], dtype=torch.float64, requires_grad=True)
    values = loss.per_token(lp, ref)
    # -30 -> value clipped at 10 (gradient zero); -12: 11 + e^-12 > 10 -> clipped; 0.5 unclipped; +25 -> log u = 20
    torch.testing.assert_close(values[:2], torch.full((2,), 10.0, dtype=torch.float64))
    torch.testing.assert_close(values[2], torch.tensor(math.exp(0.5) - 1.5, dtype=torch.float64))
    values.sum().backward()
    assert lp.grad[0] == 0 and lp.grad[1] == 0 and lp.grad[3] == 0  # both clamps switch the gradient off
    torch.testing.assert_close(lp.grad[2], torch.tensor(math.exp(0.5) - 1, dtype=torch.float64))
    unclamped = build_rehearsal_loss("forward_kl", log_ratio_clamp=None, value_clamp=None).per_token(lp, ref)
    assert unclamped[0] > 28


def test_other_losses_defaults_and_token_mean():
    assert build_rehearsal_loss("js").value_clamp is None and build_rehearsal_loss("js").divergence.beta == 0.5
    assert build_rehearsal_loss("alpha").divergence.alpha == 0.8
    lp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    mean, per_token = build_rehearsal_loss("nll")(lp, None, mask)
    assert mean.item() == pytest.approx(1.5) and per_token.tolist() == [[1.0, 2.0, 3.0]]


def test_bad_names_and_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="valid: forward_kl, js, alpha, nll"):
        build_rehearsal_loss("reverse_kl")
    with pytest.raises(ValueError, match="positive number or None"):
        build_rehearsal_loss("forward_kl", value_clamp=-1)
    with pytest.raises(ValueError, match="unknown argument"):
        build_rehearsal_loss("js", alpha=0.3)
    with pytest.raises(ValueError, match="takes no arguments"):
        build_rehearsal_loss("nll", value_clamp=3.0)
    assert REHEARSAL_DIVERGENCES == ("forward_kl", "js", "alpha", "nll")
