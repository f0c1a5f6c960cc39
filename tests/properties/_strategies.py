"""Hypothesis strategies shared by the property tests: small logit tensors (masked entries optional) and every
registered divergence with random hyper-parameters."""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from hypothesis import settings
from hypothesis import strategies as st

from trl_divergences import list_divergences


def examples(n: int) -> settings:
    """``n`` examples per property (× ``$PROPERTY_SCALE``, e.g. 20 for a long bug hunt), no deadline."""
    return settings(max_examples=max(1, round(n * float(os.environ.get("PROPERTY_SCALE", "1")))), deadline=None)


#: logits at or below MASKED_LOG_PROB after log-softmax: the forms a model or a vocabulary mask produces
MASKED_VALUES = (-math.inf, -1e9, torch.finfo(torch.float32).min)


@st.composite
def divergence_specs(draw, names: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """(name, kwargs) of a registered divergence: JS β in (0, 1), α in [−1, 2], the other defaults."""
    name = draw(st.sampled_from(names or list_divergences()))
    if name == "js":
        return name, {"beta": draw(st.floats(0.01, 0.99))}
    if name == "alpha":
        return name, {"alpha": draw(st.floats(-1.0, 2.0))}
    return name, {}


@st.composite
def logits(draw, rows: int, vocab: int, bound: float = 8.0, masked: bool = False) -> torch.Tensor:
    """float64 [rows, vocab] logits in [−bound, bound]; with ``masked``, some entries masked but never a whole row."""
    values = draw(st.lists(st.floats(-bound, bound), min_size=rows * vocab, max_size=rows * vocab))
    out = torch.tensor(values, dtype=torch.float64).reshape(rows, vocab)
    if masked:
        flags = draw(st.lists(st.booleans(), min_size=rows * vocab, max_size=rows * vocab))
        fill = draw(st.sampled_from(MASKED_VALUES))
        mask = torch.tensor(flags).reshape(rows, vocab)
        mask[:, draw(st.integers(0, vocab - 1))] = False  # one entry per row keeps mass
        out = out.masked_fill(mask, fill)
    return out


@st.composite
def logit_pairs(draw, max_rows: int = 3, max_vocab: int = 10, bound: float = 8.0, masked: bool = False):
    """(policy logits, reference logits), the same random shape [rows, vocab]."""
    rows, vocab = draw(st.integers(1, max_rows)), draw(st.integers(2, max_vocab))
    return draw(logits(rows, vocab, bound, masked)), draw(logits(rows, vocab, bound, masked))


def fp32_well_conditioned(spec: tuple[str, dict[str, Any]], dtype) -> bool:
    """False for α within 1e-3 of 0 or 1 (outside the exact-limit window) in fp32 or lower: there the α term's
    1/(α(1 − α)) amplifies the vocabulary sum's rounding (relative error up to ~1e-2 on both paths alike; a known
    limitation, see the README's divergences section), so the paths are compared in float64 only."""
    import torch

    if spec[0] != "alpha" or dtype == torch.float64:
        return True
    a = spec[1]["alpha"]
    return min(abs(a), abs(a - 1.0)) >= 1e-3 or min(abs(a), abs(a - 1.0)) < 1e-6
