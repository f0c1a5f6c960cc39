"""Triton kernels for the fused ops: log-prob + entropy + any registered f-divergence, forward and backward.

Layout: :mod:`.terms` (the jit twin of each divergence's elementwise term, registered by name), :mod:`.kernels`
(the row kernels), :mod:`.rows` (the row engine and the two ops). Importing this package does not import Triton;
the functions below do, on first use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ...divergences import Divergence


__all__ = [
    "fused_chunk_rows",
    "fused_linear_logprob_entropy_divergence",
    "has_triton_term",
    "logprob_entropy_divergence",
    "row_engine",
    "triton_available",
]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device: str | torch.device | None = None) -> bool:
    """True when Triton imports and can run on ``device`` (default: any).

    That is an active GPU driver for CUDA tensors, or ``TRITON_INTERPRET=1`` for CPU tensors (the interpreter, for
    tests; set it before Triton is first imported).
    """
    try:
        import triton
    except ImportError:
        return False
    dev = None if device is None else torch.device(device).type
    if dev == "cpu" or (dev is None and _interpreting()):
        return _interpreting()
    if not torch.cuda.is_available():
        return False
    try:
        triton.runtime.driver.active.get_current_target()
    except Exception:
        return False
    return True


def has_triton_term(div: Divergence) -> bool:
    """Whether ``div`` can run on the Triton kernels (False also when Triton is missing)."""
    try:
        from .terms import has_triton_term as _has
    except ImportError:
        return False
    return _has(div)


def _check_device(t: Tensor) -> None:
    if not triton_available(t.device):
        hint = "set TRITON_INTERPRET=1 before importing triton to run it on CPU" if t.device.type == "cpu" else ""
        raise RuntimeError(f"Triton cannot run on device {t.device}; use impl='chunked' {hint}".rstrip())


def row_engine(t: Tensor, div: Divergence):
    """The Triton row engine (:class:`.rows.TritonRows`) for tensors like ``t``, after checking device and term."""
    _check_device(t)
    from .rows import TRITON_ROWS
    from .terms import triton_term

    triton_term(div)
    return TRITON_ROWS


def fused_chunk_rows(n_rows: int, vocab: int) -> int:
    """Token rows per chunk of the fused-linear Triton path (``rows.FUSED_CHUNK_ELEMENTS`` logits per side)."""
    from .rows import fused_chunk_rows as rows_for

    return rows_for(n_rows, vocab)


def logprob_entropy_divergence(
    z: Tensor, zr: Tensor | None, targets: Tensor | None, div: Divergence, temperature: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, entropy, div) per row of logits z [N, V]; zr [N, V] / targets [N] may be None (zeros out).

    Differentiable w.r.t. ``z`` from all three outputs (recompute in backward; see :mod:`.rows`).
    """
    _check_device(z)
    from .rows import logprob_entropy_divergence as op

    return op(z, zr, targets, div, temperature)


def fused_linear_logprob_entropy_divergence(
    h: Tensor,
    w: Tensor,
    hr: Tensor | None,
    wr: Tensor | None,
    targets: Tensor | None,
    div: Divergence,
    temperature: float = 1.0,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, entropy, div) with logits = h [N, H] @ w [V, H]ᵀ (+ bias), never materializing [N, V] logits.

    Token chunks of at most ``rows.FUSED_CHUNK_ELEMENTS`` logits per side; differentiable w.r.t. h, w and bias.
    """
    _check_device(h)
    from .rows import fused_linear_logprob_entropy_divergence as op

    return op(h, w, hr, wr, targets, div, temperature, bias, ref_bias)
