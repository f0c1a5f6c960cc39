"""KDRL and exact OPD: the divergence to the teacher as a per-token penalty (research/teacher-methods.md §1, §5).

KDRL: coef_s·m_i·½(log π − log τ)² (k2, β = 2e-3), m_i = 1 − c_i with only_incorrect, coef_s from a schedule
(KDRL-Annealing: max(5e-3 − 5e-5·s, 1e-3)); exact OPD: coef·D(π‖τ) over the vocabulary from both models' hidden
states, checked against a float64 recomputation from full logits written out here.
"""

from __future__ import annotations

import math

import pytest
import torch

from trl_divergences.divergences import get_divergence, list_divergences
from trl_divergences.teacher import get_teacher_method

F64 = torch.float64


def t(values, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=grad)


# ---------------------------------------------------------------------------------------------------------------
# KDRL
# ---------------------------------------------------------------------------------------------------------------


def test_kdrl_defaults() -> None:
    method = get_teacher_method("kdrl")
    assert (method.coef, method.divergence.name, method.estimator) == (2e-3, "reverse_kl", "k2")
    assert not method.only_incorrect and method.schedule is None and method.outcome_weight == 1.0
    req = method.requirements
    assert req.teacher_logps and not (req.teacher_hidden or req.reference_logps or req.old_logps)


def test_kdrl_k2_penalty_and_gradient_by_hand() -> None:
    method = get_teacher_method("kdrl")
    logp = t([[-1.0, -0.5], [-2.0, -0.1]], grad=True)
    teacher = t([[-2.0, -0.5], [-0.5, -0.1]])
    per_token = method.sampled(logp, teacher)
    # ½(log π − log τ)²: ½·1² = 0.5, 0, ½·1.5² = 1.125, 0
    torch.testing.assert_close(per_token, t([[0.5, 0.0], [1.125, 0.0]]), rtol=0, atol=1e-15)
    penalty = method.penalty(per_token)
    torch.testing.assert_close(penalty, 2e-3 * t([[0.5, 0.0], [1.125, 0.0]]), rtol=1e-15, atol=0)
    # ∇ = β(log π − log τ)∇log π = −β·d_t∇log π, d_t = log τ − log π (KDRL's token reward)
    (grad,) = torch.autograd.grad(penalty.sum(), logp)
    torch.testing.assert_close(grad, 2e-3 * t([[1.0, 0.0], [-1.5, 0.0]]), rtol=1e-15, atol=0)


def test_kdrl_only_incorrect_masks_correct_responses() -> None:
    method = get_teacher_method("kdrl", only_incorrect=True)
    per_token = t([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    got = method.penalty(per_token, torch.tensor([True, False, True]))
    torch.testing.assert_close(got, 2e-3 * t([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]]), rtol=1e-15, atol=0)
    assert method.response_weights(torch.tensor([False, True]), 2).tolist() == [2e-3, 0.0]
    with pytest.raises(ValueError, match="correctness"):
        method.penalty(per_token)
    # without the mask every response is weighted
    assert get_teacher_method("kdrl").response_weights(None, 3).tolist() == [2e-3] * 3


@pytest.mark.parametrize("name", [d for d in list_divergences() if d != "lp_reg"])
def test_kdrl_with_the_teacher_equal_to_the_reference_is_the_reference_term(name) -> None:
    gen = torch.Generator().manual_seed(1)
    logp = -torch.rand(3, 4, generator=gen, dtype=F64) * 3
    ref = -torch.rand(3, 4, generator=gen, dtype=F64) * 3
    weight = torch.rand(3, 4, generator=gen, dtype=F64) + 0.5
    div = get_divergence(name)
    for estimator in div.estimators:
        method = get_teacher_method("kdrl", divergence=name, estimator=estimator, coef=0.3)
        for w in (None, weight):
            ours = method.penalty(method.sampled(logp, ref, importance_weight=w))
            torch.testing.assert_close(ours, 0.3 * div.sampled(logp, ref, estimator, importance_weight=w))


def test_kdrl_divergence_kwargs_reach_the_divergence() -> None:
    method = get_teacher_method("kdrl", divergence="js", divergence_kwargs={"beta": 0.3}, estimator="k3")
    logp, teacher = t([[-0.7, -2.0]]), t([[-1.5, -0.2]])
    expected = get_divergence("js", beta=0.3).sampled(logp, teacher, "k3")
    torch.testing.assert_close(method.sampled(logp, teacher), expected, rtol=0, atol=0)


def test_kdrl_annealing_schedule_and_its_state() -> None:
    method = get_teacher_method("kdrl", coef=5e-3, schedule="linear_anneal")
    coefs = []
    for step in range(0, 120, 10):
        method.step(step, max_steps=280)
        coefs.append(method.coef_now)
    assert coefs == pytest.approx([max(5e-3 - 5e-5 * s, 1e-3) for s in range(0, 120, 10)], rel=1e-12)
    state = method.state_dict()
    assert state == {"coef_now": pytest.approx(1e-3), "divergence_now": "reverse_kl"}
    resumed = get_teacher_method("kdrl", coef=5e-3, schedule="linear_anneal")
    resumed.load_state_dict(state)
    assert resumed.coef_now == method.coef_now
    torch.testing.assert_close(resumed.penalty(t([[1.0]])), t([[method.coef_now]]), rtol=0, atol=0)


def test_kdrl_schedule_switching_the_divergence() -> None:
    method = get_teacher_method("kdrl", divergence="forward_kl", estimator="k3", schedule="forward_then_reverse")
    method.step(0, max_steps=10)
    assert method.divergence_now.name == "forward_kl"
    method.step(5, max_steps=10)
    assert method.divergence_now.name == "reverse_kl" and method.state_dict()["divergence_now"] == "reverse_kl"
    logp, teacher = t([[-1.0]]), t([[-2.0]])
    expected = get_divergence("reverse_kl").sampled(logp, teacher, "k3")
    torch.testing.assert_close(method.sampled(logp, teacher), expected, rtol=0, atol=0)
    assert get_teacher_method("kdrl", schedule="accuracy_conditioned").needs_accuracy
    assert not get_teacher_method("kdrl", schedule="linear_anneal").needs_accuracy


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        ({"estimator": "k9"}, "valid: k1, k3, k3+, k2, full"),
        ({"divergence": "forward_kl"}, "estimator 'k2' is not supported by divergence 'forward_kl'"),
        ({"divergence": "lp_reg", "estimator": "k3"}, "not to a teacher"),
        ({"divergence": "nope"}, "valid choices: reverse_kl"),
        ({"divergence": "js", "divergence_kwargs": {"alpha": 0.5}, "estimator": "k3"}, "accepted: ['beta'"),
        ({"divergence_kwargs": [1]}, "divergence_kwargs must be a dict"),
        ({"coef": -1.0}, "-1.0"),
        ({"only_incorrect": "yes"}, "'yes'"),
        ({"schedule_kwargs": {"anneal_steps": 3}}, "schedule_kwargs given without a schedule"),
        ({"schedule": "linear_anneal", "schedule_kwargs": {"steps": 3}}, "accepted: ['final_multiplier'"),
        ({"schedule": "nope"}, "valid choices: accuracy_conditioned"),
        ({"schedule": "forward_then_reverse", "divergence": "js", "estimator": "k3"}, "'js' conflicts"),
        ({"schedule": "forward_then_reverse", "divergence": "reverse_kl"}, "by divergence 'forward_kl'"),
        ({"beta": 0.1}, "unknown argument(s) ['beta']"),
    ],
)
def test_kdrl_validation(kwargs, shown) -> None:
    with pytest.raises(ValueError) as info:
        get_teacher_method("kdrl", **kwargs)
    assert shown in str(info.value)


def test_bad_state_is_refused() -> None:
    method = get_teacher_method("kdrl")
    for bad in (
        {},
        {"coef_now": 1e-3, "divergence_now": "forward_kl"},
        {"coef_now": -1.0, "divergence_now": "reverse_kl"},
    ):
        with pytest.raises(ValueError):
            method.load_state_dict(bad)


def test_full_is_not_a_sampled_estimate() -> None:
    method = get_teacher_method("kdrl", estimator="full")
    assert method.requirements.teacher_hidden and not method.requirements.teacher_logps
    with pytest.raises(ValueError, match="hidden states"):
        method.sampled(t([[-1.0]]), t([[-1.0]]))


def test_outcome_advantages() -> None:
    outcome = t([1.0, -0.5])
    assert get_teacher_method("kdrl").advantages(outcome) is outcome
    assert torch.equal(get_teacher_method("exact_opd").advantages(outcome), t([0.0, -0.0]))
    assert torch.equal(get_teacher_method("exact_opd", outcome_weight=0.5).advantages(outcome), t([0.5, -0.25]))


# ---------------------------------------------------------------------------------------------------------------
# exact OPD: the teacher term over the full vocabulary
# ---------------------------------------------------------------------------------------------------------------


def test_exact_opd_defaults() -> None:
    method = get_teacher_method("exact_opd")
    assert (method.coef, method.divergence.name, method.estimator, method.outcome_weight) == (
        1.0,
        "reverse_kl",
        "full",
        0.0,
    )
    req = method.requirements
    assert req.teacher_hidden and not (req.teacher_logps or req.reference_logps or req.old_logps)
    with pytest.raises(ValueError, match="unknown argument"):
        get_teacher_method("exact_opd", estimator="k2")


def test_exact_opd_by_hand_on_two_tokens() -> None:
    # π = softmax(0, ln 3) = (¼, ¾) from H = 1; τ = (½, ½) from a teacher with H_τ = 2:
    # KL(π‖τ) = ¼ ln ½ + ¾ ln (3/2) = 0.1308120...; KL(τ‖π) = ½ ln 2 + ½ ln (2/3) = ½ ln (4/3)
    hidden, weight = t([[1.0]]), t([[0.0], [math.log(3.0)]])
    teacher_hidden, teacher_weight = t([[1.0, -2.0]]), torch.zeros(2, 2, dtype=F64)
    reverse = get_teacher_method("exact_opd").full(hidden, weight, teacher_hidden, teacher_weight)
    assert reverse.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-13)
    forward = get_teacher_method("exact_opd", divergence="forward_kl").full(
        hidden, weight, teacher_hidden, teacher_weight
    )
    assert forward.item() == pytest.approx(0.5 * math.log(4.0 / 3.0), rel=1e-13)


def _full_vocabulary(name: str, lp: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:
    """The divergence written out over full float64 log-softmaxes (π: lp, τ: lt)."""
    p, q = lp.exp(), lt.exp()
    if name == "reverse_kl":
        return (p * (lp - lt)).sum(-1)
    if name == "forward_kl":
        return (q * (lt - lp)).sum(-1)
    m = 0.5 * p + 0.5 * q  # js, β = ½
    return (0.5 * q * (lt - m.log()) + 0.5 * p * (lp - m.log())).sum(-1)


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl", "js"])
@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_exact_opd_against_a_float64_full_vocabulary_recomputation(name, impl) -> None:
    gen = torch.Generator().manual_seed(2)
    vocab, h, h_teacher, temperature = 37, 8, 12, 0.7  # odd vocab, the teacher wider than the student
    hidden = torch.randn(2, 5, h, generator=gen, dtype=F64, requires_grad=True)
    weight = torch.randn(vocab, h, generator=gen, dtype=F64, requires_grad=True)
    bias = torch.randn(vocab, generator=gen, dtype=F64, requires_grad=True)
    teacher_hidden = torch.randn(2, 5, h_teacher, generator=gen, dtype=F64)
    teacher_weight = torch.randn(vocab, h_teacher, generator=gen, dtype=F64)
    teacher_bias = torch.randn(vocab, generator=gen, dtype=F64)
    method = get_teacher_method("exact_opd", divergence=name, coef=0.5)
    got = method.full(hidden, weight, teacher_hidden, teacher_weight, temperature, bias, teacher_bias, impl=impl)
    lp = torch.log_softmax((hidden @ weight.T + bias) / temperature, dim=-1)
    lt = torch.log_softmax((teacher_hidden @ teacher_weight.T + teacher_bias) / temperature, dim=-1)
    expected = _full_vocabulary(name, lp, lt)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    upstream = torch.randn(2, 5, generator=gen, dtype=F64)
    ours = torch.autograd.grad((method.penalty(got) * upstream).sum(), (hidden, weight, bias))
    oracle = torch.autograd.grad((0.5 * expected * upstream).sum(), (hidden, weight, bias))
    for a, b in zip(ours, oracle, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_exact_opd_refuses_a_different_vocabulary() -> None:
    method = get_teacher_method("exact_opd")
    with pytest.raises(ValueError, match="vocab sizes differ: policy 5 vs reference 6"):
        method.full(torch.zeros(1, 3), torch.zeros(5, 3), torch.zeros(1, 4), torch.zeros(6, 4))


def test_exact_opd_only_incorrect_and_schedule() -> None:
    method = get_teacher_method(
        "exact_opd", coef=2.0, only_incorrect=True, schedule="linear_anneal", schedule_kwargs={"anneal_steps": 4}
    )
    method.step(2, max_steps=10)  # multiplier 1 − 0.8·2/4 = 0.6
    got = method.penalty(t([[1.0, 1.0], [2.0, 0.5]]), torch.tensor([False, True]))
    torch.testing.assert_close(got, t([[1.2, 1.2], [0.0, 0.0]]), rtol=1e-15, atol=0)
