"""The seeded rehearsal stream: epochs are permutations, reproducible from the seed, exact continuation."""

from __future__ import annotations

import pytest

from trl_divergences.rehearsal.stream import RehearsalStream


def test_epochs_are_permutations_and_batches_cross_epoch_boundaries():
    stream = RehearsalStream(7, seed=3)
    drawn = [i for _ in range(7) for i in stream.next_indices(3)]  # 21 = three epochs
    for epoch in range(3):
        assert sorted(drawn[7 * epoch : 7 * (epoch + 1)]) == list(range(7))
    assert drawn[:7] != drawn[7:14]
    assert RehearsalStream(7, seed=3).next_indices(21) == drawn
    assert RehearsalStream(7, seed=4).next_indices(21) != drawn


def test_state_dict_continues_exactly():
    a = RehearsalStream(10, seed=0)
    a.next_indices(13)
    b = RehearsalStream(10, seed=0)
    b.load_state_dict(a.state_dict())
    assert b.next_indices(25) == a.next_indices(25)
    with pytest.raises(ValueError, match="store of 10 samples"):
        RehearsalStream(11).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="empty"):
        RehearsalStream(0)
