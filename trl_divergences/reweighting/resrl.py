"""ResRL: per-token weights of the negative advantages from the residual of their hidden states off the positives'
principal subspace ("ResRL: Boosting LLM Reasoning via Negative Sample Projection Residual Reinforcement Learning",
Lin et al., 2026, arXiv 2605.00380; official code ``1229095296/ResRL``, ``dp_actor.py::_compute_svd_token_weights``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_choice, check_fraction, check_nonnegative, check_positive_int
from ..numerics import compute_dtype
from .base import AdvantageReweighting, Reweighted, Rollouts, register_advantage_reweighting

_FLAT_RANGE = 1e-5  # hi − lo below this: every negative token gets (1 + ξ)/2 (official ``eps * 10``)


@register_advantage_reweighting("resrl")
class ResRL(AdvantageReweighting):
    """ResRL: negative-token advantages × w ∈ [ξ, 1] by their distance to the positives' PCA subspace; positive
    advantages × ``positive_weight``.

    Per prompt group with both polarities (polarity = ``correct``), from the penultimate-layer hidden states h:

    - P = valid tokens of the positive rows (skip the group if |P| < ``min_positive_tokens``; if |P| >
      ``max_positive_tokens`` keep that many, drawn uniformly without replacement);
    - x̂ = LN(x), a parameter-free LayerNorm over H; μ = mean_P x̂; V_k = top-k principal directions of x̂ − μ,
      k = min(``rank``, |P| − 1, H);
    - each valid negative token: e = (LN(h) − μ) − V_k V_kᵀ (LN(h) − μ), d = ‖e‖² / H;
    - lo, hi = the ``low_quantile`` / ``high_quantile`` (linear interpolation) of d over the group's valid negative
      tokens; w = ξ + (1 − ξ)·clip((d − lo)/(hi − lo), 0, 1), ξ = ``min_weight``; w = (1 + ξ)/2 if hi − lo < 1e-5.

    Output [n, T]: negative rows A·w (masked tokens and skipped groups: A·1), every positive row A·``positive_weight``.
    A negative token close to what correct answers also do gets a weak penalty; a far one the full penalty.

    Differences from the official code: groups are the rows of this process sharing a group id (the official code
    groups within a micro-batch, which its script makes one group); sampling of positive tokens uses a generator
    seeded by (``seed``, group id), so it is reproducible; the PCA is the official randomized
    ``torch.pca_lowrank(q=k, niter=pca_niter)`` by default (it draws from the global RNG; ``pca="exact"`` is a full
    SVD: deterministic, but O(P·H·min(P, H)) per group, far slower at P = 4096 and H in the thousands); the hidden
    states are whatever the adapter passes (the official code takes them from each training forward of the current
    policy). Metrics are over this process's rows. Unscored rollouts (NaN reward) get advantage 0 and enter no
    statistic.

    Args:
        rank: PCA rank cap (64).
        min_positive_tokens: fewest positive tokens to fit a subspace (4, ≥ 2).
        max_positive_tokens: cap on the positive tokens used (4096).
        low_quantile, high_quantile: robust min–max quantiles of d (0.2, 0.8).
        min_weight: ξ, the weight of a negative token inside the subspace (0.1).
        positive_weight: constant multiplier of positive advantages (0.1, as in NSR/W-REINFORCE).
        pca: ``"lowrank"`` (torch.pca_lowrank, official) or ``"exact"`` (torch.linalg.svd).
        pca_niter: power iterations of ``"lowrank"`` (4).
        seed: seed of the positive-token sampling (0).
    """

    requires = frozenset({"hidden", "completion_mask"})
    whole_groups_per_process = True

    def __init__(
        self,
        *,
        rank: int = 64,
        min_positive_tokens: int = 4,
        max_positive_tokens: int = 4096,
        low_quantile: float = 0.2,
        high_quantile: float = 0.8,
        min_weight: float = 0.1,
        positive_weight: float = 0.1,
        pca: str = "lowrank",
        pca_niter: int = 4,
        seed: int = 0,
    ) -> None:
        self.rank = check_positive_int("resrl", "rank", rank)
        self.min_positive_tokens = check_positive_int("resrl", "min_positive_tokens", min_positive_tokens)
        if self.min_positive_tokens < 2:
            raise ValueError(
                f"resrl: min_positive_tokens must be ≥ 2 (a PCA needs 2 points), got {min_positive_tokens!r}"
            )
        self.max_positive_tokens = check_positive_int("resrl", "max_positive_tokens", max_positive_tokens)
        if self.max_positive_tokens < self.min_positive_tokens:
            raise ValueError(
                f"resrl: max_positive_tokens must be ≥ min_positive_tokens ({self.min_positive_tokens}), "
                f"got {max_positive_tokens!r}"
            )
        self.low_quantile = check_fraction("resrl", "low_quantile", low_quantile, low_open=False)
        self.high_quantile = check_fraction("resrl", "high_quantile", high_quantile, low_open=False)
        if self.low_quantile >= self.high_quantile:
            raise ValueError(f"resrl: low_quantile must be < high_quantile, got {low_quantile!r} and {high_quantile!r}")
        self.min_weight = check_fraction("resrl", "min_weight", min_weight, low_open=False)
        self.positive_weight = check_nonnegative("resrl", "positive_weight", positive_weight)
        self.pca = check_choice("resrl", "pca", pca, ("exact", "lowrank"))
        if not (isinstance(pca_niter, int) and not isinstance(pca_niter, bool) and pca_niter >= 0):
            raise ValueError(f"resrl: pca_niter must be a non-negative integer, got {pca_niter!r}")
        self.pca_niter = pca_niter
        if not (isinstance(seed, int) and not isinstance(seed, bool)):
            raise ValueError(f"resrl: seed must be an integer, got {seed!r}")
        self.seed = seed

    def __call__(self, rollouts: Rollouts) -> Reweighted:
        if rollouts.hidden is None or rollouts.completion_mask is None:
            raise ValueError("resrl needs Rollouts.hidden [n, T, H] and Rollouts.completion_mask [n, T]")
        local = rollouts.local
        adv = rollouts.advantages[local]
        hidden = rollouts.hidden.detach()
        valid = rollouts.completion_mask.bool()
        if hidden.dim() != 3 or valid.shape != (adv.shape[0], hidden.shape[1]):
            raise ValueError(
                f"resrl: hidden must be [n, T, H] and completion_mask [n, T] for the n = {adv.shape[0]} local rows, "
                f"got {tuple(hidden.shape)} and {tuple(valid.shape)}"
            )
        dtype = compute_dtype(hidden.dtype, adv.dtype)
        scored = ~torch.isnan(rollouts.rewards[local])
        positive = rollouts.correct[local].bool() & scored
        negative = ~positive & scored
        weights = torch.ones(valid.shape, dtype=dtype, device=adv.device)
        weights[positive] = self.positive_weight
        group_ids = rollouts.group_ids[local]
        groups = torch.unique(group_ids).tolist()
        negative_weights: list[Tensor] = []
        for gid in groups:
            rows = group_ids == gid
            w = self._group_weights(hidden, valid, rows & positive, rows & negative, int(gid), dtype)
            if w is not None:
                weights[(rows & negative)[:, None] & valid] = w  # row-major, as the tokens were gathered
                negative_weights.append(w)
        out = torch.where(scored[:, None], adv.to(dtype)[:, None] * weights, torch.zeros_like(weights))
        all_w = torch.cat(negative_weights) if negative_weights else weights.new_ones(0)
        metrics = {
            "mean_negative_weight": float(all_w.mean()) if all_w.numel() else 1.0,
            "groups_processed_fraction": len(negative_weights) / max(len(groups), 1),
        }
        return Reweighted(advantages=out.to(adv.dtype), metrics=metrics)

    def _group_weights(
        self, hidden: Tensor, valid: Tensor, pos_rows: Tensor, neg_rows: Tensor, gid: int, dtype: torch.dtype
    ) -> Tensor | None:
        """Weights of the group's valid negative tokens (row-major), or None when the group is skipped."""
        if not (pos_rows.any() and neg_rows.any()):
            return None
        pos = hidden[pos_rows][valid[pos_rows]]  # [P, H]
        neg = hidden[neg_rows][valid[neg_rows]]  # [M, H]
        if pos.shape[0] < self.min_positive_tokens or neg.shape[0] == 0:
            return None
        if pos.shape[0] > self.max_positive_tokens:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + gid) % 2**63)
            keep = torch.randperm(pos.shape[0], generator=generator)[: self.max_positive_tokens]
            pos = pos[keep.to(pos.device)]
        size = hidden.shape[-1]
        x = F.layer_norm(pos.to(dtype), (size,))
        mu = x.mean(dim=0)
        basis = self._principal_directions(x - mu, min(self.rank, x.shape[0] - 1, size))  # [H, k]
        e = F.layer_norm(neg.to(dtype), (size,)) - mu
        e = e - (e @ basis) @ basis.T
        d = e.square().sum(dim=-1) / size
        q = torch.tensor([self.low_quantile, self.high_quantile], dtype=dtype, device=d.device)
        lo, hi = torch.quantile(d, q)
        if hi - lo < _FLAT_RANGE:
            return torch.full_like(d, (1.0 + self.min_weight) / 2.0)
        return self.min_weight + (1.0 - self.min_weight) * ((d - lo) / (hi - lo)).clamp(0.0, 1.0)

    def _principal_directions(self, centred: Tensor, k: int) -> Tensor:
        """Top-k right singular vectors [H, k] of the centred positive matrix [P, H]."""
        if self.pca == "lowrank":
            return torch.pca_lowrank(centred, q=k, niter=self.pca_niter)[2][:, :k]
        return torch.linalg.svd(centred, full_matrices=False).Vh[:k].T
