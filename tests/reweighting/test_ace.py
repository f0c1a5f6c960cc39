"""ACE: A_i·(1 + α·softplus(c_i)) on negative advantages, by hand on the shared batch."""

from __future__ import annotations

import math

import pytest
import torch

from trl_divergences.reweighting import get_advantage_reweighting

from ._batch import make_rollouts

C = [0.3, 2.0, -1.0, 0.0, 0.5, 1.0, -0.5, 3.0]  # Σ_t log π_old − log ρ per rollout


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def ace_batch(**kwargs):
    return make_rollouts(seq_log_ratio=torch.tensor(C, dtype=torch.float64), **kwargs)


def test_values_by_hand() -> None:
    out = get_advantage_reweighting("ace", alpha=0.5)(ace_batch())
    # local rows 2..5: A = −0.5 (c = −1), −0.5 (c = 0), +0.5, +0.5 (positive: unchanged)
    expected = [-0.5 * (1 + 0.5 * softplus(-1.0)), -0.5 * (1 + 0.5 * math.log(2.0)), 0.5, 0.5]
    assert out.advantages.dtype == torch.float64
    torch.testing.assert_close(out.advantages, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    assert out.divergence_weight is None and out.keep is None
    # metrics over all 8 rollouts: modulated rows 1, 2, 3, 7 (c = 2, −1, 0, 3)
    multipliers = [1 + 0.5 * softplus(c) for c in (2.0, -1.0, 0.0, 3.0)]
    assert out.metrics["modulated_fraction"] == 0.5
    assert out.metrics["mean_multiplier"] == pytest.approx(sum(multipliers) / 4, abs=1e-12)
    assert out.metrics["mean_confidence_shift"] == pytest.approx((2.0 - 1.0 + 0.0 + 3.0) / 4, abs=1e-12)


def test_length_normalize_and_clip() -> None:
    # rows 4..7: A = 0.5, 0.5, 0.5, −1.5; row 7: c = 3, length 50
    batch = ace_batch(local=slice(4, 8))
    normalized = get_advantage_reweighting("ace", alpha=1.0, length_normalize=True)(batch).advantages
    assert normalized[3].item() == pytest.approx(-1.5 * (1 + softplus(3.0 / 50)), abs=1e-14)
    clipped = get_advantage_reweighting("ace", alpha=1.0, c_clip=1.0)(batch).advantages
    assert clipped[3].item() == pytest.approx(-1.5 * (1 + softplus(1.0)), abs=1e-14)
    assert clipped[:3].tolist() == [0.5, 0.5, 0.5]


def test_alpha_zero_is_identity() -> None:
    out = get_advantage_reweighting("ace", alpha=0.0)(ace_batch(local=slice(0, 8)))
    assert out.advantages.tolist() == [1.5, -0.5, -0.5, -0.5, 0.5, 0.5, 0.5, -1.5]


def test_degenerate_inputs() -> None:
    # all-correct and all-wrong groups (A = 0), a single-sample group, unscored rollouts with a NaN and a
    # negative advantage (both → 0, neither counted as modulated)
    nan = float("nan")
    batch = make_rollouts(
        rewards=[1.0, 1.0, 0.0, 0.0, 1.0, nan, nan, 0.0],
        advantages=[0.0, 0.0, 0.0, 0.0, 0.0, nan, -0.3, -0.7],
        groups=[0, 0, 1, 1, 2, 3, 3, 3],
        lengths=[0, 5, 5, 5, 5, 5, 5, 5],
        local=slice(0, 8),
        seq_log_ratio=torch.tensor([50.0, -50.0, 50.0, 0.0, 1.0, nan, 2.0, 0.0], dtype=torch.float64),
    )
    out = get_advantage_reweighting("ace", alpha=1.0, length_normalize=True)(batch)
    assert torch.isfinite(out.advantages).all()
    assert out.advantages[:7].tolist() == [0.0] * 7
    assert out.advantages[7].item() == pytest.approx(-0.7 * (1 + math.log(2.0)), abs=1e-14)
    assert out.metrics["modulated_fraction"] == 1 / 8
    assert out.metrics["mean_multiplier"] == pytest.approx(1 + math.log(2.0), abs=1e-14)


def test_missing_seq_log_ratio_raises() -> None:
    with pytest.raises(ValueError, match="seq_log_ratio"):
        get_advantage_reweighting("ace", alpha=0.5)(make_rollouts())


def test_float32_in_float32_out() -> None:
    batch = ace_batch()
    batch.advantages = batch.advantages.float()
    out = get_advantage_reweighting("ace", alpha=0.5)(batch)
    assert out.advantages.dtype == torch.float32 and out.advantages.shape == (4,)
