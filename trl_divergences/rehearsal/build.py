"""Offline step of reference-sample rehearsal (DPH-RL, "The Choice of Divergence", 2025).

Sample k completions per training prompt from the base model ρ (DPH-RL: T = 1, top-p 0.95, no top-k), score them
with the user's reward functions, split the prompts into *perfect* (all k correct: D_pef) and *exploration* (the
rest: D_exp), and store the correct completions of the perfect prompts with ρ's per-token log-probs (the layout is
in :mod:`.store`). The RL run then needs no reference model.

Reproducible and resumable: prompt i is sampled with its own seed ``derive_seed(seed, i)`` in its own ``generate``
call (one prompt, k rows, no padding), so a result never depends on batching or on where a run was interrupted;
every file is written to a temporary name and renamed into place (a build killed at any point leaves only
complete files besides its temporaries, which the next run deletes), and finished shards are skipped. Framework-
agnostic apart from HF ``generate``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .store import EXPLORATION, META, PROMPTS, SAMPLES, SHARDS, derive_seed, pack_samples

RewardFunc = Callable[..., list[float]]


@dataclass(frozen=True)
class BuildConfig:
    """Sampling and split settings (DPH-RL's: k = 8, T = 1.0, top-p 0.95; correct = summed reward ≥ threshold)."""

    k: int = 8
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int = 0
    shard_size: int = 64
    correct_threshold: float = 1.0

    def __post_init__(self) -> None:
        if self.k < 1 or self.shard_size < 1 or self.max_new_tokens < 1:
            raise ValueError("k, shard_size and max_new_tokens must be positive")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")


def _prompt_ids(tokenizer, prompt: Any) -> list[int]:
    text = (
        prompt
        if isinstance(prompt, str)
        else tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _rng_devices(model) -> list[int]:
    return [model.device.index or 0] if model.device.type == "cuda" else []


@torch.no_grad()
def _sample(model, tokenizer, prompt_ids: list[int], config: BuildConfig, seed: int) -> list[list[int]]:
    """k completions of one prompt (up to and including the first EOS), sampled with ``seed``."""
    ids = torch.tensor([prompt_ids] * config.k, device=model.device)
    with torch.random.fork_rng(devices=_rng_devices(model)):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=0,
            max_new_tokens=config.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    completions = []
    for row in out[:, len(prompt_ids) :].tolist():
        end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        completions.append(row[:end])
    return completions


@torch.no_grad()
def completion_logps(
    model, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]], temperature: float, pad_id: int
) -> list[list[float]]:
    """Per-token log-probs (fp32, logits / temperature) of each completion given its prompt, one unpadded-position
    row per sample (:func:`.store.pack_samples`)."""
    input_ids, attention_mask, completion_mask = pack_samples(prompt_ids, completion_ids, pad_id, model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float() / temperature
    logps = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = completion_mask[:, 1:].bool()
    return [logps[row][mask[row]].tolist() for row in range(len(logps))]


def _score(reward_funcs: Sequence[RewardFunc], row: dict[str, Any], completions: list[str], ids) -> list[float]:
    """Summed reward of each completion; the funcs get TRL's arguments (prompts, completions, completion_ids and
    the other dataset columns, one entry per completion)."""
    k = len(completions)
    columns = {key: [value] * k for key, value in row.items() if key != "prompt"}
    totals = [0.0] * k
    for func in reward_funcs:
        values = func(prompts=[row["prompt"]] * k, completions=completions, completion_ids=ids, **columns)
        totals = [t + (0.0 if v is None else float(v)) for t, v in zip(totals, values, strict=True)]
    return totals


def _temporary(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place (:func:`_remove_temporaries` matches the name)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _remove_temporaries(folder: Path) -> None:
    """Delete what an interrupted build left half-written in ``folder`` (its temporaries are never read)."""
    import shutil

    for tmp in folder.glob(".*.tmp-*"):
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink()


def _write_atomic_text(text: str, path: Path) -> None:
    tmp = _temporary(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_atomic_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = _temporary(path)
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)


def _save_dataset_atomic(dataset, path: Path) -> None:
    import shutil

    tmp = _temporary(path)
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _check_or_write_settings(output: Path, settings: dict[str, Any]) -> None:
    path = output / "build.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != settings:
            raise ValueError(f"{output} holds a store built with other settings {saved}; use a new --output")
    else:
        _write_atomic_text(json.dumps(settings, indent=2), path)


def build_store(
    model,
    tokenizer,
    dataset,
    reward_funcs: RewardFunc | Sequence[RewardFunc],
    output_dir: str | Path,
    config: BuildConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample, score, split and store (see the module docstring); returns the store's ``meta.json`` content.

    ``dataset`` needs a ``prompt`` column (string or conversational messages). Re-running on the same
    ``output_dir`` resumes: finished shards are skipped, the result is bit-identical to an uninterrupted build.
    """
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    config = config or BuildConfig()
    funcs = list(reward_funcs) if isinstance(reward_funcs, Sequence) else [reward_funcs]
    output = Path(output_dir)
    (output / SHARDS).mkdir(parents=True, exist_ok=True)
    _remove_temporaries(output)
    _remove_temporaries(output / SHARDS)
    settings = {"config": asdict(config), "n_prompts": len(dataset), "model": str(model.config._name_or_path)}
    _check_or_write_settings(output, settings)

    model.eval()
    n_shards = -(-len(dataset) // config.shard_size)
    shard_paths = [output / SHARDS / f"shard-{s:05d}.parquet" for s in range(n_shards)]
    bar = tqdm(total=len(dataset), desc="rehearsal store", unit="prompt", disable=not progress)
    for shard, path in enumerate(shard_paths):
        indices = range(shard * config.shard_size, min((shard + 1) * config.shard_size, len(dataset)))
        if path.is_file():
            bar.update(len(indices))
            continue
        rows = []
        for index in indices:
            row = dataset[index]
            prompt_ids = _prompt_ids(tokenizer, row["prompt"])
            completions = _sample(model, tokenizer, prompt_ids, config, derive_seed(config.seed, index))
            texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
            rewards = _score(funcs, row, texts, completions)
            logps = completion_logps(
                model, [prompt_ids] * config.k, completions, config.temperature, tokenizer.pad_token_id
            )
            for ids, text, reward, lp in zip(completions, texts, rewards, logps, strict=True):
                rows.append(
                    {
                        "prompt_index": index,
                        "prompt_ids": prompt_ids,
                        "completion_ids": ids,
                        "ref_logps": lp,
                        "completion": text,
                        "reward": reward,
                    }
                )
            bar.update(1)
        _write_atomic_parquet(rows, path)
    bar.close()

    table = datasets.Dataset(pa.concat_tables([pq.read_table(p) for p in shard_paths]))
    correct = [r >= config.correct_threshold for r in table["reward"]]
    n_correct = [0] * len(dataset)
    for index, ok in zip(table["prompt_index"], correct, strict=True):
        n_correct[index] += ok
    perfect = [c == config.k for c in n_correct]
    keep = [i for i, (index, ok) in enumerate(zip(table["prompt_index"], correct)) if ok and perfect[index]]
    prompts = dataset["prompt"]
    samples = table.select(keep)
    samples = samples.add_column("prompt", [prompts[i] for i in samples["prompt_index"]])
    _save_dataset_atomic(samples, output / SAMPLES)
    _save_dataset_atomic(
        datasets.Dataset.from_dict(
            {"prompt_index": list(range(len(dataset))), "prompt": prompts, "n_correct": n_correct, "perfect": perfect}
        ),
        output / PROMPTS,
    )
    _save_dataset_atomic(dataset.select([i for i, p in enumerate(perfect) if not p]), output / EXPLORATION)
    meta = {
        **settings,
        "n_perfect": sum(perfect),
        "n_exploration": len(dataset) - sum(perfect),
        "n_samples": len(samples),
        "n_sample_tokens": sum(map(len, samples["completion_ids"])),
    }
    _write_atomic_text(json.dumps(meta, indent=2), output / META)
    return meta
