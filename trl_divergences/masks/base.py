"""Token masks: per-token selections of the policy-gradient term, plus the auxiliary loss some methods put on the
tokens they select (SIREN's entropy anchor, EKSFT's entropy and KL terms).

A mask sees one micro-batch of loss-time tensors (:class:`TokenBatch`; rows are completions, columns completion
tokens) and returns a :class:`MaskOutput`: ``keep`` multiplies the per-token policy-gradient loss (like TRL's
``top_entropy_quantile``: the divergence penalty is not masked), ``loss`` is added to the objective. Several masks
compose by AND-ing ``keep`` and summing ``loss``. Each mask declares the tensors it needs (``requires``) so that an
adapter computes only those, once, and the statistics' scope where the official code computes them per micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..groups import Gather, ReduceSum
from ..numerics import compute_dtype
from ..registry import Method, Registry

TOKEN_MASKS: Registry[TokenMask] = Registry("token mask")

#: TokenBatch fields a mask can require (``mask`` is always there)
TOKEN_FIELDS = (
    "logps",
    "old_logps",
    "ref_logps",
    "entropies",
    "advantages",
    "correct",
    "topp_entropy",
    "reverse_kl",
    "proxy_logps",
)


@dataclass
class TokenBatch:
    """Loss-time tensors of one micro-batch; fields a mask does not require may be None.

    Attributes:
        mask: [B, T] valid completion tokens (0/1 or bool).
        logps: [B, T] log π(y_t) of the current policy, with graph.
        old_logps: [B, T] log π_old(y_t) of the rollout policy (None on-policy).
        ref_logps: [B, T] log ρ(y_t) of the reference, detached.
        entropies: [B, T] H(π(·|s_t)) over the vocabulary, with graph.
        advantages: [B] or [B, T] advantages.
        correct: [B] bool, the rollout's reward reached the correctness threshold.
        topp_entropy: [B, T] entropy of the renormalized nucleus (SIREN), with graph.
        reverse_kl: [B, T] exact KL(π‖ρ) over the vocabulary, with graph.
        proxy_logps: [B, T] log π_proxy(y_t) of the min-p proxy (Lp-Reg), detached.
        vocab_size: |V| (EKSFT normalizes entropies by log |V|).
        gather: concatenates 1-D tensors over processes, for the ``"global"`` scopes (None: one process).

    Rows are whole completions, so per-sequence statistics are exact; per-micro-batch ones depend on how the
    framework splits the batch (TRL shuffles rows across micro-batches).
    """

    mask: Tensor
    logps: Tensor | None = None
    old_logps: Tensor | None = None
    ref_logps: Tensor | None = None
    entropies: Tensor | None = None
    advantages: Tensor | None = None
    correct: Tensor | None = None
    topp_entropy: Tensor | None = None
    reverse_kl: Tensor | None = None
    proxy_logps: Tensor | None = None
    vocab_size: int | None = None
    gather: Gather | None = None

    def gathered(self, values: Tensor) -> Tensor:
        """``values`` (1-D) concatenated over processes (itself on one process)."""
        return values if self.gather is None else self.gather(values)


@dataclass
class MaskOutput:
    """``keep`` [B, T] bool (tokens kept in the policy-gradient term; always ⊆ the valid mask), an auxiliary scalar
    ``loss`` of this micro-batch (None: none; not yet divided by gradient-accumulation steps) and metrics."""

    keep: Tensor
    loss: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class TokenMask(Method):
    """Base class of token masks; subclasses set ``requires`` and implement :meth:`__call__`.

    Attributes an adapter reads: ``requires`` (:data:`TOKEN_FIELDS` entries), ``top_p`` / ``top_k`` (the nucleus
    of ``topp_entropy``), ``min_p`` (the proxy of ``proxy_logps``), ``needs_reference`` (``reverse_kl`` needs ρ).
    """

    method_kind = "token mask"
    requires: frozenset[str] = frozenset()
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None

    @property
    def needs_reference(self) -> bool:
        return "reverse_kl" in self.requires

    @property
    def rollout_requires(self) -> frozenset[str]:
        """Statistics of the rollout policy the mask needs from the next generation batch (:meth:`observe_rollouts`),
        e.g. ``{"topp_entropy"}`` while an anchor is unset."""
        return frozenset()

    def observe_rollouts(self, statistics: dict[str, Tensor], mask: Tensor, reduce_sum: ReduceSum) -> None:
        """Update the mask's state from one generation batch's rollout statistics (local rows; ``reduce_sum`` sums
        over processes). Called only when :attr:`rollout_requires` is non-empty."""

    def __call__(self, batch: TokenBatch) -> MaskOutput:
        raise NotImplementedError


def register_token_mask(name: str) -> Callable[[type[TokenMask]], type[TokenMask]]:
    """Class decorator registering a :class:`TokenMask` subclass under ``name``."""
    return TOKEN_MASKS.register_class(name)


def get_token_mask(name: str, **kwargs) -> TokenMask:
    """Build a registered token mask; ``ValueError`` names the valid names / kwargs."""
    return TOKEN_MASKS.build(name, **kwargs)


def list_token_masks() -> list[str]:
    """Names of all registered token masks."""
    return TOKEN_MASKS.names()


def compose_token_masks(masks: Sequence[TokenMask], batch: TokenBatch) -> tuple[Tensor, Tensor | None, dict]:
    """Apply several masks to one micro-batch: (keep [B, T] = AND of every ``keep`` and the valid mask, the sum of
    their auxiliary losses or None, {mask name: its MaskOutput})."""
    keep = batch.mask.bool()
    loss: Tensor | None = None
    outputs: dict[str, MaskOutput] = {}
    for mask in masks:
        out = mask(batch)
        keep = keep & out.keep
        if out.loss is not None:
            loss = out.loss if loss is None else loss + out.loss
        outputs[mask.name] = out
    return keep, loss, outputs


def top_fraction(values: Tensor, mask: Tensor, fraction: float, scope: str, gather: Gather | None = None) -> Tensor:
    """[B, T] bool: the k = ⌊fraction·n⌋ valid entries with the largest ``values`` (detached), counted per row
    (``scope="sequence"``), over the whole micro-batch (``"micro_batch"``) or over all processes (``"global"``: the
    k-th largest gathered value is the threshold, ties included)."""
    valid = mask.bool()
    v = values.detach()
    if scope == "global":
        pool = v[valid].to(compute_dtype(v.dtype))
        pool = pool if gather is None else gather(pool)
        k = int(fraction * pool.numel())
        if k == 0:
            return torch.zeros_like(valid)
        threshold = torch.kthvalue(pool, pool.numel() - k + 1).values
        return valid & (v.to(threshold.dtype) >= threshold)
    rows = v if scope == "sequence" else v.reshape(1, -1)
    rows_valid = valid if scope == "sequence" else valid.reshape(1, -1)
    k = (fraction * rows_valid.sum(-1, keepdim=True)).floor()
    order = rows.masked_fill(~rows_valid, float("-inf")).argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(
        -1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order)
    )
    return ((ranks < k) & rows_valid).reshape(valid.shape)
