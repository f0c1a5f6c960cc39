"""TRRD against hand-computed float64 log-ratios (research/teacher-methods.md §3).

log r = α(log π − log π_old) + (1 − α)·clamp(log π − log τ, −c, c); without the clamp log π − [α log π_old +
(1 − α) log τ], the anchor form.
"""

from __future__ import annotations

import math

import pytest
import torch

from trl_divergences.teacher import get_teacher_method, trrd_anchor_logps, trrd_log_ratio

F64 = torch.float64


def t(values, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def test_log_ratio_by_hand() -> None:
    logp = t([[-1.0, -3.0]], grad=True)
    old, teacher = t([[-1.2, -3.0]]), t([[-2.0, -1.0]])
    # token 1: 0.5·0.2 + 0.5·1.0 = 0.6; token 2: 0.5·0 + 0.5·(−2) = −1.0
    got = trrd_log_ratio(logp, old, teacher, alpha=0.5)
    torch.testing.assert_close(got, t([[0.6, -1.0]]), rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad(got.sum(), logp)
    assert torch.equal(grad, t([[1.0, 1.0]]))  # exponents of π sum to 1: ∇r = r∇log π
    # clamp c = 0.5: token 1 0.1 + 0.5·0.5 = 0.35, token 2 0 + 0.5·(−0.5) = −0.25; clamped terms carry no gradient
    clamped = trrd_log_ratio(logp, old, teacher, alpha=0.5, clamp=0.5)
    torch.testing.assert_close(clamped, t([[0.35, -0.25]]), rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad(clamped.sum(), logp)
    assert torch.equal(grad, t([[0.5, 0.5]]))


def test_alpha_endpoints() -> None:
    logp, old, teacher = t([[-1.0, -0.1]]), t([[-1.5, -0.3]]), t([[-0.2, -4.0]])
    # α = 1: GRPO's log π − log π_old; α = 0: the teacher-anchored log π − log τ
    torch.testing.assert_close(trrd_log_ratio(logp, old, teacher, alpha=1.0), logp - old, rtol=0, atol=0)
    torch.testing.assert_close(trrd_log_ratio(logp, old, teacher, alpha=0.0), logp - teacher, rtol=0, atol=0)


def test_ratio_is_the_geometric_mixture() -> None:
    # r = (π/π_old)^α (π/τ)^(1−α) in probability space, α = 0.3: π = 0.4, π_old = 0.5, τ = 0.2
    pi, pi_old, tau, a = 0.4, 0.5, 0.2, 0.3
    got = trrd_log_ratio(t([math.log(pi)]), t([math.log(pi_old)]), t([math.log(tau)]), alpha=a).exp()
    assert got.item() == pytest.approx((pi / pi_old) ** a * (pi / tau) ** (1 - a), rel=1e-14)


def test_anchor_replaces_the_old_log_probs_exactly_without_the_clamp() -> None:
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(4, 6, generator=gen, dtype=F64) * 3).requires_grad_(True)
    old = -torch.rand(4, 6, generator=gen, dtype=F64) * 3
    teacher = -torch.rand(4, 6, generator=gen, dtype=F64) * 3
    advantages = torch.randn(4, 1, generator=gen, dtype=F64)
    anchor = trrd_anchor_logps(old, teacher, alpha=0.5)
    assert not anchor.requires_grad
    torch.testing.assert_close(anchor, 0.5 * old + 0.5 * teacher, rtol=0, atol=0)
    direct = trrd_log_ratio(logp, old, teacher, alpha=0.5)
    torch.testing.assert_close(logp - anchor, direct, rtol=1e-14, atol=1e-14)
    # an adapter's clipped surrogate with the anchor in log π_old's place: same loss and gradient
    grads = []
    for log_ratio in (logp - anchor, direct):
        ratio = log_ratio.exp()
        loss = -torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages).sum()
        grads.append(torch.autograd.grad(loss, logp)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-13, atol=1e-14)


def test_effective_old_log_probs_carry_the_clamp() -> None:
    method = get_teacher_method("trrd")
    assert (method.alpha, method.log_ratio_clamp) == (0.5, 1.0)
    logp = t([[-1.0, -0.5, -2.0]], grad=True)
    old, teacher = t([[-1.1, -0.4, -2.5]]), t([[-3.0, -0.7, -1.0]])
    effective = method.effective_old_logps(logp, old, teacher)
    log_ratio = logp - effective  # what an adapter computes
    # by hand, c = 1: token 1 0.5·0.1 + 0.5·1 = 0.55 (clamped from 2), token 2 0.5·(−0.1) + 0.5·0.2 = 0.05,
    # token 3 0.5·0.5 + 0.5·(−1) = −0.25 (at the clamp's edge, |−1| = c: not clamped)
    torch.testing.assert_close(log_ratio, t([[0.55, 0.05, -0.25]]), rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad(log_ratio.sum(), logp)
    assert torch.equal(grad, t([[0.5, 1.0, 1.0]]))
    assert method.clamped(logp, teacher).tolist() == [[True, False, False]]
    # without the clamp it is the constant anchor
    plain = get_teacher_method("trrd", log_ratio_clamp=None)
    assert not plain.effective_old_logps(logp, old, teacher).requires_grad
    assert not plain.clamped(logp, teacher).any()


def test_initial_log_ratio_starts_the_update_off_one() -> None:
    method = get_teacher_method("trrd")
    old, teacher = t([[-1.0, -1.0, -1.0]]), t([[-1.8, -0.6, -4.0]])
    # (1 − α)·clamp(log π_old − log τ, −1, 1): 0.5·0.8, 0.5·(−0.4), 0.5·1 (clamped from 3)
    torch.testing.assert_close(method.initial_log_ratio(old, teacher), t([[0.4, -0.2, 0.5]]), rtol=0, atol=1e-15)
    # a teacher that dislikes a token (τ < π_old) starts its ratio above 1: a positive advantage saturates sooner


@pytest.mark.parametrize(
    "kwargs, shown", [({"alpha": 1.5}, "1.5"), ({"alpha": -0.1}, "-0.1"), ({"log_ratio_clamp": 0.0}, "0.0")]
)
def test_validation(kwargs, shown) -> None:
    with pytest.raises(ValueError) as info:
        get_teacher_method("trrd", **kwargs)
    assert shown in str(info.value)


def test_requirements_and_state() -> None:
    method = get_teacher_method("trrd", alpha=0.25)
    req = method.requirements
    assert req.teacher_logps and not (req.old_logps or req.reference_logps or req.teacher_hidden)
    assert method.anchors_ratio and not (method.adds_penalty or method.replaces_advantages)
    assert method.state_dict() == {} and repr(method) == "TRRD(alpha=0.25, log_ratio_clamp=1.0)"
    outcome = t([1.0, -1.0])
    assert method.advantages(outcome) is outcome  # the outcome advantages drive the sign
