"""The vocabulary-tiled fused-linear drivers (:mod:`trl_divergences.ops.tiled`) with several vocabulary tiles per
row (the last one narrower), several token blocks, tiles that are entirely −inf, and the gradient-in-forward loss,
against the naive full-logits reference."""

from __future__ import annotations

import pytest
import torch

import trl_divergences as td
from trl_divergences.ops import tiled

from ._helpers import compare
from .test_chunked import CASES, IDS, _fused_both, _fused_case

WIDTH = 8  # vocabulary tile width with 3-row blocks: 37 = 4 · 8 + 5


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiled, "TILE_ELEMENTS", 3 * WIDTH)
    assert tiled.tile_width(3, 37) == WIDTH


def _loss_both(inputs, ups, chunk_rows, **kw):
    """(loss, grad hidden, grad weight[, grad bias]) of fused_linear_divergence_loss, tiled and naive."""
    keys = ("hidden", "weight") + (("bias",) if inputs.get("bias") is not None else ())
    results = []
    for impl, rows in (("chunked", chunk_rows), ("naive", None)):
        leaves = {k: (v.clone().requires_grad_(k in keys) if v is not None else None) for k, v in inputs.items()}
        loss, *outs = td.ops.fused_linear_divergence_loss(
            **leaves, weights_logp=ups[0], weights_entropy=ups[1], weights_div=ups[2], impl=impl, chunk_rows=rows, **kw
        )
        grads = torch.autograd.grad(2.5 * loss, [leaves[k] for k in keys])
        results.append([loss.detach(), *outs, *grads])
    return results


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_several_tiles_float64(small_tiles, name: str, kw: dict, bias: bool) -> None:
    inputs, ups = _fused_case(bias=bias, seed=200)
    (outs, grads), (ref_outs, ref_grads) = _fused_both(inputs, ups, 3, divergence=name, temperature=0.7, **kw)
    compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
    compare(grads, ref_grads, rtol=1e-10, atol=1e-12)
    got, want = _loss_both(inputs, ups, 3, divergence=name, temperature=0.7, **kw)
    compare(got, want, rtol=1e-10, atol=1e-12)


def test_default_blocks_are_uneven(monkeypatch: pytest.MonkeyPatch, small_tiles) -> None:
    """chunk_rows=None with a small block budget: 10 tokens in blocks of 3 (the last one has 1)."""
    monkeypatch.setattr(tiled, "BLOCK_ELEMENTS", 3 * 37)
    assert tiled.block_rows(10, 37) == 3
    inputs, ups = _fused_case(seed=210)
    for name, kw in CASES:
        (outs, grads), (ref_outs, ref_grads) = _fused_both(inputs, ups, None, divergence=name, **kw)
        compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
        compare(grads, ref_grads, rtol=1e-10, atol=1e-12)
        compare(*_loss_both(inputs, ups, None, divergence=name, **kw), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("min_width", [tiled.MIN_CHUNK_WIDTH, 8], ids=["one_chunk", "vocab_chunks"])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_masked_tiles(monkeypatch: pytest.MonkeyPatch, small_tiles, name: str, kw: dict, min_width: int) -> None:
    """Bias −inf on a whole tile (both sides; policy only on the first tile, where the online max starts at −inf),
    on the padded tail, and one-sided entries; the recompute backward over the whole vocabulary or over chunks of
    15 entries (the whole −inf tile straddles two)."""
    monkeypatch.setattr(tiled, "MIN_CHUNK_WIDTH", min_width)
    inputs, ups = _fused_case(lead=(7,), seed=220)
    b, br = inputs["bias"], inputs["ref_bias"]
    b[WIDTH : 2 * WIDTH] = br[WIDTH : 2 * WIDTH] = float("-inf")  # a whole tile
    b[:WIDTH] = float("-inf")  # the first tile, policy only (π = 0 < ρ there)
    b[-3:] = br[-3:] = float("-inf")  # padding inside the last, narrower tile
    br[2 * WIDTH + 1] = float("-inf")  # ρ = 0 < π
    inputs["targets"][inputs["targets"] < 2 * WIDTH] = 2 * WIDTH + 2  # targets on finite logits
    (outs, grads), (ref_outs, ref_grads) = _fused_both(inputs, ups, 3, divergence=name, **kw)
    assert all(torch.isfinite(o).all() for o in outs) and all(torch.isfinite(g).all() for g in grads)
    assert (grads[1][torch.isinf(b)] == 0).all() and (grads[2][torch.isinf(b)] == 0).all()
    compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
    compare(grads, ref_grads, rtol=1e-10, atol=1e-12)
    compare(*_loss_both(inputs, ups, 3, divergence=name, **kw), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
def test_several_tiles_low_precision(small_tiles, dtype: torch.dtype, tol: float) -> None:
    inputs, ups = _fused_case(dtype=dtype, seed=230)
    for name, kw in CASES[:5]:
        for got, want in zip(*_loss_both(inputs, ups, 3, divergence=name, **kw)):
            assert got.dtype == want.dtype
            assert (got.double() - want.double()).norm() <= tol * want.double().norm() + tol


def test_loss_in_forward_backward_runs_once() -> None:
    inputs, ups = _fused_case(seed=240)
    h = inputs["hidden"].clone().requires_grad_()
    loss, *_ = td.ops.fused_linear_divergence_loss(
        h, inputs["weight"], inputs["ref_hidden"], inputs["ref_weight"], inputs["targets"], *ups, impl="chunked"
    )
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@pytest.mark.parametrize("budget", [3 * 37, 40], ids=["vocab_chunks", "row_groups_and_vocab_chunks"])
def test_backward_vocabulary_chunks(monkeypatch: pytest.MonkeyPatch, small_tiles, budget: int) -> None:
    """The recompute backward over vocabulary chunks narrower than V (the last one narrower still), all 10 tokens
    at once (blocks of 3 rows: chunks of 11) or in row groups of 4, 4, 2 (blocks of 1 row: chunks of 8)."""
    monkeypatch.setattr(tiled, "MIN_CHUNK_WIDTH", 8)
    monkeypatch.setattr(tiled, "BLOCK_ELEMENTS", budget)
    rows, width = tiled.backward_chunk(10, 37, tiled.block_rows(10, 37) * 37)
    assert (rows, width) == ((10, 11) if budget == 3 * 37 else (4, 8))
    inputs, ups = _fused_case(seed=220)
    for name, kw in CASES:
        (outs, grads), (ref_outs, ref_grads) = _fused_both(inputs, ups, None, divergence=name, **kw)
        compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
        compare(grads, ref_grads, rtol=1e-10, atol=1e-12)


def test_block_and_tile_sizes() -> None:
    assert tiled.block_rows(2048, 151936) == 2**25 // 151936 == 220
    assert tiled.block_rows(5, 151936) == 5 and tiled.block_rows(0, 10) == 1
    assert tiled.tile_width(220, 151936) == 2**19 // 220
    assert tiled.tile_width(1, 37) == 37
    assert tiled.backward_chunk(2048, 151936, 220 * 151936) == (2048, 220 * 151936 // 2048)
    assert tiled.backward_chunk(10**6, 151936, 2**25) == (2**25 // 1024, 1024)
    assert tiled.backward_chunk(3, 37, 111) == (3, 37)
    assert tiled._tiles(37, 8) == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 37)]


def test_rows_split_over_threads(small_tiles) -> None:
    """Blocks of 20 rows with two threads: the elementwise work of each block runs in two row ranges."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inputs, ups = _fused_case(lead=(4, 10), seed=250)
        for name, kw in CASES[:4]:
            (outs, grads), (ref_outs, ref_grads) = _fused_both(inputs, ups, 20, divergence=name, **kw)
            compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
            compare(grads, ref_grads, rtol=1e-10, atol=1e-12)
            compare(*_loss_both(inputs, ups, 20, divergence=name, **kw), rtol=1e-10, atol=1e-12)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
