"""The chunked ops against the naive oracle (full logits, autograd) on random shapes, dtypes, masked entries,
temperatures, chunk sizes and divergences: values and gradients."""

from __future__ import annotations

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import trl_divergences as td

from ._strategies import divergence_specs, examples, fp32_well_conditioned, logits

FLOATS = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
#: (values rtol/atol, gradient relative error in norm): fp64 exact; the low-precision paths both compute in fp32 on
#: the same rounded inputs, with gradients returned in the input's dtype
TOL = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (1e-4, 2e-2),
    torch.float16: (1e-4, 2e-3),
}
FAST = examples(40)


@st.composite
def shapes(draw) -> tuple[tuple[int, ...], int]:
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    return lead, draw(st.integers(1, 16))


def _targets(data, z: torch.Tensor) -> torch.Tensor:
    """A target per row among its unmasked entries (a sampled token has probability > 0)."""
    rows = z.reshape(-1, z.shape[-1])
    picks = [data.draw(st.sampled_from(torch.nonzero(r > -1e4).flatten().tolist())) for r in rows]
    return torch.tensor(picks).reshape(z.shape[:-1])


def _close_in_norm(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    err = (got.double() - want.double()).norm()
    assert err <= rel * want.double().norm() + rel, (err, want.double().norm())


@FAST
@given(divergence_specs(), shapes(), st.sampled_from(FLOATS), st.booleans(), st.data())
def test_logits_op_matches_naive(spec, shape, dtype, masked, data):
    assume(fp32_well_conditioned(spec, dtype))
    lead, vocab = shape
    rows = int(torch.tensor(lead).prod())
    z = data.draw(logits(rows, vocab, masked=masked and vocab > 1)).reshape(*lead, vocab).to(dtype)
    zr = data.draw(logits(rows, vocab, masked=masked and vocab > 1)).reshape(*lead, vocab).to(dtype)
    targets = _targets(data, z)
    temperature = data.draw(st.floats(0.25, 4.0))
    chunk_rows = data.draw(st.one_of(st.none(), st.integers(1, 4)))
    weights = [data.draw(logits(rows, 1, bound=2.0)).reshape(lead) for _ in range(3)]
    name, kwargs = spec
    results = []
    for impl in ("chunked", "naive"):
        leaf = z.detach().clone().requires_grad_(True)
        outs = td.ops.logprob_entropy_divergence(
            leaf, zr, targets, name, temperature, impl=impl, chunk_rows=chunk_rows, **kwargs
        )
        loss = sum((w.to(o.dtype) * o).sum() for w, o in zip(weights, outs))
        (grad,) = torch.autograd.grad(loss, leaf)
        results.append((outs, grad))
    (outs, grad), (ref_outs, ref_grad) = results
    tol, grad_tol = TOL[dtype]
    for o, r in zip(outs, ref_outs):
        assert o.dtype == r.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert torch.isfinite(o).all()
        torch.testing.assert_close(o, r, rtol=tol, atol=tol)
    assert grad.dtype == dtype
    finite = torch.isfinite(ref_grad)  # fp16 overflows where χ² / α grow like e^50 (a one-sided mask): both paths
    assert (torch.isfinite(grad) == finite).all() and (finite.all() or dtype == torch.float16)
    _close_in_norm(grad[finite], ref_grad[finite], grad_tol)


@FAST
@given(
    divergence_specs(),
    shapes(),
    st.integers(1, 6),
    st.sampled_from([torch.float64, torch.float32]),
    st.booleans(),
    st.booleans(),
    st.data(),
)
def test_fused_linear_op_matches_naive(spec, shape, hidden_size, dtype, with_bias, with_ref, data):
    assume(fp32_well_conditioned(spec, dtype))
    lead, vocab = shape
    rows = int(torch.tensor(lead).prod())

    def draw(n, m, bound=2.0):
        return data.draw(logits(n, m, bound=bound)).to(dtype)

    hidden, weight = draw(rows, hidden_size).reshape(*lead, hidden_size), draw(vocab, hidden_size)
    bias = draw(1, vocab)[0] if with_bias else None
    ref_hidden = draw(rows, hidden_size).reshape(*lead, hidden_size) if with_ref else None
    ref_weight = draw(vocab, hidden_size) if with_ref else None
    targets = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=rows, max_size=rows))).reshape(lead)
    chunk_rows = data.draw(st.one_of(st.none(), st.integers(1, 4)))
    name, kwargs = spec
    results = []
    for impl in ("chunked", "naive"):
        leaves = [t.detach().clone().requires_grad_(True) for t in (hidden, weight)]
        b = None if bias is None else bias.detach().clone().requires_grad_(True)
        outs = td.ops.fused_linear_logprob_entropy_divergence(
            *leaves, ref_hidden, ref_weight, targets, name, bias=b, impl=impl, chunk_rows=chunk_rows, **kwargs
        )
        loss = sum(o.sum() * (i + 1) for i, o in enumerate(outs) if o is not None)
        grads = torch.autograd.grad(loss, leaves + ([b] if b is not None else []))
        results.append((outs, grads))
    (outs, grads), (ref_outs, ref_grads) = results
    tol, grad_tol = TOL[dtype]
    for o, r in zip(outs, ref_outs):
        assert (o is None) == (r is None)
        if o is not None:
            torch.testing.assert_close(o, r, rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        _close_in_norm(g, r, grad_tol)


@FAST
@given(divergence_specs(), shapes(), st.integers(1, 6), st.data())
def test_fused_linear_divergence_loss_matches_naive(spec, shape, hidden_size, data):
    lead, vocab = shape
    rows = int(torch.tensor(lead).prod())

    def draw(n, m):
        return data.draw(logits(n, m, bound=2.0))

    hidden, weight = draw(rows, hidden_size).reshape(*lead, hidden_size), draw(vocab, hidden_size)
    ref_hidden, ref_weight = draw(rows, hidden_size).reshape(*lead, hidden_size), draw(vocab, hidden_size)
    targets = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=rows, max_size=rows))).reshape(lead)
    weights = [draw(rows, 1).reshape(lead) if data.draw(st.booleans()) else None for _ in range(3)]
    name, kwargs = spec
    results = []
    for impl in ("chunked", "naive"):
        leaves = [t.detach().clone().requires_grad_(True) for t in (hidden, weight)]
        loss, *outs = td.ops.fused_linear_divergence_loss(
            *leaves, ref_hidden, ref_weight, targets, *weights, divergence=name, impl=impl, chunk_rows=2, **kwargs
        )
        grads = torch.autograd.grad(loss, leaves, allow_unused=True) if loss.requires_grad else (None, None)
        results.append((loss, outs, grads))
    (loss, outs, grads), (ref_loss, ref_outs, ref_grads) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    for o, r in zip(outs, ref_outs):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        if g is None or r is None:  # no weighted term: the loss is a constant
            assert all(w is None for w in weights) or (g is None) == (r is None)
        else:
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)


@FAST
@given(
    shapes(),
    st.floats(0.05, 1.0),
    st.integers(1, 20),
    st.one_of(st.none(), st.floats(0.01, 1.0)),
    st.sampled_from([torch.float64, torch.float32]),
    st.booleans(),
    st.data(),
)
def test_nucleus_stats_match_naive(shape, top_p, top_k, min_p, dtype, masked, data):
    lead, vocab = shape
    rows = int(torch.tensor(lead).prod())
    order = torch.tensor(data.draw(st.permutations(range(vocab))), dtype=torch.float64)
    z = data.draw(logits(rows, vocab, bound=4.0, masked=masked and vocab > 1)) + 0.01 * order  # spreads out ties
    z = z.reshape(*lead, vocab).to(dtype)
    probs = torch.softmax(z.double(), -1).sort(-1, descending=True).values[..., :top_k].cumsum(-1)
    assume((probs - top_p).abs().min() > 1e-6)  # a nucleus-boundary tie: both paths may pick either side
    finite = z.double().clamp(min=-1e4)
    gaps = (finite.unsqueeze(-1) - finite.unsqueeze(-2)).abs() + torch.eye(vocab, dtype=torch.float64) * 1e4
    both_masked = (z.unsqueeze(-1) <= -1e4) & (z.unsqueeze(-2) <= -1e4)
    # equal probabilities: which one a top-k / nucleus cut keeps is arbitrary (same values, permuted gradients), and
    # the op orders by logits where the oracle orders by rounded probabilities
    assume((both_masked | (gaps > 1e-6)).all())
    targets = _targets(data, z)
    temperature = data.draw(st.floats(0.5, 2.0))
    results = []
    for chunked_path in (True, False):
        leaf = z.detach().clone().requires_grad_(True)
        if chunked_path:
            outs = tuple(
                td.ops.nucleus_stats(
                    leaf, targets, top_p=top_p, top_k=top_k, min_p=min_p, temperature=temperature, chunk_rows=2
                )
            )
        else:
            outs = td.ops.naive.nucleus_stats(leaf, targets, top_p, top_k, min_p, temperature)
        (grad,) = torch.autograd.grad(outs[0].sum(), leaf, allow_unused=True)
        results.append((outs, torch.zeros_like(leaf) if grad is None else grad))
    (outs, grad), (ref_outs, ref_grad) = results
    tol = TOL[dtype][0]
    for o, r in zip(outs, ref_outs):
        assert (o is None) == (r is None)
        if o is not None:
            torch.testing.assert_close(o, r, rtol=tol, atol=tol)
    torch.testing.assert_close(grad, ref_grad, rtol=tol, atol=tol)
