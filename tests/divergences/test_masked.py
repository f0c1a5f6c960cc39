"""Masked vocabulary entries (−inf logits): both-sided masks vanish, one-sided masks follow base.py's documented
zero-mass convention (masked log-probs become −50: finite values, finite gradients)."""

from __future__ import annotations

import math

import pytest
import torch

import trl_divergences as td

from ._oracle import SPEC_IDS, SPECS, oracle, oracle_from_logits, probs, zero_mass_probs

NEG_INF = float("-inf")


def _logits(rows: int, vocab: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 1.5
    zr = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 1.5
    return z.to(dtype), zr.to(dtype)


def _value_and_grad(name: str, kw: dict, z: torch.Tensor, zr: torch.Tensor, impl: str = "auto"):
    z = z.detach().clone().requires_grad_(True)
    _, _, value = td.ops.logprob_entropy_divergence(z, zr, None, divergence=name, impl=impl, **kw)
    (grad,) = torch.autograd.grad(value.sum(), z)
    return value, grad


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_both_sided_mask_equals_sub_vocabulary(spec, dtype: torch.dtype, impl: str) -> None:
    """Columns that are −inf on both sides (vocab padding) contribute nothing, to the value and to the gradient."""
    name, kw = spec
    z, zr = _logits(5, 40, seed=1, dtype=dtype)
    keep = torch.ones(40, dtype=torch.bool)
    keep[torch.tensor([0, 3, 17, 38, 39])] = False
    z[:, ~keep] = NEG_INF
    zr[:, ~keep] = NEG_INF
    value, grad = _value_and_grad(name, kw, z, zr, impl)
    sub_z, sub_zr = z[:, keep].double().requires_grad_(True), zr[:, keep].double()
    expected = oracle_from_logits(name, sub_z, sub_zr, **kw)
    (expected_grad,) = torch.autograd.grad(expected.sum(), sub_z)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(value.double(), expected, **tol)
    torch.testing.assert_close(grad[:, keep].double(), expected_grad, **tol)
    assert (grad[:, ~keep] == 0).all()


def _one_sided(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with −inf only in the policy, only in the reference, both, and overlapping patterns."""
    z, zr = _logits(4, 12, seed=2, dtype=dtype)
    z[0, [1, 2]] = NEG_INF  # π = 0 < ρ
    zr[1, [4, 5, 6]] = NEG_INF  # ρ = 0 < π
    z[2, [0, 7]] = NEG_INF  # both kinds in one row, plus a both-sided column
    zr[2, [7, 9]] = NEG_INF
    z[3, :10] = NEG_INF  # policy on 2 entries, reference elsewhere: disjoint supports
    zr[3, 10:] = NEG_INF
    return z, zr


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_one_sided_mask_is_finite_and_follows_the_convention(spec, dtype: torch.dtype, impl: str) -> None:
    name, kw = spec
    z, zr = _one_sided(dtype)
    value, grad = _value_and_grad(name, kw, z, zr, impl)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    assert (value >= -1e-6).all()
    assert (grad[torch.isinf(z)] == 0).all()  # no gradient onto masked policy logits
    # the convention: a masked entry has probability e^-50 (not renormalized)
    zv = z.double().requires_grad_(True)
    expected = oracle(name, zero_mass_probs(zv), zero_mass_probs(zr), **kw)
    (expected_grad,) = torch.autograd.grad(expected.sum(), zv)
    if dtype == torch.float64:
        torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-10)
    else:
        # fp32 accumulation; a bf16 input gets its gradient rounded to bf16 (8 mantissa bits)
        grad_tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=8e-3, atol=1e-4)
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad.double(), expected_grad, **grad_tol)


def test_reverse_kl_zero_reference_mass_adds_documented_term() -> None:
    """ρ_v = 0 < π_v: reverse KL adds exactly π_v (log π_v + 50) (base.py docstring)."""
    z, zr = _logits(3, 9, seed=3)
    zr[:, [2, 5]] = NEG_INF
    value = td.get_divergence("reverse_kl").full(z, zr)
    p, q = probs(z), probs(zr)
    live = q > 0
    expected = torch.where(live, p * (p.log() - q.log()), p * (p.log() + 50.0)).sum(-1)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    # and that is much more than the KL restricted to the reference's support
    assert (value > oracle("reverse_kl", p[:, live[0]], q[:, live[0]]) + 1.0).all()


def test_forward_kl_zero_policy_mass_adds_documented_term() -> None:
    """π_v = 0 < ρ_v: forward KL adds ρ_v (log ρ_v + 50), the mirror image."""
    z, zr = _logits(3, 9, seed=4)
    z[:, [0, 8]] = NEG_INF
    value = td.get_divergence("forward_kl").full(z, zr)
    p, q = probs(z), probs(zr)
    expected = torch.where(p > 0, q * (q.log() - p.log()), q * (q.log() + 50.0)).sum(-1)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


def test_large_finite_masks_are_masks() -> None:
    """Logits masked with finfo.min or −1e9 instead of −inf behave exactly like −inf."""
    z, zr = _logits(4, 16, seed=5, dtype=torch.float32)
    z_inf, zr_inf = z.clone(), zr.clone()
    z_inf[:, :3], zr_inf[:, 2:6] = NEG_INF, NEG_INF
    for fill in (torch.finfo(torch.float32).min, -1e9):
        z_fin, zr_fin = z.clone(), zr.clone()
        z_fin[:, :3], zr_fin[:, 2:6] = fill, fill
        for name, kw in SPECS:
            v_inf, g_inf = _value_and_grad(name, kw, z_inf, zr_inf)
            v_fin, g_fin = _value_and_grad(name, kw, z_fin, zr_fin)
            assert torch.isfinite(v_fin).all() and torch.isfinite(g_fin).all(), (name, kw, fill)
            torch.testing.assert_close(v_fin, v_inf, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(g_fin, g_inf, rtol=1e-6, atol=1e-6)


def _binary_entropy(beta: float) -> float:
    return -beta * math.log(beta) - (1.0 - beta) * math.log(1.0 - beta)


# closed forms for one-hot π on token 0 and one-hot ρ on token 1 under the e^-50 convention
_DISJOINT = {
    ("reverse_kl", ()): 50.0,
    ("forward_kl", ()): 50.0,
    ("js", (("beta", 0.5),)): _binary_entropy(0.5),
    ("js", (("beta", 0.1),)): _binary_entropy(0.1),
    ("js", (("beta", 0.9),)): _binary_entropy(0.9),
    ("tv", ()): 1.0,
    ("chi2", ()): math.exp(50.0) - 1.0,
    ("hellinger", ()): 1.0,
    ("alpha", (("alpha", 0.5),)): 4.0,
    ("alpha", (("alpha", 0.3),)): 1.0 / 0.21,
    ("alpha", (("alpha", 0.0),)): 50.0,
    ("alpha", (("alpha", 1.0),)): 50.0,
    ("alpha", (("alpha", 1.5),)): (math.exp(25.0) - 1.0) / 0.75,
    ("alpha", (("alpha", -0.5),)): (math.exp(25.0) - 1.0) / 0.75,
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_all_masked_but_one(spec, dtype: torch.dtype) -> None:
    """Rows with a single finite logit: one-hot distributions."""
    name, kw = spec
    z = torch.full((3, 7), NEG_INF, dtype=dtype)
    zr = torch.full((3, 7), NEG_INF, dtype=dtype)
    z[:, 0] = torch.tensor([1.0, 2.0, -3.0], dtype=dtype)
    zr[0, 0] = 5.0  # same token: no divergence
    zr[1:, 1] = 0.5  # a different token
    targets = torch.zeros(3, dtype=torch.long)
    for impl in ("chunked", "naive"):
        zg = z.clone().requires_grad_(True)
        logp, ent, value = td.ops.logprob_entropy_divergence(zg, zr, targets, divergence=name, impl=impl, **kw)
        (grad,) = torch.autograd.grad(logp.sum() + ent.sum() + value.sum(), zg)
        assert (logp == 0).all() and (ent == 0).all()
        assert torch.isfinite(grad).all()
        assert grad.abs().max() < 1e-12  # a one-hot softmax is locally constant
        assert value[0].abs() <= 1e-7  # same token: zero up to the rounding of log(β + 1 − β)
        expected = _DISJOINT[(name, tuple(sorted(kw.items())))]
        torch.testing.assert_close(
            value[1:].double(), torch.full((2,), expected, dtype=torch.float64), rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_k3_plus_of_a_masked_sampled_token_is_finite_without_gradient(spec) -> None:
    """Regression (found by tests/properties): k3+'s straight-through term used the raw log-prob, so a −inf one
    (a padding position, later multiplied by a zero mask) gave NaN, and NaN · 0 = NaN in the loss."""
    name, kw = spec
    div = td.get_divergence(name, **kw)
    logp = torch.tensor([-0.5, NEG_INF, -1e9], dtype=torch.float64, requires_grad=True)
    value = div.sampled(logp, torch.tensor([-0.7, -0.7, -0.7], dtype=torch.float64), "k3+")
    (grad,) = torch.autograd.grad(value.sum(), logp)
    torch.testing.assert_close(value[1], value[2])  # −inf and −1e9 are the same masked entry
    assert torch.isfinite(value).all() and grad[0] != 0 and (grad[1:] == 0).all()


def test_lp_reg_k3_of_a_masked_policy_log_prob_is_the_upper_clamp() -> None:
    """Regression (found by tests/properties): k3 = r − 1 − log r ≥ 0, but log π = −inf gave e^80 − inf = −inf,
    clamped to −10; it is +10 like log π = −1e9."""
    div = td.get_divergence("lp_reg")
    logp = torch.tensor([NEG_INF, -1e9], dtype=torch.float64)
    assert div.sampled(logp, torch.zeros(2, dtype=torch.float64)).tolist() == [10.0, 10.0]
