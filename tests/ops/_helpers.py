"""Random inputs and comparisons shared by the op tests."""

from __future__ import annotations

import torch


def randn(shape: tuple[int, ...], seed: int, scale: float = 2.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def random_targets(lead: tuple[int, ...], vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, lead, generator=torch.Generator().manual_seed(seed))


def compare(got, want, **tol) -> None:
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            assert g.shape == w.shape and g.dtype == w.dtype
            torch.testing.assert_close(g, w, **tol)
