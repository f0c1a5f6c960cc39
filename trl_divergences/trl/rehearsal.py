"""TRL side of reference-sample rehearsal (DPH-RL, "The Choice of Divergence", 2025): the per-micro-batch term.

Each training micro-batch (each ``_compute_loss`` call) adds ``rehearsal_coef ×`` the token-mean rehearsal loss
(:mod:`trl_divergences.rehearsal.loss`) of ``rehearsal_batch_size`` stored samples, divided by the gradient
accumulation steps like TRL's own loss. The policy log-probs come from TRL's fused log-prob path (no full logits).
DPH-RL instead appends 256 stored samples per 2048 RL samples as separate micro-batches; mixing in every micro-batch
gives the same expected gradient direction with less variance per step (see the rehearsal README for the scale).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from ..rehearsal.store import PROMPTS, load_meta, load_store, pack_samples, prompt_key, scatter_completion
from ..rehearsal.stream import RehearsalStream

STATE_FILE = "rehearsal_stream.json"


def exploration_only(dataset, store: str | Path):
    """``dataset`` without the store's perfect prompts (DPH-RL runs RL on D_exp only); matched by prompt."""
    perfect = {prompt_key(row["prompt"]) for row in load_store(store, PROMPTS) if row["perfect"]}
    return dataset.filter(lambda row: prompt_key(row["prompt"]) not in perfect)


class Rehearsal:
    """The store and its stream of one trainer; :meth:`term` feeds a batch of it to the objective's rehearsal term."""

    def __init__(self, args: Any, pad_id: int) -> None:
        meta = load_meta(args.rehearsal_dataset)
        stored_temperature = meta["config"]["temperature"]
        if stored_temperature != args.temperature:
            raise ValueError(
                f"the rehearsal store holds ρ's log-probs at temperature {stored_temperature}, but training runs at "
                f"temperature {args.temperature}: u = π/ρ must compare both at the same temperature"
            )
        self.samples = load_store(args.rehearsal_dataset).select_columns(["prompt_ids", "completion_ids", "ref_logps"])
        self.stream = RehearsalStream(len(self.samples), seed=args.seed)
        self.batch_size, self.pad_id = args.rehearsal_batch_size, pad_id

    def term(self, trainer: Any, model: Any, inputs: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """(the objective's rehearsal term on the next batch of the stream, scaled for gradient accumulation;
        its metrics)."""
        acc = trainer.accelerator
        indices = self.stream.next_indices(self.batch_size * acc.num_processes)
        rows = self.samples[indices[acc.process_index * self.batch_size : (acc.process_index + 1) * self.batch_size]]
        device = inputs["completion_ids"].device
        input_ids, attention_mask, completion_mask = pack_samples(
            rows["prompt_ids"], rows["completion_ids"], self.pad_id, device
        )
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, input_ids.size(1) - 1, batch_size=trainer.args.per_device_train_batch_size
        )
        mask = completion_mask[:, 1:]
        ref_logps = scatter_completion(rows["ref_logps"], completion_mask)[:, 1:]
        rl_tokens = inputs["completion_mask"] * inputs.get("tool_mask", 1)
        term, metrics = trainer.objective.rehearsal_term(
            logps, ref_logps, mask, rl_tokens, lambda x: acc.reduce(x, reduction="sum")
        )
        return term / trainer.current_gradient_accumulation_steps, metrics

    def save(self, folder: str | Path) -> None:
        (Path(folder) / STATE_FILE).write_text(json.dumps(self.stream.state_dict()))

    def load(self, folder: str | Path) -> None:
        path = Path(folder) / STATE_FILE
        if path.is_file():
            self.stream.load_state_dict(json.loads(path.read_text()))
