"""Exact full-vocabulary values of every divergence against the independent float64 oracle, plus identities."""

from __future__ import annotations

import math

import pytest
import torch

import trl_divergences as td

from ._oracle import SPEC_IDS, SPECS, oracle_from_logits

# accumulation is fp32 for fp32/bf16 inputs, float64 for float64 inputs
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}
TOL[torch.bfloat16] = TOL[torch.float32]

# divergences whose per-entry exponent is capped at e^80 (documented): exact only below the cap
CAPPED = {"chi2", "alpha"}


def _logits(shape: tuple[int, ...], scale: float, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    zr = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    return z, zr


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("vocab", [1, 7, 129, 1000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_full_matches_oracle(spec, vocab: int, dtype: torch.dtype) -> None:
    name, kw = spec
    z, zr = _logits((3, 5, vocab), 1.5, seed=vocab, dtype=dtype)
    value = td.get_divergence(name, **kw).full(z, zr)
    assert value.shape == (3, 5)
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # bf16 inputs: the oracle sees the same bf16-rounded logits
    expected = oracle_from_logits(name, z, zr, **kw)
    torch.testing.assert_close(value.double(), expected, **TOL[dtype])


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("scale", [30.0, 50.0])
def test_extreme_logits(spec, dtype: torch.dtype, scale: float) -> None:
    """Logits of scale 30-50: log-probs down to about −400 must be used as they are (no silent floor)."""
    name, kw = spec
    z, zr = _logits((6, 1000), scale, seed=int(scale), dtype=dtype)
    value = td.get_divergence(name, **kw).full(z, zr).double()
    expected = oracle_from_logits(name, z, zr, **kw)
    assert torch.isfinite(value).all()
    exact = torch.ones_like(expected, dtype=torch.bool)
    if name in CAPPED:
        # entries beyond e^80 are capped there (finite in fp32): the value is then only "huge"
        exact = expected < 1e30
        assert (value[~exact] > 1e30).all()
    # fp32 log-softmax of logits ~±200 carries absolute errors of ~1e-5 per log-prob
    tol = TOL[torch.float64] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(value[exact], expected[exact], **tol)


@pytest.mark.parametrize("temperature", [0.5, 1.7])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_temperature(spec, temperature: float) -> None:
    name, kw = spec
    z, zr = _logits((4, 33), 1.0, seed=3, dtype=torch.float64)
    value = td.get_divergence(name, **kw).full(z, zr, temperature=temperature)
    torch.testing.assert_close(value, oracle_from_logits(name, z, zr, temperature, **kw), **TOL[torch.float64])


def test_single_position_vector() -> None:
    """A bare [V] vector is one position: the result is a 0-d tensor."""
    z, zr = _logits((17,), 1.0, seed=5, dtype=torch.float64)
    value = td.get_divergence("reverse_kl").full(z, zr)
    assert value.shape == ()
    torch.testing.assert_close(value, oracle_from_logits("reverse_kl", z, zr), **TOL[torch.float64])


# ---- identities ----------------------------------------------------------------------------------------------


def _full(name: str, z: torch.Tensor, zr: torch.Tensor, **kw) -> torch.Tensor:
    return td.get_divergence(name, **kw).full(z, zr)


def test_alpha_half_is_four_hellinger() -> None:
    z, zr = _logits((8, 50), 2.0, seed=11, dtype=torch.float64)
    torch.testing.assert_close(
        _full("alpha", z, zr, alpha=0.5), 4.0 * _full("hellinger", z, zr), rtol=1e-12, atol=1e-12
    )


def test_alpha_limits_are_the_kls() -> None:
    z, zr = _logits((8, 50), 1.0, seed=12, dtype=torch.float64)
    rkl, fkl = _full("reverse_kl", z, zr), _full("forward_kl", z, zr)
    torch.testing.assert_close(_full("alpha", z, zr, alpha=1.0), rkl, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_full("alpha", z, zr, alpha=0.0), fkl, rtol=1e-12, atol=1e-12)
    # approaching the limits continuously from both sides (D_α − limit = O(|α − limit|))
    for eps in (1e-3, -1e-3):
        torch.testing.assert_close(_full("alpha", z, zr, alpha=1.0 + eps), rkl, rtol=5e-3, atol=0)
        torch.testing.assert_close(_full("alpha", z, zr, alpha=eps), fkl, rtol=5e-3, atol=0)
    # and the values at α = 1 ± 1e-3 are the textbook formula, not the switched-to limit
    for a in (1.0 - 1e-3, 1.0 + 1e-3, 1e-3, -1e-3):
        torch.testing.assert_close(_full("alpha", z, zr, alpha=a), oracle_from_logits("alpha", z, zr, alpha=a))


def test_alpha_near_limit_fp32() -> None:
    """fp32 inputs close to (but not at) α = 1 and α = 0 still give the right value."""
    z, zr = _logits((8, 50), 1.0, seed=13, dtype=torch.float32)
    for a in (1.0 - 1e-3, 1e-3):
        torch.testing.assert_close(
            _full("alpha", z, zr, alpha=a).double(), oracle_from_logits("alpha", z, zr, alpha=a), rtol=1e-3, atol=1e-5
        )


def test_js_endpoints_relate_to_the_kls() -> None:
    z, zr = _logits((8, 40), 1.0, seed=14, dtype=torch.float64)
    beta = 1e-4
    torch.testing.assert_close(_full("js", z, zr, beta=beta) / beta, _full("forward_kl", z, zr), rtol=1e-2, atol=0)
    torch.testing.assert_close(
        _full("js", z, zr, beta=1.0 - beta) / beta, _full("reverse_kl", z, zr), rtol=1e-2, atol=0
    )


def test_bounded_divergences() -> None:
    """JS(β=½) ≤ log 2, TV ≤ 1, H² ≤ 1 — and they reach the bound on (numerically) disjoint supports."""
    z, zr = _logits((16, 64), 40.0, seed=15, dtype=torch.float32)
    disjoint_z = torch.tensor([[0.0, -200.0, -200.0], [-200.0, 0.0, -200.0]])
    disjoint_zr = torch.tensor([[-200.0, 0.0, -200.0], [-200.0, -200.0, 0.0]])
    for name, kw, bound in (("js", {"beta": 0.5}, math.log(2.0)), ("tv", {}, 1.0), ("hellinger", {}, 1.0)):
        assert (_full(name, z, zr, **kw) <= bound + 1e-6).all(), name
        torch.testing.assert_close(
            _full(name, disjoint_z, disjoint_zr, **kw), torch.full((2,), bound), rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_nonnegative_and_zero_iff_equal(spec, dtype: torch.dtype) -> None:
    name, kw = spec
    div = td.get_divergence(name, **kw)
    for scale in (0.1, 2.0, 30.0):
        z, zr = _logits((32, 129), scale, seed=16, dtype=dtype)
        value = div.full(z, zr)
        assert (value >= -1e-6).all()
        assert (value > 0).all()  # every row differs
        # identical logits: exactly 0 up to rounding; in float64 also for shifted logits (same distribution)
        assert div.full(z, z).abs().max() <= 1e-6
        if dtype == torch.float64:
            assert div.full(z, z + 3.0).abs().max() <= 1e-12
