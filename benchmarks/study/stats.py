"""Summary statistics of the study: t-based confidence intervals over seeds and the pass@k crossover point."""

from __future__ import annotations

import math
from collections.abc import Sequence

#: two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1…30
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table for df ≤ 30, else the Cornish–Fisher expansion z + (z³ + z)/(4 df) +
    (5z⁵ + 16z³ + 3z)/(96 df²) (error < 1e-4 there)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> dict[str, float | int]:
    """Mean and 95 % t-interval half-width over seeds: ``ci`` = t_{0.975, n−1} · s / √n with s the sample standard
    deviation (n − 1 in the denominator); ``ci`` is NaN for a single value."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n == 1:
        return {"mean": mean, "ci": math.nan, "n": 1}
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "ci": t_quantile_975(n - 1) * sd / math.sqrt(n), "n": n}


def crossover_k(ks: Sequence[int], curve: Sequence[float], base: Sequence[float]) -> int | None:
    """Smallest k at which ``curve``'s pass@k falls below the base's (None if it never does)."""
    for k, value, ref in zip(ks, curve, base, strict=True):
        if value < ref:
            return k
    return None
