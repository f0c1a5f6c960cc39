"""The study's task: the toy sum task with a hint, ``S n m =`` → ``a b`` with a + b = n and 0 ≤ a, b ≤ 49.

Targets n = 10…89 and hints m = 0…49 give 4,000 distinct prompts, each with 10–50 correct answers (the hint does
not enter correctness). The base policy is pretrained (plain SFT, cached like the demo's) on data that *follow the
hint*: the first term a is drawn Zipf-wise (weight ∝ rank^−s) over 0…min(49, n) ranked by the distance |a − m|, and
then, with a per-target probability r(n), b = n − a, else the answer stops after a (``a``: wrong). r(n) has three
classes, drawn per target: *easy* (30%, r log-uniform in [0.99, 0.999]), *hard* (30%, [0.001, 0.01]) and *medium*
(the rest, [0.2, 0.9]). A hint inside the valid range [n − 49, 49] makes the base's mode correct; a hint far outside
it (large n, small m) leaves only the tail of the Zipf correct. Easy targets n ≤ 49 are solved in (nearly) every
sample — the material of DPH-RL's rehearsal store; hard targets have success 1e-4–1e-2, so the base's pass@256 on
them is well below 1 — the material on which RLVR's pass@k narrowing is claimed.

The SFT target (:func:`target_correct_share`) has pass@1 ≈ 0.39, pass@8 ≈ 0.63 and pass@256 ≈ 0.87; 15% of the
prompts have success in [1e-4, 3e-3], 13% above 0.98. The trained model is measured by the study.
The prompts are split once, by a seeded permutation, into a training pool (:data:`N_TRAIN_POOL`) and
held-out prompts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .model import BaseModelConfig, _build, _log_uniform, _new_model, sft
from .task import MAX_TERM, N_MAX, N_MIN, parse_answer
from .tokenizer import VOCAB

if TYPE_CHECKING:
    from datasets import Dataset

HINT_MAX = 49
N_HINTED_PROMPTS = (N_MAX - N_MIN + 1) * (HINT_MAX + 1)
#: training pool size: 300 GRPO steps × 8 prompts see each pool prompt exactly once
N_TRAIN_POOL = 2400
SPLITS = ("train", "heldout", "all")
_PROMPT_RE = re.compile(r"^\s*S\s+(\d+)\s+(\d+)\s+=\s*$")
_PROMPT_LEN = 4  # S n m =


@dataclass(frozen=True)
class HintedModelConfig(BaseModelConfig):
    """The demo base model's architecture and SFT fields (:class:`~trl_divergences.toy.model.BaseModelConfig`) with
    the hinted task's data: each target's arithmetic share r(n) is drawn from one of three classes — *easy*
    (``easy_fraction``, log-uniform in ``easy_share_range``), *hard* (``hard_fraction``, in ``hard_share_range``)
    or *medium* (the rest, in ``share_range``). All fields enter the cache key."""

    share_range: tuple[float, float] = (0.2, 0.9)
    hard_fraction: float = 0.3
    hard_share_range: tuple[float, float] = (1e-3, 1e-2)
    easy_fraction: float = 0.3
    easy_share_range: tuple[float, float] = (0.99, 0.999)
    steps: int = 4000
    task: str = "hinted-sum/truncated-misses"

    def __post_init__(self) -> None:
        if not (0 <= self.easy_fraction and 0 <= self.hard_fraction and self.easy_fraction + self.hard_fraction <= 1):
            raise ValueError(
                "need easy_fraction, hard_fraction >= 0 with a sum <= 1, "
                f"got {self.easy_fraction}, {self.hard_fraction}"
            )
        for name in ("share_range", "hard_share_range", "easy_share_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(low, high)}")


def hinted_prompt(n: int, m: int) -> str:
    """The prompt asking for two terms summing to ``n``, with hint ``m``."""
    return f"S {n} {m} ="


def parse_hinted_prompt(prompt: str) -> tuple[int, int]:
    """(n, m) of a prompt ``S n m =``; ValueError on anything else."""
    match = _PROMPT_RE.match(prompt)
    if match is None:
        raise ValueError(f"not a hinted-task prompt: {prompt!r}")
    return int(match.group(1)), int(match.group(2))


def hinted_is_correct(prompt: str, completion: str) -> bool:
    """True iff the completion is exactly ``a b`` with a + b = n and 0 ≤ a, b ≤ 49 (the hint m plays no part)."""
    answer = parse_answer(completion)
    if answer is None:
        return False
    a, b = answer
    return a <= MAX_TERM and b <= MAX_TERM and a + b == parse_hinted_prompt(prompt)[0]


def hinted_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """TRL reward function of the hinted task: 1.0 for a correct completion, 0.0 otherwise."""
    return [float(hinted_is_correct(p, c)) for p, c in zip(prompts, completions, strict=True)]


def hinted_pairs(split: str, seed: int = 0, n_train: int = N_TRAIN_POOL) -> list[tuple[int, int]]:
    """(n, m) pairs of a split ("train", "heldout" or "all"): a seeded permutation of all pairs, cut at ``n_train``
    (order of the permutation kept: a prefix of a split is a random subset of it)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 < n_train < N_HINTED_PROMPTS:
        raise ValueError(f"n_train must be in 1..{N_HINTED_PROMPTS - 1}, got {n_train}")
    pairs = [(n, m) for n in range(N_MIN, N_MAX + 1) for m in range(HINT_MAX + 1)]
    if split == "all":
        return pairs
    random.Random(seed).shuffle(pairs)
    return pairs[:n_train] if split == "train" else pairs[n_train:]


def hinted_prompts(split: str, seed: int = 0, n_train: int = N_TRAIN_POOL) -> list[str]:
    """Prompt strings of a split, in :func:`hinted_pairs` order."""
    return [hinted_prompt(n, m) for n, m in hinted_pairs(split, seed, n_train)]


def make_hinted_dataset(split: str, seed: int = 0, n_train: int = N_TRAIN_POOL) -> Dataset:
    """``datasets.Dataset`` with columns ``prompt`` and ``prompt_id`` ((n − 10)·50 + m: unique across splits)."""
    from datasets import Dataset

    pairs = hinted_pairs(split, seed, n_train)
    return Dataset.from_dict(
        {
            "prompt": [hinted_prompt(n, m) for n, m in pairs],
            "prompt_id": [(n - N_MIN) * (HINT_MAX + 1) + m for n, m in pairs],
        }
    )


def _share_class(config: HintedModelConfig, u: float) -> tuple[float, float]:
    """Range of r(n) for a target whose class draw is ``u`` ~ U(0, 1): easy, then hard, then medium."""
    if u < config.easy_fraction:
        return config.easy_share_range
    if u < config.easy_fraction + config.hard_fraction:
        return config.hard_share_range
    return config.share_range


def hinted_tables(config: HintedModelConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SFT target: P(a | n, m) [80, 50, 50] (rows n − 10, m; columns a) and the per-target arithmetic share r [80].

    P(a | n, m) ∝ rank^−s over a = 0…min(49, n), ranked by (|a − m|, a); zero for a > n (b would be negative).
    """
    rng = np.random.default_rng(seed)
    targets = np.arange(N_MIN, N_MAX + 1)
    shares = np.array([_log_uniform(rng, _share_class(config, rng.random())) for _ in targets])
    a = np.arange(MAX_TERM + 1)
    probs = np.zeros((len(targets), HINT_MAX + 1, MAX_TERM + 1))
    for i, n in enumerate(targets):
        allowed = a <= n
        for m in range(HINT_MAX + 1):
            key = np.where(allowed, np.abs(a - m) * (MAX_TERM + 1) + a, np.iinfo(np.int64).max)
            rank = np.empty(len(a))
            rank[np.argsort(key, kind="stable")] = np.arange(1, len(a) + 1)
            weights = np.where(allowed, rank**-config.zipf_s, 0.0)
            probs[i, m] = weights / weights.sum()
    return probs, shares


def target_correct_share(config: HintedModelConfig | None = None, seed: int = 0) -> np.ndarray:
    """Probability that the SFT target distribution answers correctly, per prompt [80, 50]: r(n)·P(a ≥ n − 49)."""
    probs, shares = hinted_tables(config or HintedModelConfig(), seed)
    valid = np.arange(MAX_TERM + 1)[None, :] >= (np.arange(N_MIN, N_MAX + 1) - MAX_TERM)[:, None]  # [80, 50]
    return shares[:, None] * (probs * valid[:, None, :]).sum(-1)


def _hinted_batches(config: HintedModelConfig, seed: int):
    """Yield token batches [batch, 7] = ``S n m = a b <eos>``: prompt uniform over the 4,000, then a ~ P(a | n, m),
    then, with probability r(n), b = n − a, else a truncated answer ``a <eos> <eos>`` (one number: wrong). Every
    second number in the data is the exact n − a, so the arithmetic is never contradicted and r(n) is one decision
    (number or ``<eos>`` after a) that depends on the target only."""
    probs, shares = hinted_tables(config, seed)
    tok = {t: i for i, t in enumerate(VOCAB)}
    number_ids = torch.tensor([tok[str(i)] for i in range(100)])
    cdf = torch.from_numpy(probs.reshape(-1, MAX_TERM + 1)).cumsum(dim=1)
    share = torch.from_numpy(shares)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(config.steps):
        rows = torch.randint(len(cdf), (config.batch_size,), generator=gen)
        n, m = rows // (HINT_MAX + 1) + N_MIN, rows % (HINT_MAX + 1)
        u = torch.rand(config.batch_size, 1, generator=gen, dtype=cdf.dtype)
        a = torch.searchsorted(cdf[rows], u * cdf[rows, -1:]).squeeze(-1).clamp(max=MAX_TERM)
        answered = torch.rand(config.batch_size, generator=gen, dtype=share.dtype) < share[n - N_MIN]
        eos = torch.full_like(rows, tok["<eos>"])
        cols = [
            torch.full_like(rows, tok["S"]),
            number_ids[n],
            number_ids[m],
            torch.full_like(rows, tok["="]),
            number_ids[a],
            torch.where(answered, number_ids[n - a], eos),
            eos,
        ]
        yield torch.stack(cols, dim=1)


def _pretrain_hinted(config: HintedModelConfig, seed: int, progress: bool):
    model = _new_model(config, seed)
    return sft(model, _hinted_batches(config, seed), config, prompt_len=_PROMPT_LEN, progress=progress)


def build_hinted_model(
    cache_dir: str | Path | None = None,
    seed: int = 0,
    *,
    config: HintedModelConfig | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Return the folder of the pretrained hinted-task base model, building it on first use (~3–5 min on 2 CPU
    cores), cached as ``<cache>/toy-hinted-<key>`` exactly like :func:`~trl_divergences.toy.build_base_model`
    (same tokenizer; ``overrides`` replace fields of ``config``)."""
    config = replace(config or HintedModelConfig(), **overrides)
    return _build("toy-hinted", config, seed, cache_dir, progress, pretrain=_pretrain_hinted)
