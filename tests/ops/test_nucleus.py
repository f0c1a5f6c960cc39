"""The chunked nucleus statistics (top-p entropy, mass above the target, min-p proxy log-prob): hand-computed values
and gradients, the naive full-sort oracle (values and gradients, logits and fused linear), masked logits,
temperature, bf16, top_k cutting the nucleus, the requested-outputs logic, gradcheck, and argument errors."""

from __future__ import annotations

import math

import pytest
import torch

import trl_divergences as td
from trl_divergences.ops import chunked, naive
from trl_divergences.ops.nucleus import NucleusFusedLinear

from ._helpers import compare, randn, random_targets

F64 = torch.float64
MASKED = -1e4


def _oracle(logits, targets, top_p=None, top_k=10000, min_p=None, temperature=1.0):
    return naive.nucleus_stats(logits, targets, top_p, top_k, min_p, temperature)


def _margin(logits: torch.Tensor, top_p: float, top_k: int = 10000) -> float:
    """Distance from top_p to the nearest cumulative sum of the top-k probabilities (0: a nucleus boundary tie)."""
    cum = torch.softmax(logits.detach().double(), -1).sort(-1, descending=True).values[..., :top_k].cumsum(-1)
    return (cum - top_p).abs().min().item()


def _logits_both(z, targets, upstream, chunk_rows, **kw):
    """(outputs, grad z) of the chunked op and of the naive oracle, the loss being Σ upstream · H^p."""
    assert _margin(z, kw["top_p"], kw.get("top_k", 10000)) > 1e-6  # no near-tie: both paths pick the same nucleus
    results = []
    for chunked_path in (True, False):
        leaf = z.detach().clone().requires_grad_(True)
        if chunked_path:
            outs = tuple(td.ops.nucleus_stats(leaf, targets, chunk_rows=chunk_rows, **kw))
        else:
            outs = _oracle(leaf, targets, **kw)
        (grad,) = torch.autograd.grad((upstream.to(outs[0].dtype) * outs[0]).sum(), leaf)
        results.append(([None if o is None else o.detach() for o in outs], grad))
    return results


# ---- hand-computed ---------------------------------------------------------------------------------------------

P = [0.5, 0.3, 0.15, 0.05]
H_01 = -(0.625 * math.log(0.625) + 0.375 * math.log(0.375))  # nucleus {0, 1}: q = [0.625, 0.375]


@pytest.mark.parametrize("chunk_rows", [1, None])
@pytest.mark.parametrize(
    ("top_p", "top_k", "nucleus"),
    [
        (0.7, 10000, [0]),  # C = 0.5, 0.8: rank 1 crosses 0.7 and is excluded
        (0.85, 10000, [0, 1]),  # C = 0.5, 0.8, 0.95: rank 2 crosses
        (0.45, 10000, []),  # the top-1 alone reaches top_p: empty nucleus
        (0.99, 1, [0]),  # the top-1 mass never reaches top_p: all K = 1 entries
        (0.99, 2, [0, 1]),
    ],
)
def test_hand_computed_float64(top_p: float, top_k: int, nucleus: list[int], chunk_rows: int | None) -> None:
    probs = torch.tensor([P, P[::-1]], dtype=F64)  # second row: the same distribution, vocabulary reversed
    z = probs.log().requires_grad_(True)
    targets = torch.tensor([2, 2])  # probabilities 0.15 and 0.3
    ent, mass, proxy = td.ops.nucleus_stats(z, targets, top_p=top_p, top_k=top_k, min_p=0.5, chunk_rows=chunk_rows)
    want_h = H_01 if len(nucleus) == 2 else 0.0
    torch.testing.assert_close(ent, torch.tensor([want_h, want_h], dtype=F64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mass, torch.tensor([0.8, 0.5], dtype=F64), rtol=1e-12, atol=1e-12)
    # min_p = 0.5: threshold 0.25 keeps {0.5, 0.3}; 0.15 is filtered out
    torch.testing.assert_close(proxy, torch.tensor([MASKED, math.log(0.3 / 0.8)], dtype=F64), rtol=1e-12, atol=1e-12)
    assert not mass.requires_grad and not proxy.requires_grad
    # ∂H^p/∂z_v = −q_v (log q_v + H^p) on the nucleus, 0 elsewhere
    (grad,) = torch.autograd.grad(ent.sum(), z)
    want = torch.zeros(4, dtype=F64)
    if len(nucleus) == 2:
        for v, q in ((0, 0.625), (1, 0.375)):
            want[v] = -q * (math.log(q) + H_01)
    torch.testing.assert_close(grad, torch.stack([want, want.flip(0)]), rtol=1e-10, atol=1e-12)


def test_hand_computed_temperature() -> None:
    """T = 2: p ∝ sqrt(P); the nucleus and the entropy use the tempered p, the min-p filter the untempered one."""
    r = [math.sqrt(x) for x in P]
    pt = [x / sum(r) for x in r]  # ≈ 0.379, 0.294, 0.208, 0.120; C_3 ≈ 0.880
    z = torch.tensor(P, dtype=F64).log().expand(2, 4)
    ent, mass, proxy = td.ops.nucleus_stats(z, torch.tensor([1, 2]), top_p=0.85, min_p=0.5, temperature=2.0)
    q = [pt[0] / (pt[0] + pt[1]), pt[1] / (pt[0] + pt[1])]
    h = -sum(x * math.log(x) for x in q)
    torch.testing.assert_close(ent, torch.tensor([h, h], dtype=F64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mass, torch.tensor([pt[0], pt[0] + pt[1]], dtype=F64), rtol=1e-12, atol=1e-12)
    # tempered, 0.208 ≥ 0.5 · 0.379 would be kept; untempered 0.15 < 0.25 is not
    torch.testing.assert_close(proxy, torch.tensor([math.log(q[1]), MASKED], dtype=F64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_threshold_reached_exactly_excludes_the_crossing_token(dtype: torch.dtype) -> None:
    """Uniform over 4 (cumulative sums exactly 0.25, 0.5, 0.75, 1): C_j == top_p counts as reaching it."""
    z = torch.zeros(1, 4, dtype=dtype)
    for top_p, want in ((0.5, 0.0), (0.6, math.log(2)), (0.75, math.log(2)), (0.8, math.log(3))):
        got = td.ops.nucleus_stats(z, top_p=top_p).topp_entropy
        oracle = _oracle(z, None, top_p)[0]
        torch.testing.assert_close(got, torch.tensor([want], dtype=dtype))
        torch.testing.assert_close(oracle, got)


# ---- against the naive oracle --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vocab", "chunk_rows", "temperature", "top_p", "top_k"),
    [
        (37, 1, 1.0, 0.9, 10000),
        (37, 4, 0.7, 0.5, 10000),  # 15 rows: 4 does not divide them
        (37, 4, 1.6, 0.95, 5),  # top_k = 5 cuts most nuclei
        (1001, 3, 1.3, 0.8, 10000),
        (1001, 15, 1.0, 0.3, 64),
    ],
)
def test_logits_float64(vocab: int, chunk_rows: int, temperature: float, top_p: float, top_k: int) -> None:
    lead = (3, 5)
    z = randn((*lead, vocab), seed=vocab + chunk_rows, scale=3.0 if vocab > 100 else 2.0)
    targets, ups = random_targets(lead, vocab, seed=1), randn(lead, seed=2, scale=1.0)
    targets[0] = z[0].argmax(-1)  # kept by any min-p filter
    kw = {"top_p": top_p, "top_k": top_k, "min_p": 0.1, "temperature": temperature}
    (outs, grad), (ref_outs, ref_grad) = _logits_both(z, targets, ups, chunk_rows, **kw)
    assert all(o.shape == lead and o.dtype == F64 for o in outs)
    compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    sizes = (grad != 0).sum(-1)  # nucleus sizes: the case is not degenerate
    assert sizes.max() > 1 and sizes.max() <= top_k
    assert (outs[2] == MASKED).any() and (outs[2] > MASKED).any()


def test_default_chunking_runs_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 4 * 37)
    assert chunked.default_chunk_rows(15, 37) == 4
    z, targets, ups = randn((15, 37), seed=3), random_targets((15,), 37, seed=4), randn((15,), seed=5, scale=1.0)
    (outs, grad), (ref_outs, ref_grad) = _logits_both(z, targets, ups, None, top_p=0.9, min_p=0.2)
    compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_temperature_is_applied() -> None:
    z = randn((6, 37), seed=6)
    plain = td.ops.nucleus_stats(z, top_p=0.9).topp_entropy
    hot = td.ops.nucleus_stats(z, top_p=0.9, temperature=1.7).topp_entropy
    assert (hot - plain).abs().min() > 1e-3


def test_top_k_smaller_than_nucleus() -> None:
    """top_p = 0.99 is never reached within the top 3: H^p is the entropy of the softmax of the 3 largest logits."""
    z = randn((5, 37), seed=7, scale=1.0)
    ent = td.ops.nucleus_stats(z, top_p=0.99, top_k=3, chunk_rows=2).topp_entropy
    lq = torch.log_softmax(z.topk(3, dim=-1).values, dim=-1)
    torch.testing.assert_close(ent, -(lq.exp() * lq).sum(-1), rtol=1e-12, atol=1e-12)


def test_masked_logits() -> None:
    """−inf logits: padded vocabulary columns, a row with two finite entries whose mass never reaches top_p within
    top_k, a one-hot row, and a target at a masked entry."""
    z = randn((6, 37), seed=8)
    z[:, -5:] = float("-inf")
    z[0, 3:] = float("-inf")  # three finite entries: top_k = 8 reaches into the masked ones
    z[1, 1:] = float("-inf")  # one-hot
    targets = random_targets((6,), 32, seed=9)
    targets[2] = 35  # a masked target: every finite entry is above it, and min-p filters it
    ups = randn((6,), seed=10, scale=1.0)
    kw = {"top_p": 0.999, "top_k": 8, "min_p": 0.05, "temperature": 0.9}
    (outs, grad), (ref_outs, ref_grad) = _logits_both(z, targets, ups, 4, **kw)
    assert all(torch.isfinite(o).all() for o in outs) and torch.isfinite(grad).all()
    assert (grad[torch.isinf(z)] == 0).all()
    assert outs[0][1] == 0 and outs[0][0] > 0
    assert outs[1][2] == pytest.approx(1.0) and outs[2][2] == MASKED
    compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits(dtype: torch.dtype) -> None:
    """Half-precision logits accumulate in fp32 (outputs fp32, gradient in the logits' dtype). The logits are
    distinct multiples of 1/8 (exact in bf16 and fp16), so no tie can order the two paths' nuclei differently."""
    g = torch.Generator().manual_seed(11)
    z = torch.stack([torch.randperm(37, generator=g) - 18 for _ in range(10)]).to(dtype) / 8
    targets, ups = random_targets((10,), 37, seed=12), randn((10,), seed=13, scale=1.0)
    (outs, grad), (ref_outs, ref_grad) = _logits_both(z, targets, ups, 3, top_p=0.7, min_p=0.3, temperature=0.8)
    assert all(o.dtype == torch.float32 for o in outs) and grad.dtype == dtype
    compare(outs, ref_outs, rtol=1e-5, atol=1e-5)  # the same fp32 math on the same rounded inputs
    torch.testing.assert_close(grad, ref_grad, rtol=1e-2, atol=1e-3)


def test_requested_outputs_and_detached() -> None:
    z = randn((2, 3, 37), seed=14).requires_grad_(True)
    targets = random_targets((2, 3), 37, seed=15)
    op = td.ops.nucleus_stats
    assert tuple(op(z)) == (None, None, None)
    assert tuple(op(z, min_p=0.2)) == (None, None, None)  # the proxy needs targets
    ent, mass, proxy = op(z, top_p=0.9, min_p=0.2)
    assert ent.requires_grad and ent.shape == (2, 3) and mass is None and proxy is None
    ent, mass, proxy = op(z, targets)
    assert ent is None and proxy is None and mass.shape == (2, 3) and not mass.requires_grad
    ent, mass, proxy = op(z, targets, min_p=0.2)
    assert ent is None and not mass.requires_grad and not proxy.requires_grad
    ref = _oracle(z.detach(), targets, min_p=0.2)
    compare((ent, mass, proxy), ref, rtol=1e-12, atol=1e-12)


# ---- fused linear ----------------------------------------------------------------------------------------------


def _fused_case(lead=(3, 4), vocab=37, hidden=16, dtype=F64, seed=100, bias=True):
    return {
        "hidden": randn((*lead, hidden), seed, 1.0, dtype),
        "weight": randn((vocab, hidden), seed + 1, 0.7, dtype),
        "bias": randn((vocab,), seed + 2, 0.5, dtype) if bias else None,
    }


def _fused_both(inputs, targets, upstream, chunk_rows, **kw):
    """(outputs, grads of hidden / weight / bias) of the chunked fused op and of the naive oracle on full logits."""
    keys = [k for k, v in inputs.items() if v is not None]
    results = []
    for chunked_path in (True, False):
        leaves = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
        if chunked_path:
            outs = tuple(td.ops.fused_linear_nucleus_stats(**leaves, targets=targets, chunk_rows=chunk_rows, **kw))
        else:
            logits = torch.nn.functional.linear(leaves["hidden"], leaves["weight"], leaves["bias"])
            assert _margin(logits, kw["top_p"], kw.get("top_k", 10000)) > 1e-6
            outs = _oracle(logits, targets, **kw)
        grads = torch.autograd.grad((upstream.to(outs[0].dtype) * outs[0]).sum(), [leaves[k] for k in keys])
        results.append(([None if o is None else o.detach() for o in outs], list(grads)))
    return results


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize(("chunk_rows", "temperature", "vocab"), [(1, 1.0, 37), (5, 0.8, 37), (None, 1.4, 1001)])
def test_fused_linear_float64(chunk_rows: int | None, temperature: float, vocab: int, bias: bool) -> None:
    inputs = _fused_case(vocab=vocab, bias=bias, seed=100 + vocab)
    targets, ups = random_targets((3, 4), vocab, seed=101), randn((3, 4), seed=102, scale=1.0)
    kw = {"top_p": 0.8, "top_k": 500, "min_p": 0.1, "temperature": temperature}
    (outs, grads), (ref_outs, ref_grads) = _fused_both(inputs, targets, ups, chunk_rows, **kw)
    assert all(o.shape == (3, 4) and o.dtype == F64 for o in outs)
    assert len(grads) == (3 if bias else 2) and all(g.abs().max() > 0 for g in grads)
    compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
    compare(grads, ref_grads, rtol=1e-10, atol=1e-12)


def test_fused_linear_float32() -> None:
    inputs = _fused_case(dtype=torch.float32, seed=110)
    targets, ups = random_targets((3, 4), 37, seed=111), randn((3, 4), seed=112, scale=1.0)
    (outs, grads), (ref_outs, ref_grads) = _fused_both(inputs, targets, ups, 5, top_p=0.9, min_p=0.2)
    assert all(o.dtype == torch.float32 for o in outs) and all(g.dtype == torch.float32 for g in grads)
    compare(outs, ref_outs, rtol=1e-5, atol=1e-5)
    compare(grads, ref_grads, rtol=1e-4, atol=1e-5)


def test_fused_linear_bf16() -> None:
    """bf16 hidden / weight: one-hot hidden rows make every GEMM exact, so both paths see the same distinct logits
    (columns of W: multiples of 1/8); grad W and grad b accumulate in fp32 and come back in bf16."""
    g = torch.Generator().manual_seed(120)
    weight = (torch.stack([torch.randperm(37, generator=g) - 18 for _ in range(8)], dim=1) / 8).to(torch.bfloat16)
    hidden = torch.nn.functional.one_hot(torch.arange(10) % 8, 8).to(torch.bfloat16)
    inputs = {"hidden": hidden, "weight": weight, "bias": torch.zeros(37, dtype=torch.bfloat16)}
    targets, ups = random_targets((10,), 37, seed=121), randn((10,), seed=122, scale=1.0)
    (outs, grads), (ref_outs, ref_grads) = _fused_both(inputs, targets, ups, 3, top_p=0.8, min_p=0.3)
    assert all(o.dtype == torch.float32 for o in outs) and all(g.dtype == torch.bfloat16 for g in grads)
    compare(outs, ref_outs, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):  # bf16 GEMMs round differently in the two paths: compare in norm
        assert (got.double() - want.double()).norm() <= 2e-2 * want.double().norm() + 1e-3


def test_fused_linear_keeps_no_logits_for_backward() -> None:
    inputs = {k: v.requires_grad_(True) for k, v in _fused_case(lead=(20,), vocab=1001, seed=130).items()}
    ent = td.ops.fused_linear_nucleus_stats(**inputs, top_p=0.9, chunk_rows=4).topp_entropy
    node = ent.grad_fn
    while getattr(node, "_forward_cls", None) is not NucleusFusedLinear:
        node = node.next_functions[0][0]
    assert [tuple(t.shape) for t in node.saved_tensors] == [(20, 16), (1001, 16), (1001,)]


def test_fused_linear_matches_logits_op() -> None:
    inputs = _fused_case(seed=140)
    targets = random_targets((3, 4), 37, seed=141)
    kw = {"top_p": 0.75, "min_p": 0.15, "temperature": 1.2}
    fused = td.ops.fused_linear_nucleus_stats(**inputs, targets=targets, chunk_rows=5, **kw)
    logits = torch.nn.functional.linear(inputs["hidden"], inputs["weight"], inputs["bias"])
    compare(fused, td.ops.nucleus_stats(logits, targets, **kw), rtol=1e-12, atol=1e-12)


# ---- gradcheck ---------------------------------------------------------------------------------------------------


def test_gradcheck() -> None:
    """Finite differences against the hand-derived backward (top_p kept away from every cumulative sum, so the
    nucleus does not change under the perturbation)."""
    z = randn((4, 11), seed=150).requires_grad_(True)
    top_p, top_k = 0.8, 6
    assert _margin(z / 0.9, top_p, top_k) > 1e-3
    assert torch.autograd.gradcheck(
        lambda x: td.ops.nucleus_stats(x, top_p=top_p, top_k=top_k, temperature=0.9, chunk_rows=3).topp_entropy, (z,)
    )
    inputs = _fused_case(lead=(4,), vocab=11, hidden=5, seed=151)
    leaves = tuple(v.requires_grad_(True) for v in inputs.values())
    assert _margin(torch.nn.functional.linear(*leaves), 0.7) > 1e-3
    assert torch.autograd.gradcheck(
        lambda h, w, b: td.ops.fused_linear_nucleus_stats(h, w, bias=b, top_p=0.7, chunk_rows=3).topp_entropy, leaves
    )


# ---- errors --------------------------------------------------------------------------------------------------


def test_errors() -> None:
    z, tg = torch.randn(4, 9), torch.randint(0, 9, (4,))
    op = td.ops.nucleus_stats
    for name, bads in (
        ("top_p", (0, 0.0, -0.1, 1.5, float("nan"), True, "0.9")),
        ("min_p", (0, 1.01, float("inf"), False, "0.1")),
        ("top_k", (0, -3, 2.0, True, None)),
        ("temperature", (0, -1.0, float("nan"), None)),
        ("chunk_rows", (0, -1, 1.5, True)),
    ):
        for bad in bads:
            with pytest.raises(ValueError, match=name):
                op(z, tg, **{"top_p": 0.9, "min_p": 0.1, name: bad})
    for bad_targets in (torch.randint(0, 9, (3,)), torch.randint(0, 9, (4, 1))):
        with pytest.raises(ValueError, match="targets"):
            op(z, bad_targets, top_p=0.9)
    fused = td.ops.fused_linear_nucleus_stats
    h, w = torch.randn(2, 3, 8), torch.randn(9, 8)
    with pytest.raises(ValueError, match="hidden size"):
        fused(h, torch.randn(9, 7), top_p=0.9)
    with pytest.raises(ValueError, match="targets"):
        fused(h, w, torch.randint(0, 9, (3,)), top_p=0.9)
    with pytest.raises(ValueError, match="top_k"):
        fused(h, w, top_p=0.9, top_k=0)
