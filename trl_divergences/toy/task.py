"""The toy verifiable task: prompt ``S n =`` asks for two numbers ``a b`` with a + b = n and 0 ≤ a, b ≤ 49.

Targets n = 10…89, so every prompt has 10–50 correct answers (several correct answers per prompt, as in the
diversity-collapse setting of research/toy-task-findings.md). The prompts are split once, by a seeded permutation,
into training prompts (used by GRPO) and held-out prompts (only evaluated).
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

N_MIN, N_MAX = 10, 89
MAX_TERM = 49
N_PROMPTS = N_MAX - N_MIN + 1
N_TRAIN = 48
SPLITS = ("train", "heldout", "all")

_PROMPT_RE = re.compile(r"^\s*S\s+(\d+)\s+=\s*$")
_ANSWER_RE = re.compile(r"^\s*(\d+)\s+(\d+)\s*$")


def prompt_text(n: int) -> str:
    """The prompt asking for two terms summing to ``n``."""
    return f"S {n} ="


def parse_prompt(prompt: str) -> int:
    """Target sum n of a prompt ``S n =``; ValueError on anything else."""
    match = _PROMPT_RE.match(prompt)
    if match is None:
        raise ValueError(f"not a toy-task prompt: {prompt!r}")
    return int(match.group(1))


def parse_answer(completion: str) -> tuple[int, int] | None:
    """The pair ``(a, b)`` if the completion is exactly two numbers, else None."""
    match = _ANSWER_RE.match(completion)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def valid_answers(n: int) -> list[tuple[int, int]]:
    """All correct answers of prompt n: (a, n − a) for max(0, n − 49) ≤ a ≤ min(49, n)."""
    return [(a, n - a) for a in range(max(0, n - MAX_TERM), min(MAX_TERM, n) + 1)]


def is_correct(prompt: str, completion: str) -> bool:
    """True iff the completion is exactly ``a b`` with a + b = n and 0 ≤ a, b ≤ 49 (surrounding whitespace allowed)."""
    answer = parse_answer(completion)
    if answer is None:
        return False
    a, b = answer
    return a <= MAX_TERM and b <= MAX_TERM and a + b == parse_prompt(prompt)


def sum_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """TRL reward function: 1.0 for a correct completion, 0.0 otherwise (non-conversational, plain strings)."""
    return [float(is_correct(p, c)) for p, c in zip(prompts, completions, strict=True)]


def split_targets(split: str, seed: int = 0, n_train: int = N_TRAIN) -> list[int]:
    """Targets n of a split ("train", "heldout" or "all"), sorted; train/held-out come from a seeded permutation."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 < n_train < N_PROMPTS:
        raise ValueError(f"n_train must be in 1..{N_PROMPTS - 1}, got {n_train}")
    targets = list(range(N_MIN, N_MAX + 1))
    if split == "all":
        return targets
    random.Random(seed).shuffle(targets)
    return sorted(targets[:n_train] if split == "train" else targets[n_train:])


def split_prompts(split: str, seed: int = 0, n_train: int = N_TRAIN) -> list[str]:
    """Prompt strings of a split, in :func:`split_targets` order."""
    return [prompt_text(n) for n in split_targets(split, seed, n_train)]


def make_dataset(split: str, seed: int = 0, n_train: int = N_TRAIN) -> Dataset:
    """``datasets.Dataset`` with columns ``prompt`` (str) and ``prompt_id`` (int, n − 10: unique across splits)."""
    from datasets import Dataset

    targets = split_targets(split, seed, n_train)
    return Dataset.from_dict({"prompt": [prompt_text(n) for n in targets], "prompt_id": [n - N_MIN for n in targets]})
