"""Sampled-token estimators on a small categorical: Monte-Carlo means vs the exact value, and the expected
gradients of each estimator used as a per-token loss (methods-official-code-B §9)."""

from __future__ import annotations

import pytest
import torch

import trl_divergences as td

from ._oracle import SPEC_IDS, SPECS, oracle_from_logits, oracle_grad

VOCAB = 8
N_SAMPLES = 400_000


def _categorical(scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(VOCAB, generator=g, dtype=torch.float64) * scale
    zr = torch.randn(VOCAB, generator=g, dtype=torch.float64) * scale
    return z, zr


_SAMPLES: dict[tuple[bytes, int], torch.Tensor] = {}


def _samples(z: torch.Tensor, seed: int) -> torch.Tensor:
    """N_SAMPLES token ids drawn from softmax(z) (cached: every estimator sees the same draws)."""
    key = (z.numpy().tobytes(), seed)
    if key not in _SAMPLES:
        g = torch.Generator().manual_seed(seed)
        _SAMPLES[key] = torch.multinomial(torch.softmax(z, -1), N_SAMPLES, replacement=True, generator=g)
    return _SAMPLES[key]


def _mc(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error."""
    return values.mean().item(), (values.std() / values.numel() ** 0.5).item()


def _unbiased_pairs() -> list[tuple[tuple[str, dict], str]]:
    pairs = []
    for spec in SPECS:
        for est in td.get_divergence(spec[0], **spec[1]).estimators:
            if not (spec[0] == "reverse_kl" and est == "k2"):
                pairs.append((spec, est))
    return pairs


UNBIASED = _unbiased_pairs()


@pytest.mark.parametrize(("spec", "estimator"), UNBIASED, ids=[f"{s[0]}{s[1]}-{e}" for s, e in UNBIASED])
def test_monte_carlo_mean_matches_exact(spec, estimator: str) -> None:
    name, kw = spec
    div = td.get_divergence(name, **kw)
    z, zr = _categorical(0.8, seed=1)
    lp, lr = torch.log_softmax(z, -1), torch.log_softmax(zr, -1)
    exact = div.full(z, zr).item()
    torch.testing.assert_close(exact, oracle_from_logits(name, z, zr, **kw).item(), rtol=1e-10, atol=1e-12)
    y = _samples(z, seed=2)
    values = div.sampled(lp[y], lr[y], estimator=estimator)
    assert values.shape == (N_SAMPLES,) and torch.isfinite(values).all()
    mean, se = _mc(values)
    assert se > 0
    assert abs(mean - exact) < 5 * se + 1e-9, (mean, exact, se)
    # the same, exactly: the expectation over the categorical
    expectation = (torch.softmax(z, -1) * div.sampled(lp, lr, estimator=estimator)).sum().item()
    torch.testing.assert_close(expectation, exact, rtol=1e-10, atol=1e-12)


def test_reverse_kl_k2_is_biased() -> None:
    """k2 = ½(log r)² estimates ½E[(log r)²], not KL(π‖ρ), when π and ρ differ a lot."""
    div = td.get_divergence("reverse_kl")
    z, zr = _categorical(2.0, seed=3)
    lp, lr = torch.log_softmax(z, -1), torch.log_softmax(zr, -1)
    y = _samples(z, seed=4)
    mean, se = _mc(div.sampled(lp[y], lr[y], estimator="k2"))
    half_square = (torch.softmax(z, -1) * 0.5 * (lr - lp) ** 2).sum().item()
    exact = div.full(z, zr).item()
    assert abs(mean - half_square) < 5 * se
    assert abs(mean - exact) > 20 * se
    assert abs(half_square - exact) > 0.1 * exact


# ---- expected gradients of the estimators used as per-token losses -------------------------------------------


def _expected_grad(div, z: torch.Tensor, zr: torch.Tensor, estimator: str) -> torch.Tensor:
    """E_{y~π}[∇ estimator(y)] w.r.t. the policy logits, the sampling distribution held fixed."""
    zg = z.clone().requires_grad_(True)
    lp = torch.log_softmax(zg, -1)
    lr = torch.log_softmax(zr, -1)
    loss = (lp.exp().detach() * div.sampled(lp, lr, estimator=estimator)).sum()
    (grad,) = torch.autograd.grad(loss, zg)
    return grad


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_reverse_kl_estimator_gradients(scale: float) -> None:
    div = td.get_divergence("reverse_kl")
    z, zr = _categorical(scale, seed=5)
    ones = torch.ones((), dtype=torch.float64)
    grad_rkl = oracle_grad("reverse_kl", z, zr, ones)
    grad_fkl = oracle_grad("forward_kl", z, zr, ones)
    assert (grad_rkl - grad_fkl).abs().max() > 1e-3  # the facts below distinguish the two
    torch.testing.assert_close(
        _expected_grad(div, z, zr, "k1"), torch.zeros(VOCAB, dtype=torch.float64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(_expected_grad(div, z, zr, "k2"), grad_rkl, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_expected_grad(div, z, zr, "k3+"), grad_rkl, rtol=1e-10, atol=1e-12)
    # k3 as a loss has the *forward*-KL gradient
    torch.testing.assert_close(_expected_grad(div, z, zr, "k3"), grad_fkl, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_k3_plus_expected_gradient_is_exact(spec) -> None:
    name, kw = spec
    div = td.get_divergence(name, **kw)
    z, zr = _categorical(1.0, seed=6)
    expected = oracle_grad(name, z, zr, torch.ones((), dtype=torch.float64), **kw)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(_expected_grad(div, z, zr, "k3+"), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_k3_plus_is_straight_through(spec) -> None:
    """k3+ has k3's value, and for reverse KL k2's per-token gradient; no gradient reaches the reference."""
    name, kw = spec
    div = td.get_divergence(name, **kw)
    z, zr = _categorical(1.0, seed=7)
    lp = torch.log_softmax(z, -1).requires_grad_(True)
    lr = torch.log_softmax(zr, -1).requires_grad_(True)
    plus = div.sampled(lp, lr, estimator="k3+")
    torch.testing.assert_close(plus, div.sampled(lp, lr, estimator="k3"), rtol=0, atol=0)
    grad_lp, grad_lr = torch.autograd.grad(plus.sum(), (lp, lr), allow_unused=True)
    assert grad_lr is None or (grad_lr == 0).all()
    if name == "reverse_kl":
        (grad_k2,) = torch.autograd.grad(div.sampled(lp, lr, estimator="k2").sum(), lp)
        torch.testing.assert_close(grad_lp, grad_k2, rtol=1e-12, atol=1e-12)


def test_sampled_dtype_and_shape() -> None:
    div = td.get_divergence("forward_kl")
    lp = torch.log(torch.rand(3, 4)).to(torch.bfloat16)
    lr = torch.log(torch.rand(3, 4)).to(torch.bfloat16)
    for est in div.estimators:
        out = div.sampled(lp, lr, estimator=est)
        assert out.shape == (3, 4) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


# ---- unsupported pairs ---------------------------------------------------------------------------------------


def test_estimator_sets() -> None:
    assert set(td.get_divergence("reverse_kl").estimators) == {"k1", "k2", "k3", "k3+"}
    for name, kw in SPECS:
        if name != "reverse_kl":
            assert set(td.get_divergence(name, **kw).estimators) == {"k1", "k3", "k3+"}, (name, kw)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_unsupported_estimator_raises_listing_supported(spec) -> None:
    name, kw = spec
    div = td.get_divergence(name, **kw)
    lp, lr = torch.log(torch.full((2,), 0.5)), torch.log(torch.full((2,), 0.5))
    bad = ["k7", "K3", ""] + (["k2"] if "k2" not in div.estimators else [])
    for estimator in bad:
        with pytest.raises(ValueError) as info:
            div.sampled(lp, lr, estimator=estimator)
        message = str(info.value)
        assert repr(estimator) in message
        assert all(e in message for e in div.estimators)
