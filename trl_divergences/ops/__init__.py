"""Fused per-token log-prob + entropy + f-divergence (and nucleus statistics) over the vocabulary, with backward.

Public ops (shapes: leading dims ``...`` are flattened to N rows):

* :func:`logprob_entropy_divergence` — from logits [..., V];
* :func:`fused_linear_logprob_entropy_divergence` — from hidden states [..., H] and lm_head weights [V, H], never
  materializing either side's logits in full;
* :func:`fused_linear_divergence_loss` — the scalar Σ (w_logp·logp + w_ent·H + w_div·D) for known per-token weights,
  with the gradients computed in the forward (no recomputation of the projections: as fast as naive, tiled memory);
* :func:`divergence_from_ref_hidden` (:mod:`.ref_hidden`, chunked torch) — D from policy logits [N, V] and reference
  hidden states [M, H] × the reference lm_head, for frameworks that hand the loss the policy's logits (verl);
* :func:`nucleus_stats` / :func:`fused_linear_nucleus_stats` (:mod:`.nucleus`, chunked torch only) — SIREN's top-p
  entropy (differentiable), the probability mass above the target and Lp-Reg's min-p proxy log-probability, as a
  :class:`NucleusStats`, from logits or from hidden states and lm_head weights.

For the divergence ops, ``impl`` picks the implementation: ``"auto"`` (Triton on CUDA when available and the
divergence has a Triton term, the chunked torch path elsewhere), ``"chunked"``, ``"triton"`` (also runs on CPU under
``TRITON_INTERPRET=1``) or ``"naive"`` (the test oracle: full logits, autograd).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..registry import DIVERGENCES
from . import chunked, naive
from .nucleus import NucleusStats, fused_linear_nucleus_stats, nucleus_stats
from .ref_hidden import divergence_from_ref_hidden

if TYPE_CHECKING:
    from ..divergences import Divergence

IMPLS = ("auto", "chunked", "naive", "triton")

__all__ = [
    "IMPLS",
    "NucleusStats",
    "divergence_from_ref_hidden",
    "fused_linear_divergence_loss",
    "fused_linear_logprob_entropy_divergence",
    "fused_linear_nucleus_stats",
    "logprob_entropy_divergence",
    "nucleus_stats",
]


def _resolve(divergence: str | Divergence, kwargs: dict[str, Any]) -> Divergence:
    return DIVERGENCES.resolve(divergence, **kwargs)


def _pick_impl(impl: str, device_type: str, div: Divergence) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    from .triton import has_triton_term, triton_available

    return "triton" if device_type == "cuda" and triton_available("cuda") and has_triton_term(div) else "chunked"


def _check_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return float(temperature)


def _check_targets(targets: Tensor | None, lead: tuple[int, ...]) -> None:
    if targets is not None and tuple(targets.shape) != lead:
        raise ValueError(f"targets shape {tuple(targets.shape)} != the logits' leading shape {lead}")


def _check_fused_shapes(
    hidden: Tensor, weight: Tensor, ref_hidden: Tensor | None, ref_weight: Tensor | None, targets: Tensor | None
) -> None:
    """Shape checks shared by the fused-linear ops (a mismatched row count would otherwise pass silently)."""
    if (ref_hidden is None) != (ref_weight is None):
        raise ValueError("ref_hidden and ref_weight must be given together")
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"hidden size {hidden.shape[-1]} != lm_head weight {tuple(weight.shape)} (expected [V, H])")
    lead = tuple(hidden.shape[:-1])
    if ref_weight is not None:
        if ref_weight.shape[0] != weight.shape[0]:
            raise ValueError(f"vocab sizes differ: policy {weight.shape[0]} vs reference {ref_weight.shape[0]}")
        if tuple(ref_hidden.shape[:-1]) != lead:
            raise ValueError(f"ref_hidden leading shape {tuple(ref_hidden.shape[:-1])} != hidden {lead}")
        if ref_hidden.shape[-1] != ref_weight.shape[-1]:
            raise ValueError(f"ref_hidden size {ref_hidden.shape[-1]} != ref_weight {tuple(ref_weight.shape)}")
    _check_targets(targets, lead)


def _unflatten(outs, lead: tuple[int, ...], has_targets: bool, has_ref: bool):
    logp, ent, dv = (o.reshape(lead) for o in outs)
    return (logp if has_targets else None), ent, (dv if has_ref else None)


def logprob_entropy_divergence(
    policy_logits: Tensor,
    ref_logits: Tensor | None,
    targets: Tensor | None,
    divergence: str | Divergence = "reverse_kl",
    temperature: float = 1.0,
    impl: str = "auto",
    chunk_rows: int | None = None,
    **divergence_kwargs: Any,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """Per-token ``(log π(target), H(π), D(π‖ρ))`` from logits, without an [N, V] fp32 temporary.

    Args:
        policy_logits: [..., V] policy logits (fp32/bf16/fp16/fp64); gradients flow to them from all three outputs.
        ref_logits: [..., V] reference logits, or None (then the divergence output is None). No gradient.
        targets: [...] int64 token ids, or None (then the log-prob output is None).
        divergence: a registered name (see ``list_divergences()``) or a :class:`Divergence`; kwargs build it.
        temperature: both sides' logits are divided by it.
    Returns:
        three [...] tensors in the accumulation dtype (fp32, or fp64 for fp64 inputs).
    """
    div = _resolve(divergence, divergence_kwargs)
    temperature = _check_temperature(temperature)
    if ref_logits is not None and ref_logits.shape != policy_logits.shape:
        raise ValueError(f"ref_logits shape {tuple(ref_logits.shape)} != policy_logits {tuple(policy_logits.shape)}")
    lead, vocab = tuple(policy_logits.shape[:-1]), policy_logits.shape[-1]
    _check_targets(targets, lead)
    which = _pick_impl(impl, policy_logits.device.type, div)
    if which == "naive":
        return naive.logprob_entropy_divergence(policy_logits, ref_logits, targets, div, temperature)
    z = policy_logits.reshape(-1, vocab)
    zr = None if ref_logits is None else ref_logits.reshape(-1, vocab)
    tg = None if targets is None else targets.reshape(-1)
    if which == "triton":
        from .triton import logprob_entropy_divergence as triton_op

        outs = triton_op(z, zr, tg, div, temperature)
    else:
        outs = chunked.logprob_entropy_divergence(z, zr, tg, div, temperature, chunk_rows)
    return _unflatten(outs, lead, targets is not None, ref_logits is not None)


def fused_linear_logprob_entropy_divergence(
    hidden: Tensor,
    weight: Tensor,
    ref_hidden: Tensor | None,
    ref_weight: Tensor | None,
    targets: Tensor | None,
    divergence: str | Divergence = "reverse_kl",
    temperature: float = 1.0,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
    impl: str = "auto",
    chunk_rows: int | None = None,
    **divergence_kwargs: Any,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """Per-token ``(log π(target), H(π), D(π‖ρ))`` with logits = hidden @ weightᵀ (+ bias), computed tile by tile.

    Args:
        hidden: [..., H] policy final hidden states; weight: [V, H] policy lm_head (bias: [V] or None).
        ref_hidden: [..., H_ref] reference hidden states and ref_weight [V, H_ref], or None (no divergence).
        Other arguments as :func:`logprob_entropy_divergence`. Gradients flow to hidden, weight and bias only.
    """
    div = _resolve(divergence, divergence_kwargs)
    temperature = _check_temperature(temperature)
    _check_fused_shapes(hidden, weight, ref_hidden, ref_weight, targets)
    lead = tuple(hidden.shape[:-1])
    which = _pick_impl(impl, hidden.device.type, div)
    if which == "naive":
        return naive.fused_linear_logprob_entropy_divergence(
            hidden, weight, ref_hidden, ref_weight, targets, div, temperature, bias, ref_bias
        )
    h = hidden.reshape(-1, hidden.shape[-1])
    hr = None if ref_hidden is None else ref_hidden.reshape(-1, ref_hidden.shape[-1])
    tg = None if targets is None else targets.reshape(-1)
    if which == "triton":
        from .triton import fused_linear_logprob_entropy_divergence as triton_op

        outs = triton_op(h, weight, hr, ref_weight, tg, div, temperature, bias, ref_bias)
    else:
        outs = chunked.fused_linear_logprob_entropy_divergence(
            h, weight, hr, ref_weight, tg, div, temperature, bias, ref_bias, chunk_rows
        )
    return _unflatten(outs, lead, targets is not None, ref_hidden is not None)


def fused_linear_divergence_loss(
    hidden: Tensor,
    weight: Tensor,
    ref_hidden: Tensor | None,
    ref_weight: Tensor | None,
    targets: Tensor | None,
    weights_logp: Tensor | None = None,
    weights_entropy: Tensor | None = None,
    weights_div: Tensor | None = None,
    divergence: str | Divergence = "reverse_kl",
    temperature: float = 1.0,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
    impl: str = "auto",
    chunk_rows: int | None = None,
    **divergence_kwargs: Any,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """Scalar loss L = Σ_t (w_logp·log π(y_t) + w_ent·H_t + w_div·D_t) with its gradient computed in the forward.

    For callers that know each token's loss weights before the forward (GRPO on-policy: w_logp = −advantage · mask /
    normalizer, w_div = β · mask / normalizer, w_ent = −entropy coefficient · mask / normalizer): grad hidden /
    weight / bias are accumulated chunk by chunk while the chunk's logits are alive, so the backward only scales
    them by the upstream scalar. Same GEMM count as the naive path, O(chunk · V) memory. A loss whose per-token
    weights depend on log π itself (a clipped ratio off-policy) needs :func:`fused_linear_logprob_entropy_divergence`.

    Args:
        hidden: [..., H]; weight: [V, H] (bias [V] or None); ref_hidden / ref_weight as in
            :func:`fused_linear_logprob_entropy_divergence` (None: no divergence term).
        targets: [...] token ids (None: no log-prob term).
        weights_logp, weights_entropy, weights_div: [...] per-token weights (no gradient), or None for 0.
        impl: ``"auto"`` / ``"chunked"`` / ``"triton"`` (chunk loop with the Triton row kernels) / ``"naive"``
            (autograd through full logits; the oracle).
    Returns:
        (loss [] differentiable w.r.t. hidden, weight and bias; logp, entropy, divergence [...] detached, for
        logging; logp / divergence None when targets / ref_hidden are None).
    """
    div = _resolve(divergence, divergence_kwargs)
    temperature = _check_temperature(temperature)
    _check_fused_shapes(hidden, weight, ref_hidden, ref_weight, targets)
    if weights_logp is not None and targets is None:
        raise ValueError("weights_logp needs targets")
    if weights_div is not None and ref_hidden is None:
        raise ValueError("weights_div needs ref_hidden and ref_weight")
    lead = tuple(hidden.shape[:-1])
    which = _pick_impl(impl, hidden.device.type, div)
    weights = (weights_logp, weights_entropy, weights_div)
    if which == "naive":
        outs = naive.fused_linear_logprob_entropy_divergence(
            hidden, weight, ref_hidden, ref_weight, targets, div, temperature, bias, ref_bias
        )
        loss = sum((w.detach().to(o.dtype) * o).sum() for w, o in zip(weights, outs) if w is not None)
        loss = loss if isinstance(loss, Tensor) else outs[1].new_zeros(())
        logp, ent, dv = (None if o is None else o.detach() for o in outs)
        return loss, logp, ent, dv
    h = hidden.reshape(-1, hidden.shape[-1])
    hr = None if ref_hidden is None else ref_hidden.reshape(-1, ref_hidden.shape[-1])
    tg = None if targets is None else targets.reshape(-1)
    flat = tuple(None if w is None else w.reshape(-1) for w in weights)
    engine, rows = None, chunk_rows
    if which == "triton":
        from . import triton as triton_ops

        engine = triton_ops.row_engine(h, div)
        rows = chunk_rows or triton_ops.fused_chunk_rows(h.shape[0], weight.shape[0])
    loss, *outs = chunked.fused_linear_divergence_loss(
        h, weight, hr, ref_weight, tg, *flat, div, temperature, bias, ref_bias, rows, engine
    )
    logp, ent, dv = _unflatten(outs, lead, targets is not None, ref_hidden is not None)
    return loss, logp, ent, dv
