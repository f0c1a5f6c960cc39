"""Update sparsity, effective rank and trajectory rank (trl_divergences.analysis) on hand-computed matrices, in
float64, and the TRL callbacks' logging path on a stand-in trainer."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from trl_divergences.analysis import (
    effective_rank,
    parameter_snapshot,
    top1_energy,
    trajectory_top1_energy,
    update_statistics,
    updated_fraction,
)


def test_updated_fraction_counts_entries_above_the_tolerance():
    ref = [torch.zeros(3, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64)]
    cur = [torch.tensor([0.0, 1e-6, 2e-5], dtype=torch.float64), torch.tensor([[1.0], [0.5]], dtype=torch.float64)]
    assert updated_fraction(cur, ref, tol=1e-5) == pytest.approx(2 / 5, abs=1e-15)  # 2e-5 and 0.5 moved
    assert updated_fraction(cur, ref, tol=0.0) == pytest.approx(3 / 5, abs=1e-15)
    assert updated_fraction(cur, ref, tol=1.0) == 0.0


def test_updated_fraction_rejects_bad_input():
    with pytest.raises(ValueError, match="tol"):
        updated_fraction([torch.zeros(1)], [torch.zeros(1)], tol=-1.0)
    with pytest.raises(ValueError, match="shape"):
        updated_fraction([torch.zeros(2)], [torch.zeros(3)])
    with pytest.raises(ValueError, match="no parameters"):
        updated_fraction([], [])


def test_effective_rank_and_top1_energy_of_hand_computed_matrices():
    d = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    # σ = (3, 1): p = (3/4, 1/4), erank = exp(H(p)) = (4/3)^(3/4) · 4^(1/4); energy 9 / (9 + 1)
    assert effective_rank(d) == pytest.approx((4 / 3) ** 0.75 * 4**0.25, abs=1e-12)
    assert top1_energy(d) == pytest.approx(0.9, abs=1e-12)
    rank1 = torch.outer(torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64), torch.tensor([3.0, 4.0]).double())
    assert effective_rank(rank1) == pytest.approx(1.0, abs=1e-12)
    assert top1_energy(rank1) == pytest.approx(1.0, abs=1e-12)
    eye = torch.eye(4, 6, dtype=torch.float64)
    assert effective_rank(eye) == pytest.approx(4.0, abs=1e-12)
    assert top1_energy(eye) == pytest.approx(0.25, abs=1e-12)
    assert effective_rank(torch.zeros(2, 3)) == 0.0 and top1_energy(torch.zeros(2, 3)) == 0.0
    with pytest.raises(ValueError, match="2-D"):
        effective_rank(torch.zeros(3))


def test_trajectory_top1_energy():
    v = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    assert trajectory_top1_energy([v, 2 * v, -0.5 * v]) == pytest.approx(1.0, abs=1e-12)  # one line through θ₀
    e1, e2 = torch.eye(2, dtype=torch.float64)
    assert trajectory_top1_energy([e1, e2]) == pytest.approx(0.5, abs=1e-12)
    # rows (1, 0), (1, 1): Gram [[1, 1], [1, 2]] has eigenvalues (3 ± √5)/2, so σ₁² / Σσ² = (3 + √5) / 6
    assert trajectory_top1_energy([e1, e1 + e2]) == pytest.approx((3 + math.sqrt(5)) / 6, abs=1e-12)
    with pytest.raises(ValueError, match="no deltas"):
        trajectory_top1_energy([])


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2, bias=False)).double()


def test_update_statistics_on_a_module():
    model = _model()
    ref = parameter_snapshot(model)
    with torch.no_grad():
        model[0].weight[:, :2] += torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
        model[0].bias[0] += 1.0
    stats = update_statistics(model, ref)
    # two weight entries and one bias entry of the 6 + 2 + 4 = 12 parameters moved
    assert stats["updated_fraction"] == pytest.approx(3 / 12, abs=1e-15)
    # only the first weight has a non-zero update: its ΔW has σ = (3, 1)
    assert stats["effective_rank"] == pytest.approx((4 / 3) ** 0.75 * 4**0.25, abs=1e-12)
    assert stats["effective_rank_ratio"] == pytest.approx((4 / 3) ** 0.75 * 4**0.25 / 2, abs=1e-12)
    assert stats["top1_energy"] == pytest.approx(0.9, abs=1e-12)
    with pytest.raises(ValueError, match="not in the model"):
        update_statistics(model, {"nope": torch.zeros(1)})


def test_callbacks_push_into_the_trainers_metrics_at_logging_steps():
    from trl_divergences.trl.callbacks import UpdateRankCallback, UpdateSparsityCallback

    model = _model()
    trainer = SimpleNamespace(_metrics={"train": defaultdict(list)})
    callbacks = [UpdateSparsityCallback(trainer), UpdateRankCallback(trainer, trajectory=True)]
    state = SimpleNamespace(is_world_process_zero=True)
    for cb in callbacks:
        cb.on_train_begin(None, state, None, model=model)
    with torch.no_grad():
        model[1].weight += torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    for should_log in (False, True):
        for cb in callbacks:
            cb.on_step_end(None, state, SimpleNamespace(should_log=should_log), model=model)
    metrics = trainer._metrics["train"]
    assert metrics["analysis/updated_fraction"] == [pytest.approx(1 / 12, abs=1e-15)]
    assert metrics["analysis/effective_rank"] == [pytest.approx(1.0, abs=1e-12)]
    assert metrics["analysis/top1_energy"] == [pytest.approx(1.0, abs=1e-12)]
    assert metrics["analysis/trajectory_top1_energy"] == [pytest.approx(1.0, abs=1e-12)]
    with pytest.raises(TypeError, match="_metrics"):
        UpdateSparsityCallback(object())
    with pytest.raises(ValueError, match="tol"):
        UpdateSparsityCallback(trainer, tol=-1)
