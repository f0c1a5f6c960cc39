"""Triton kernels (CPU: under TRITON_INTERPRET=1, set in conftest.py) and the gradient-in-forward loss, against the
naive torch reference: values and gradients, every registered divergence, odd V, -inf, temperature, bf16, None
inputs. Shapes are tiny so the interpreter suite stays fast."""

from __future__ import annotations

import math

import pytest
import torch

import trl_divergences as td
from trl_divergences.divergences.base import Divergence
from trl_divergences.ops.triton import triton_available

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # masked lanes in numpy

triton_ok = pytest.mark.skipif(not triton_available("cpu") and not triton_available("cuda"), reason="no Triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

#: one instance per registered divergence, plus parameter values that take other code paths
CASES = [(name, {}) for name in td.list_divergences()] + [
    ("js", {"beta": 0.2}),
    ("alpha", {"alpha": 1.0}),
    ("alpha", {"alpha": 0.0}),
    ("alpha", {"alpha": 2.0}),
    ("alpha", {"alpha": -0.5}),
]
IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in kw.items())}" if kw else n for n, kw in CASES]


def _has_term(name: str) -> bool:
    from trl_divergences.ops.triton import has_triton_term

    return has_triton_term(td.get_divergence(name))


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    """Blocks of 32 logits and fused chunks of a few rows, so tiny shapes still cross block and chunk edges."""
    if triton_available(DEVICE):
        from trl_divergences.ops.triton import rows

        monkeypatch.setattr(rows, "BLOCK_V", 32)
        monkeypatch.setattr(rows, "FUSED_CHUNK_ELEMENTS", 3 * 101)


def _logits(n: int, v: int, dtype: torch.dtype, seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def _upstream(n: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=dtype).to(DEVICE) for _ in range(3)]


def _run_logits(impl, z, zr, tg, div, temperature, ups):
    zz = z.clone().requires_grad_()
    outs = td.ops.logprob_entropy_divergence(zz, zr, tg, divergence=div, temperature=temperature, impl=impl)
    loss = sum((u * o).sum() for u, o in zip(ups, outs) if o is not None)
    loss.backward()
    return [None if o is None else o.detach() for o in outs] + [zz.grad]


def _assert_close(got, want, rtol, atol):
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g.to(w.dtype), w, rtol=rtol, atol=atol)


@triton_ok
@pytest.mark.triton
@pytest.mark.parametrize("name", td.list_divergences())
def test_every_divergence_has_a_triton_term(name):
    if not _has_term(name):
        pytest.skip(f"{name} has no Triton term: impl='auto' uses the chunked path for it")
    from trl_divergences.ops.triton.terms import triton_term

    triton_term(td.get_divergence(name))


@triton_ok
@pytest.mark.triton
@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_triton_term_matches_torch_term(name, kwargs):
    """The jit term / dterm equal the torch ones elementwise over a grid of (log π, log ρ), fp64."""
    if not _has_term(name):
        pytest.skip(f"{name} has no Triton term")
    from trl_divergences.ops.triton.kernels import terms_kernel
    from trl_divergences.ops.triton.terms import triton_term

    div = td.get_divergence(name, **kwargs)
    axis = torch.tensor([-50.0, -30.0, -12.0, -3.0, -1.0, -0.2, -1e-3, -1e-7, 0.0], dtype=torch.float64)
    lp, lr = (t.reshape(-1).contiguous().to(DEVICE) for t in torch.meshgrid(axis, axis, indexing="ij"))
    lp = torch.cat([lp, torch.tensor([-0.5, -2.0], dtype=torch.float64, device=DEVICE)])
    lr = torch.cat([lr, torch.tensor([-0.5 - 1e-6, -2.0 + 0.05], dtype=torch.float64, device=DEVICE)])
    t, d = torch.empty_like(lp), torch.empty_like(lp)
    terms = triton_term(div)
    terms_kernel[(math.ceil(lp.numel() / 64),)](
        lp, lr, t, d, lp.numel(), *terms.params, TERM=terms.term, DTERM=terms.dterm, BLOCK=64
    )
    torch.testing.assert_close(t, div.term(lp, lr), rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(d, div.dterm(lp, lr), rtol=1e-7, atol=1e-12)


@triton_ok
@pytest.mark.triton
@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_logits_kernel_matches_naive(name, kwargs):
    """Values and gradients, fp64, odd V (not a multiple of the block), -inf logits on either side, temperature."""
    if not _has_term(name):
        pytest.skip(f"{name} has no Triton term")
    div = td.get_divergence(name, **kwargs)
    n, v = 5, 101
    z, zr = _logits(n, v, torch.float64, 0), _logits(n, v, torch.float64, 1)
    z[0, :7] = -math.inf
    zr[1, 40:45] = -math.inf
    z[2, 90:] = -math.inf
    zr[2, 90:] = -math.inf
    tg = torch.tensor([10, 3, 5, 100, 0], device=DEVICE)
    ups = _upstream(n, torch.float64, 2)
    want = _run_logits("naive", z, zr, tg, div, 0.7, ups)
    got = _run_logits("triton", z, zr, tg, div, 0.7, ups)
    rtol = 1e-5 if name == "chi2" else 1e-9  # χ² is ~e^50 where ρ = 0 < π: compare relatively
    _assert_close(got, want, rtol=rtol, atol=1e-10)


@triton_ok
@pytest.mark.triton
@pytest.mark.parametrize("name", ["reverse_kl", "js", "alpha"])
def test_logits_kernel_fp32_and_none_inputs(name):
    div = td.get_divergence(name)
    n, v = 4, 70
    z, zr = _logits(n, v, torch.float32, 3), _logits(n, v, torch.float32, 4)
    tg = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    ups = _upstream(n, torch.float32, 6)
    for ref, targets in ((zr, tg), (None, tg), (zr, None), (None, None)):
        want = _run_logits("naive", z, ref, targets, div, 1.3, ups)
        got = _run_logits("triton", z, ref, targets, div, 1.3, ups)
        _assert_close(got, want, rtol=2e-5, atol=2e-6)


@triton_ok
@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_logits_kernel_half_precision(dtype):
    """Half-precision logits: fp32 accumulation, outputs fp32, gradient in the logits dtype."""
    div = td.get_divergence("forward_kl")
    n, v = 4, 77
    z, zr = _logits(n, v, dtype, 7), _logits(n, v, dtype, 8)
    z[1, 5] = -math.inf
    tg = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(9)).to(DEVICE)
    ups = _upstream(n, torch.float32, 10)
    want = _run_logits("naive", z, zr, tg, div, 1.0, ups)
    got = _run_logits("triton", z, zr, tg, div, 1.0, ups)
    assert got[0].dtype == torch.float32 and got[3].dtype == dtype
    _assert_close(got[:3], want[:3], rtol=1e-5, atol=1e-5)
    _assert_close(got[3:], want[3:], rtol=1e-2, atol=1e-3)


def _linear_inputs(n, hdim, v, dtype, seed, bias=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEVICE)

    return dict(
        hidden=r(n, hdim),
        weight=r(v, hdim, scale=0.5),
        bias=r(v) if bias else None,
        ref_hidden=r(n, hdim + 2),
        ref_weight=r(v, hdim + 2, scale=0.5),
        ref_bias=r(v) if bias else None,
        targets=torch.randint(0, v, (n,), generator=g).to(DEVICE),
    )


def _run_linear(impl, inputs, div, temperature, ups):
    leaves = {k: inputs[k].clone().requires_grad_() for k in ("hidden", "weight", "bias") if inputs[k] is not None}
    args = {**inputs, **leaves}
    outs = td.ops.fused_linear_logprob_entropy_divergence(
        args["hidden"], args["weight"], args["ref_hidden"], args["ref_weight"], args["targets"], divergence=div,
        temperature=temperature, bias=args["bias"], ref_bias=args["ref_bias"], impl=impl,
    )  # fmt: skip
    sum((u * o).sum() for u, o in zip(ups, outs)).backward()
    return [o.detach() for o in outs] + [leaves[k].grad for k in sorted(leaves)]


@triton_ok
@pytest.mark.triton
@pytest.mark.parametrize(("name", "dtype"), [("js", torch.float64), ("chi2", torch.float64), ("tv", torch.float32)])
def test_fused_linear_triton_matches_naive(name, dtype):
    """hidden/weight/bias gradients through the chunk loop (several chunks: FUSED_CHUNK_ELEMENTS is patched)."""
    div = td.get_divergence(name)
    inputs = _linear_inputs(7, 6, 101, dtype, 11)
    ups = _upstream(7, dtype, 12)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    _assert_close(_run_linear("triton", inputs, div, 0.9, ups), _run_linear("naive", inputs, div, 0.9, ups), **tol)


def _run_loss(impl, inputs, div, temperature, weights, chunk_rows=None):
    leaves = {k: inputs[k].clone().requires_grad_() for k in ("hidden", "weight", "bias") if inputs[k] is not None}
    args = {**inputs, **leaves}
    loss, logp, ent, dv = td.ops.fused_linear_divergence_loss(
        args["hidden"], args["weight"], args["ref_hidden"], args["ref_weight"], args["targets"], *weights,
        divergence=div, temperature=temperature, bias=args["bias"], ref_bias=args["ref_bias"], impl=impl,
        chunk_rows=chunk_rows,
    )  # fmt: skip
    (3.0 * loss).backward()
    return [loss.detach(), logp, ent, dv] + [leaves[k].grad for k in sorted(leaves)]


@pytest.mark.parametrize(("name", "dtype"), [("reverse_kl", torch.float64), ("js", torch.float32)])
def test_grad_in_forward_chunked_matches_naive(name, dtype):
    div = td.get_divergence(name)
    inputs = _linear_inputs(9, 5, 53, dtype, 13)
    weights = _upstream(9, dtype, 14)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    want = _run_loss("naive", inputs, div, 0.8, weights)
    _assert_close(_run_loss("chunked", inputs, div, 0.8, weights, chunk_rows=2), want, **tol)


def test_grad_in_forward_partial_weights_and_bf16():
    """Only some weights given; bf16 weights (fp32 accumulation) against the naive path on the same inputs."""
    div = td.get_divergence("forward_kl")
    inputs = _linear_inputs(6, 8, 40, torch.bfloat16, 15, bias=False)
    weights = [None, None, _upstream(6, torch.float32, 16)[0]]
    want = _run_loss("naive", inputs, div, 1.0, weights)
    got = _run_loss("chunked", inputs, div, 1.0, weights, chunk_rows=4)
    _assert_close(got[:4], want[:4], rtol=1e-4, atol=1e-5)
    _assert_close(got[4:], want[4:], rtol=2e-2, atol=2e-3)


@triton_ok
@pytest.mark.triton
def test_grad_in_forward_triton_matches_naive():
    div = td.get_divergence("hellinger")
    inputs = _linear_inputs(7, 4, 101, torch.float64, 17)
    weights = _upstream(7, torch.float64, 18)
    want = _run_loss("naive", inputs, div, 1.1, weights)
    _assert_close(_run_loss("triton", inputs, div, 1.1, weights), want, rtol=1e-9, atol=1e-10)


class _Untermed(Divergence):
    """A divergence with no Triton twin (reverse KL's math, unregistered)."""

    name = "untermed_test_divergence"

    def term(self, lp, lr):
        return lp.exp() * (lp - lr)

    def dterm(self, lp, lr):
        return lp.exp() * (lp - lr + 1.0)


@triton_ok
@pytest.mark.triton
def test_divergence_without_triton_term():
    z, zr = _logits(3, 20, torch.float32, 19), _logits(3, 20, torch.float32, 20)
    with pytest.raises(NotImplementedError, match="no Triton term"):
        td.ops.logprob_entropy_divergence(z, zr, None, divergence=_Untermed(), impl="triton")
    _, _, auto = td.ops.logprob_entropy_divergence(z, zr, None, divergence=_Untermed(), impl="auto")
    _, _, want = td.ops.logprob_entropy_divergence(z, zr, None, divergence="reverse_kl", impl="naive")
    torch.testing.assert_close(auto, want)
