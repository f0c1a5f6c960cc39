"""Lp-Reg: low-probability regularization toward a min-p proxy of the rollout policy ("Low-probability Tokens
Sustain Exploration in Reinforcement Learning with Verifiable Reward", Huang et al., 2025; official code
``CarlanLark/Lp-Reg-dev``, ``compute_policy_loss_lp_reg``).

The "reference" is not a frozen model: π_proxy is π_old with a min-p filter (keep v iff π_old(v) ≥ κ·max_u π_old(u),
κ = 0.02, on the un-tempered logits; renormalized), of which only log π_proxy(y_t) of the sampled token is needed
(``ops.nucleus_stats(..., min_p=κ)``). Per micro-batch, among the valid tokens with negative advantage, the
⌊ρ·n⌋ (ρ = 1%) with the smallest current log π(y_t) are candidates (none when ⌊ρ·n⌋ ≤ 1), and those with
π(y_t) < π_proxy(y_t) are selected. On selected tokens the clipped policy-gradient term is replaced by the unclipped
−A·ratio, plus β·k3 with r = π_proxy/π, k3 = clamp(r − 1 − log r, −10, 10) (verl's ``low_var_kl`` toward the proxy;
the paper calls the term the forward KL D_KL(π_proxy‖π_θ), whose gradient k3-as-loss follows on-policy); β = 1.
Everything is token-mean over all valid tokens. The paper's scripts also open the ratio clip to [0, 10]
(``epsilon``/``epsilon_high`` of the trainer) and use no other KL or entropy term.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_choice, check_fraction, check_positive
from ..groups import Gather
from ..numerics import DEFAULT_LOG_FLOOR, EXP_CAP, MASKED_LOG_PROB, compute_dtype
from .base import register_divergence
from .fdivergences import ForwardKL

LP_REG_SCOPES = ("micro_batch", "global")


def low_probability_selection(
    logps: Tensor,
    proxy_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    rho: float,
    gather: Gather | None = None,
) -> Tensor:
    """Lp-Reg's token selection [B, T] bool (detached).

    Candidates: valid tokens with A < 0; k = ⌊ρ·n⌋ over the n candidates (of this micro-batch, or of all processes
    when ``gather`` concatenates over them); none if k ≤ 1; else the candidates whose log π is at most the k-th
    smallest (ties at the threshold included), further restricted to log π(y) < log π_proxy(y) (tokens the min-p
    filter removed have log π_proxy = −1e4 and never pass).
    """
    adv = advantages if advantages.dim() == logps.dim() else advantages.unsqueeze(-1)
    candidates = mask.bool() & (adv < 0)
    lp = logps.detach()
    values = lp[candidates]
    if gather is not None:
        values = gather(values)
    k = math.floor(rho * values.numel())
    if k <= 1:
        return torch.zeros_like(candidates)
    dtype = compute_dtype(values.dtype)
    threshold = torch.kthvalue(values.to(dtype), k).values
    return candidates & (lp.to(dtype) <= threshold) & (lp < proxy_logps)


@register_divergence("lp_reg")
class LpReg(ForwardKL):
    """Lp-Reg's proxy penalty (see the module docstring): KL(π_proxy‖π) by its clamped k3 on selected tokens.

    ``sampled(logp, proxy_logp)`` = clamp(r − 1 − log r, −clamp, clamp), r = π_proxy(y)/π(y) (estimator ``k3``
    only, no importance weight: the official code applies none). ``full`` is KL(ρ‖π) with the proxy's logits as ρ.
    Knobs: ``kappa`` (min-p threshold κ = 0.02, the paper scripts' value; the config default 0.1 is not), ``rho``
    (fraction of negative-advantage tokens, 1% for Qwen3-14B, 0.5% for Qwen2.5-32B), ``clamp`` (10), ``scope``
    (``"micro_batch"``, official, or ``"global"``: the k-th smallest over all processes).
    """

    #: no frozen reference model: the proxy comes from the policy's own rollout-time logits
    needs_reference = False
    supports_full = False
    replaces_policy_gradient = True

    def __init__(
        self,
        *,
        kappa: float = 0.02,
        rho: float = 0.01,
        clamp: float = 10.0,
        scope: str = "micro_batch",
        log_floor: float = DEFAULT_LOG_FLOOR,
    ) -> None:
        super().__init__(log_floor=log_floor)
        self.kappa = self.proxy_min_p = check_fraction("lp_reg", "kappa", kappa)
        self.rho = check_fraction("lp_reg", "rho", rho)
        self.clamp = check_positive("lp_reg", "clamp", clamp)
        self.scope = check_choice("lp_reg", "scope", scope, LP_REG_SCOPES)

    @property
    def estimators(self) -> tuple[str, ...]:
        return ("k3",)

    def kwargs(self) -> dict:
        return {"kappa": self.kappa, "rho": self.rho, "clamp": self.clamp, "scope": self.scope, **super().kwargs()}

    def _sampled(self, lp: Tensor, lr: Tensor, estimator: str) -> Tensor:
        log_r = (lr.clamp(min=MASKED_LOG_PROB) - lp).clamp(max=EXP_CAP)  # lp = −inf: the cap, not e^80 − inf = −inf
        return (torch.expm1(log_r) - log_r).clamp(-self.clamp, self.clamp)

    def select(
        self, logps: Tensor, proxy_logps: Tensor, advantages: Tensor, mask: Tensor, gather: Gather | None = None
    ) -> Tensor:
        """:func:`low_probability_selection` with this divergence's ρ and scope (``gather`` used for "global")."""
        return low_probability_selection(
            logps, proxy_logps, advantages, mask, self.rho, gather if self.scope == "global" else None
        )

    def selected_token_loss(
        self,
        logps: Tensor,
        old_logps: Tensor,
        proxy_logps: Tensor,
        advantages: Tensor,
        selected: Tensor,
        coef: float,
    ) -> tuple[Tensor, Tensor]:
        """(per-token loss [B, T] on the selected tokens, zero elsewhere: −A·π/π_old + coef·k3; the k3 values [B, T]).

        The caller removes the selected tokens from its clipped policy-gradient term and aggregates this loss with
        the same token normalizer.
        """
        dtype = compute_dtype(logps.dtype)
        lp = logps.to(dtype)
        adv = advantages if advantages.dim() == lp.dim() else advantages.unsqueeze(-1)
        ratio = torch.exp(lp - old_logps.to(dtype).detach())
        k3 = self.sampled(lp, proxy_logps)
        loss = -adv.to(dtype) * ratio + coef * k3
        return torch.where(selected, loss, torch.zeros_like(loss)), k3
