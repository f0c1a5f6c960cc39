"""What the TRL adapter computes once per generation batch, after TRL has scored it: per-rollout statistics over
all processes, one no-grad pass of the rollout policy when a method needs its vocabulary statistics, and the
methods fed by them (advantage reweighting, the curriculum's pass-rate update, the scheduled coefficient, SIREN's
anchor). Also SELF's greedy filter, which runs *before* the rollouts. Formulas live in the core; this module only
translates TRL's batch into the core's tensors and back.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import gather_object
from torch import Tensor

from ..groups import group_mean
from ..reweighting import Rollouts
from ..seeding import derive_seed
from .forward import ForwardRequest

if TYPE_CHECKING:
    from .trainer import DivergenceGRPOTrainer

#: dataset column holding each prompt's row number (added by the trainer when a curriculum is configured)
INDEX_COLUMN = "td_prompt_index"


def needs_rollout_statistics(trainer: DivergenceGRPOTrainer) -> bool:
    return bool(
        trainer.token_masks
        or trainer.reweighting is not None
        or trainer.curriculum is not None
        or trainer.schedule is not None
        or trainer.divergence.name == "lp_reg"
    )


def nucleus_mask(trainer: DivergenceGRPOTrainer):
    """The configured mask that needs the top-p entropy (SIREN), or None."""
    return next((m for m in trainer.token_masks if m.top_p is not None), None)


def _min_p(trainer: DivergenceGRPOTrainer) -> float | None:
    if trainer.divergence.name == "lp_reg":
        return trainer.divergence.kappa
    return next((m.min_p for m in trainer.token_masks if m.min_p is not None), None)


def rollout_policy_pass(
    trainer: DivergenceGRPOTrainer, output: dict[str, Any], request: ForwardRequest
) -> tuple[Tensor, ForwardRequest]:
    """One no-grad forward of the rollout policy π_old over the batch, through TRL's fused path (so the log-probs are
    TRL's): (per-token log-probs [B, C], the request with its results)."""
    input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    trainer._forward_request = request
    try:
        with torch.no_grad():
            logps, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model,
                input_ids,
                attention_mask,
                request.n_completion,
                batch_size=trainer.args.per_device_train_batch_size,
            )
    finally:
        trainer._forward_request = None
    return logps, request


def apply_rollout_methods(trainer: DivergenceGRPOTrainer, output: dict[str, Any], inputs: list[dict]) -> None:
    """Add to ``output`` (this process's rows) what the configured methods need at loss time and update their state
    (state only in training: evaluation batches never move a curriculum, a schedule or an anchor)."""
    acc, training = trainer.accelerator, trainer.model.training
    metrics = trainer._metrics["train" if training else "eval"]
    rewards = trainer.total_rewards()
    n_local = output["completion_ids"].size(0)
    local = slice(acc.process_index * n_local, (acc.process_index + 1) * n_local)
    group_size = trainer.num_generations if training else trainer.num_generations_eval
    group_ids = torch.arange(rewards.numel(), device=rewards.device) // group_size
    correct = torch.nan_to_num(rewards, nan=float("-inf")) >= trainer.args.correct_reward_threshold
    mask = output["completion_mask"] * output.get("tool_mask", 1)
    output["correct"] = correct[local].float()

    siren, min_p = nucleus_mask(trainer), _min_p(trainer)
    anchor_needed = siren is not None and siren.anchor is None
    penultimate = trainer.reweighting is not None and "hidden" in trainer.reweighting.requires
    ace = trainer.reweighting is not None and "seq_log_ratio" in trainer.reweighting.requires
    old_logps = output.get("old_per_token_logps")
    if min_p is not None or anchor_needed or penultimate or (ace and old_logps is None):
        request = ForwardRequest(
            n_completion=output["completion_ids"].size(1),
            temperature=trainer.temperature,
            cast_fp32=trainer.args.cast_lm_head_to_fp32,
            top_p=siren.top_p if anchor_needed else None,
            top_k=siren.top_k if anchor_needed else 10000,
            min_p=min_p,
            penultimate=penultimate,
        )
        rollout_logps, request = rollout_policy_pass(trainer, output, request)
        old_logps = rollout_logps if old_logps is None else old_logps
        if min_p is not None:
            output["proxy_per_token_logps"] = request.result("proxy_logp")
        if anchor_needed:
            means, _ = siren.response_means(request.result("topp_entropy"), mask)
            totals = acc.reduce(torch.stack([means.sum(), torch.tensor(float(means.numel()), device=means.device)]))
            siren.set_anchor((totals[0] / totals[1].clamp(min=1.0)).item())

    if trainer.reweighting is not None:
        lengths = acc.gather(mask.sum(-1).float())
        seq_log_ratio = None
        if ace:
            seq_log_ratio = acc.gather(((old_logps - output["ref_per_token_logps"]) * mask).sum(-1).float())
        rollouts = Rollouts(
            rewards=rewards,
            advantages=acc.gather(output["advantages"]),
            group_ids=group_ids,
            correct=correct,
            lengths=lengths,
            local=local,
            seq_log_ratio=seq_log_ratio,
            completion_mask=mask,
            hidden=request.result("penultimate") if penultimate else None,
        )
        result = trainer.reweighting(rollouts)
        output["advantages"] = result.advantages.to(output["advantages"].dtype)
        if result.divergence_weight is not None:
            output["divergence_weight"] = result.divergence_weight
        if result.keep is not None:
            tool_mask = output.get("tool_mask", torch.ones_like(output["completion_mask"]))
            output["tool_mask"] = tool_mask * result.keep.to(tool_mask.dtype).unsqueeze(-1)
            output["num_items_in_batch"] = acc.gather((output["completion_mask"] * output["tool_mask"]).sum()).sum()
        for key, value in result.metrics.items():
            metrics[f"reweighting/{trainer.reweighting.name}/{key}"].append(value)

    if not training:
        return
    if trainer.curriculum is not None and trainer.curriculum.kind == "sampler":
        _update_curriculum(trainer, inputs, correct, group_ids, metrics)
    if trainer.schedule is not None:
        accuracy = correct.float().mean().item() if trainer.schedule.needs_accuracy else None
        multiplier, name = trainer.schedule(trainer.state.global_step, trainer.state.max_steps, accuracy)
        trainer._coef_now = trainer.divergence_coef * multiplier
        if name is not None and name != trainer._divergence_now.name:
            trainer._divergence_now = trainer._scheduled_divergence(name)


def _update_curriculum(trainer, inputs: list[dict], correct: Tensor, group_ids: Tensor, metrics) -> None:
    """Fold each group's pass rate into the curriculum's table (indices gathered in TRL's process-major order)."""
    indices = torch.tensor(gather_object([row[INDEX_COLUMN] for row in inputs]))
    pass_rates = group_mean(correct.double(), group_ids)
    first = torch.cat([torch.ones(1, dtype=torch.bool), group_ids[1:] != group_ids[:-1]]).cpu()
    trainer.curriculum.update(indices[first], pass_rates.cpu()[first])
    table = trainer.curriculum.pass_rates
    weights = trainer.curriculum.weights()
    probs = weights / weights.sum()
    prefix = f"curriculum/{trainer.curriculum.name}"
    metrics[f"{prefix}/batch_pass_rate"].append(pass_rates.mean().item())
    metrics[f"{prefix}/mean_pass_rate_estimate"].append(table.mean().item())
    metrics[f"{prefix}/effective_prompts"].append((1.0 / (probs**2).sum()).item())


# ---- SELF: greedy filter before the rollouts ------------------------------------------------------------------------
def _greedy_correct(trainer: DivergenceGRPOTrainer, rows: list[dict]) -> list[bool]:
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
    trainer._calculate_rewards(rows, prompts, completions, completion_ids)
    rewards = trainer.total_rewards()
    n = len(rows)
    start = trainer.accelerator.process_index * n
    local = torch.nan_to_num(rewards[start : start + n], nan=float("-inf"))
    return (local >= trainer.args.correct_reward_threshold).tolist()


def greedy_filter(trainer: DivergenceGRPOTrainer, inputs: list[dict]) -> tuple[list[dict], bool]:
    """SELF's filter (:class:`~trl_divergences.curricula.self_filter.SelfCurriculum`) on this process's generation
    batch: (the new inputs, each prompt repeated G times as TRL's sampler lays them out; True when nothing is left and
    the step must train on nothing)."""
    acc, curriculum = trainer.accelerator, trainer.curriculum
    group = trainer.num_generations
    rows = inputs[::group]
    kept = [row for row, ok in zip(rows, _greedy_correct(trainer, rows), strict=True) if not ok]
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
        refills += [row for row, ok in zip(candidates, _greedy_correct(trainer, candidates), strict=True) if not ok]
    plan = curriculum.plan(kept, refills, len(rows))
    metrics = trainer._metrics["train"]
    metrics["curriculum/self/kept_fraction"].append(len(kept) / len(rows))
    metrics["curriculum/self/refilled_fraction"].append(min(len(refills), len(rows) - len(kept)) / len(rows))
    if plan is None:
        return inputs, True
    return [row for row in plan for _ in range(group)], False
