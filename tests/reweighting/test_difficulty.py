"""APO's DADS (+ STCR) and PACED, by hand on the shared batch (group 7: 1 of 4 correct, group 3: 3 of 4)."""

from __future__ import annotations

import math

import pytest
import torch

from trl_divergences.reweighting import get_advantage_reweighting

from ._batch import ADVANTAGES, make_rollouts

NAN = float("nan")


def f64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_dads_divergence_weight_by_hand() -> None:
    # d = 1 − accuracy: group 7 → 0.75, group 3 → 0.25; positive-advantage rows 0 (group 7) and 4, 5, 6 (group 3)
    w7, w3 = 1 - math.exp(-math.e * 0.25), 1 - math.exp(-math.e * 0.75)
    out = get_advantage_reweighting("dads")(make_rollouts(local=slice(0, 8)))
    torch.testing.assert_close(out.divergence_weight, f64([w7, 1, 1, 1, w3, w3, w3, 1]), rtol=0, atol=1e-15)
    assert out.advantages.tolist() == ADVANTAGES  # no STCR: advantages unchanged
    assert out.keep is None
    assert out.metrics["mean_divergence_weight"] == pytest.approx((w7 + 3 * w3 + 4) / 8, abs=1e-14)
    assert out.metrics["shaped_fraction"] == 0.5
    # the values documented by the paper's code for d = 0.875 (1 of 8 correct) and d = 0.5: 0.29 and 0.74
    batch = make_rollouts(
        rewards=[1.0] + [0.0] * 7 + [1.0, 0.0],
        advantages=[2.0] + [-0.3] * 7 + [0.7, -0.7],
        groups=[0] * 8 + [1] * 2,
        lengths=[1] * 10,
        local=slice(0, 10),
    )
    weights = get_advantage_reweighting("dads")(batch).divergence_weight
    assert [round(weights[0].item(), 2), round(weights[8].item(), 2)] == [0.29, 0.74]
    local = get_advantage_reweighting("dads", scale=1.0)(make_rollouts())  # rows 2..5
    torch.testing.assert_close(local.divergence_weight, f64([1, 1, 1 - math.exp(-0.75), 1 - math.exp(-0.75)]))


def test_dads_stcr_by_hand() -> None:
    # group 7: correct row 0 has length 10, incorrect rows 1..3 lengths 20, 30, 40 → Δ = 10, 20, 30;
    # group 3: mean correct length (12 + 14 + 16)/3 = 14, incorrect row 7 length 50 → Δ = 36
    b = 1.00001
    out = get_advantage_reweighting("dads", stcr=True)(make_rollouts(local=slice(0, 8)))
    expected = [1.5, -0.5 * (2 - b**-10), -0.5 * (2 - b**-20), -0.5 * (2 - b**-30), 0.5, 0.5, 0.5, -1.5 * (2 - b**-36)]
    torch.testing.assert_close(out.advantages, f64(expected), rtol=0, atol=1e-15)
    assert out.metrics["stcr_penalized_fraction"] == 0.5
    # Δ ≤ 0 (row 1 shorter than the correct mean) is not penalized; a visible base
    lengths = [10, 5, 10, 40, 12, 14, 16, 50]
    out = get_advantage_reweighting("dads", stcr=True, stcr_base=1.01)(make_rollouts(lengths=lengths))
    torch.testing.assert_close(out.advantages, f64([-0.5, -0.5 * (2 - 1.01**-30), 0.5, 0.5]), rtol=0, atol=1e-15)


def test_dads_degenerate_groups() -> None:
    # all-correct (d = 0) and all-wrong (d = 1) groups, a single sample, an unscored rollout; no correct rollout
    # in a group leaves STCR off there
    batch = make_rollouts(
        rewards=[1.0, 1.0, 0.0, 0.0, 1.0, NAN, 0.0],
        advantages=[0.3, 0.3, 0.3, -0.3, 0.0, NAN, -0.4],  # A > 0 at d = 0 and d = 1: weight 1
        groups=[0, 0, 1, 1, 2, 3, 3],
        lengths=[5, 5, 5, 900, 5, 5, 5],
        local=slice(0, 7),
    )
    out = get_advantage_reweighting("dads", stcr=True)(batch)
    assert out.divergence_weight.tolist() == [1.0] * 7
    assert out.advantages.tolist() == [0.3, 0.3, 0.3, -0.3, 0.0, 0.0, -0.4]
    assert out.metrics["stcr_penalized_fraction"] == 0.0 and out.metrics["stcr_mean_multiplier"] == 1.0


def test_paced_by_hand() -> None:
    # α = 1, β = 2: w = p(1 − p)²; group 7: 0.25·0.5625 = 0.140625, group 3: 0.75·0.0625 = 0.046875;
    # mean over the 8 rollouts = (4·0.140625 + 4·0.046875)/8 = 0.09375 → normalized 1.5 and 0.5
    out = get_advantage_reweighting("paced", beta=2.0)(make_rollouts())
    torch.testing.assert_close(out.advantages, f64([-0.5 * 1.5, -0.5 * 1.5, 0.5 * 0.5, 0.5 * 0.5]), rtol=0, atol=1e-15)
    assert out.metrics["mean_raw_weight"] == pytest.approx(0.09375, abs=1e-15)
    assert out.divergence_weight is None and out.keep is None
    raw = get_advantage_reweighting("paced", beta=2.0, normalize="none")(make_rollouts())
    expected = [-0.5 * 0.140625, -0.5 * 0.140625, 0.5 * 0.046875, 0.5 * 0.046875]
    torch.testing.assert_close(raw.advantages, f64(expected), rtol=0, atol=1e-15)
    # α = β = 1: p(1 − p) = 0.1875 in both groups → mean-normalized weights 1
    default = get_advantage_reweighting("paced")(make_rollouts())
    torch.testing.assert_close(default.advantages, f64(ADVANTAGES[2:6]), rtol=0, atol=1e-15)


def test_paced_solved_groups_get_zero_and_the_others_absorb_the_mean() -> None:
    # group 0 all correct → w = 0; group 1 (p = 0.5) → 0.25; group 2 (p = 0.25) → 0.1875; unscored row → 0
    batch = make_rollouts(
        rewards=[1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, NAN],
        advantages=[0.0, 0.0, 1.0, -1.0, 1.5, -0.5, -0.5, NAN],
        groups=[0, 0, 1, 1, 2, 2, 2, 2],
        lengths=[1] * 8,
        local=slice(0, 8),
    )
    mean = (2 * 0.25 + 4 * 0.1875) / 8
    out = get_advantage_reweighting("paced")(batch)
    expected = [0.0, 0.0, 0.25 / mean, -0.25 / mean, 1.5 * 0.1875 / mean, -0.5 * 0.1875 / mean, -0.5 * 0.1875 / mean, 0]
    torch.testing.assert_close(out.advantages, f64(expected), rtol=0, atol=1e-14)
    assert out.metrics["zero_weight_fraction"] == 0.25


def test_paced_all_solved_or_unsolved_gives_zero_not_nan() -> None:
    batch = make_rollouts(
        rewards=[1.0, 1.0, 0.0, 0.0, 1.0],
        advantages=[0.0, 0.0, 0.0, 0.0, 0.0],
        groups=[0, 0, 1, 1, 2],
        lengths=[1] * 5,
        local=slice(0, 5),
    )
    out = get_advantage_reweighting("paced")(batch)
    assert out.advantages.tolist() == [0.0] * 5
    assert out.metrics["zero_weight_fraction"] == 1.0


def test_float32_in_float32_out() -> None:
    batch = make_rollouts()
    batch.advantages = batch.advantages.float()
    for name in ("dads", "paced"):
        out = get_advantage_reweighting(name)(batch)
        assert out.advantages.dtype == torch.float32 and out.advantages.shape == (4,)
    assert get_advantage_reweighting("dads")(batch).divergence_weight.dtype == torch.float32
