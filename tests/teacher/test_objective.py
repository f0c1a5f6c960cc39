"""The teacher methods inside the objective: G-OPD's separately given ρ (the teacher's pre-RL base, the official
"reward correction"), float64 advantages by hand and the construction-time errors; the exact teacher term through the
gradient-in-forward route of :func:`~trl_divergences.objective.vocabulary_statistics` against the per-token route."""

from __future__ import annotations

import pytest
import torch

from trl_divergences.divergences import get_divergence
from trl_divergences.objective import Objective, RolloutInputs, VocabularyRequest
from trl_divergences.objective.vocabulary import vocabulary_statistics

F64 = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


OLD = t([[-1.0, -2.0]])
TEACHER = t([[-0.5, -3.0]])
BASE = t([[-1.5, -1.0]])  # the given ρ
STUDENT_INIT = t([[-0.25, -4.0]])  # the reference model's log-probs: must not be read


def _rollouts(**overrides) -> RolloutInputs:
    values = dict(
        rewards=t([1.0]),
        advantages=t([3.0]),
        group_ids=torch.tensor([0]),
        local=slice(0, 1),
        completion_mask=torch.ones(1, 2),
        old_logps=OLD,
        teacher_logps=TEACHER,
    )
    return RolloutInputs(**{**values, **overrides})


def test_given_reference_replaces_the_reference_model_in_the_requirements() -> None:
    default = Objective(teacher_method="exopd").requirements
    given = Objective(teacher_method="exopd", given_teacher_reference=True).requirements
    assert default.reference_model and default.ref_logps and not default.teacher_reference_model
    assert given.teacher_reference_model and not (given.reference_model or given.ref_logps)
    # a reference penalty still loads the reference model next to the given ρ
    both = Objective(teacher_method="exopd", given_teacher_reference=True, coef=0.1).requirements
    assert both.reference_model and both.teacher_reference_model


def test_exopd_advantages_read_the_given_reference_by_hand() -> None:
    objective = Objective(teacher_method="exopd", given_teacher_reference=True)
    out = objective.rollout_step(
        _rollouts(ref_logps=STUDENT_INIT, teacher_reference_logps=BASE), step=0, max_steps=2, training=True
    )
    # 1.25·(τ − ρ) − (π_old − ρ) with ρ the given base: 1.25·1 − 0.5 = 0.75; 1.25·(−2) + 1 = −1.5
    torch.testing.assert_close(out.advantages, t([[0.75, -1.5]]), rtol=0, atol=1e-15)
    # log τ − log ρ: (1 − 2) / 2
    assert out.metrics["teacher/exopd/teacher_reference_log_ratio"] == pytest.approx(-0.5, abs=1e-15)
    # without a given ρ the reference model's log-probs are ρ: 1.25·(−0.25) − (−0.75) = 0.4375; 1.25·1 − 2 = −0.75
    default = Objective(teacher_method="exopd").rollout_step(
        _rollouts(ref_logps=STUDENT_INIT, teacher_reference_logps=BASE), step=0, max_steps=2, training=True
    )
    torch.testing.assert_close(default.advantages, t([[0.4375, -0.75]]), rtol=0, atol=1e-15)


def test_zero_advantages_when_teacher_reference_and_rollout_policy_agree() -> None:
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 4, generator=gen, dtype=F64) * 3
    for lam in (0.5, 1.25, 2.0):
        objective = Objective(teacher_method="g_opd", teacher_kwargs={"lam": lam}, given_teacher_reference=True)
        x = _rollouts(
            rewards=t([1.0, 0.0, 1.0]),
            advantages=t([1.0, -1.0, 0.5]),
            group_ids=torch.zeros(3, dtype=torch.long),
            local=slice(0, 3),
            completion_mask=torch.ones(3, 4),
            old_logps=old,
            teacher_logps=old.clone(),
            teacher_reference_logps=old.clone(),
        )
        out = objective.rollout_step(x, step=0, max_steps=2, training=True)
        assert torch.equal(out.advantages, torch.zeros_like(old))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "teacher_reference_model given without a teacher_method"),
        ({"teacher_method": "g_opd"}, r"does not read a reference ρ .*at lam = 1 ρ cancels"),
        ({"teacher_method": "kdrl"}, "does not read a reference ρ"),
        ({"teacher_method": "trrd"}, "does not read a reference ρ"),
    ],
)
def test_a_given_reference_that_nothing_reads_is_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        Objective(given_teacher_reference=True, **kwargs)


def test_given_reference_flag_must_be_a_bool_and_its_log_probs_present() -> None:
    with pytest.raises(ValueError, match="given_teacher_reference must be True or False, got 1"):
        Objective(teacher_method="exopd", given_teacher_reference=1)
    objective = Objective(teacher_method="exopd", given_teacher_reference=True)
    with pytest.raises(ValueError, match="teacher_reference_model: it needs that model's log-probs"):
        objective.rollout_step(_rollouts(ref_logps=STUDENT_INIT), step=0, max_steps=2, training=True)


# ---- the exact teacher term: gradient in the forward vs per-token values ----
def test_teacher_penalty_weights_by_hand() -> None:
    objective = Objective(teacher_method="exact_opd", teacher_kwargs={"coef": 0.5, "only_incorrect": True})
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # coef · m_i · mask, m_i = 1 − c_i: row 0 correct (0), row 1 incorrect (0.5)
    got = objective.teacher_penalty_weights(mask, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]), rtol=0, atol=0)
    assert Objective(teacher_method="kdrl").teacher_penalty_weights(mask) is None  # k2: sampled, no exact term
    assert Objective(teacher_method="g_opd").teacher_penalty_weights(mask) is None


@pytest.mark.parametrize("divergence", ["reverse_kl", "js"])
def test_exact_teacher_term_in_the_forward_matches_the_per_token_route(divergence: str) -> None:
    """Σ w·D(π‖τ) with its gradient computed inside the forward equals the per-token values aggregated after it
    (values and gradients w.r.t. the student's hidden states, lm_head and bias; fp32, H_τ ≠ H)."""
    gen = torch.Generator().manual_seed(0)
    b, n, h, h_teacher, vocab = 2, 3, 6, 8, 11
    hidden = torch.randn(b, n, h, generator=gen)
    weight = torch.randn(vocab, h, generator=gen)
    bias = torch.randn(vocab, generator=gen)
    teacher_hidden = torch.randn(b, n, h_teacher, generator=gen)
    teacher_weight = torch.randn(vocab, h_teacher, generator=gen)
    teacher_bias = torch.randn(vocab, generator=gen)
    w = torch.rand(b, n, generator=gen)
    request = VocabularyRequest(teacher_exact={"teacher_divergence": get_divergence(divergence)})
    grads, values = [], []
    for exact_weights in (None, {"teacher_divergence": w}):
        leaves = [x.clone().requires_grad_(True) for x in (hidden, weight, bias)]
        stats = vocabulary_statistics(
            request,
            leaves[0],
            leaves[1],
            None,
            temperature=0.7,
            bias=leaves[2],
            teacher_hidden=teacher_hidden,
            teacher_weight=teacher_weight,
            teacher_bias=teacher_bias,
            exact_weights=exact_weights,
        )
        if exact_weights is None:
            loss = (w * stats["teacher_divergence"]).sum()
        else:
            loss = stats["teacher_divergence/weighted_sum"]
            assert not stats["teacher_divergence"].requires_grad
        loss.backward()
        values.append((loss.detach(), stats["teacher_divergence"].detach()))
        grads.append([x.grad for x in leaves])
    torch.testing.assert_close(values[1][0], values[0][0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(values[1][1], values[0][1], atol=1e-6, rtol=1e-6)
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert values[0][0] > 0
