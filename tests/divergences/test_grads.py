"""Gradients of the exact divergences w.r.t. the policy logits against float64 autograd of the textbook formulas,
and ``gradcheck`` of the chunked op's hand-written backward for all three outputs."""

from __future__ import annotations

import pytest
import torch

import trl_divergences as td

from ._oracle import SPEC_IDS, SPECS, oracle_from_logits, oracle_grad

SHAPES = [(5, 7), (2, 3, 33), (1, 200)]


def _inputs(shape: tuple[int, ...], seed: int, scale: float = 1.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    zr = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    w = torch.rand(shape[:-1], generator=g, dtype=torch.float64) + 0.5
    return z, zr, w


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_full_grad_matches_oracle(spec, shape: tuple[int, ...], temperature: float) -> None:
    name, kw = spec
    z, zr, w = _inputs(shape, seed=len(shape) * 100 + shape[-1])
    zg = z.clone().requires_grad_(True)
    value = td.get_divergence(name, **kw).full(zg, zr, temperature=temperature)
    (grad,) = torch.autograd.grad((w * value).sum(), zg)
    expected = oracle_grad(name, z, zr, w, temperature, **kw)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_op_grad_matches_oracle_fp32(spec, impl: str) -> None:
    """The same through the public op with fp32 logits (fp32 accumulation, looser tolerance)."""
    name, kw = spec
    z, zr, w = _inputs((6, 50), seed=7)
    zg = z.float().requires_grad_(True)
    _, _, value = td.ops.logprob_entropy_divergence(zg, zr.float(), None, divergence=name, impl=impl, **kw)
    (grad,) = torch.autograd.grad((w.float() * value).sum(), zg)
    assert grad.dtype == torch.float32
    expected = oracle_grad(name, z.float(), zr.float(), w, **kw)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_grad_extreme_logits(spec) -> None:
    """Sharp distributions (log-probs far below −50) still get the exact gradient."""
    name, kw = spec
    z, zr, w = _inputs((4, 64), seed=8, scale=25.0)
    zg = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((w * td.get_divergence(name, **kw).full(zg, zr)).sum(), zg)
    assert torch.isfinite(grad).all()
    if name == "chi2" or (name == "alpha" and not 0.0 <= kw["alpha"] <= 1.0):
        return  # exponential divergences are capped at e^80 per entry far from π = ρ (documented): finite only
    torch.testing.assert_close(grad, oracle_grad(name, z, zr, w, **kw), rtol=1e-8, atol=1e-10)


def test_forward_kl_pulls_up_collapsed_tokens() -> None:
    """Forward KL's gradient on a token the policy has all but dropped (π = e^-60 < ρ) is ≈ −ρ, not 0: the
    mass-covering pull is what forward KL is chosen for."""
    z = torch.tensor([[0.0, 0.0, -60.0]], dtype=torch.float64, requires_grad=True)
    zr = torch.zeros(1, 3, dtype=torch.float64)
    value = td.get_divergence("forward_kl").full(z, zr)
    (grad,) = torch.autograd.grad(value.sum(), z)
    torch.testing.assert_close(value, oracle_from_logits("forward_kl", z.detach(), zr), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad[0, 2], torch.tensor(-1.0 / 3.0, dtype=torch.float64), rtol=1e-9, atol=0)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_gradcheck_chunked_all_outputs(spec) -> None:
    """gradcheck of the hand-written backward (chunked, 3 chunks), each output on its own and all three jointly
    with random upstream weights (so the backward gets g_logp, g_entropy and g_div at once)."""
    name, kw = spec
    z, zr, _ = _inputs((5, 7), seed=9)
    g = torch.Generator().manual_seed(10)
    targets = torch.randint(0, 7, (5,), generator=g)
    weights = torch.randn(3, 5, generator=g, dtype=torch.float64)
    z = z.requires_grad_(True)

    def outputs(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return td.ops.logprob_entropy_divergence(
            logits, zr, targets, divergence=name, temperature=0.8, impl="chunked", chunk_rows=2, **kw
        )

    def joint(logits: torch.Tensor) -> torch.Tensor:
        return sum((w * o).sum() for w, o in zip(weights, outputs(logits)))

    assert torch.autograd.gradcheck(outputs, (z,), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradcheck(joint, (z,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_chunked_with_masked_entries() -> None:
    """gradcheck with −inf entries (both-sided and one-sided) in a few rows."""
    z, zr, _ = _inputs((4, 9), seed=11)
    z[0, [1, 2]] = float("-inf")
    zr[0, 2] = float("-inf")
    zr[2, [0, 5]] = float("-inf")
    # one-sided masks make χ² and α ∉ [0, 1] ~e^25-e^50: far too large for finite differences; both-sided only
    zr_mild = zr.masked_fill(torch.isinf(z), float("-inf")).masked_fill(torch.isinf(zr) & ~torch.isinf(z), 0.0)
    targets = torch.tensor([0, 3, 8, 4])
    for name, kw in SPECS:
        exploding = name == "chi2" or (name == "alpha" and not 0.0 <= kw["alpha"] <= 1.0)
        ref = zr_mild if exploding else zr

        def joint(logits: torch.Tensor, name=name, kw=kw, ref=ref) -> torch.Tensor:
            lp, ent, dv = td.ops.logprob_entropy_divergence(
                logits, ref, targets, divergence=name, impl="chunked", chunk_rows=3, **kw
            )
            return (lp * 0.3 - ent * 0.7 + dv * 1.1).sum()

        assert torch.autograd.gradcheck(joint, (z.clone().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-5)
