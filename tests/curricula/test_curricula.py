"""Curricula and coefficient schedules against hand-computed values (methods.md §4; research notes B §4–§6).

gaussian: w = exp(−(p̃ − 0.5)²/(2·0.35²)) over an EMA p̃ ← 0.9·p̃ + 0.1·p (sampled prompts only, initial 0.5);
paced: w = p^α(1 − p)^β floored at 0.01·max; CurriculumSampler: TRL RepeatSampler's layout with seeded per-chunk
draws and a replayed history; self: the batch plan; schedules: AKL (tanh(ā) + 1)/2, forward-then-reverse, warm-up,
KDRL's linear annealing max(β₀ − δ·s, β_min).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import trl_divergences as td
from trl_divergences.curricula import CurriculumSampler, get_curriculum, get_schedule, list_curricula, list_schedules

F64 = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def gaussian_by_hand(p: float, mean: float = 0.5, std: float = 0.35) -> float:
    return math.exp(-((p - mean) ** 2) / (2 * std**2))


# ---------------------------------------------------------------------------------------------------------------
# gaussian (FG-ExPO GCS)
# ---------------------------------------------------------------------------------------------------------------


def test_gaussian_weights_by_hand() -> None:
    curriculum = get_curriculum("gaussian")
    p = [0.0, 0.25, 0.5, 0.75, 1.0, 0.1]
    got = curriculum.weight_of(t(p))
    torch.testing.assert_close(got, t([gaussian_by_hand(x) for x in p]), rtol=1e-12, atol=0)
    # 2σ² = 0.245: w(0) = w(1) = exp(−0.25/0.245) = exp(−1.0204) ≈ 0.3604; w(0.25) = exp(−0.2551) ≈ 0.7748
    assert got[0].item() == pytest.approx(math.exp(-1.0204082), rel=1e-6)
    assert got[0].item() == pytest.approx(0.36045, abs=1e-5) and got[4].item() == got[0].item()
    assert got[1].item() == pytest.approx(0.77484, abs=1e-5)
    # other centre and width: mean 0.3, std 0.1 → w(0.5) = exp(−0.04/0.02) = e⁻²
    other = get_curriculum("gaussian", mean=0.3, std=0.1)
    assert other.weight_of(t([0.5, 0.3])).tolist() == pytest.approx([math.exp(-2.0), 1.0], rel=1e-12)


def test_initial_half_gives_uniform_weights() -> None:
    for name in ("gaussian", "paced"):
        curriculum = get_curriculum(name)
        assert curriculum.initial == 0.5 and curriculum.ema == 0.9
        curriculum.bind(5)
        weights = curriculum.weights()
        assert weights.dtype == F64 and weights.shape == (5,)
        assert torch.equal(weights, torch.full((5,), weights[0].item(), dtype=F64))
    assert get_curriculum("gaussian").weight_of(t([0.5])).item() == 1.0


def test_ema_update_only_for_sampled_prompts_and_nan_ignored() -> None:
    curriculum = get_curriculum("gaussian")
    curriculum.bind(4)
    curriculum.update(torch.tensor([1, 3]), t([1.0, 0.0]))
    # 0.9·0.5 + 0.1·1 = 0.55 and 0.9·0.5 + 0.1·0 = 0.45; prompts 0 and 2 untouched
    assert curriculum.pass_rates.tolist() == pytest.approx([0.5, 0.55, 0.5, 0.45], abs=1e-15)
    curriculum.update(torch.tensor([1, 2]), t([0.0, float("nan")]))
    # 0.9·0.55 = 0.495; the NaN group (not scored) leaves prompt 2 alone
    assert curriculum.pass_rates.tolist() == pytest.approx([0.5, 0.495, 0.5, 0.45], abs=1e-15)
    curriculum.update(torch.tensor([0, 0]), t([1.0, 1.0]))
    # a prompt drawn twice is updated twice, in order: 0.55, then 0.9·0.55 + 0.1 = 0.595
    assert curriculum.pass_rates[0].item() == pytest.approx(0.595, abs=1e-15)
    # the weights follow the table
    expected = [gaussian_by_hand(p) for p in (0.595, 0.495, 0.5, 0.45)]
    assert curriculum.weights().tolist() == pytest.approx(expected, rel=1e-12)


def test_custom_ema_and_initial() -> None:
    curriculum = get_curriculum("gaussian", ema=0.5, initial=0.0)
    curriculum.bind(2)
    curriculum.update(torch.tensor([0]), t([1.0]))
    assert curriculum.pass_rates.tolist() == [0.5, 0.0]  # 0.5·0 + 0.5·1


def test_table_must_be_bound_and_sized() -> None:
    curriculum = get_curriculum("gaussian")
    with pytest.raises(RuntimeError, match="bind"):
        curriculum.weights()
    curriculum.bind(3)
    curriculum.bind(3)  # idempotent
    with pytest.raises(ValueError, match="3 prompts"):
        curriculum.bind(4)


def test_pass_rate_state_round_trip_through_json() -> None:
    curriculum = get_curriculum("paced")
    curriculum.bind(3)
    curriculum.update(torch.tensor([2]), t([0.0]))
    state = json.loads(json.dumps(curriculum.state_dict()))
    assert state == {"pass_rates": pytest.approx([0.5, 0.5, 0.45])}
    restored = get_curriculum("paced")
    restored.load_state_dict(state)
    assert torch.equal(restored.pass_rates, curriculum.pass_rates)
    assert torch.equal(restored.weights(), curriculum.weights())
    fresh = get_curriculum("paced")
    fresh.load_state_dict(json.loads(json.dumps(fresh.state_dict())))
    assert fresh.pass_rates is None


# ---------------------------------------------------------------------------------------------------------------
# paced (Beta kernel as sampling weights)
# ---------------------------------------------------------------------------------------------------------------


def test_paced_weights_with_the_floor() -> None:
    curriculum = get_curriculum("paced")
    assert (curriculum.alpha, curriculum.beta, curriculum.min_weight) == (1.0, 1.0, 0.01)
    # p(1 − p), floored at 0.01·max = 0.01·0.25 = 0.0025
    p = [0.0, 0.001, 0.1, 0.5, 0.9, 1.0]
    hand = [0.0025, 0.0025, 0.1 * 0.9, 0.25, 0.9 * 0.1, 0.0025]
    assert curriculum.weight_of(t(p)).tolist() == pytest.approx(hand, rel=1e-12)


def test_paced_alpha_beta_variants() -> None:
    # α = 2, β = 1: maximum at p* = 2/3, (4/9)(1/3) = 4/27; floor 0.01·4/27
    curriculum = get_curriculum("paced", alpha=2.0, beta=1.0)
    p = [0.0, 0.5, 0.9, 2 / 3, 1.0]
    hand = [0.04 / 27, 0.25 * 0.5, 0.81 * 0.1, 4 / 27, 0.04 / 27]
    assert curriculum.weight_of(t(p)).tolist() == pytest.approx(hand, rel=1e-12)
    # α = 1, β = 3 without a floor: 0, 0.25·0.75³, 0.5·0.5³
    curriculum = get_curriculum("paced", alpha=1.0, beta=3.0, min_weight=0.0)
    assert curriculum.weight_of(t([0.0, 0.25, 0.5])).tolist() == pytest.approx([0.0, 0.10546875, 0.0625], abs=1e-15)
    # another floor: 0.1·0.25 = 0.025; above it p(1 − p) unchanged (0.2·0.8 = 0.16)
    curriculum = get_curriculum("paced", min_weight=0.1)
    assert curriculum.weight_of(t([0.0, 0.2, 0.5])).tolist() == pytest.approx([0.025, 0.16, 0.25], rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# CurriculumSampler
# ---------------------------------------------------------------------------------------------------------------


def sampler(name: str = "gaussian", n: int = 10, g: int = 2, batch: int = 3, repeat: int = 2, **kw):
    curriculum_kwargs = kw.pop("curriculum_kwargs", {})
    return CurriculumSampler(get_curriculum(name, **curriculum_kwargs), n, g, batch, repeat, **kw)


def test_repeat_sampler_layout_and_len() -> None:
    s = sampler(n=10, g=2, batch=3, repeat=2, seed=1)
    assert s.chunks_per_epoch == 3  # ⌊10/3⌋
    assert len(s) == 3 * 3 * 2 * 2
    indices = list(s)
    assert len(indices) == 36
    for c in range(3):
        chunk = indices[c * 12 : (c + 1) * 12]
        a, bb, cc = chunk[0], chunk[2], chunk[4]
        # batch_size distinct prompts, each repeated G = 2 times consecutively, the chunk repeated twice
        assert len({a, bb, cc}) == 3 and all(0 <= i < 10 for i in (a, bb, cc))
        assert chunk == [a, a, bb, bb, cc, cc] * 2
        assert [a, bb, cc] == s.draw(c)  # the chunk's draw, replayed
    other = sampler(n=10, g=4, batch=4, repeat=1)
    assert other.chunks_per_epoch == 2 and len(other) == 2 * 4 * 4 * 1 == len(list(other))


def test_same_seed_same_indices_on_every_rank() -> None:
    rank0, rank1 = sampler(seed=7), sampler(seed=7)
    first = list(rank0)
    assert first == list(rank1)
    assert first != list(sampler(seed=8))
    # after the same (gathered) update both ranks still agree
    for s in (rank0, rank1):
        s.curriculum.update(torch.tensor([0, 1, 2]), t([1.0, 0.0, 1.0]))
        s.set_epoch(1)
    assert list(rank0) == list(rank1)


def test_set_epoch_moves_to_the_next_chunks() -> None:
    s = sampler(seed=2)
    epoch0 = list(s)
    s.set_epoch(1)
    epoch1 = list(s)
    assert epoch1 != epoch0
    # epoch 1 is made of chunks 3, 4, 5 (epoch · chunks_per_epoch + j)
    fresh = sampler(seed=2)
    chunks = [fresh.draw(c) for c in (3, 4, 5)]
    assert epoch1 == [i for chunk in chunks for _ in range(2) for i in chunk for _ in range(2)]


def inclusion_probabilities(weights: list[float], counts: list[int]) -> list[float]:
    """P(prompt i among 2 draws without replacement), by hand: p_i + Σ_{j≠i} p_j·p_i/(1 − p_j), for a population of
    ``counts[k]`` prompts with weight ``weights[k]``."""
    total = sum(w * c for w, c in zip(weights, counts))
    p = [w / total for w in weights]
    out = []
    for k in range(len(weights)):
        second = sum((counts[j] - (j == k)) * p[j] / (1 - p[j]) for j in range(len(weights)))
        out.append(p[k] * (1 + second))
    return out


def test_weights_steer_the_draws_on_a_synthetic_history() -> None:
    # 12 prompts: 0–3 at the frontier (pass rate 0.5), 4–7 always solved, 8–11 never solved; 50 updates each
    s = sampler(n=12, g=1, batch=2, repeat=1, seed=11)
    for _ in range(50):
        s.curriculum.update(torch.arange(12), t([0.5] * 4 + [1.0] * 4 + [0.0] * 4))
    # p̃ = p + (0.5 − p)·0.9⁵⁰: 0.5, 1 − 0.5·0.9⁵⁰, 0.5·0.9⁵⁰
    tail = 0.5 * 0.9**50
    hand = [0.5] * 4 + [1 - tail] * 4 + [tail] * 4
    assert s.curriculum.pass_rates.tolist() == pytest.approx(hand, abs=1e-12)
    w_far = gaussian_by_hand(tail)  # ≈ 0.3643
    counts = torch.zeros(12)
    n_chunks = 1000
    for c in range(n_chunks):
        counts[s.draw(c)] += 1
    freq = counts / n_chunks
    p_front, p_far = inclusion_probabilities([1.0, w_far], [4, 8])  # ≈ 0.284, ≈ 0.108
    assert freq[:4].mean().item() == pytest.approx(p_front, abs=0.03)
    assert freq[4:].mean().item() == pytest.approx(p_far, abs=0.015)
    assert freq[:4].mean() > 2 * freq[4:].mean() and freq[:4].min() > freq[4:].max()


def test_weights_steer_the_draws_in_a_closed_loop() -> None:
    # the same three kinds of prompts, but the table is only fed by what the sampler draws
    true_rate = t([0.5] * 4 + [1.0] * 4 + [0.0] * 4)
    s = sampler(n=12, g=1, batch=2, repeat=1, seed=5)
    late = torch.zeros(12)
    chunk = 0
    for epoch in range(50):  # 6 chunks an epoch
        s.set_epoch(epoch)
        stream = iter(s)
        for _ in range(s.chunks_per_epoch):
            drawn = torch.tensor([next(stream), next(stream)])
            s.curriculum.update(drawn, true_rate[drawn])
            if chunk >= 100:
                late[drawn] += 1
            chunk += 1
    table = s.curriculum.pass_rates
    assert table[:4].tolist() == pytest.approx([0.5] * 4, abs=1e-12)
    assert (table[4:8] > 0.9).all() and (table[8:] < 0.1).all()  # each drawn ≥ 16 times: 0.5·0.9¹⁶ < 0.1
    assert late[:4].mean() > 2 * late[4:].mean()


def test_zero_weights_still_allow_a_draw() -> None:
    curriculum = get_curriculum("paced", min_weight=0.0)
    curriculum.load_state_dict({"pass_rates": [0.0, 1.0, 0.0, 1.0, 0.5, 0.0]})
    s = CurriculumSampler(curriculum, 6, 1, 3, 1, seed=0)
    assert curriculum.weights().tolist() == [0.0, 0.0, 0.0, 0.0, 0.25, 0.0]
    for c in range(20):
        drawn = s.draw(c)
        assert len(set(drawn)) == 3 and 4 in drawn  # one positive weight, two drawn from the zero ones
    curriculum.load_state_dict({"pass_rates": [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]})  # every weight 0 → uniform
    seen = set()
    for c in range(20, 60):
        drawn = s.draw(c)
        assert len(set(drawn)) == 3
        seen.update(drawn)
    assert seen == set(range(6))


def test_history_replay_after_load_state_dict() -> None:
    kwargs = {"name": "paced", "n": 8, "g": 1, "batch": 2, "repeat": 1, "seed": 3, "curriculum_kwargs": {"ema": 0.0}}
    original = sampler(**kwargs)
    chunk0, chunk1 = original.draw(0), original.draw(1)  # chunk 1 prefetched before chunk 0's rewards
    # chunk 0's rewards (and more) arrive: with ema 0, p̃ = p → prompts 0–5 solved (weight 0.0025), 6 and 7 at 0.25
    original.curriculum.update(torch.arange(6), t([1.0] * 6))
    state = json.loads(json.dumps(original.state_dict()))
    assert state["drawn"] == {"0": chunk0, "1": chunk1}
    # a redraw of chunk 1 from the new weights would differ (this is what the history prevents)
    redraw = sampler(**kwargs)
    redraw.curriculum.load_state_dict(state["curriculum"])
    assert sorted(redraw.draw(1)) == [6, 7] and sorted(chunk1) != [6, 7]
    resumed = sampler(**kwargs)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.curriculum.pass_rates, original.curriculum.pass_rates)
    assert list(resumed) == [*chunk0, *chunk1, *original.draw(2), *original.draw(3)]
    assert resumed.state_dict() == original.state_dict()


def test_history_keeps_the_last_chunks_only() -> None:
    s = sampler(history=3)
    for c in range(10):
        s.draw(c)
    assert sorted(s.state_dict()["drawn"]) == ["7", "8", "9"]


def test_sampler_validation() -> None:
    with pytest.raises(ValueError, match="distinct prompts"):
        sampler(n=3, batch=4)
    curriculum = get_curriculum("gaussian")
    curriculum.bind(8)
    with pytest.raises(ValueError, match="8 prompts"):
        CurriculumSampler(curriculum, 9, 1, 2, 1)
    with pytest.raises(ValueError, match="history must be a positive integer, got 0"):
        CurriculumSampler(get_curriculum("gaussian"), 8, 1, 2, 1, history=0)


# ---------------------------------------------------------------------------------------------------------------
# self (SELF)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kept, refills, n_slots, expected",
    [
        ([3, 7], [11, 12], 6, [3, 7, 11, 12, 3, 7]),  # kept, refills, then the chosen ones again
        ([3, 7], [11], 6, [3, 7, 11, 3, 7, 11]),  # the remaining slots repeat the chosen prompts in order
        ([5], [], 3, [5, 5, 5]),  # refill_rounds = 0: the official repetition
        ([1, 2, 3], [4, 5], 2, [1, 2]),  # more than enough: the kept ones first
        ([1, 2], [4, 5], 3, [1, 2, 4]),
        ([], [], 4, None),  # nothing kept: the step trains on nothing
    ],
)
def test_self_plan(kept, refills, n_slots, expected) -> None:
    curriculum = get_curriculum("self")
    assert curriculum.kind == "filter" and curriculum.refill_rounds == 2
    assert curriculum.plan(list(kept), list(refills), n_slots) == expected


def test_self_refill_rounds_validation() -> None:
    assert get_curriculum("self", refill_rounds=0).refill_rounds == 0
    for bad in (-1, 1.5, True, "2", None):
        with pytest.raises(ValueError) as info:
            get_curriculum("self", refill_rounds=bad)
        assert repr(bad) in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accuracy, multiplier",
    # (tanh(ā) + 1)/2 = sigmoid(2ā): 0.5, 1/(1 + e⁻¹) = 0.7311, 1/(1 + e⁻²) = 0.8808
    [(0.0, 0.5), (0.5, 1 / (1 + math.exp(-1.0))), (1.0, 1 / (1 + math.exp(-2.0)))],
)
def test_accuracy_conditioned(accuracy, multiplier) -> None:
    schedule = get_schedule("accuracy_conditioned")
    assert schedule.needs_accuracy and schedule.divergences == ()
    got, name = schedule(step=3, max_steps=100, accuracy=accuracy)
    assert name is None and got == pytest.approx(multiplier, rel=1e-12)
    assert got == pytest.approx({0.0: 0.5, 0.5: 0.7310586, 1.0: 0.8807971}[accuracy], abs=1e-7)
    # with the paper's β = 0.02: β_eff ∈ [0.010, 0.0176]
    assert 0.02 * got == pytest.approx(0.02 * multiplier)


def test_accuracy_conditioned_needs_the_accuracy() -> None:
    with pytest.raises(ValueError, match="accuracy"):
        get_schedule("accuracy_conditioned")(0, 10)


def test_forward_then_reverse_switches_at_the_fraction() -> None:
    schedule = get_schedule("forward_then_reverse")
    assert schedule.divergences == ("forward_kl", "reverse_kl") and not schedule.needs_accuracy
    # default ½ of 10 steps: 0–4 forward, 5–9 reverse
    names = [schedule(s, 10)[1] for s in range(10)]
    assert names == ["forward_kl"] * 5 + ["reverse_kl"] * 5
    assert {schedule(s, 10)[0] for s in range(10)} == {1.0}
    # ¼ of 10 = 2.5 steps: 0, 1, 2 forward
    quarter = get_schedule("forward_then_reverse", switch_fraction=0.25)
    assert [quarter(s, 10)[1] for s in range(5)] == ["forward_kl"] * 3 + ["reverse_kl"] * 2


def test_forward_then_reverse_switches_at_the_steps() -> None:
    schedule = get_schedule("forward_then_reverse", switch_steps=3)
    for max_steps in (10, 1000, -1):  # independent of max_steps
        assert [schedule(s, max_steps)[1] for s in range(5)] == ["forward_kl"] * 3 + ["reverse_kl"] * 2


def test_warmup_ramp_then_constant() -> None:
    schedule = get_schedule("warmup", warmup_steps=4)
    # (s + 1)/4 for s + 1 < 4, then 1
    assert [schedule(s, 20)[0] for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0], abs=1e-15)
    assert schedule(19, 20) == (1.0, None) and schedule(500, 20) == (1.0, None)
    # default: 10% of 50 = 5 steps → 0.2, 0.4, 0.6, 0.8, 1
    default = get_schedule("warmup")
    assert [default(s, 50)[0] for s in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0], abs=1e-15)
    # 30% of 10 = 3 steps
    third = get_schedule("warmup", warmup_fraction=0.3)
    assert [third(s, 10)[0] for s in range(4)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0], abs=1e-12)


def test_warmup_decay_to_the_final_multiplier() -> None:
    schedule = get_schedule("warmup", warmup_steps=4, final_multiplier=0.1)
    # after the warm-up: 1 + (0.1 − 1)·(s + 1 − 4)/(20 − 4); the last step (19) reaches 0.1
    got = [schedule(s, 20)[0] for s in (0, 3, 7, 11, 19, 25)]
    hand = [0.25, 1.0, 1 - 0.9 * 4 / 16, 1 - 0.9 * 8 / 16, 0.1, 0.1]
    assert got == pytest.approx(hand, abs=1e-12)
    rising = get_schedule("warmup", warmup_steps=2, final_multiplier=3.0)
    assert rising(9, 10)[0] == pytest.approx(3.0) and rising(5, 10)[0] == pytest.approx(1 + 2 * 4 / 8)


def test_linear_anneal_is_kdrl_annealing() -> None:
    # KDRL-Annealing: β_s = max(5e-3 − 5e-5·s, 1e-3), the floor reached at step 80 (of their 280)
    schedule = get_schedule("linear_anneal")
    assert not schedule.needs_accuracy and schedule.divergences == ()
    for s in (0, 1, 40, 79, 80, 81, 279):
        multiplier, name = schedule(s, 280)
        assert name is None
        assert 5e-3 * multiplier == pytest.approx(max(5e-3 - 5e-5 * s, 1e-3), rel=1e-12)
    # by hand: 1 − 0.8·s/80 = 1 − 0.01·s
    assert [schedule(s, 280)[0] for s in (0, 10, 50, 80, 200)] == pytest.approx([1.0, 0.9, 0.5, 0.2, 0.2], abs=1e-15)


def test_linear_anneal_steps_fraction_and_floor() -> None:
    # floor 0 over 4 steps: 1, 0.75, 0.5, 0.25, 0, 0
    to_zero = get_schedule("linear_anneal", final_multiplier=0.0, anneal_steps=4)
    assert [to_zero(s, 100)[0] for s in range(6)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0], abs=1e-15)
    # a quarter of 20 steps = 5 steps to 0.5: 1 − 0.1·s
    quarter = get_schedule("linear_anneal", final_multiplier=0.5, anneal_fraction=0.25)
    assert [quarter(s, 20)[0] for s in (0, 2, 5, 19)] == pytest.approx([1.0, 0.8, 0.5, 0.5], abs=1e-15)
    # final_multiplier 1 is a constant coefficient
    assert {get_schedule("linear_anneal", final_multiplier=1.0)(s, 10)[0] for s in range(10)} == {1.0}


@pytest.mark.parametrize(
    "name, kwargs, shown",
    [
        ("forward_then_reverse", {"switch_steps": 3, "switch_fraction": 0.5}, "not both"),
        ("warmup", {"warmup_steps": 3, "warmup_fraction": 0.5}, "not both"),
        ("forward_then_reverse", {"switch_steps": 0}, "0"),
        ("forward_then_reverse", {"switch_steps": -2}, "-2"),
        ("forward_then_reverse", {"switch_fraction": 1.5}, "1.5"),
        ("forward_then_reverse", {"switch_fraction": -0.25}, "-0.25"),
        ("warmup", {"warmup_steps": -1}, "-1"),
        ("warmup", {"warmup_fraction": 0.0}, "0.0"),
        ("warmup", {"final_multiplier": -0.5}, "-0.5"),
        ("linear_anneal", {"final_multiplier": 1.5}, "1.5"),
        ("linear_anneal", {"anneal_steps": 0}, "0"),
        ("linear_anneal", {"anneal_steps": 8, "anneal_fraction": 0.5}, "not both"),
        ("linear_anneal", {"beta_min": 1e-3}, "'beta_min'"),
        ("accuracy_conditioned", {"beta": 0.02}, "'beta'"),
    ],
)
def test_schedule_validation(name, kwargs, shown) -> None:
    with pytest.raises(ValueError) as info:
        get_schedule(name, **kwargs)
    assert shown in str(info.value)


@pytest.mark.parametrize(
    "name, kwargs", [("forward_then_reverse", {}), ("warmup", {}), ("linear_anneal", {"anneal_fraction": 0.5})]
)
@pytest.mark.parametrize("max_steps", [0, -1])
def test_fraction_of_a_run_needs_max_steps(name, kwargs, max_steps) -> None:
    with pytest.raises(ValueError, match="max_steps"):
        get_schedule(name, **kwargs)(0, max_steps)


@pytest.mark.parametrize("name", ["accuracy_conditioned", "forward_then_reverse", "warmup", "linear_anneal"])
def test_schedules_are_stateless(name) -> None:
    schedule = get_schedule(name)
    assert schedule.state_dict() == {}
    schedule.load_state_dict({})
    with pytest.raises(ValueError, match="stateless"):
        schedule.load_state_dict({"step": 1})


# ---------------------------------------------------------------------------------------------------------------
# listers and curriculum validation
# ---------------------------------------------------------------------------------------------------------------


def test_listers() -> None:
    assert sorted(td.list_curricula()) == ["gaussian", "paced", "self"]
    assert sorted(td.list_schedules()) == ["accuracy_conditioned", "forward_then_reverse", "linear_anneal", "warmup"]
    assert td.list_curricula() == list_curricula() and td.list_schedules() == list_schedules()
    assert {get_curriculum(n).kind for n in ("gaussian", "paced")} == {"sampler"}


@pytest.mark.parametrize(
    "name, kwargs, shown",
    [
        ("gaussian", {"std": 0.0}, "0.0"),
        ("gaussian", {"mean": 1.5}, "1.5"),
        ("gaussian", {"ema": 1.0}, "1.0"),
        ("gaussian", {"initial": -0.5}, "-0.5"),
        ("paced", {"alpha": -1.0}, "-1.0"),
        ("paced", {"min_weight": 2.0}, "2.0"),
        ("gaussian", {"sigma": 0.35}, "'sigma'"),
        ("nope", {}, "'nope'"),
    ],
)
def test_curriculum_validation(name, kwargs, shown) -> None:
    with pytest.raises(ValueError) as info:
        get_curriculum(name, **kwargs)
    assert shown in str(info.value)
