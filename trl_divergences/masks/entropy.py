"""Entropy-based token masks: the high-entropy quantile (TRL's ``top_entropy_quantile``), SIREN and EKSFT."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_choice, check_fraction, check_nonnegative, check_positive, check_positive_int
from ..groups import ReduceSum
from .base import MaskOutput, TokenBatch, TokenMask, register_token_mask, top_fraction


@register_token_mask("entropy_quantile")
class EntropyQuantile(TokenMask):
    """Keep only the high-entropy "forking" tokens in the policy gradient ("Beyond the 80/20 Rule: High-Entropy
    Minority Tokens Drive Effective Reinforcement Learning for LLM Reasoning", Wang et al., 2025): keep the valid
    tokens whose entropy is ≥ the (1 − ``quantile``) quantile (linear interpolation) of all valid tokens' entropies.

    Identical to TRL 1.16's ``top_entropy_quantile`` / ``get_high_entropy_mask`` at the default ``scope="global"``
    (the quantile over every process's tokens); ``"micro_batch"`` computes it on this micro-batch only.
    ``quantile`` = 0.2 keeps the top 20% (the paper's setting).
    """

    requires = frozenset({"entropies"})

    def __init__(self, *, quantile: float = 0.2, scope: str = "global") -> None:
        self.quantile = check_fraction("entropy_quantile", "quantile", quantile)
        self.scope = check_choice("entropy_quantile", "scope", scope, ("global", "micro_batch"))

    def __call__(self, batch: TokenBatch) -> MaskOutput:
        valid = batch.mask.bool()
        entropies = batch.entropies.detach()
        values = entropies[valid].float()
        if self.scope == "global":
            values = batch.gathered(values)
        if values.numel() == 0:
            return MaskOutput(keep=torch.zeros_like(valid))
        threshold = torch.quantile(values, 1.0 - self.quantile)
        return MaskOutput(keep=((entropies * valid.float()) >= threshold) & valid)


def topp_peak_mask(topp_entropy: Tensor, mask: Tensor, mask_ratio: float) -> Tensor:
    """SIREN's per-response peak mask [B, T]: H^p strictly above the response's ``mask_ratio`` quantile (linear
    interpolation over its valid tokens), AND the valid mask (the official code leaves the AND implicit)."""
    valid = mask.bool()
    h = topp_entropy.detach().float().masked_fill(~valid, float("nan"))
    tau = torch.nanquantile(h, mask_ratio, dim=-1, keepdim=True)
    return valid & (h > tau)


@register_token_mask("siren")
class Siren(TokenMask):
    """SIREN: selective, self-anchored entropy regularization ("Rethinking Entropy Regularization in Large Reasoning
    Models", Jiang et al., 2025; official code ``Linn3a/siren``). The policy-gradient term is unchanged.

    H^p_t = entropy of the top-p nucleus (``top_p`` = 0.8 within the top ``top_k`` = 10,000 logits, the token crossing
    p excluded, renormalized; ``ops.nucleus_stats``); M = per-response peak mask (H^p above the response's
    ``mask_ratio`` = 0.8 quantile: its top 20%); H̄ = mean over responses of the M-masked token mean of H^p (a response
    with an empty M counts as 0). Loss += ``coef``·(H̄ − H_anchor)², coef = 0.005, per micro-batch (the official
    scope; the penalty is non-linear in H̄, so it is not offered over all processes). H_anchor is a fixed scalar: the
    same statistic of the initial policy on the first training batch (:meth:`set_anchor`, saved in
    :meth:`state_dict`), or the ``anchor`` kwarg.
    """

    requires = frozenset({"topp_entropy"})

    def __init__(
        self,
        *,
        top_p: float = 0.8,
        top_k: int = 10000,
        mask_ratio: float = 0.8,
        coef: float = 0.005,
        anchor: float | None = None,
    ) -> None:
        self.top_p = check_fraction("siren", "top_p", top_p)
        self.top_k = check_positive_int("siren", "top_k", top_k)
        self.mask_ratio = check_fraction("siren", "mask_ratio", mask_ratio, low_open=False, high_open=True)
        self.coef = check_nonnegative("siren", "coef", coef)
        self.anchor = None if anchor is None else check_nonnegative("siren", "anchor", anchor)

    def response_means(self, topp_entropy: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """([B] masked token mean of H^p over each response's peak mask, 0 where it is empty; the peak mask)."""
        peak = topp_peak_mask(topp_entropy, mask, self.mask_ratio)
        weights = peak.to(topp_entropy.dtype)
        return (topp_entropy * weights).sum(-1) / weights.sum(-1).clamp(min=1.0), peak

    @property
    def rollout_requires(self) -> frozenset[str]:
        """The initial policy's top-p entropy on the first generation batch, while the anchor is unset."""
        return frozenset({"topp_entropy"}) if self.anchor is None else frozenset()

    def observe_rollouts(self, statistics: dict[str, Tensor], mask: Tensor, reduce_sum: ReduceSum) -> None:
        """H_anchor = mean over every process's responses of the peak-masked H^p of the rollout policy."""
        means, _ = self.response_means(statistics["topp_entropy"], mask)
        totals = reduce_sum(torch.stack([means.sum(), means.new_tensor(float(means.numel()))]))
        self.set_anchor((totals[0] / totals[1].clamp(min=1.0)).item())

    def set_anchor(self, value: float) -> None:
        """Fix H_anchor (the adapter measures it once, on the initial policy's first training batch)."""
        self.anchor = check_nonnegative("siren", "anchor", float(value))

    def __call__(self, batch: TokenBatch) -> MaskOutput:
        if self.anchor is None:
            raise RuntimeError("siren: the entropy anchor is not set (set_anchor on the initial policy's first batch)")
        valid = batch.mask.bool()
        means, peak = self.response_means(batch.topp_entropy, valid)
        hbar = means.mean() if means.numel() else means.new_zeros(())
        loss = self.coef * (hbar - self.anchor) ** 2
        metrics = {
            "topp_entropy": hbar.item(),
            "anchor": self.anchor,
            "peak_fraction": (peak.sum() / valid.sum().clamp(min=1)).item(),
        }
        return MaskOutput(keep=valid, loss=loss, metrics=metrics)

    def state_dict(self) -> dict:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        if state.keys() != {"anchor"}:
            raise ValueError(f"siren: expected state {{'anchor': ...}}, got {state!r}")
        self.anchor = None
        if state["anchor"] is not None:
            self.set_anchor(state["anchor"])


@register_token_mask("eksft")
class EKSFT(TokenMask):
    """EKSFT ("Entropy-KL Divergence-based Token Masking: A Novel Approach for Selective Fine-tuning of Large
    Language Models", Liu et al., 2026; official code
    ``MINE-USTC/EKSFT``), applied to the policy-gradient term.

    E = the top ``ratio`` (20%) tokens by entropy H(π), K = the top 20% by the exact KL(π‖ρ) over the vocabulary,
    counted per sequence (``scope="sequence"``: the paper's per-device batch of one sequence), per micro-batch or over
    all processes. The union (``combine="intersection"`` is the option) leaves the policy-gradient loss; on those
    tokens the loss adds −λ_H·mean_E[H/log|V|] + λ_KL·mean_K[KL], λ_H = λ_KL = 0.05 (the script's values; the
    dataclass defaults 1.0 / 0.5 are not used by the paper); with ``combine="intersection"`` only E ∩ K leaves the
    policy gradient, while the two terms still act on E and K. The terms are means over this micro-batch's selected
    tokens at every scope (``"global"`` moves only the selection thresholds; ties at them are included). With
    ``dynamic_coef`` (the official code's per-step
    wobble, not persisted) λ_H is ×1.05 when the entropy term is below ``entropy_target`` = 0.5 (else ×0.95) and
    λ_KL ×1.05 when the KL term is above ``kl_target`` = 2.0 (else ×0.95).

    Deviations from the official code, on purpose: statistics are position-aligned (the entropy and KL of the
    distribution that predicts the masked token; the official mask is off by one position), and the KL term is the
    KL, Σ π (log π − log ρ) (the official code uses Σ π (π − log ρ)).
    """

    requires = frozenset({"entropies", "reverse_kl"})

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        entropy_coef: float = 0.05,
        kl_coef: float = 0.05,
        combine: str = "union",
        dynamic_coef: bool = True,
        entropy_target: float = 0.5,
        kl_target: float = 2.0,
        scope: str = "sequence",
    ) -> None:
        self.ratio = check_fraction("eksft", "ratio", ratio)
        self.entropy_coef = check_nonnegative("eksft", "entropy_coef", entropy_coef)
        self.kl_coef = check_nonnegative("eksft", "kl_coef", kl_coef)
        self.combine = check_choice("eksft", "combine", combine, ("union", "intersection"))
        if not isinstance(dynamic_coef, bool):
            raise ValueError(f"eksft: dynamic_coef must be a bool, got {dynamic_coef!r}")
        self.dynamic_coef = dynamic_coef
        self.entropy_target = check_positive("eksft", "entropy_target", entropy_target)
        self.kl_target = check_positive("eksft", "kl_target", kl_target)
        self.scope = check_choice("eksft", "scope", scope, ("sequence", "micro_batch", "global"))

    def __call__(self, batch: TokenBatch) -> MaskOutput:
        valid = batch.mask.bool()
        gather = batch.gather if self.scope == "global" else None
        high_entropy = top_fraction(batch.entropies, valid, self.ratio, self.scope, gather)
        high_kl = top_fraction(batch.reverse_kl, valid, self.ratio, self.scope, gather)
        selected = high_entropy | high_kl if self.combine == "union" else high_entropy & high_kl
        if not (isinstance(batch.vocab_size, int) and batch.vocab_size >= 2):
            raise ValueError(
                f"eksft normalizes by log |V|: vocab_size must be an integer ≥ 2, got {batch.vocab_size!r}"
            )
        normalized = batch.entropies / math.log(batch.vocab_size)
        entropy_term = _masked_mean(normalized, high_entropy)
        kl_term = _masked_mean(batch.reverse_kl, high_kl)
        lam_h, lam_kl = self.entropy_coef, self.kl_coef
        if self.dynamic_coef:
            lam_h *= 1.05 if entropy_term.item() < self.entropy_target else 0.95
            lam_kl *= 1.05 if kl_term.item() > self.kl_target else 0.95
        loss = -lam_h * entropy_term + lam_kl * kl_term
        n_valid = valid.sum().clamp(min=1)
        metrics = {
            "entropy_term": entropy_term.item(),
            "kl_term": kl_term.item(),
            "entropy_fraction": (high_entropy.sum() / n_valid).item(),
            "kl_fraction": (high_kl.sum() / n_valid).item(),
        }
        return MaskOutput(keep=valid & ~selected, loss=loss, metrics=metrics)


def _masked_mean(values: Tensor, where: Tensor) -> Tensor:
    """Mean of ``values`` over ``where`` (0 with a graph when empty)."""
    w = where.to(values.dtype)
    return (values * w).sum() / w.sum().clamp(min=1.0)
