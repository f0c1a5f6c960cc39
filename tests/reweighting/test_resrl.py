"""ResRL: per-token negative weights from the residual off the positives' principal subspace.

Expected weights come from a numpy transcription of methods.md §3 (LayerNorm → centre → PCA → d = ‖e‖²/H →
quantile min–max into [ξ, 1]) or, in the geometric cases, from where the tokens were placed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trl_divergences.reweighting import Rollouts, get_advantage_reweighting

from ._batch import make_rollouts

NAN = float("nan")
XI = 0.1


def rollouts(
    rewards: list[float],
    advantages: list[float],
    groups: list[int],
    valid_lengths: list[int],
    hidden: torch.Tensor,
    local: slice | None = None,
) -> Rollouts:
    """float64 batch; ``hidden`` [n, T, H] and the left-aligned masks of ``valid_lengths`` are the local rows."""
    local = slice(0, len(rewards)) if local is None else local
    n, t = hidden.shape[:2]
    mask = (torch.arange(t)[None, :] < torch.tensor(valid_lengths)[:, None]).long()
    assert mask.shape == (n, t) and len(range(*local.indices(len(rewards)))) == n
    return make_rollouts(rewards, advantages, groups, mask.sum(-1).tolist(), local, hidden=hidden, completion_mask=mask)


def layer_norm(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def expected_weights(pos: np.ndarray, neg: np.ndarray, rank: int = 64) -> np.ndarray:
    """methods.md §3 ResRL for one group: positive tokens [P, H], valid negative tokens [M, H] → w [M]."""
    x = layer_norm(pos)
    mu = x.mean(0)
    k = min(rank, x.shape[0] - 1, x.shape[1])
    v = np.linalg.svd(x - mu, full_matrices=False)[2][:k].T
    e = layer_norm(neg) - mu
    e = e - e @ v @ v.T
    d = (e**2).sum(-1) / x.shape[1]
    lo, hi = np.quantile(d, [0.2, 0.8])  # linear interpolation
    if hi - lo < 1e-5:
        return np.full_like(d, (1 + XI) / 2)
    return XI + (1 - XI) * np.clip((d - lo) / (hi - lo), 0.0, 1.0)


def test_matches_the_formula_on_a_local_slice() -> None:
    # 4 groups × 4; this process holds groups 1, 2, 3 (rows 4..15). Group 1: two positives (10 valid tokens, k = 9);
    # group 2: one positive (6 tokens, k = 5); group 3: its positive has 3 valid tokens < 4 → skipped.
    groups = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    rewards = [1, 1, 0, 0] + [1, 0, 1, 0] + [0, 1, 0, 0] + [1, 0, 0, 0]
    advantages = [1, 1, -1, -1] + [0.8, -0.8, 0.8, -0.8] + [-0.5, 1.5, -0.5, -0.5] + [1.5, -0.5, -0.5, -0.5]
    lengths = [6, 5, 4, 6] + [3, 6, 6, 2] + [3, 6, 5, 4]
    hidden = torch.randn(12, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batch = rollouts([float(r) for r in rewards], advantages, groups, lengths, hidden, local=slice(4, 16))
    out = get_advantage_reweighting("resrl", pca="exact")(batch)
    assert out.advantages.shape == (12, 6) and out.advantages.dtype == torch.float64

    h = hidden.numpy()
    mask = batch.completion_mask.numpy().astype(bool)
    adv_local = np.array(advantages[4:], dtype=np.float64)
    expected = np.repeat(adv_local[:, None], 6, axis=1)  # skipped groups and masked negative tokens: × 1
    pos_rows = [i for i in range(12) if rewards[4 + i] == 1]
    expected[pos_rows] *= 0.1  # every positive row × 0.1, skipped group 3 included
    all_w = []
    for rows in ([0, 1, 2, 3], [4, 5, 6, 7]):
        pos = [i for i in rows if i in pos_rows]
        neg = [i for i in rows if i not in pos_rows]
        w = expected_weights(np.concatenate([h[i][mask[i]] for i in pos]), np.concatenate([h[i][mask[i]] for i in neg]))
        start = 0
        for i in neg:
            count = mask[i].sum()
            expected[i, :count] = adv_local[i] * w[start : start + count]
            start += count
        all_w.append(w)
    np.testing.assert_allclose(out.advantages.numpy(), expected, rtol=0, atol=1e-12)
    assert out.metrics["groups_processed_fraction"] == pytest.approx(2 / 3)
    assert out.metrics["mean_negative_weight"] == pytest.approx(np.concatenate(all_w).mean(), abs=1e-12)
    assert (np.concatenate(all_w) < 1).any() and (np.concatenate(all_w) > XI).any()


def _normalized(x: torch.Tensor) -> torch.Tensor:
    """Rows with zero mean and unit (population) variance exactly."""
    x = x - x.mean(-1, keepdim=True)
    return x / x.square().mean(-1, keepdim=True).sqrt()


def subspace_batch(generator: torch.Generator, size: int = 8) -> tuple[Rollouts, torch.Tensor]:
    """One group: a positive row with 4 valid tokens (k = 3) and two negative rows of 5 tokens; 8 negative tokens lie
    in μ + span(positives − μ) (their LayerNorm stays there), the last 2 are random. Returns (batch, is_near [2, 5])."""
    pos = _normalized(torch.randn(4, size, dtype=torch.float64, generator=generator))
    mu = pos.mean(0)
    near = []
    for _ in range(8):
        u = torch.randn(4, dtype=torch.float64, generator=generator) @ (pos - mu)
        # unit variance: ‖μ + t u‖² = H  ⇒  t² ‖u‖² + 2t μ·u + ‖μ‖² − H = 0
        a, b, c = u @ u, 2 * (mu @ u), mu @ mu - size
        near.append(mu + (-b + torch.sqrt(b * b - 4 * a * c)) / (2 * a) * u)
    far = 3.0 * torch.randn(2, size, dtype=torch.float64, generator=generator)
    hidden = torch.zeros(3, 5, size, dtype=torch.float64)
    hidden[0, :4] = pos
    hidden[0, 4] = 100.0  # masked: must not enter the positives
    hidden[1:] = torch.cat([torch.stack(near), far]).reshape(2, 5, size)
    batch = rollouts([1.0, 0.0, 0.0], [1.0, -0.5, -0.5], [0, 0, 0], [4, 5, 5], hidden)
    is_near = torch.tensor([[True] * 5, [True, True, True, False, False]])
    return batch, is_near


@pytest.mark.parametrize("pca", ["exact", "lowrank"])
def test_tokens_in_the_positive_subspace_get_min_weight_and_far_ones_full(pca: str) -> None:
    torch.manual_seed(0)  # pca_lowrank draws from the global RNG
    batch, is_near = subspace_batch(torch.Generator().manual_seed(1))
    out = get_advantage_reweighting("resrl", pca=pca)(batch)
    w = out.advantages[1:] / -0.5
    # 8 near (d ≈ 0) and 2 far: lo = q0.2 ≈ 0, hi = q0.8 = 0.8·0 + 0.2·min far d → near → ξ, far → 1
    torch.testing.assert_close(w[is_near], torch.full((8,), XI, dtype=torch.float64), rtol=0, atol=1e-8)
    torch.testing.assert_close(w[~is_near], torch.ones(2, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(out.advantages[0], torch.full((5,), 0.1, dtype=torch.float64), rtol=0, atol=1e-15)
    assert out.metrics["mean_negative_weight"] == pytest.approx((8 * XI + 2) / 10, abs=1e-8)


def test_lowrank_pca_approximates_exact_on_low_rank_positives() -> None:
    # 40 positive tokens near a 3-dim affine subspace of R^16 plus 1% noise; rank = 3
    g = torch.Generator().manual_seed(2)
    basis = torch.randn(3, 16, dtype=torch.float64, generator=g)
    pos = torch.randn(40, 3, dtype=torch.float64, generator=g) @ basis
    pos = pos + 0.01 * torch.randn(40, 16, dtype=torch.float64, generator=g)
    neg = torch.randn(20, 3, dtype=torch.float64, generator=g) @ basis + torch.randn(
        20, 16, dtype=torch.float64, generator=g
    )
    hidden = torch.cat([pos, neg]).reshape(3, 20, 16)
    batch = rollouts([1.0, 1.0, 0.0], [0.5, 0.5, -1.0], [0, 0, 0], [20, 20, 20], hidden)
    torch.manual_seed(0)
    exact = get_advantage_reweighting("resrl", pca="exact", rank=3)(batch).advantages
    lowrank = get_advantage_reweighting("resrl", rank=3, pca="lowrank")(batch).advantages
    torch.testing.assert_close(lowrank, exact, rtol=0, atol=1e-3)
    assert exact[2].min() < -0.1 and exact[2].max() > -1.0  # a spread of weights, not the flat case


def test_flat_distances_give_the_midpoint_weight() -> None:
    g = torch.Generator().manual_seed(3)
    # (a) k = H: 10 positive tokens in H = 4 → k = min(64, 9, 4) = 4, every residual is 0
    hidden = torch.randn(2, 10, 4, dtype=torch.float64, generator=g)
    out = get_advantage_reweighting("resrl", pca="exact")(rollouts([1.0, 0.0], [1.0, -1.0], [5, 5], [10, 7], hidden))
    expected = torch.tensor([-(1 + XI) / 2] * 7 + [-1.0] * 3, dtype=torch.float64)  # masked tokens × 1
    torch.testing.assert_close(out.advantages[1], expected, rtol=0, atol=1e-15)
    # (b) identical negative tokens: hi − lo = 0
    hidden = torch.randn(2, 6, 8, dtype=torch.float64, generator=g)
    hidden[1] = hidden[1, 0]
    out = get_advantage_reweighting("resrl", pca="exact", min_weight=0.3)(
        rollouts([1.0, 0.0], [1.0, -1.0], [0, 0], [6, 6], hidden)
    )
    torch.testing.assert_close(out.advantages[1], torch.full((6,), -0.65, dtype=torch.float64), rtol=0, atol=1e-15)


def test_groups_without_both_polarities_or_enough_positive_tokens_are_skipped() -> None:
    # all-correct group, all-wrong group, single-sample groups, and a mixed group whose positive has 3 valid tokens
    hidden = torch.randn(8, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    rewards = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    advantages = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0]
    batch = rollouts(rewards, advantages, [0, 0, 1, 1, 2, 3, 4, 4], [4, 4, 4, 4, 4, 4, 3, 4], hidden)
    out = get_advantage_reweighting("resrl", pca="exact", positive_weight=0.3)(batch)
    expected = torch.tensor([0.0] * 6 + [0.3, -1.0], dtype=torch.float64)[:, None].expand(8, 4)
    torch.testing.assert_close(out.advantages, expected, rtol=0, atol=0)
    assert out.metrics == {"mean_negative_weight": 1.0, "groups_processed_fraction": 0.0}


def test_all_masked_tokens_and_zero_advantages_stay_finite() -> None:
    hidden = torch.randn(4, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    masked = get_advantage_reweighting("resrl", pca="exact")(
        rollouts([1.0, 1.0, 0.0, 0.0], [1.0, 1.0, -1.0, -1.0], [0] * 4, [0, 0, 0, 0], hidden)
    )
    expected = torch.tensor([0.1, 0.1, -1.0, -1.0], dtype=torch.float64)[:, None].expand(4, 5)
    torch.testing.assert_close(masked.advantages, expected, rtol=0, atol=1e-15)
    zero = get_advantage_reweighting("resrl", pca="exact")(
        rollouts([1.0, 1.0, 0.0, 0.0], [0.0] * 4, [0] * 4, [5] * 4, hidden)
    )
    assert zero.advantages.eq(0).all() and zero.metrics["groups_processed_fraction"] == 1.0


def test_unscored_rollouts_get_zero_and_do_not_move_the_others() -> None:
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(4, 6, 8, dtype=torch.float64, generator=g)
    hidden[3] = 1e3 * torch.randn(6, 8, dtype=torch.float64, generator=g)
    with_unscored = rollouts([1.0, 0.0, 0.0, NAN], [1.0, -0.5, -0.5, NAN], [0] * 4, [6, 6, 5, 6], hidden)
    without = rollouts([1.0, 0.0, 0.0], [1.0, -0.5, -0.5], [0] * 3, [6, 6, 5], hidden[:3])
    a = get_advantage_reweighting("resrl", pca="exact")(with_unscored).advantages
    b = get_advantage_reweighting("resrl", pca="exact")(without).advantages
    assert a[3].eq(0).all()
    torch.testing.assert_close(a[:3], b, rtol=0, atol=0)


def test_sampling_of_positive_tokens_is_deterministic() -> None:
    # 12 positive tokens, at most 5 used (k = 4 < H = 16)
    hidden = torch.randn(4, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def run(groups: list[int], **kwargs) -> torch.Tensor:
        batch = rollouts([1.0, 1.0, 0.0, 0.0], [0.5, 0.5, -0.5, -0.5], groups, [6] * 4, hidden)
        return get_advantage_reweighting("resrl", **{"pca": "exact", **kwargs})(batch).advantages

    sampled = run([9] * 4, max_positive_tokens=5)
    torch.testing.assert_close(run([9] * 4, max_positive_tokens=5), sampled, rtol=0, atol=0)
    assert not torch.equal(run([9] * 4, max_positive_tokens=5, seed=1), sampled)
    assert not torch.equal(run([8] * 4, max_positive_tokens=5), sampled)  # the group id enters the seed
    assert not torch.equal(run([9] * 4), sampled)  # all 12 tokens
    weights = sampled[2:] / -0.5
    assert weights.min() >= XI - 1e-12 and weights.max() <= 1.0 + 1e-12


def test_low_precision_inputs() -> None:
    hidden = torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16)
    batch = rollouts([1.0, 1.0, 0.0, 0.0], [0.5, 0.5, -0.5, -0.5], [0] * 4, [6, 5, 6, 4], hidden)
    batch.advantages = batch.advantages.float()
    out = get_advantage_reweighting("resrl", pca="exact")(batch)
    assert out.advantages.dtype == torch.float32 and torch.isfinite(out.advantages).all()
    assert (out.advantages[2:] <= -0.5 * XI + 1e-6).all() and (out.advantages[2:] >= -0.5 - 1e-6).all()


def test_missing_hidden_raises() -> None:
    batch = rollouts([1.0, 0.0], [1.0, -1.0], [0, 0], [2, 2], torch.zeros(2, 2, 4, dtype=torch.float64))
    batch.hidden = None
    with pytest.raises(ValueError, match="hidden"):
        get_advantage_reweighting("resrl", pca="exact")(batch)


def test_mismatched_shapes_raise() -> None:
    batch = rollouts([1.0, 0.0], [1.0, -1.0], [0, 0], [2, 2], torch.zeros(2, 2, 4, dtype=torch.float64))
    batch.local = slice(0, 1)
    with pytest.raises(ValueError, match=r"n = 1 local rows"):
        get_advantage_reweighting("resrl", pca="exact")(batch)
