"""G-OPD / ExOPD against hand-computed float64 advantages (research/teacher-methods.md §2; official RUCBM/G-OPD).

A_t = λ(log τ − log ρ) − (log π_old − log ρ); λ = 1: A_t = log τ − log π_old without ρ.
"""

from __future__ import annotations

import math

import pytest
import torch

from trl_divergences.teacher import g_opd_advantages, get_teacher_method

F64 = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


OLD = t([[-1.0, -2.0]])
TEACHER = t([[-0.5, -3.0]])
REF = t([[-1.5, -1.0]])


def test_lambda_1_25_by_hand() -> None:
    # token 1: 1.25·(−0.5 + 1.5) − (−1 + 1.5) = 1.25 − 0.5 = 0.75
    # token 2: 1.25·(−3 + 1) − (−2 + 1) = −2.5 + 1 = −1.5
    got = g_opd_advantages(OLD, TEACHER, REF, lam=1.25)
    torch.testing.assert_close(got, t([[0.75, -1.5]]), rtol=0, atol=1e-15)
    # the paper's form λ log τ + (1 − λ) log ρ − log π_old
    torch.testing.assert_close(got, 1.25 * TEACHER - 0.25 * REF - OLD, rtol=0, atol=1e-15)
    assert got.dtype == F64


def test_lambda_1_is_the_teacher_log_ratio_without_the_reference() -> None:
    # A_t = log τ − log π_old = 0.5, −1.0, exactly as the official λ == 1 branch (ρ unused even when given)
    for ref in (None, REF):
        got = g_opd_advantages(OLD, TEACHER, ref, lam=1.0)
        assert torch.equal(got, t([[0.5, -1.0]]))


def test_interpolation_to_the_reference_geometric_mean() -> None:
    # λ = 0.5: 0.5·(τ − ρ) − (π_old − ρ): token 1 0.5·1 − 0.5 = 0, token 2 0.5·(−2) + 1 = 0
    torch.testing.assert_close(g_opd_advantages(OLD, TEACHER, REF, lam=0.5), t([[0.0, 0.0]]), rtol=0, atol=1e-15)


def test_zero_advantages_when_the_teacher_is_the_rollout_policy() -> None:
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=gen, dtype=F64) * 4
    ref = -torch.rand(3, 5, generator=gen, dtype=F64) * 4
    # λ = 1 and τ = π_old: zero whatever ρ is
    assert torch.equal(g_opd_advantages(old, old.clone(), ref, lam=1.0), torch.zeros_like(old))
    # τ = ρ = π_old: zero for every λ
    for lam in (0.3, 1.0, 1.25, 3.0):
        assert torch.equal(g_opd_advantages(old, old.clone(), old.clone(), lam=lam), torch.zeros_like(old))


def test_missing_reference_fails_fast_when_lambda_is_not_1() -> None:
    with pytest.raises(ValueError, match=r"lam=1.25.*reference.*silently falls back"):
        g_opd_advantages(OLD, TEACHER, None, lam=1.25)
    with pytest.raises(ValueError, match="reference"):
        get_teacher_method("exopd").advantages(t([0.0]), old_logps=OLD, teacher_logps=TEACHER)


def test_method_defaults_and_requirements() -> None:
    g_opd, exopd = get_teacher_method("g_opd"), get_teacher_method("exopd")
    assert (g_opd.lam, exopd.lam) == (1.0, 1.25) and g_opd.outcome_weight == exopd.outcome_weight == 0.0
    assert g_opd.requirements.teacher_logps and g_opd.requirements.old_logps
    assert not g_opd.requirements.reference_logps and exopd.requirements.reference_logps
    assert not (g_opd.requirements.teacher_hidden or exopd.requirements.teacher_hidden)
    assert get_teacher_method("g_opd", lam=0.8).requirements.reference_logps
    assert repr(exopd) == "ExOPD(lam=1.25, outcome_weight=0.0)"


def test_advantages_replace_the_outcome_advantages_by_default() -> None:
    outcome = t([5.0])
    got = get_teacher_method("exopd").advantages(outcome, old_logps=OLD, teacher_logps=TEACHER, reference_logps=REF)
    torch.testing.assert_close(got, t([[0.75, -1.5]]), rtol=0, atol=1e-15)


def test_outcome_mix_and_mask() -> None:
    method = get_teacher_method("g_opd", outcome_weight=0.5)
    old = t([[-1.0, -2.0, 0.0], [-0.5, -0.25, -1.0]])
    teacher = t([[-0.5, -3.0, 0.0], [-0.5, -1.25, -2.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    old[0, 2] = teacher[0, 2] = -math.inf  # padding log-probs may be anything
    got = method.advantages(t([2.0, -1.0]), old_logps=old, teacher_logps=teacher, mask=mask)
    # (τ − π_old) + 0.5·A_i: row 0 + 1.0, row 1 − 0.5; padding 0
    torch.testing.assert_close(got, t([[1.5, 0.0, 0.0], [-0.5, -1.5, -1.5]]), rtol=0, atol=1e-15)


def test_advantages_need_both_log_probs() -> None:
    method = get_teacher_method("g_opd")
    with pytest.raises(ValueError, match="teacher's log-probs"):
        method.advantages(t([0.0]), old_logps=OLD)
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        method.advantages(t([0.0]), old_logps=OLD, teacher_logps=t([[0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True, "1"])
def test_lambda_validation(bad) -> None:
    with pytest.raises(ValueError) as info:
        get_teacher_method("g_opd", lam=bad)
    assert repr(bad) in str(info.value)


def test_stateless() -> None:
    method = get_teacher_method("exopd")
    assert method.state_dict() == {}
    with pytest.raises(ValueError, match="stateless"):
        method.load_state_dict({"lam": 1.0})
