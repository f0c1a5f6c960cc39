"""Fused per-token log-prob + entropy + f-divergence over the vocabulary, with backward.

Public ops (shapes: leading dims ``...`` are flattened to N rows):

* :func:`logprob_entropy_divergence` — from logits [..., V];
* :func:`fused_linear_logprob_entropy_divergence` — from hidden states [..., H] and lm_head weights [V, H], never
  materializing either side's logits in full.

``impl`` picks the implementation: ``"auto"`` (Triton on CUDA when available, the chunked torch path
elsewhere), ``"chunked"``, ``"triton"`` (also runs on CPU under ``TRITON_INTERPRET=1``) or ``"naive"`` (the test
oracle: full logits, autograd).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..divergences import Divergence, get_divergence
from . import chunked, naive

IMPLS = ("auto", "chunked", "naive", "triton")

__all__ = ["IMPLS", "fused_linear_logprob_entropy_divergence", "logprob_entropy_divergence"]


def _resolve(divergence: str | Divergence, kwargs: dict[str, Any]) -> Divergence:
    return get_divergence(divergence, **kwargs)


def _pick_impl(impl: str, device_type: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    from .triton import triton_available

    return "triton" if device_type == "cuda" and triton_available() else "chunked"


def _check_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    return float(temperature)


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
    which = _pick_impl(impl, policy_logits.device.type)
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
    if (ref_hidden is None) != (ref_weight is None):
        raise ValueError("ref_hidden and ref_weight must be given together")
    if ref_weight is not None and ref_weight.shape[0] != weight.shape[0]:
        raise ValueError(f"vocab sizes differ: policy {weight.shape[0]} vs reference {ref_weight.shape[0]}")
    lead = tuple(hidden.shape[:-1])
    which = _pick_impl(impl, hidden.device.type)
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
