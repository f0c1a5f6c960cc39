"""Vocabulary statistics of one forward's rows, from final hidden states and lm_head weights (framework-agnostic:
an adapter captures the hidden states, this computes what a :class:`VocabularyRequest` asks for)."""

from __future__ import annotations

from torch import Tensor

from ..ops import fused_linear_logprob_entropy_divergence, fused_linear_nucleus_stats
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
    penultimate: Tensor | None = None,
) -> dict[str, Tensor]:
    """The statistics of ``request`` for rows ``hidden`` [b, T, H] (policy final hidden states at the positions
    predicting ``targets`` [b, T]) with logits = hidden Wᵀ + b, divided by ``temperature``:

    * each ``exact`` name: D(π‖ρ) [b, T] exactly over the vocabulary against ``ref_hidden`` [b, T, H_ref] and the
      reference lm_head, differentiable w.r.t. the policy side (one pass per distinct divergence);
    * ``"topp_entropy"``: the top-p nucleus entropy (with gradient); ``"proxy_logp"``: log π_proxy(y) of the min-p
      proxy (conventions in :func:`~trl_divergences.ops.nucleus_stats`);
    * ``"penultimate"``: ``penultimate`` detached, when asked for.
    """
    results: dict[str, Tensor] = {}
    computed: dict[str, Tensor] = {}
    for name, div in request.exact.items():
        key = repr(div)  # e.g. the `full` reverse-KL penalty and EKSFT's KL(π‖ρ): one pass
        if key not in computed:
            if ref_hidden is None or ref_weight is None:
                raise ValueError(f"exact {name!r} needs the reference's final hidden states and lm_head weight")
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
