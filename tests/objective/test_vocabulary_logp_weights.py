"""``vocabulary_statistics(..., logp_weights=...)``: one pass carrying the gradient of Σ w_logp·log π(y) + Σ w·D(π‖ρ)
(the on-policy fast path of the TRL adapter) against a float64 recomputation from full logits, and its errors."""

from __future__ import annotations

import pytest
import torch

from trl_divergences.divergences import get_divergence
from trl_divergences.objective import VocabularyRequest
from trl_divergences.objective.vocabulary import vocabulary_statistics
from trl_divergences.ops import logprob_entropy_divergence

F64 = torch.float64


@pytest.mark.parametrize("divergence", ["js", "reverse_kl", "chi2"])
def test_logp_weights_value_and_gradient_match_float64(divergence):
    gen = torch.Generator().manual_seed(0)
    b, n, h, h_ref, vocab, temperature = 2, 3, 6, 5, 13, 0.7
    hidden, weight, bias = (
        torch.randn(b, n, h, generator=gen),
        torch.randn(vocab, h, generator=gen),
        torch.randn(vocab, generator=gen),
    )
    ref_hidden, ref_weight = torch.randn(b, n, h_ref, generator=gen), torch.randn(vocab, h_ref, generator=gen)
    targets = torch.randint(0, vocab, (b, n), generator=gen)
    w_div, w_logp = torch.rand(b, n, generator=gen), torch.randn(b, n, generator=gen)
    w_div[0, -1] = w_logp[0, -1] = 0.0  # a masked token
    div = get_divergence(divergence)
    request = VocabularyRequest(exact={"divergence": div})
    # the pass in float64 too: χ²'s gradient is large where ρ ≪ π, so an fp32 pass would only be compared loosely
    leaves = [x.double().requires_grad_(True) for x in (hidden, weight, bias)]
    stats = vocabulary_statistics(
        request,
        *leaves[:2],
        targets,
        temperature=temperature,
        bias=leaves[2],
        ref_hidden=ref_hidden.double(),
        ref_weight=ref_weight.double(),
        exact_weights={"divergence": w_div.double()},
        logp_weights=w_logp.double(),
    )
    stats["divergence/weighted_sum"].backward()
    ref = [x.double().requires_grad_(True) for x in (hidden, weight, bias)]
    logits = ref[0] @ ref[1].T + ref[2]
    ref_logits = ref_hidden.double() @ ref_weight.double().T
    logp, entropy, values = logprob_entropy_divergence(logits, ref_logits, targets, div, temperature, impl="naive")
    penalty = (w_div.double() * values).sum()
    (penalty + (w_logp.double() * logp).sum()).backward()
    torch.testing.assert_close(stats["divergence/weighted_sum"].detach(), penalty.detach(), rtol=1e-10, atol=1e-10)
    for name, want in (("logp", logp), ("entropy", entropy), ("divergence", values)):
        assert not stats[name].requires_grad
        torch.testing.assert_close(stats[name], want.detach(), rtol=1e-10, atol=1e-10, msg=name)
    for got, want in zip(leaves, ref, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-10)


def test_logp_weights_need_one_aggregated_exact_divergence_and_targets():
    hidden, weight = torch.randn(1, 2, 4), torch.randn(7, 4)
    w = torch.ones(1, 2)
    common = dict(temperature=1.0, ref_hidden=hidden, ref_weight=weight, logp_weights=w)
    request = VocabularyRequest(exact={"divergence": get_divergence("js")})
    with pytest.raises(ValueError, match="exactly one exact divergence"):
        vocabulary_statistics(request, hidden, weight, torch.zeros(1, 2, dtype=torch.long), **common)
    with pytest.raises(ValueError, match="targets"):
        vocabulary_statistics(request, hidden, weight, None, exact_weights={"divergence": w}, **common)
