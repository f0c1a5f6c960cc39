"""Tiny Qwen2 base policy for the toy task, pretrained locally by plain SFT and cached on disk.

The SFT data give every prompt a base policy with pass@1 well below pass@k (research/toy-task-findings.md):
a per-prompt share q of correct answers (log-uniform in [0.1, 0.9]; 30% "hard" prompts log-uniform in
[0.015, 0.06]), spread Zipf-wise (weight ∝ rank^−s) over a random order of the prompt's valid answers; the rest,
1 − q, goes Zipf-wise to near misses (a + b = n ± 1, n ± 2). Folders load with
``AutoModelForCausalLM.from_pretrained`` and :func:`~trl_divergences.toy.tokenizer.load_tokenizer`.

The toy *teacher* (:func:`build_teacher_model`, for the teacher-guided methods) is built by the same recipe with
:data:`TEACHER_CONFIG`: the same task, prompts and tokenizer, a wider network trained 1.6× as long on SFT data
whose answers are mostly correct (q log-uniform in [0.7, 0.95] for every prompt, no hard prompts).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .task import MAX_TERM, N_MAX, N_MIN, valid_answers
from .tokenizer import VOCAB, build_tokenizer

#: bump when the data generation or training loop changes, so that stale cached models are not reused
FORMAT_VERSION = 1
CACHE_ENV = "TRL_DIVERGENCES_CACHE"
BUILD_INFO = "toy_build.json"
_N_TERMS = MAX_TERM + 1
_NEAR_MISS_OFFSETS = (-2, -1, 1, 2)


@dataclass(frozen=True)
class BaseModelConfig:
    """Architecture, SFT data and training hyper-parameters of the base model (all enter the cache key)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    steps: int = 2500
    batch_size: int = 256
    lr: float = 3e-3
    warmup_steps: int = 100
    zipf_s: float = 1.2
    share_range: tuple[float, float] = (0.1, 0.9)
    hard_fraction: float = 0.3
    hard_share_range: tuple[float, float] = (0.015, 0.06)


#: the toy teacher: the base recipe, wider (H = 160, so the exact path sees H_τ ≠ H), 1.6× the SFT steps, and SFT
#: data whose answers are mostly correct on every prompt (pass@1 well above the base's)
TEACHER_CONFIG = BaseModelConfig(
    hidden_size=160,
    intermediate_size=320,
    steps=4000,
    share_range=(0.7, 0.95),
    hard_fraction=0.0,
)


def default_cache_dir() -> Path:
    """``$TRL_DIVERGENCES_CACHE`` if set, else ``~/.cache/trl_divergences``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "trl_divergences")


def _qwen2_config(config: BaseModelConfig):
    from transformers import Qwen2Config

    tok = {t: i for i, t in enumerate(VOCAB)}
    return Qwen2Config(
        vocab_size=len(VOCAB),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=tok["<pad>"],
        eos_token_id=tok["<eos>"],
    )


def _new_model(config: BaseModelConfig, seed: int):
    from transformers import GenerationConfig, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(_qwen2_config(config))
    model.generation_config = GenerationConfig(
        eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id
    )
    return model


def _save(model, folder: Path) -> None:
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)


def build_random_model(path: str | Path, seed: int = 0, config: BaseModelConfig | None = None) -> Path:
    """Save an untrained tiny Qwen2 model (seeded init) and the toy tokenizer to ``path``; returns it."""
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        _save(_new_model(config or BaseModelConfig(), seed), path)
    return path


def _zipf(k: int, s: float) -> np.ndarray:
    weights = np.arange(1, k + 1, dtype=np.float64) ** -s
    return weights / weights.sum()


def _log_uniform(rng: np.random.Generator, low_high: tuple[float, float]) -> float:
    low, high = low_high
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def answer_table(config: BaseModelConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SFT target distribution: probs [N_PROMPTS, 50·50] over answers (a, b) ↦ 50a + b, correct shares q [N_PROMPTS].

    Row i is prompt n = 10 + i; its correct answers carry q in total, its near misses 1 − q.
    """
    rng = np.random.default_rng(seed)
    targets = range(N_MIN, N_MAX + 1)
    probs = np.zeros((len(targets), _N_TERMS * _N_TERMS))
    shares = np.zeros(len(targets))
    for i, n in enumerate(targets):
        hard = rng.random() < config.hard_fraction
        q = _log_uniform(rng, config.hard_share_range if hard else config.share_range)
        near = [(a, m - a) for m in (n + d for d in _NEAR_MISS_OFFSETS) for a, _ in valid_answers(m)]
        for answers, mass in ((valid_answers(n), q), (near, 1.0 - q)):
            order = rng.permutation(len(answers))
            cells = [_N_TERMS * answers[j][0] + answers[j][1] for j in order]
            probs[i, cells] = mass * _zipf(len(answers), config.zipf_s)
        shares[i] = q
    return probs, shares


def _batches(probs: np.ndarray, config: BaseModelConfig, seed: int):
    """Yield token batches [batch, 6] = ``S n = a b <eos>``: prompt uniform, answer from its row of ``probs``."""
    tok = {t: i for i, t in enumerate(VOCAB)}
    number_ids = torch.tensor([tok[str(i)] for i in range(N_MAX + 1)])
    cdf = torch.from_numpy(probs).cumsum(dim=1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(config.steps):
        rows = torch.randint(len(cdf), (config.batch_size,), generator=gen)
        u = torch.rand(config.batch_size, 1, generator=gen, dtype=cdf.dtype)
        cells = torch.searchsorted(cdf[rows], u * cdf[rows, -1:]).squeeze(-1)  # inverse-CDF sampling
        cols = [
            torch.full_like(rows, tok["S"]),
            number_ids[rows + N_MIN],
            torch.full_like(rows, tok["="]),
            number_ids[cells // _N_TERMS],
            number_ids[cells % _N_TERMS],
            torch.full_like(rows, tok["<eos>"]),
        ]
        yield torch.stack(cols, dim=1)


def _pretrain(config: BaseModelConfig, seed: int, progress: bool):
    """Plain SFT (AdamW, linear warm-up then cosine decay) with the loss on the answer tokens and ``<eos>`` only."""
    probs, _ = answer_table(config, seed)
    return sft(_new_model(config, seed), _batches(probs, config, seed), config, prompt_len=3, progress=progress)


def sft(model, batches, config, *, prompt_len: int, progress: bool):
    """Train ``model`` on token batches [batch, L] whose first ``prompt_len`` tokens are the prompt: cross-entropy on
    the rest (answer and ``<eos>``), AdamW at ``config.lr`` with ``config.warmup_steps`` of linear warm-up, then
    cosine decay over ``config.steps``. Returns (model in eval mode, EMA of the loss)."""
    from tqdm.auto import tqdm

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda step: min(1.0, (step + 1) / config.warmup_steps) * 0.5 * (1.0 + math.cos(math.pi * step / config.steps)),
    )
    bar = tqdm(batches, total=config.steps, desc="toy SFT", disable=not progress)
    loss_ema = float("nan")
    for step, ids in enumerate(bar):
        logits = model(input_ids=ids[:, :-1]).logits[:, prompt_len - 1 :]  # positions that predict the answer
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, prompt_len:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_ema = loss.item() if step == 0 else 0.98 * loss_ema + 0.02 * loss.item()
        if step % 50 == 0 or step == config.steps - 1:
            bar.set_postfix(loss=f"{loss_ema:.3f}")
    model.eval()
    return model, loss_ema


def cache_key(config: BaseModelConfig, seed: int) -> str:
    """Hex digest of everything that determines the base model (config, seed, vocabulary, format version)."""
    blob = json.dumps({"config": asdict(config), "seed": seed, "vocab": VOCAB, "v": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_base_model(
    cache_dir: str | Path | None = None,
    seed: int = 0,
    *,
    config: BaseModelConfig | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Return the folder of the pretrained toy base model, building it on first use (~1–2 min on 2 CPU cores).

    ``overrides`` replace fields of ``config`` (e.g. ``steps=10``). The folder, ``<cache>/toy-base-<key>``, is
    written to a temporary directory and renamed into place, so concurrent builders never see a partial folder.
    """
    return _build("toy-base", replace(config or BaseModelConfig(), **overrides), seed, cache_dir, progress)


def build_teacher_model(
    cache_dir: str | Path | None = None,
    seed: int = 0,
    *,
    config: BaseModelConfig | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Return the folder of the toy teacher (:data:`TEACHER_CONFIG` unless ``config`` is given), building it on first
    use like :func:`build_base_model` (cached as ``<cache>/toy-teacher-<key>``). Same vocabulary and tokenizer as the
    base model."""
    return _build("toy-teacher", replace(config or TEACHER_CONFIG, **overrides), seed, cache_dir, progress)


def _build(prefix: str, config, seed: int, cache_dir: str | Path | None, progress: bool, pretrain=None) -> Path:
    """Cached build: ``<cache>/<prefix>-<cache_key(config, seed)>``, trained by ``pretrain(config, seed, progress)``
    (default :func:`_pretrain`, the demo task's SFT) when the folder is missing."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / f"{prefix}-{cache_key(config, seed)}"
    if (final / BUILD_INFO).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    # one thread: the matrices are too small to gain from more on 2 cores, OpenMP threads spin badly when the cores
    # are shared with other processes, and a fixed count keeps the float reductions (hence the weights) reproducible
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            model, loss = (pretrain or _pretrain)(config, seed, progress)
    finally:
        torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        _save(model, tmp)
        info = {"config": asdict(config), "seed": seed, "final_loss": loss, "seconds": time.perf_counter() - start}
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2))
        os.rename(tmp, final)
    except OSError:
        if not (final / BUILD_INFO).is_file():  # not a lost race against another builder
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
