"""Sampling evaluation of a toy-task policy: pass@k, distinct correct answers, entropy and divergence to the base."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..divergences import get_divergence
from ..ops import logprob_entropy_divergence
from .task import is_correct, parse_answer

#: divergences to the base reported by :func:`evaluate` (names of the registry)
BASE_DIVERGENCES = ("forward_kl", "reverse_kl")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 − C(n − c, k) / C(n, k) (Chen et al. 2021, arXiv:2107.03374)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@torch.no_grad()
def _sample(model, tokenizer, prompts: list[str], n_samples: int, temperature: float, batch_size: int, max_new: int):
    """Sample n_samples completions per prompt, prompt-major: (sequences [P·n, L+T], prompt mask [P·n, L], L)."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids = enc["input_ids"].repeat_interleave(n_samples, dim=0)
    mask = enc["attention_mask"].repeat_interleave(n_samples, dim=0)
    chunks = []
    for start in range(0, len(ids), batch_size):
        out = model.generate(
            input_ids=ids[start : start + batch_size],
            attention_mask=mask[start : start + batch_size],
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        width = ids.shape[1] + max_new - out.shape[1]  # generation stops early once every row has ended
        chunks.append(torch.nn.functional.pad(out, (0, width), value=tokenizer.pad_token_id))
    return torch.cat(chunks), mask, ids.shape[1]


@torch.no_grad()
def _completion_logits(model, seqs: torch.Tensor, prompt_mask: torch.Tensor, prompt_len: int, batch_size: int):
    """Logits [N, T, V] of the distributions that produced the T completion tokens (untempered)."""
    full_mask = torch.cat([prompt_mask, torch.ones_like(seqs[:, prompt_len:])], dim=1)
    positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    out = []
    for start in range(0, len(seqs), batch_size):
        sl = slice(start, start + batch_size)
        logits = model(input_ids=seqs[sl], attention_mask=full_mask[sl], position_ids=positions[sl]).logits
        out.append(logits[:, prompt_len - 1 : -1].float())
    return torch.cat(out)


def evaluate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    n_samples: int = 64,
    ks: Sequence[int] = (1, 4, 16, 64),
    base_model=None,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 4096,
    max_new_tokens: int = 4,
    verifier: Callable[[str, str], bool] = is_correct,
    per_prompt: dict[str, list[int]] | None = None,
) -> dict[str, float]:
    """Sample ``n_samples`` completions per prompt at ``temperature`` and score them.

    Returns ``pass@k`` for each k (unbiased :func:`pass_at_k`, averaged over prompts), ``distinct_correct`` (mean
    number of distinct correct answers per prompt), ``entropy`` (mean exact per-token entropy H(π) of the untempered
    policy at the sampled completion tokens, up to and including ``<eos>``) and, when ``base_model`` is given, the
    mean exact per-token ``forward_kl`` = KL(π_base ‖ π) and ``reverse_kl`` = KL(π ‖ π_base) over the same tokens.
    The global RNG state is left untouched; ``seed`` fixes the samples. ``verifier(prompt, completion)`` decides
    correctness (default: the demo task's); a ``per_prompt`` dict, when given, receives the per-prompt ``correct``
    counts and ``distinct`` correct answers (lists in prompt order).
    """
    if any(not 1 <= k <= n_samples for k in ks):
        raise ValueError(f"every k must be in 1..n_samples={n_samples}, got {tuple(ks)}")
    prompts = list(prompts)
    models = [model] if base_model is None else [model, base_model]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            seqs, prompt_mask, prompt_len = _sample(
                model, tokenizer, prompts, n_samples, temperature, batch_size, max_new_tokens
            )
        logits = _completion_logits(model, seqs, prompt_mask, prompt_len, batch_size)
        base_logits = None
        if base_model is not None:
            base_logits = _completion_logits(base_model, seqs, prompt_mask, prompt_len, batch_size)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)

    completion = seqs[:, prompt_len:]
    is_eos = completion == tokenizer.eos_token_id
    tokens = (torch.cumsum(is_eos, dim=1) - is_eos.long()) == 0  # every token up to and including the first eos
    texts = tokenizer.batch_decode(completion, skip_special_tokens=True)

    result: dict[str, float] = {}
    counts, distinct = [], []
    for i, prompt in enumerate(prompts):
        hits = [parse_answer(t) for t in texts[i * n_samples : (i + 1) * n_samples] if verifier(prompt, t)]
        counts.append(len(hits))
        distinct.append(len(set(hits)))
    for k in ks:
        result[f"pass@{k}"] = sum(pass_at_k(n_samples, c, k) for c in counts) / len(prompts)
    result["distinct_correct"] = sum(distinct) / len(prompts)
    if per_prompt is not None:
        per_prompt.update(correct=counts, distinct=distinct)
    _, entropy, _ = logprob_entropy_divergence(logits, None, None)
    result["entropy"] = entropy[tokens].mean().item()
    if base_logits is not None:
        for name in BASE_DIVERGENCES:
            result[name] = get_divergence(name).full(logits, base_logits)[tokens].mean().item()
    return result
