"""W-REINFORCE / PSR / NSR and GUI-Libra's success-adaptive scaling, by hand on the shared batch."""

from __future__ import annotations

import pytest
import torch

from trl_divergences.reweighting import get_advantage_reweighting

from ._batch import make_rollouts

NAN = float("nan")


def test_w_reinforce_weighted_replaces_advantages() -> None:
    # local rows 2..5 have rewards 0, 0, 1, 1: A = −1, −1, +λ, +λ whatever the framework's advantages were
    out = get_advantage_reweighting("w_reinforce")(make_rollouts())
    assert out.advantages.dtype == torch.float64
    assert out.advantages.tolist() == [-1.0, -1.0, 0.1, 0.1]
    assert out.keep is None and out.divergence_weight is None
    assert out.metrics == {"correct_fraction": 0.5, "kept_fraction": 1.0}
    custom = get_advantage_reweighting("w_reinforce", positive_weight=0.25)(make_rollouts(local=slice(0, 2)))
    assert custom.advantages.tolist() == [0.25, -1.0]


def test_w_reinforce_psr_and_nsr_drop_the_other_samples() -> None:
    psr = get_advantage_reweighting("w_reinforce", mode="psr")(make_rollouts())
    assert psr.keep.tolist() == [False, False, True, True]
    assert psr.advantages.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert psr.metrics["kept_fraction"] == 0.5
    nsr = get_advantage_reweighting("w_reinforce", mode="nsr")(make_rollouts())
    assert nsr.keep.tolist() == [True, True, False, False]
    assert nsr.advantages.tolist() == [-1.0, -1.0, 0.0, 0.0]
    # λ = 0 gives NSR's advantages but keeps the correct rows in the token mean
    zero = get_advantage_reweighting("w_reinforce", positive_weight=0.0)(make_rollouts())
    assert zero.advantages.tolist() == nsr.advantages.tolist() and zero.keep is None


def test_w_reinforce_unscored_rollouts() -> None:
    batch = make_rollouts(
        rewards=[1.0, NAN, 0.0], advantages=[0.0, NAN, 0.0], groups=[0, 0, 1], lengths=[1] * 3, local=slice(0, 3)
    )
    weighted = get_advantage_reweighting("w_reinforce")(batch)
    assert weighted.advantages.tolist() == [0.1, 0.0, -1.0]
    nsr = get_advantage_reweighting("w_reinforce", mode="nsr")(batch)
    assert nsr.advantages.tolist() == [0.0, 0.0, -1.0] and nsr.keep.tolist() == [False, True, True]
    psr = get_advantage_reweighting("w_reinforce", mode="psr")(batch)
    assert psr.keep.tolist() == [True, False, False]


def test_success_adaptive_by_hand() -> None:
    # group 7: mean reward 0.25 → clamp(0.5 + 1.5·0.25) = 0.875; group 3: 0.75 → clamp(1.625) = 1
    out = get_advantage_reweighting("success_adaptive")(make_rollouts(local=slice(0, 8)))
    expected = [1.5, -0.5 * 0.875, -0.5 * 0.875, -0.5 * 0.875, 0.5, 0.5, 0.5, -1.5]
    torch.testing.assert_close(out.advantages, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    assert out.metrics["negative_fraction"] == 0.5
    assert out.metrics["mean_negative_scale"] == pytest.approx((3 * 0.875 + 1.0) / 4)
    # b = 0.2, c = 0.4: group 7 → 0.2 + 0.1 = 0.3; group 3 → 0.2 + 0.3 = 0.5; local rows 2..5
    custom = get_advantage_reweighting("success_adaptive", base=0.2, slope=0.4)(make_rollouts())
    torch.testing.assert_close(
        custom.advantages, torch.tensor([-0.5 * 0.3, -0.5 * 0.3, 0.5, 0.5], dtype=torch.float64), rtol=0, atol=1e-15
    )


def test_success_adaptive_degenerate_groups() -> None:
    # all-wrong group with nonzero advantages (scale 0.5), all-correct group, single sample, an unscored rollout
    # (reward 0 in its group's mean: group 3 mean = (1 + 0)/2 → scale 1)
    batch = make_rollouts(
        rewards=[0.0, 0.0, 1.0, 1.0, 0.0, 1.0, NAN],
        advantages=[-0.2, 0.0, 0.0, 0.0, 0.0, 0.7, NAN],
        groups=[0, 0, 1, 1, 2, 3, 3],
        lengths=[1] * 7,
        local=slice(0, 7),
    )
    out = get_advantage_reweighting("success_adaptive")(batch)
    assert torch.isfinite(out.advantages).all()
    assert out.advantages.tolist() == [-0.1, 0.0, 0.0, 0.0, 0.0, 0.7, 0.0]
