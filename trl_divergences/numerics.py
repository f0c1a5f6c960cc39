"""Numerical conventions shared by every part of the package (a leaf: it imports nothing of ours).

* accumulation dtype: fp32 for half-precision inputs, float64 kept (:func:`compute_dtype`);
* masked entries: log-probabilities at or below :data:`MASKED_LOG_PROB` (−1e4: logits of −inf, ``finfo.min`` or
  −1e9; no real model's log-prob gets there) have zero mass; :func:`floor_masked` replaces them by a finite floor
  (default :data:`DEFAULT_LOG_FLOOR` = −50, a mass of ≈2e−22) before a formula evaluates them;
* exponent cap: exponentials of log-ratios are capped at e^:data:`EXP_CAP` (≈5.5e34, finite in fp32).
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_LOG_FLOOR = -50.0
#: log-probabilities at or below this are masked entries (zero mass)
MASKED_LOG_PROB = -1e4
#: cap of exponents (χ² / α terms, sampled estimators' log-ratios): e^80 is finite in fp32
EXP_CAP = 80.0


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 if any input is float64, else fp32 (half precision is accumulated in fp32)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def floor_masked(x: Tensor, log_floor: float = DEFAULT_LOG_FLOOR) -> Tensor:
    """``x`` with masked entries (≤ ``MASKED_LOG_PROB``) set to ``log_floor``; ``x`` itself when there are none (a
    min reduction instead of a full-size copy on the common path)."""
    if x.numel() == 0 or x.min() > MASKED_LOG_PROB:
        return x
    return x.masked_fill(x <= MASKED_LOG_PROB, log_floor)
