"""Vocabulary statistics of one forward's rows, from final hidden states and lm_head weights (framework-agnostic:
an adapter captures the hidden states, this computes what a :class:`VocabularyRequest` asks for)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..ops import fused_linear_divergence_loss, fused_linear_logprob_entropy_divergence, fused_linear_nucleus_stats
from .requirements import VocabularyRequest


def vocabulary_statistics(
    request: VocabularyRequest,
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor | None,
    *,
    temperature: float,
    bias: Tensor | None = None,
    ref_hidden: Tensor | None = None,
    ref_weight: Tensor | None = None,
    ref_bias: Tensor | None = None,
    teacher_hidden: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    penultimate: Tensor | None = None,
    exact_weights: Mapping[str, Tensor] | None = None,
    logp_weights: Tensor | None = None,
) -> dict[str, Tensor]:
    """The statistics of ``request`` for rows ``hidden`` [b, T, H] (policy final hidden states at the positions
    predicting ``targets`` [b, T]) with logits = hidden Wᵀ + b, divided by ``temperature``:

    * each ``exact`` name: D(π‖ρ) [b, T] exactly over the vocabulary against ``ref_hidden`` [b, T, H_ref] and the
      reference lm_head, differentiable w.r.t. the policy side (one pass per distinct divergence);
    * each ``teacher_exact`` name: D(π‖τ) [b, T] the same way against ``teacher_hidden`` [b, T, H_τ] and the teacher's
      lm_head;
    * ``"topp_entropy"``: the top-p nucleus entropy (with gradient); ``"proxy_logp"``: log π_proxy(y) of the min-p
      proxy (conventions in :func:`~trl_divergences.ops.nucleus_stats`);
    * ``"penultimate"``: ``penultimate`` detached, when asked for.

    ``exact_weights`` {name: [b, T] per-token loss weights w (no gradient)}: for an exact divergence (to the
    reference or, for a ``teacher_exact`` name, to the teacher) whose weights
    are known before the forward (a penalty's coefficient × per-rollout weight × the framework's normaliser), the
    scalar Σ w·D is returned as ``"<name>/weighted_sum"`` with its gradient computed inside the forward (no
    recomputation of either projection in the backward: :func:`~trl_divergences.ops.fused_linear_divergence_loss`),
    and ``name`` holds the detached values; not for a divergence that another name shares (that one needs the
    per-token graph).

    ``logp_weights`` [b, T] (no gradient; needs exactly one exact name, with ``exact_weights``): the same pass also
    carries the gradient of Σ w_logp·log π(y_t) (an on-policy policy gradient, whose per-token weights are known
    before the forward), so the caller needs no other head pass: ``"<name>/weighted_sum"`` then has the value Σ w·D
    and the gradient of Σ w_logp·log π + Σ w·D, and ``"logp"`` / ``"entropy"`` [b, T] hold log π(y_t) and H(π_t),
    detached.
    """
    results: dict[str, Tensor] = {}
    computed: dict[str, Tensor] = {}
    keys = [repr(div) for div in request.exact.values()]
    if logp_weights is not None:
        if len(request.exact) != 1 or request.teacher_exact or not set(request.exact) <= set(exact_weights or {}):
            raise ValueError("logp_weights needs exactly one exact divergence, aggregated with exact_weights")
        if targets is None:
            raise ValueError("logp_weights needs the sampled tokens (targets)")
    for name, div in request.exact.items():
        key = repr(div)  # e.g. the `full` reverse-KL penalty and EKSFT's KL(π‖ρ): one pass
        if (ref_hidden is None or ref_weight is None) and key not in computed:
            raise ValueError(f"exact {name!r} needs the reference's final hidden states and lm_head weight")
        if exact_weights is not None and name in exact_weights and keys.count(key) == 1:
            loss, logp, entropy, values = fused_linear_divergence_loss(
                hidden,
                weight,
                ref_hidden.to(hidden.dtype),
                ref_weight.to(weight.dtype),
                None if logp_weights is None else targets,
                weights_logp=logp_weights,
                weights_div=exact_weights[name],
                divergence=div,
                temperature=temperature,
                bias=bias,
                ref_bias=ref_bias,
            )
            if logp_weights is not None:  # value Σ w·D; gradient also of the policy-gradient term
                penalty = (exact_weights[name].to(values.dtype) * values).sum()
                loss = penalty + (loss - loss.detach())
                results["logp"], results["entropy"] = logp, entropy
            results[name], results[f"{name}/weighted_sum"] = values, loss
            continue
        if key not in computed:
            computed[key] = fused_linear_logprob_entropy_divergence(
                hidden,
                weight,
                ref_hidden.to(hidden.dtype),
                ref_weight.to(weight.dtype),
                None,
                div,
                temperature=temperature,
                bias=bias,
                ref_bias=ref_bias,
            )[2]
        results[name] = computed[key]
    for name, div in request.teacher_exact.items():
        if teacher_hidden is None or teacher_weight is None:
            raise ValueError(f"exact {name!r} needs the teacher's final hidden states and lm_head weight")
        if exact_weights is not None and name in exact_weights:
            loss, _, _, values = fused_linear_divergence_loss(
                hidden,
                weight,
                teacher_hidden.to(hidden.dtype),
                teacher_weight.to(weight.dtype),
                None,
                weights_div=exact_weights[name],
                divergence=div,
                temperature=temperature,
                bias=bias,
                ref_bias=teacher_bias,
            )
            results[name], results[f"{name}/weighted_sum"] = values, loss
            continue
        results[name] = fused_linear_logprob_entropy_divergence(
            hidden,
            weight,
            teacher_hidden.to(hidden.dtype),
            teacher_weight.to(weight.dtype),
            None,
            div,
            temperature=temperature,
            bias=bias,
            ref_bias=teacher_bias,
        )[2]
    if request.nucleus:
        stats = fused_linear_nucleus_stats(
            hidden,
            weight,
            targets if request.min_p is not None else None,
            bias=bias,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            temperature=temperature,
        )
        if request.top_p is not None:
            results["topp_entropy"] = stats.topp_entropy
        if request.min_p is not None:
            results["proxy_logp"] = stats.proxy_logp
    if request.penultimate:
        if penultimate is None:
            raise ValueError("the request asks for the penultimate layer's output; none was captured")
        results["penultimate"] = penultimate.detach()
    return results
