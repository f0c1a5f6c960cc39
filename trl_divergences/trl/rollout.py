"""TRL ⇄ objective translation at rollout time: TRL's scored generation batch into
:class:`~trl_divergences.objective.RolloutInputs` and the objective's :class:`~trl_divergences.objective.RolloutOutputs`
back into TRL's batch dict; and SELF's greedy filter through TRL's generation path (before the rollouts). No formula
and no composition of methods lives here.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from accelerate.utils import gather_object
from torch import Tensor
from trl import GRPOTrainer

from ..curricula.self_filter import SelfCurriculum
from ..objective import RolloutInputs, RolloutOutputs
from ..seeding import derive_seed

#: dataset column holding each prompt's row number (added by the trainer when a curriculum samples prompts)
INDEX_COLUMN = "td_prompt_index"


def total_rewards(trainer: GRPOTrainer, rewards_per_func: Tensor) -> Tensor:
    """[N] TRL's weighted sum of the reward functions over all processes (NaN where no function scored a row)."""
    rewards = (rewards_per_func * trainer.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    return rewards.masked_fill(torch.isnan(rewards_per_func).all(dim=1), float("nan"))


def completion_tokens(batch: dict[str, Any]) -> Tensor:
    """[n, C] the completion tokens TRL's loss counts (completion mask × tool mask)."""
    mask = batch["completion_mask"]
    return mask * batch["tool_mask"] if "tool_mask" in batch else mask


def gather_values(trainer: GRPOTrainer, values: Tensor) -> Tensor:
    """A 1-D tensor of this process concatenated over all processes (lengths may differ)."""
    acc = trainer.accelerator
    if acc.num_processes == 1:
        return values
    sizes = acc.gather(torch.tensor([values.numel()], device=values.device))
    padded = acc.gather(acc.pad_across_processes(values, dim=0)).view(acc.num_processes, -1)
    return torch.cat([row[:size] for row, size in zip(padded, sizes.tolist(), strict=True)])


def reduce_sum(trainer: GRPOTrainer, values: Tensor) -> Tensor:
    return trainer.accelerator.reduce(values, reduction="sum")


def rollout_inputs(
    trainer: GRPOTrainer,
    output: dict[str, Any],
    rows: list[dict],
    rewards: Tensor,
    old_logps: Tensor | None,
    statistics: dict[str, Tensor],
    with_prompt_index: bool,
) -> RolloutInputs:
    """TRL's generation batch ``output`` (this process's rows) with the gathered ``rewards`` [N]. TRL lays a prompt's
    G rollouts out as consecutive rows, in process-major order."""
    acc = trainer.accelerator
    n_local = output["completion_ids"].size(0)
    group_size = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
    prompt_indices = None
    if with_prompt_index:
        prompt_indices = torch.tensor(gather_object([row[INDEX_COLUMN] for row in rows]))
    return RolloutInputs(
        rewards=rewards,
        advantages=acc.gather(output["advantages"]),
        group_ids=torch.arange(rewards.numel(), device=rewards.device) // group_size,
        local=slice(acc.process_index * n_local, (acc.process_index + 1) * n_local),
        completion_mask=completion_tokens(output),
        old_logps=old_logps,
        ref_logps=output.get("ref_per_token_logps"),
        teacher_logps=output.get("teacher_per_token_logps"),
        teacher_reference_logps=output.get("teacher_reference_per_token_logps"),
        statistics=statistics,
        prompt_indices=prompt_indices,
        gather=acc.gather,
        reduce_sum=lambda x: reduce_sum(trainer, x),
    )


def write_rollout_outputs(trainer: GRPOTrainer, output: dict[str, Any], result: RolloutOutputs) -> None:
    """Put the objective's per-rollout values into TRL's batch dict: the advantages, ``correct``, the penalty's
    per-rollout weights, the proxy log-probs; dropped rollouts leave through TRL's ``tool_mask`` (and
    ``num_items_in_batch`` is recounted so token-count normalisers see it)."""
    output["advantages"] = result.advantages
    output["correct"] = result.correct.float()
    if result.divergence_weight is not None:
        output["divergence_weight"] = result.divergence_weight
    if result.proxy_logps is not None:
        output["proxy_per_token_logps"] = result.proxy_logps
    if result.keep is not None:
        tool_mask = output.get("tool_mask", torch.ones_like(output["completion_mask"]))
        output["tool_mask"] = tool_mask * result.keep.to(tool_mask.dtype).unsqueeze(-1)
        output["num_items_in_batch"] = trainer.accelerator.gather(completion_tokens(output).sum()).sum()


# ---- SELF: greedy filter before the rollouts ------------------------------------------------------------------------
def _greedy_correct(trainer: GRPOTrainer, rows: list[dict], threshold: float) -> list[bool]:
    """Greedy-decode one completion per row with the current policy (TRL's generation path, sampling off) and say
    which ones reach the correctness threshold. Every process must call this with the same number of rows."""
    from trl.data_utils import is_conversational

    prompts = [row["prompt"] for row in rows]
    prompt_ids, images, multimodal = trainer._tokenize_prompts(prompts)
    greedy = copy.deepcopy(trainer.generation_config)
    greedy.do_sample, greedy.temperature, greedy.top_p, greedy.top_k, greedy.min_p = False, None, None, None, None
    saved, trainer.generation_config = trainer.generation_config, greedy
    try:
        completion_ids, _ = trainer._generate_single_turn(prompt_ids, images, multimodal, 1)
    finally:
        trainer.generation_config = saved
    texts = trainer.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
    if is_conversational({"prompt": prompts[0]}):
        completions = [[{"role": "assistant", "content": text}] for text in texts]
    else:
        completions = texts
    rewards = total_rewards(trainer, trainer._calculate_rewards(rows, prompts, completions, completion_ids))
    n = len(rows)
    start = trainer.accelerator.process_index * n
    local = torch.nan_to_num(rewards[start : start + n], nan=float("-inf"))
    return (local >= threshold).tolist()


def greedy_filter(
    trainer: GRPOTrainer, inputs: list[dict], curriculum: SelfCurriculum, threshold: float
) -> tuple[list[dict], bool, dict[str, float]]:
    """SELF's filter (:class:`~trl_divergences.curricula.self_filter.SelfCurriculum`) on this process's generation
    batch: (the new inputs, each prompt repeated G times as TRL's sampler lays them out; True when nothing is left and
    the step must train on nothing; metrics)."""
    acc = trainer.accelerator
    group = trainer.num_generations
    rows = inputs[::group]
    kept = [row for row, ok in zip(rows, _greedy_correct(trainer, rows, threshold), strict=True) if not ok]
    refills: list[dict] = []
    for round_index in range(curriculum.refill_rounds):
        missing = acc.reduce(torch.tensor([len(rows) - len(kept) - len(refills)], device=acc.device), "max")
        if missing.item() <= 0:
            break
        gen = torch.Generator().manual_seed(
            derive_seed("self", trainer.args.seed, trainer.state.global_step, acc.process_index, round_index)
        )
        picks = torch.randint(len(trainer.train_dataset), (len(rows),), generator=gen).tolist()
        candidates = [trainer.train_dataset[i] for i in picks]
        refills += [
            row for row, ok in zip(candidates, _greedy_correct(trainer, candidates, threshold), strict=True) if not ok
        ]
    plan = curriculum.plan(kept, refills, len(rows))
    metrics = {
        "curriculum/self/kept_fraction": len(kept) / len(rows),
        "curriculum/self/refilled_fraction": min(len(refills), len(rows) - len(kept)) / len(rows),
    }
    if plan is None:
        return inputs, True, metrics
    return [row for row in plan for _ in range(group)], False, metrics
