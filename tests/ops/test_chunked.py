"""The chunked torch path (several chunks, and the default chunking) against the naive full-logits reference:
values and gradients of ``logprob_entropy_divergence`` and ``fused_linear_logprob_entropy_divergence``, masked
logits, temperature, bf16, None inputs, and argument errors."""

from __future__ import annotations

import pytest
import torch

import trl_divergences as td
from trl_divergences.ops import chunked

from ._helpers import compare, randn, random_targets

CASES = [
    ("reverse_kl", {}),
    ("forward_kl", {}),
    ("js", {"beta": 0.5}),
    ("js", {"beta": 0.2}),
    ("tv", {}),
    ("chi2", {}),
    ("hellinger", {}),
    ("alpha", {"alpha": 0.5}),
    ("alpha", {"alpha": 1.0}),
    ("alpha", {"alpha": 1.5}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]
VOCAB = 37  # odd, and not a multiple of any chunk size used here


def _run(fn, inputs: dict[str, torch.Tensor | None], grad_keys: tuple[str, ...], upstream: list[torch.Tensor], **kw):
    """Outputs of ``fn`` and the gradients of Σ upstream_i · output_i w.r.t. ``inputs[grad_keys]``."""
    leaves = {
        k: (v.detach().clone().requires_grad_(k in grad_keys) if v is not None else None) for k, v in inputs.items()
    }
    outs = fn(**leaves, **kw)
    loss = sum((u.to(o.dtype) * o).sum() for u, o in zip(upstream, outs) if o is not None)
    grads = torch.autograd.grad(loss, [leaves[k] for k in grad_keys])
    return [None if o is None else o.detach() for o in outs], list(grads)


# ---- from logits ---------------------------------------------------------------------------------------------


def _logits_case(lead=(3, 5), vocab=VOCAB, dtype=torch.float64, seed=0, scale=2.0):
    z, zr = randn((*lead, vocab), seed, scale, dtype), randn((*lead, vocab), seed + 1, scale, dtype)
    ups = [randn(lead, seed + 2 + i, 1.0) for i in range(3)]
    return {"policy_logits": z, "ref_logits": zr, "targets": random_targets(lead, vocab, seed + 5)}, ups


def _logits_both(inputs, ups, chunk_rows, **kw):
    fn = td.ops.logprob_entropy_divergence
    got = _run(fn, inputs, ("policy_logits",), ups, impl="chunked", chunk_rows=chunk_rows, **kw)
    want = _run(fn, inputs, ("policy_logits",), ups, impl="naive", **kw)
    return got, want


@pytest.mark.parametrize("chunk_rows", [1, 2, 4, None])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_logits_float64(name: str, kw: dict, chunk_rows: int | None) -> None:
    inputs, ups = _logits_case()
    (outs, grads), (ref_outs, ref_grads) = _logits_both(inputs, ups, chunk_rows, divergence=name, **kw)
    assert all(o.shape == (3, 5) and o.dtype == torch.float64 for o in outs)
    compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
    compare(grads, ref_grads, rtol=1e-10, atol=1e-12)


def test_default_chunking_runs_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """chunk_rows=None with a small element budget: the default splits the rows into several uneven chunks."""
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 3 * VOCAB)
    assert chunked.default_chunk_rows(15, VOCAB) == 3
    inputs, ups = _logits_case()
    for name, kw in CASES:
        (outs, grads), (ref_outs, ref_grads) = _logits_both(inputs, ups, None, divergence=name, **kw)
        compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
        compare(grads, ref_grads, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("temperature", [0.6, 1.9])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_logits_temperature(name: str, kw: dict, temperature: float) -> None:
    inputs, ups = _logits_case(seed=10)
    (outs, grads), (ref_outs, ref_grads) = _logits_both(inputs, ups, 4, divergence=name, temperature=temperature, **kw)
    compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
    compare(grads, ref_grads, rtol=1e-10, atol=1e-12)
    # temperature really is applied (to both sides)
    plain = td.ops.logprob_entropy_divergence(**inputs, divergence=name, impl="chunked", **kw)
    assert not torch.allclose(outs[1], plain[1])


@pytest.mark.parametrize("vocab", [1, 2, 129])
def test_logits_odd_vocab(vocab: int) -> None:
    inputs, ups = _logits_case(lead=(7,), vocab=vocab, seed=20)
    for name, kw in CASES:
        (outs, grads), (ref_outs, ref_grads) = _logits_both(inputs, ups, 3, divergence=name, **kw)
        compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
        compare(grads, ref_grads, rtol=1e-10, atol=1e-12)
        if vocab == 1:
            assert (outs[0] == 0).all() and (outs[1] == 0).all() and outs[2].abs().max() < 1e-12


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_logits_masked(name: str, kw: dict) -> None:
    """−inf logits: both-sided padding columns, one-sided entries, and an all-but-one row."""
    inputs, ups = _logits_case(lead=(6,), seed=30)
    z, zr = inputs["policy_logits"], inputs["ref_logits"]
    z[:, -3:] = zr[:, -3:] = float("-inf")  # padded vocabulary
    z[0, [0, 4]] = float("-inf")  # π = 0 < ρ
    zr[1, [2, 5]] = float("-inf")  # ρ = 0 < π
    z[2, 1:] = float("-inf")  # one-hot policy
    inputs["targets"][0] = 1  # a target with finite logit in the masked row
    inputs["targets"][2] = 0
    (outs, grads), (ref_outs, ref_grads) = _logits_both(inputs, ups, 4, divergence=name, **kw)
    assert all(torch.isfinite(o).all() for o in outs) and torch.isfinite(grads[0]).all()
    assert (grads[0][torch.isinf(z)] == 0).all()
    compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
    compare(grads, ref_grads, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_logits_low_precision(name: str, kw: dict, dtype: torch.dtype, tol: float) -> None:
    """fp32 / bf16 logits: fp32 outputs, gradients in the logits' dtype, both paths agreeing."""
    inputs, ups = _logits_case(dtype=dtype, seed=40, scale=1.0)
    (outs, grads), (ref_outs, ref_grads) = _logits_both(inputs, ups, 4, divergence=name, **kw)
    assert all(o.dtype == torch.float32 for o in outs) and grads[0].dtype == dtype
    compare(outs, ref_outs, rtol=1e-5, atol=1e-5)  # same fp32 math on the same rounded inputs
    compare(grads, ref_grads, rtol=tol, atol=tol)


def test_logits_none_inputs() -> None:
    inputs, ups = _logits_case(seed=50)
    for drop in ({"targets"}, {"ref_logits"}, {"targets", "ref_logits"}):
        case = {k: (None if k in drop else v) for k, v in inputs.items()}
        (outs, grads), (ref_outs, ref_grads) = _logits_both(case, ups, 2, divergence="js")
        assert (outs[0] is None) == ("targets" in drop) and (outs[2] is None) == ("ref_logits" in drop)
        assert outs[1] is not None
        compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
        compare(grads, ref_grads, rtol=1e-10, atol=1e-12)


def test_logits_no_gradient_to_reference() -> None:
    inputs, _ = _logits_case(seed=60)
    for impl in ("chunked", "naive"):
        z = inputs["policy_logits"].clone().requires_grad_(True)
        zr = inputs["ref_logits"].clone().requires_grad_(True)
        _, _, dv = td.ops.logprob_entropy_divergence(z, zr, None, divergence="forward_kl", impl=impl)
        grad_z, grad_zr = torch.autograd.grad(dv.sum(), (z, zr), allow_unused=True)
        assert grad_z.abs().max() > 0
        assert grad_zr is None or (grad_zr == 0).all()


# ---- fused linear --------------------------------------------------------------------------------------------


def _fused_case(lead=(2, 5), vocab=VOCAB, hidden=16, ref_hidden=12, dtype=torch.float64, seed=100, bias=True):
    inputs = {
        "hidden": randn((*lead, hidden), seed, 1.0, dtype),
        "weight": randn((vocab, hidden), seed + 1, 0.5, dtype),
        "ref_hidden": randn((*lead, ref_hidden), seed + 2, 1.0, dtype),
        "ref_weight": randn((vocab, ref_hidden), seed + 3, 0.5, dtype),
        "targets": random_targets(lead, vocab, seed + 4),
        "bias": randn((vocab,), seed + 5, 0.5, dtype) if bias else None,
        "ref_bias": randn((vocab,), seed + 6, 0.5, dtype) if bias else None,
    }
    ups = [randn(lead, seed + 7 + i, 1.0) for i in range(3)]
    return inputs, ups


def _fused_both(inputs, ups, chunk_rows, **kw):
    fn = td.ops.fused_linear_logprob_entropy_divergence
    keys = ("hidden", "weight") + (("bias",) if inputs.get("bias") is not None else ())
    got = _run(fn, inputs, keys, ups, impl="chunked", chunk_rows=chunk_rows, **kw)
    want = _run(fn, inputs, keys, ups, impl="naive", **kw)
    return got, want


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("chunk_rows", [3, None])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_fused_linear_float64(name: str, kw: dict, chunk_rows: int | None, bias: bool) -> None:
    inputs, ups = _fused_case(bias=bias)
    (outs, grads), (ref_outs, ref_grads) = _fused_both(inputs, ups, chunk_rows, divergence=name, **kw)
    assert all(o.shape == (2, 5) for o in outs)
    assert len(grads) == (3 if bias else 2)
    compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
    compare(grads, ref_grads, rtol=1e-10, atol=1e-12)


def test_fused_linear_temperature_and_odd_vocab() -> None:
    inputs, ups = _fused_case(lead=(7,), vocab=129, seed=110)
    for name, kw in CASES:
        (outs, grads), (ref_outs, ref_grads) = _fused_both(inputs, ups, 2, divergence=name, temperature=0.7, **kw)
        compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
        compare(grads, ref_grads, rtol=1e-10, atol=1e-12)


def test_fused_linear_matches_logits_op() -> None:
    """The fused op equals the logits op on the projected logits (ties the two chunked paths together)."""
    inputs, ups = _fused_case(seed=120)
    logits = torch.nn.functional.linear(inputs["hidden"], inputs["weight"], inputs["bias"])
    ref_logits = torch.nn.functional.linear(inputs["ref_hidden"], inputs["ref_weight"], inputs["ref_bias"])
    fused = td.ops.fused_linear_logprob_entropy_divergence(
        **inputs, divergence="alpha", alpha=0.3, impl="chunked", chunk_rows=4
    )
    plain = td.ops.logprob_entropy_divergence(
        logits, ref_logits, inputs["targets"], divergence="alpha", alpha=0.3, impl="chunked"
    )
    compare(fused, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("name", "kw"), CASES[:5], ids=IDS[:5])
def test_fused_linear_low_precision(name: str, kw: dict, dtype: torch.dtype, tol: float) -> None:
    inputs, ups = _fused_case(dtype=dtype, seed=130)
    (outs, grads), (ref_outs, ref_grads) = _fused_both(inputs, ups, 3, divergence=name, **kw)
    assert all(o.dtype == torch.float32 for o in outs)
    assert [g.dtype for g in grads] == [dtype] * 3
    compare(outs, ref_outs, rtol=tol, atol=tol)
    for g, w in zip(grads, ref_grads):  # bf16 GEMMs round differently in the two paths: compare in norm
        assert (g.double() - w.double()).norm() <= tol * w.double().norm() + tol


def test_fused_linear_none_inputs_and_reference_gets_no_gradient() -> None:
    inputs, ups = _fused_case(seed=140)
    no_ref = {**inputs, "ref_hidden": None, "ref_weight": None, "ref_bias": None}
    for case, has_logp, has_div in (
        (no_ref, True, False),
        ({**inputs, "targets": None}, False, True),
        ({**no_ref, "targets": None}, False, False),
    ):
        (outs, grads), (ref_outs, ref_grads) = _fused_both(case, ups, 3, divergence="tv")
        assert (outs[0] is not None) == has_logp and (outs[2] is not None) == has_div
        compare(outs, ref_outs, rtol=1e-12, atol=1e-12)
        compare(grads, ref_grads, rtol=1e-10, atol=1e-12)
    for impl in ("chunked", "naive"):
        leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
        _, _, dv = td.ops.fused_linear_logprob_entropy_divergence(**leaves, divergence="chi2", impl=impl)
        ref_leaves = [leaves[k] for k in ("ref_hidden", "ref_weight", "ref_bias")]
        grads = torch.autograd.grad(dv.sum(), ref_leaves + [leaves["hidden"]], allow_unused=True)
        assert all(g is None or (g == 0).all() for g in grads[:3]) and grads[3].abs().max() > 0


def test_fused_linear_divergence_loss_matches_naive() -> None:
    """The gradient-in-forward loss (torch row engine) equals the naive weighted loss and its gradients."""
    inputs, ups = _fused_case(seed=150)
    for name, kw in CASES:
        results = []
        for impl, rows in (("chunked", 3), ("naive", None)):
            leaves = {k: v.clone().requires_grad_(k in ("hidden", "weight", "bias")) for k, v in inputs.items()}
            loss, *_ = td.ops.fused_linear_divergence_loss(
                **leaves, weights_logp=ups[0], weights_entropy=ups[1], weights_div=ups[2],
                divergence=name, impl=impl, chunk_rows=rows, **kw,
            )  # fmt: skip
            grads = torch.autograd.grad(3.0 * loss, [leaves[k] for k in ("hidden", "weight", "bias")])
            results.append([loss.detach(), *grads])
        compare(results[0], results[1], rtol=1e-10, atol=1e-12)


# ---- errors --------------------------------------------------------------------------------------------------


def test_errors_logits() -> None:
    z, zr, tg = torch.randn(4, 9), torch.randn(4, 9), torch.randint(0, 9, (4,))
    op = td.ops.logprob_entropy_divergence
    for impl in ("chunked", "naive"):
        with pytest.raises(ValueError, match="shape"):
            op(z, torch.randn(4, 8), tg, impl=impl)
        with pytest.raises(ValueError, match="shape"):
            op(z, torch.randn(3, 9), tg, impl=impl)
        with pytest.raises(ValueError, match="targets"):
            op(z, zr, torch.randint(0, 9, (1,)), impl=impl)
        with pytest.raises(ValueError, match="targets"):
            op(z, zr, torch.randint(0, 9, (4, 1)), impl=impl)
        for bad in (0, 0.0, -1.0, float("nan"), float("inf"), "1.0", None):
            with pytest.raises(ValueError, match="temperature"):
                op(z, zr, tg, temperature=bad, impl=impl)
        with pytest.raises(ValueError, match="reverse_kl"):
            op(z, zr, tg, divergence="kl", impl=impl)
    with pytest.raises(ValueError, match="chunked"):
        op(z, zr, tg, impl="cuda")


def test_errors_fused_linear() -> None:
    inputs, _ = _fused_case(seed=160)
    op = td.ops.fused_linear_logprob_entropy_divergence
    bad_cases = {
        "vocab": {"ref_weight": torch.randn(VOCAB + 1, 12, dtype=torch.float64)},
        "together": {"ref_weight": None},
        "ref_hidden": {"ref_hidden": torch.randn(3, 5, 12, dtype=torch.float64)},  # other leading shape
        "hidden": {"hidden": torch.randn(2, 5, 15, dtype=torch.float64)},  # does not match weight
        "targets": {"targets": torch.randint(0, VOCAB, (5,))},
    }
    for impl in ("chunked", "naive"):
        for needle, change in bad_cases.items():
            with pytest.raises(ValueError, match=needle):
                op(**{**inputs, **change}, impl=impl)
        with pytest.raises(ValueError, match="temperature"):
            op(**inputs, temperature=-0.5, impl=impl)
    with pytest.raises(ValueError, match="naive"):
        op(**inputs, impl="fast")
