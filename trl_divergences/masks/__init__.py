"""Token masks (``token_masks=[...]``, composable): ``entropy_quantile``, ``siren``, ``eksft``, ``low_probability``,
``correct_only``; see :mod:`.base` for the contract."""

from . import entropy, selection  # noqa: F401  (registers the built-in masks)
from .base import (
    TOKEN_FIELDS,
    TOKEN_MASKS,
    MaskOutput,
    TokenBatch,
    TokenMask,
    compose_token_masks,
    get_token_mask,
    list_token_masks,
    register_token_mask,
)

__all__ = [
    "TOKEN_FIELDS",
    "TOKEN_MASKS",
    "MaskOutput",
    "TokenBatch",
    "TokenMask",
    "compose_token_masks",
    "get_token_mask",
    "list_token_masks",
    "register_token_mask",
]
