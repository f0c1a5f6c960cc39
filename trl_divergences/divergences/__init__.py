"""Divergence registry: ``get_divergence(name, **kwargs)``, ``list_divergences()``; see :mod:`.base`."""

from . import fdivergences, lp_reg  # noqa: F401  (registers the built-in divergences)
from .base import (
    DIVERGENCES,
    FULL,
    Divergence,
    check_estimator,
    get_divergence,
    list_divergences,
    register_divergence,
)

__all__ = [
    "DIVERGENCES",
    "FULL",
    "Divergence",
    "check_estimator",
    "get_divergence",
    "list_divergences",
    "register_divergence",
]
