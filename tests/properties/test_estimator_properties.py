"""Sampled estimators on random categoricals, by exact enumeration of the vocabulary (no Monte-Carlo noise):
E_{y~π}[estimate] and E_{y~π}[∇ estimate] against the exact divergence and its gradient, on- and off-policy."""

from __future__ import annotations

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from trl_divergences import get_divergence

from ._strategies import divergence_specs, examples, logits

#: lp_reg's estimate is clamped toward a proxy, not an estimate of its own value
UNBIASED = ["reverse_kl", "forward_kl", "js", "tv", "chi2", "hellinger", "alpha"]
FAST = examples(50)


def _categoricals(data, vocab: int):
    z = data.draw(logits(1, vocab, bound=4.0))[0].requires_grad_(True)
    zr = data.draw(logits(1, vocab, bound=4.0))[0]
    return z, zr, torch.log_softmax(z, -1), torch.log_softmax(zr, -1)


def _grad(out, z):
    """∂out/∂z, keeping the graph (several estimates share the log-softmax of z)."""
    return torch.autograd.grad(out, z, retain_graph=True)[0]


def _expected(weights, per_token):
    """Σ_y weights_y · per_token_y: the expectation of a per-token quantity under ``weights`` (probabilities)."""
    return (weights.detach() * per_token).sum()


@FAST
@given(divergence_specs(UNBIASED), st.integers(2, 8), st.data())
def test_value_estimators_are_unbiased(spec, vocab, data):
    div = get_divergence(spec[0], **spec[1])
    z, zr, lp, lr = _categoricals(data, vocab)
    exact = div.full(z, zr)
    for estimator in ("k1", "k3", "k3+"):
        torch.testing.assert_close(_expected(lp.exp(), div.sampled(lp, lr, estimator)), exact, rtol=1e-9, atol=1e-12)


@FAST
@given(divergence_specs(UNBIASED), st.integers(2, 8), st.data())
def test_k3_plus_gradient_is_the_exact_gradient(spec, vocab, data):
    div = get_divergence(spec[0], **spec[1])
    z, zr, lp, lr = _categoricals(data, vocab)
    if spec[0] == "tv":  # |π − ρ| has no gradient where π_v = ρ_v: any subgradient is right there
        assume((lp.exp() - lr.exp()).abs().min() > 1e-9)
    want = _grad(div.full(z, zr), z)
    got = _grad(_expected(lp.exp(), div.sampled(lp, lr, "k3+")), z)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@FAST
@given(st.integers(2, 8), st.data())
def test_reverse_kl_gradients_as_documented(vocab, data):
    """On-policy, as plain losses: E[∇k1] = 0, E[∇k2] = ∇KL(π‖ρ), E[∇k3] = ∇KL(ρ‖π) (the forward-KL gradient)."""
    rkl, fkl = get_divergence("reverse_kl"), get_divergence("forward_kl")
    z, zr, lp, lr = _categoricals(data, vocab)
    p = lp.exp()
    grads = {e: _grad(_expected(p, rkl.sampled(lp, lr, e)), z) for e in ("k1", "k2", "k3")}
    torch.testing.assert_close(grads["k1"], torch.zeros_like(z), rtol=0, atol=1e-12)
    torch.testing.assert_close(grads["k2"], _grad(rkl.full(z, zr), z), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grads["k3"], _grad(fkl.full(z, zr), z), rtol=1e-8, atol=1e-10)


@FAST
@given(divergence_specs(UNBIASED), st.integers(2, 8), st.data())
def test_importance_weighted_estimators_off_policy(spec, vocab, data):
    """Samples from π_old, w = π/π_old: E_{π_old}[w·k] = D_f for the value estimators and E_{π_old}[∇(w·k)] = ∇D_f
    for every estimator (value-shaped ones through w's graph, gradient-shaped ones with w detached)."""
    div = get_divergence(spec[0], **spec[1])
    z, zr, lp, lr = _categoricals(data, vocab)
    if spec[0] == "tv":
        assume((lp.exp() - lr.exp()).abs().min() > 1e-9)
    lp_old = torch.log_softmax(data.draw(logits(1, vocab, bound=4.0))[0], -1)
    weight = (lp - lp_old).exp()
    exact = div.full(z, zr)
    want = _grad(exact, z)
    for estimator in div.estimators:
        expected = _expected(lp_old.exp(), div.sampled(lp, lr, estimator, importance_weight=weight))
        if estimator not in div.gradient_shaped:
            torch.testing.assert_close(expected, exact, rtol=1e-9, atol=1e-12)
        got = _grad(expected, z)
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10, msg=f"{spec} {estimator}")


@FAST
@given(st.sampled_from(["forward_kl", "js", "alpha"]), st.integers(2, 8), st.data())
def test_reference_sampled_estimator_is_unbiased_with_exact_gradient(name, vocab, data):
    """Samples from ρ (DPH-RL's rehearsal): E_ρ[f_c(π/ρ)] = D_f(π‖ρ) and E_ρ[∇f_c] = ∇D_f, f_c ≥ 0."""
    kwargs = {"alpha": data.draw(st.floats(0.05, 0.95))} if name == "alpha" else {}
    div = get_divergence(name, **kwargs)
    z, zr, lp, lr = _categoricals(data, vocab)
    values = div.reference_sampled(lp, lr)
    assert (values >= -1e-12).all()
    exact = div.full(z, zr)
    torch.testing.assert_close(_expected(lr.exp(), values), exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_grad(_expected(lr.exp(), values), z), _grad(exact, z), rtol=1e-8, atol=1e-10)


@FAST
@given(
    divergence_specs(),
    st.lists(st.sampled_from([0.0, -1e-3, -0.7, -5.0, -60.0, -1e9, -float("inf")]), min_size=2, max_size=6),
    st.lists(st.sampled_from([0.0, -1e-3, -0.7, -5.0, -60.0, -1e9, -float("inf")]), min_size=6, max_size=6),
    st.sampled_from([torch.float64, torch.float32, torch.bfloat16]),
)
def test_sampled_estimates_finite_for_masked_and_extreme_log_probs(spec, logp_values, ref_values, dtype):
    div = get_divergence(spec[0], **spec[1])
    logp = torch.tensor(logp_values, dtype=dtype).requires_grad_(True)
    ref = torch.tensor(ref_values[: len(logp_values)], dtype=dtype)
    for estimator in div.estimators:
        value = div.sampled(logp, ref, estimator)
        (grad,) = torch.autograd.grad(value.sum(), logp)
        assert torch.isfinite(value).all() and torch.isfinite(grad).all(), (estimator, value, grad)
