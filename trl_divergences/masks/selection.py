"""Token masks that select by probability or by outcome: Lp-Reg's low-probability tokens, correct responses only."""

from __future__ import annotations

from ..checks import check_choice, check_fraction
from ..divergences.lp_reg import LP_REG_SCOPES, low_probability_selection
from .base import MaskOutput, TokenBatch, TokenMask, register_token_mask


@register_token_mask("low_probability")
class LowProbability(TokenMask):
    """Lp-Reg's selection as a mask ("Low-probability Tokens Sustain Exploration in Reinforcement Learning with
    Verifiable Reward", Huang et al., 2025): the selected low-probability "reasoning sparks" — among negative-advantage
    tokens the ⌊ρ·n⌋ with the smallest log π, restricted to those that survive the min-p proxy (κ = ``kappa``) with
    π(y) < π_proxy(y) — leave the policy-gradient loss, so negative advantages stop pushing them down.

    Ours: the paper pulls those tokens toward the proxy instead (divergence ``lp_reg``); the mask is the protection
    alone, without a reference. ``scope``: ``"micro_batch"`` (official) or ``"global"``.
    """

    requires = frozenset({"logps", "advantages", "proxy_logps"})

    def __init__(self, *, kappa: float = 0.02, rho: float = 0.01, scope: str = "micro_batch") -> None:
        self.min_p = check_fraction("low_probability", "kappa", kappa)
        self.rho = check_fraction("low_probability", "rho", rho)
        self.scope = check_choice("low_probability", "scope", scope, LP_REG_SCOPES)

    def __call__(self, batch: TokenBatch) -> MaskOutput:
        valid = batch.mask.bool()
        gather = batch.gather if self.scope == "global" else None
        selected = low_probability_selection(batch.logps, batch.proxy_logps, batch.advantages, valid, self.rho, gather)
        return MaskOutput(keep=valid & ~selected)


@register_token_mask("correct_only")
class CorrectOnly(TokenMask):
    """Only the tokens of correct responses enter the policy-gradient loss (the local term of DSDR, "Dual-Scale
    Diversity Regularization", 2026, acts on correct responses only; [secondary]). With group-normalized advantages
    this keeps the positive signal and drops the negative one (the opposite of W-REINFORCE's NSR mode)."""

    requires = frozenset({"correct"})

    def __call__(self, batch: TokenBatch) -> MaskOutput:
        valid = batch.mask.bool()
        return MaskOutput(keep=valid & batch.correct.bool().unsqueeze(-1))
