"""``divergence_from_ref_hidden`` against the float64 oracle through materialized reference logits: values and
gradients on a subset of rows, odd vocab, −inf policy logits, bf16, chunking."""

from __future__ import annotations

import pytest
import torch

from tests.divergences._oracle import SPEC_IDS, SPECS, oracle
from tests.ops._helpers import randn
from trl_divergences import get_divergence
from trl_divergences.ops import divergence_from_ref_hidden


def case(n: int, m: int, hidden: int, vocab: int, seed: int, dtype=torch.float64):
    logits = randn((n, vocab), seed, dtype=dtype).requires_grad_()
    ref_hidden = randn((m, hidden), seed + 1, scale=1.0, dtype=dtype)
    ref_weight = randn((vocab, hidden), seed + 2, scale=0.5, dtype=dtype)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m]
    return logits, rows, ref_hidden, ref_weight


def reference(name, kw, logits, rows, ref_hidden, ref_weight, bias=None):
    """The oracle on materialized reference logits, float64 autograd."""
    ref_logits = torch.nn.functional.linear(
        ref_hidden.double(), ref_weight.double(), None if bias is None else bias.double()
    )
    p = torch.softmax(logits.double()[rows], -1)
    return oracle(name, p, torch.softmax(ref_logits, -1), **kw)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("chunk_rows", [None, 3])
def test_values_and_gradients_float64(spec, chunk_rows):
    name, kw = spec
    logits, rows, ref_hidden, ref_weight = case(n=13, m=7, hidden=5, vocab=11, seed=4)
    div = get_divergence(name, **kw)
    got = divergence_from_ref_hidden(logits, ref_hidden, ref_weight, div, rows=rows, chunk_rows=chunk_rows)
    want = reference(name, kw, logits, rows, ref_hidden, ref_weight)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g = torch.randn(7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (got_grad,) = torch.autograd.grad((got * g).sum(), logits)
    (want_grad,) = torch.autograd.grad((want * g).sum(), logits)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-12)
    assert got_grad[[i for i in range(13) if i not in rows.tolist()]].abs().max() == 0


def test_all_rows_bias_and_masked_policy_logits():
    logits, _, ref_hidden, ref_weight = case(n=6, m=6, hidden=4, vocab=9, seed=8)
    bias = randn((9,), 3, dtype=torch.float64)
    masked = logits.detach().clone()
    masked[:, 2] = -torch.inf
    masked.requires_grad_()
    div = get_divergence("forward_kl")
    got = divergence_from_ref_hidden(masked, ref_hidden, ref_weight, div, ref_bias=bias)
    ref_logits = torch.nn.functional.linear(ref_hidden, ref_weight, bias)
    want = div.full(masked, ref_logits)  # the exact op on materialized logits, same zero-mass convention
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(got.sum(), masked)
    (want_grad,) = torch.autograd.grad(want.sum(), masked)
    torch.testing.assert_close(grad, want_grad, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(grad).all()


def test_bf16_inputs_accumulate_in_fp32():
    logits, rows, ref_hidden, ref_weight = case(n=10, m=4, hidden=8, vocab=37, seed=2, dtype=torch.bfloat16)
    div = get_divergence("js")
    got = divergence_from_ref_hidden(logits, ref_hidden, ref_weight, div, rows=rows)
    assert got.dtype == torch.float32
    want = reference("js", {"beta": 0.5}, logits, rows, ref_hidden, ref_weight)
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-3)
    (grad,) = torch.autograd.grad(got.sum(), logits)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()


def test_shape_errors():
    logits, rows, ref_hidden, ref_weight = case(n=5, m=3, hidden=4, vocab=6, seed=1)
    div = get_divergence("tv")
    with pytest.raises(ValueError, match="ref_hidden must be"):
        divergence_from_ref_hidden(logits, ref_hidden, ref_weight, div)
    with pytest.raises(ValueError, match="ref_weight must be"):
        divergence_from_ref_hidden(logits, ref_hidden, ref_weight[:, :3], div, rows=rows)
