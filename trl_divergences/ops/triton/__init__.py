"""Triton kernels for the fused ops (see the kernels issue). Until they land, only availability is reported."""

from __future__ import annotations


def triton_available() -> bool:
    """True when Triton imports and has an active driver (or runs under ``TRITON_INTERPRET=1``)."""
    return False
