"""On-disk layout of a rehearsal store and the packing of stored samples into model inputs.

A store folder (written by :func:`~trl_divergences.rehearsal.build.build_store`) holds:

* ``samples/`` — ``datasets`` folder, one row per stored sample (a *correct* base-model completion of a *perfect*
  prompt): ``prompt_index``, ``prompt``, ``prompt_ids``, ``completion_ids``, ``ref_logps`` (ρ's per-token log-probs
  of the completion at the sampling temperature), ``completion``, ``reward``;
* ``prompts/`` — one row per training prompt: ``prompt_index``, ``prompt``, ``n_correct``, ``perfect``;
* ``exploration/`` — the rows of the input dataset whose prompt is not perfect (the RL set D_exp);
* ``meta.json`` — build settings and counts (written last: its presence marks a finished store);
* ``shards/`` — the per-shard raw results (all k samples per prompt), kept so that a rebuild is resumable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import seeding

SAMPLES, PROMPTS, EXPLORATION, SHARDS, META = "samples", "prompts", "exploration", "shards", "meta.json"


def derive_seed(seed: int, index: int) -> int:
    """A 63-bit seed from (seed, index): per-prompt sampling and per-epoch shuffling never share a stream."""
    return seeding.derive_seed("rehearsal", seed, index)


def prompt_key(prompt: Any) -> str:
    """Hashable key of a dataset prompt (plain string or conversational list of messages)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def load_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of a finished store; ``ValueError`` if ``path`` is not one."""
    meta = Path(path) / META
    if not meta.is_file():
        raise ValueError(
            f"{path} is not a finished rehearsal store (no {META}); build it with "
            "`python -m trl_divergences.rehearsal build ...`"
        )
    return json.loads(meta.read_text())


def load_store(path: str | Path, part: str = SAMPLES):
    """A part of a finished store (``samples``, ``prompts`` or ``exploration``) as a ``datasets.Dataset``."""
    import datasets

    load_meta(path)
    return datasets.load_from_disk(str(Path(path) / part))


def pack_samples(
    prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, device: torch.device | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded rows ``prompt + completion``: (input_ids [B, L], attention_mask [B, L], completion_mask [B, L]).

    Every row starts at position 0 whatever the other rows' lengths, so a model that numbers positions 0…L−1
    (no padding-aware position ids) scores a stored sample exactly as when it was built. The log-prob of the token
    at position t comes from the logits at t − 1; ``completion_mask`` marks the completion tokens.
    """
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    completion_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        input_ids[row, : len(p) + len(c)] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attention_mask[row, : len(p) + len(c)] = 1
        completion_mask[row, len(p) : len(p) + len(c)] = 1
    return input_ids.to(device), attention_mask.to(device), completion_mask.to(device)


def scatter_completion(values: list[list[float]], completion_mask: Tensor) -> Tensor:
    """Per-completion-token values (e.g. stored log-probs) laid out on ``completion_mask``'s positions [B, L]."""
    out = torch.zeros(completion_mask.shape, dtype=torch.float32)
    flat = torch.tensor([v for row in values for v in row], dtype=torch.float32)
    out[completion_mask.cpu().bool()] = flat
    return out.to(completion_mask.device)
