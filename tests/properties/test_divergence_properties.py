"""Divergences, exactly over the vocabulary: non-negative, zero iff π = ρ, the α → 0/1 and JS β → 0/1 limits, and
finite values and gradients with −inf / masked entries, for every registered divergence."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.divergences._oracle import kl
from trl_divergences import get_divergence

from ._strategies import divergence_specs, examples, logit_pairs, logits

FAST = examples(60)


def _full(spec, z, zr):
    name, kwargs = spec
    return get_divergence(name, **kwargs).full(z, zr)


@FAST
@given(divergence_specs(), logit_pairs())
def test_non_negative_and_positive_where_distributions_differ(spec, pair):
    z, zr = pair
    value = _full(spec, z, zr)
    assert torch.isfinite(value).all() and (value >= -1e-12).all()
    tv = 0.5 * (torch.softmax(z, -1) - torch.softmax(zr, -1)).abs().sum(-1)
    assert (value[tv > 1e-3] > 0).all()


@FAST
@given(divergence_specs(), logit_pairs(masked=True), st.floats(-20.0, 20.0))
def test_zero_for_equal_distributions_whatever_the_logits_shift(spec, pair, shift):
    z, _ = pair
    value = _full(spec, z, z + shift)  # the same distribution; masked entries stay masked (−inf + c = −inf)
    assert value.abs().max() <= 1e-10


@FAST
@given(logit_pairs(bound=5.0))
def test_alpha_tends_to_the_kls_at_0_and_1(pair):
    """D_α → KL(π‖ρ) as α → 1 and KL(ρ‖π) as α → 0, continuous across the exact-limit switch (|α − 1| < 1e-6)."""
    z, zr = pair
    p, q = torch.softmax(z, -1), torch.softmax(zr, -1)
    for alpha, limit in ((1.0 - 2e-6, kl(p, q)), (2e-6, kl(q, p))):
        value = _full(("alpha", {"alpha": alpha}), z, zr)
        torch.testing.assert_close(value, limit, rtol=1e-3, atol=1e-9)
    torch.testing.assert_close(_full(("alpha", {"alpha": 1.0}), z, zr), kl(p, q), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_full(("alpha", {"alpha": 0.0}), z, zr), kl(q, p), rtol=1e-10, atol=1e-12)


@FAST
@given(logit_pairs(bound=3.0))
def test_js_endpoints_are_the_scaled_kls(pair):
    """JS_β/β → KL(ρ‖π) as β → 0 and JS_β/(1 − β) → KL(π‖ρ) as β → 1."""
    z, zr = pair
    p, q = torch.softmax(z, -1), torch.softmax(zr, -1)
    eps = 1e-9
    torch.testing.assert_close(_full(("js", {"beta": eps}), z, zr) / eps, kl(q, p), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(_full(("js", {"beta": 1 - eps}), z, zr) / eps, kl(p, q), rtol=1e-3, atol=1e-6)


@FAST
@given(
    divergence_specs(),
    st.integers(1, 3),
    st.integers(2, 10),
    st.sampled_from([torch.float64, torch.float32, torch.bfloat16]),
    st.data(),
)
def test_finite_values_and_gradients_with_masked_entries(spec, rows, vocab, dtype, data):
    z = data.draw(logits(rows, vocab, masked=True)).to(dtype).requires_grad_(True)
    zr = data.draw(logits(rows, vocab, masked=True)).to(dtype)
    value = _full(spec, z, zr)
    (grad,) = torch.autograd.grad(value.sum(), z)
    assert torch.isfinite(value).all() and (value >= -1e-5).all()
    assert torch.isfinite(grad).all()
    assert (grad[torch.isinf(z.detach()) | (z.detach() < -1e4)] == 0).all()  # a masked entry gets no gradient
