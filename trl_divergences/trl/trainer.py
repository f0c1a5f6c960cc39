"""``DivergenceGRPOTrainer``: TRL 1.16's ``GRPOTrainer`` with the divergence penalty swapped and the method catalog
(token masks, advantage reweighting, curricula, schedules) plugged in at TRL's narrowest seams.

Overridden (all private TRL methods below are covered by tests that fail if TRL changes them):

* ``__init__``: builds the configured methods; TRL loads and wraps the reference model when one is needed (the
  divergence with ``beta != 0``, or a method that reads ρ: ACE, EKSFT) and only then. The policy's fused forward is
  wrapped once more (:mod:`.forward`) so that vocabulary statistics (exact divergences, SIREN's top-p entropy,
  Lp-Reg's proxy) are computed *inside* the model's forward (DDP/FSDP see one forward).
* ``_get_train_sampler``: a curriculum's weighted sampler with ``RepeatSampler``'s layout.
* ``_calculate_rewards``: keeps the gathered rewards (correctness, pass rates).
* ``_generate_and_score_completions``: SELF's greedy filter before the rollouts; after TRL's scoring, the reference
  hidden states for exact divergences, the per-rollout statistics and everything computed once per generation
  batch (:mod:`.rollout`: reweighted advantages, the proxy, the curriculum update, the scheduled coefficient).
* ``_get_per_token_logps_and_entropies``: records the policy log-probs of the loss forward (with their graph).
* ``get_high_entropy_mask``: during our loss, returns the composition of the configured token masks (TRL applies it
  to the policy-gradient term and the entropy bonus, not to the penalty).
* ``_compute_loss``: runs TRL's loss with TRL's own k3 switched off (``self.beta = 0`` for the duration) unless the
  penalty is exactly TRL's, then adds the chosen divergence (× coefficient in force, × per-rollout weights),
  the masks' auxiliary losses, Lp-Reg's term and the rehearsal term, each aggregated like TRL's loss.
* ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: save and restore the methods' state.

With every new field at its default, TRL's code runs untouched.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.trainer.utils import use_adapter

from ..curricula import CurriculumSampler
from ..divergences import get_divergence
from ..masks import TokenBatch, compose_token_masks
from .config import FULL, DivergenceGRPOConfig
from .forward import (
    ForwardRequest,
    check_plain_lm_head,
    hf_model,
    install_forward_request_hook,
    is_peft,
    lm_head_weight,
)
from .rehearsal import Rehearsal, exploration_only
from .rollout import INDEX_COLUMN, apply_rollout_methods, greedy_filter, needs_rollout_statistics, nucleus_mask

STATE_FILE = "trl_divergences_state.json"


def trl_loss_normalize(trainer: GRPOTrainer, per_token: Tensor, mask: Tensor, inputs: dict[str, Any]) -> Tensor:
    """Aggregate a per-token term [B, T] exactly as TRL 1.16's ``_compute_loss`` aggregates its per-token loss for
    ``trainer.loss_type`` (including the gradient-accumulation scaling), so that adding it to TRL's loss equals
    adding it to TRL's per-token loss."""
    mode = "train" if trainer.model.training else "eval"
    accumulation = trainer.current_gradient_accumulation_steps if mode == "train" else 1.0
    loss_type = trainer.loss_type
    masked = per_token * mask
    if loss_type in ("grpo", "sapo"):
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0) / accumulation
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token.size(0) * trainer.max_completion_length) / accumulation
    if loss_type in ("cispo", "dapo", "vespo"):
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / trainer.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * trainer.current_gradient_accumulation_steps / trainer.args.steps_per_generation
        return masked.sum() / normalizer
    if loss_type == "luspo":
        return masked.sum(-1).mean() / accumulation
    raise ValueError(f"unsupported loss_type {loss_type!r} for the divergence penalty")


class DivergenceGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose KL penalty is any registered divergence, estimated per token by a sampled estimator or
    exactly over the vocabulary, plus the configured token masks, advantage reweighting, curriculum and coefficient
    schedule. Use with :class:`DivergenceGRPOConfig`; everything else is TRL's."""

    _tag_names = [*GRPOTrainer._tag_names, "trl-divergences"]
    _capturing: bool = False
    _forward_request: ForwardRequest | None = None
    _mask_state: dict[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        train_args = kwargs.get("args", args[2] if len(args) > 2 else None)
        if not isinstance(train_args, DivergenceGRPOConfig):
            raise TypeError(
                f"DivergenceGRPOTrainer needs args=DivergenceGRPOConfig(...), got {type(train_args).__name__}"
            )
        self.divergence = train_args.build_divergence()
        self.token_masks = train_args.build_token_masks()
        self.reweighting = train_args.build_reweighting()
        self.curriculum = train_args.build_curriculum()
        self.schedule = train_args.build_schedule()
        if train_args.rehearsal_dataset and train_args.rehearsal_exploration_only:
            args, kwargs = self._map_train_dataset(
                args, kwargs, lambda d: exploration_only(d, train_args.rehearsal_dataset)
            )
        if self.curriculum is not None:
            args, kwargs = self._map_train_dataset(args, kwargs, _with_prompt_index)
        coef = float(train_args.beta)
        # TRL loads (and wraps) a reference model iff beta != 0: make beta say whether one is needed, then restore it
        train_args.beta = 1.0 if self._needs_reference(coef) else 0.0
        try:
            super().__init__(*args, **kwargs)
        finally:
            train_args.beta = coef
        self.beta = self.divergence_coef = coef
        self._stock_kl = self.args.uses_stock_kl
        self._coef_now, self._divergence_now = coef, self.divergence
        self._captured_logps: Tensor | None = None
        self._rehearsal = (
            Rehearsal(self.args, self.processing_class.pad_token_id) if self.args.rehearsal_dataset else None
        )
        self._rollout_ref_logps = self._needs_sampled_reference_logps()
        self._rollout_ref_hidden = self._needs_reference_hidden()
        vocabulary_stats = (
            self._rollout_ref_hidden
            or any(m.requires & {"topp_entropy", "proxy_logps"} for m in self.token_masks)
            or self.divergence.name == "lp_reg"
        )
        if vocabulary_stats:
            check_plain_lm_head(hf_model(self.model), "a method that recomputes vocabulary statistics")
        install_forward_request_hook(hf_model(self.model), lambda: self._forward_request)
        # from the config: under ZeRO-3 the local lm_head weight is a partition
        self._vocab_size = hf_model(self.model).config.get_text_config().vocab_size

    # ---- which tensors the configuration needs --------------------------------------------------------------------
    def _needs_reference(self, coef: float) -> bool:
        """A frozen reference model: the divergence's (beta != 0), ACE's sampled ρ log-probs, EKSFT's exact KL."""
        return (
            (coef != 0.0 and self.divergence.needs_reference)
            or (self.reweighting is not None and self.reweighting.needs_reference)
            or any(m.needs_reference for m in self.token_masks)
        )

    @property
    def _active(self) -> bool:
        """Our penalty path (not TRL's inline k3) adds the divergence."""
        return self.divergence_coef != 0.0 and not self._stock_kl

    def _needs_sampled_reference_logps(self) -> bool:
        """TRL's rollout-time ρ log-probs of the sampled tokens (sampled estimators, TRL's k3, ACE)."""
        sampled_penalty = (
            self.divergence_coef != 0.0 and self.divergence.needs_reference and self.args.divergence_estimator != FULL
        )
        return sampled_penalty or (self.reweighting is not None and self.reweighting.needs_reference)

    def _needs_reference_hidden(self) -> bool:
        """ρ's final hidden states in the batch: the exact (`full`) penalty, EKSFT's exact KL(π‖ρ)."""
        full = self.divergence_coef != 0.0 and self.args.divergence_estimator == FULL
        return full or any(m.needs_reference for m in self.token_masks)

    def _scheduled_divergence(self, name: str):
        """The divergence a schedule switches to (built once, with the configured divergence_kwargs)."""
        cache = self.__dict__.setdefault("_divergence_cache", {self.divergence.name: self.divergence})
        if name not in cache:
            cache[name] = get_divergence(name, **self.args.divergence_kwargs)
        return cache[name]

    # ---- helpers ----------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _attribute_as(self, name: str, value: Any) -> Iterator[None]:
        """TRL reads ``self.beta`` (ref log-probs, its k3) and ``self.top_entropy_quantile`` (whether to call
        ``get_high_entropy_mask``) from the instance: set one temporarily."""
        saved = getattr(self, name)
        setattr(self, name, value)
        try:
            yield
        finally:
            setattr(self, name, saved)

    @staticmethod
    def _map_train_dataset(args: tuple, kwargs: dict[str, Any], fn) -> tuple[tuple, dict[str, Any]]:
        """Replace the train_dataset argument (positional or keyword) by ``fn(train_dataset)``."""
        if len(args) > 3:
            return (*args[:3], fn(args[3]), *args[4:]), kwargs
        if kwargs.get("train_dataset") is not None:
            kwargs = {**kwargs, "train_dataset": fn(kwargs["train_dataset"])}
        return args, kwargs

    def gather_values(self, values: Tensor) -> Tensor:
        """A 1-D tensor of this process concatenated over all processes (lengths may differ)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return values
        sizes = acc.gather(torch.tensor([values.numel()], device=values.device))
        padded = acc.gather(acc.pad_across_processes(values, dim=0)).view(acc.num_processes, -1)
        return torch.cat([row[:size] for row, size in zip(padded, sizes.tolist(), strict=True)])

    def _reference_backbone_and_head(self) -> tuple[contextlib.AbstractContextManager, Any, Any]:
        """(context, backbone, model with the reference lm_head): the reference model, or under PEFT the policy with
        its adapter disabled (or TRL's 'ref' adapter when it created one)."""
        if self.ref_model is not None:
            ref = self.accelerator.unwrap_model(self.ref_model)
            return contextlib.nullcontext(), ref.base_model, ref
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not is_peft(unwrapped):
            raise RuntimeError("no reference model: construct the trainer with beta != 0")
        adapter = "ref" if "ref" in unwrapped.peft_config else None
        base = unwrapped.get_base_model()
        return use_adapter(unwrapped, adapter), base.base_model, base

    @torch.no_grad()
    def _reference_hidden_states(self, output: dict[str, Any]) -> Tensor:
        """Final hidden states [B, C, H] of the reference at the positions predicting the C completion tokens."""
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        n_completion = output["completion_ids"].size(1)
        ctx, backbone, _ = self._reference_backbone_and_head()
        batch = self.args.per_device_train_batch_size
        chunks = []
        with ctx, self.accelerator.autocast():
            for start in range(0, input_ids.size(0), batch):
                hs = backbone(
                    input_ids=input_ids[start : start + batch],
                    attention_mask=attention_mask[start : start + batch],
                    use_cache=False,
                ).last_hidden_state
                chunks.append(hs[:, :-1][:, -n_completion:])
        return torch.cat(chunks)

    # ---- TRL overrides ----------------------------------------------------------------------------------------------
    def _get_train_sampler(self, dataset=None):
        if self.curriculum is None or self.curriculum.kind != "sampler":
            return super()._get_train_sampler(dataset)
        dataset = self.train_dataset if dataset is None else dataset
        if not hasattr(self, "_curriculum_sampler"):
            self._curriculum_sampler = CurriculumSampler(
                self.curriculum,
                n_prompts=len(dataset),
                mini_repeat_count=self.num_generations,
                batch_size=self.args.generation_batch_size // self.num_generations,
                repeat_count=self.num_iterations * self.args.steps_per_generation,
                seed=self.args.seed,
            )
        return self._curriculum_sampler

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func
        return rewards_per_func

    def total_rewards(self) -> Tensor:
        """[N] total reward of the last scored batch, all processes (TRL's weighted sum; NaN where unscorable)."""
        per_func = self._rewards_per_func
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        return rewards.masked_fill(torch.isnan(per_func).all(dim=1), float("nan"))

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        skip = False
        if self.curriculum is not None and self.curriculum.kind == "filter" and self.model.training:
            inputs, skip = greedy_filter(self, inputs)
        with self._attribute_as("beta", 1.0 if self._rollout_ref_logps else 0.0):
            output = super()._generate_and_score_completions(inputs)
        if skip:
            output["advantages"] = torch.zeros_like(output["advantages"])
        if self._rollout_ref_hidden:
            output["ref_hidden_states"] = self._reference_hidden_states(output)
        if needs_rollout_statistics(self):
            apply_rollout_methods(self, output, inputs)
        return output

    def _get_per_token_logps_and_entropies(self, model, *args: Any, **kwargs: Any):
        result = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        if self._captured_logps is None and self._capturing:
            self._captured_logps = result[0]
        return result

    def get_high_entropy_mask(self, entropies: Tensor, mask: Tensor, threshold: float) -> Tensor:
        """Outside our loss, TRL's. Inside it, TRL's own mask (when ``top_entropy_quantile < 1``) AND the configured
        token masks AND Lp-Reg's complement of its selected tokens."""
        state = getattr(self, "_mask_state", None)
        if state is None:
            return super().get_high_entropy_mask(entropies, mask, threshold)
        keep = mask.bool()
        if self.args.top_entropy_quantile < 1.0:
            keep = super().get_high_entropy_mask(entropies, mask, 1.0 - self.args.top_entropy_quantile)
        batch = self._token_batch(state["inputs"], entropies, mask)
        if self.token_masks:
            ours, state["aux_loss"], state["outputs"] = compose_token_masks(self.token_masks, batch)
            keep = keep & ours
        if self.divergence.name == "lp_reg":
            state["selected"] = self.divergence.select(
                batch.logps, batch.proxy_logps, batch.advantages, mask, self.gather_values
            )
            keep = keep & ~state["selected"]
        return keep

    def _token_batch(self, inputs: dict[str, Any], entropies: Tensor, mask: Tensor) -> TokenBatch:
        request = self._forward_request
        correct = inputs.get("correct")
        return TokenBatch(
            mask=mask,
            logps=self._captured_logps,
            entropies=entropies,
            advantages=inputs["advantages"],
            correct=None if correct is None else correct.bool(),
            topp_entropy=None if request is None else request.get("topp_entropy"),
            reverse_kl=None if request is None else request.get("reverse_kl"),
            proxy_logps=inputs.get("proxy_per_token_logps"),
            vocab_size=self._vocab_size,
            gather=self.gather_values,
        )

    def _loss_request(self, inputs: dict[str, Any]) -> ForwardRequest | None:
        """What the loss forward must compute over the vocabulary (None: nothing beyond TRL's log-probs/entropy)."""
        exact = {}
        if self._active and self.args.divergence_estimator == FULL:
            exact["divergence"] = self._divergence_now
        if any(m.needs_reference for m in self.token_masks):
            exact["reverse_kl"] = get_divergence("reverse_kl")
        siren = nucleus_mask(self)
        if not exact and siren is None:
            return None
        ref_weight = ref_bias = None
        if exact:
            ref_weight, ref_bias = lm_head_weight(self._reference_backbone_and_head()[2])
        return ForwardRequest(
            n_completion=inputs["completion_ids"].size(1),
            temperature=self.temperature,
            cast_fp32=self.args.cast_lm_head_to_fp32,
            exact=exact,
            ref_hidden=inputs.get("ref_hidden_states"),
            ref_weight=None if ref_weight is None else ref_weight.detach(),
            ref_bias=None if ref_bias is None else ref_bias.detach(),
            top_p=None if siren is None else siren.top_p,
            top_k=10000 if siren is None else siren.top_k,
        )

    def _compute_loss(self, model, inputs: dict[str, Any]) -> Tensor:
        mode = "train" if self.model.training else "eval"
        uses_masks = bool(self.token_masks) or self.divergence.name == "lp_reg"
        self._captured_logps, self._capturing = None, True
        self._forward_request = self._loss_request(inputs)
        self._mask_state = {"inputs": inputs} if uses_masks else None
        try:
            with (
                self._attribute_as("beta", self.beta if self._stock_kl else 0.0),
                self._attribute_as("top_entropy_quantile", 0.5 if uses_masks else self.top_entropy_quantile),
            ):
                loss = super()._compute_loss(model, inputs)
            per_token_logps, request, state = self._captured_logps, self._forward_request, self._mask_state
        finally:
            self._capturing, self._captured_logps, self._forward_request, self._mask_state = False, None, None, None

        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        if state is not None:
            self._log_masks(mode, state, mask)
            if state.get("aux_loss") is not None:
                loss = loss + state["aux_loss"].to(loss.dtype) / accumulation
        if self.divergence.name == "lp_reg":
            loss = loss + self._lp_reg_loss(mode, per_token_logps, inputs, state, mask)
        elif self._active:
            loss = loss + self._divergence_penalty(mode, per_token_logps, request, inputs, mask, loss.dtype)
        elif self.divergence_coef != 0.0:
            self._log_divergence(mode, self._metrics[mode]["kl"][-1], log_kl=False)
        if self._rehearsal is not None and self.model.training:
            loss = loss + self._rehearsal.term(self, model, inputs)
        return loss

    # ---- the divergence penalty ---------------------------------------------------------------------------------
    def _divergence_penalty(self, mode, per_token_logps, request, inputs, mask, dtype) -> Tensor:
        """coef × the loss-type aggregate of the chosen per-token divergence (× DADS's per-rollout weights)."""
        div = self._divergence_now
        if self.args.divergence_estimator == FULL:
            per_token_div = request.result("divergence")
        else:
            weight = (
                self._importance_weights(per_token_logps, inputs, mask) if self.args.use_bias_correction_kl else None
            )
            per_token_div = div.sampled(
                per_token_logps, inputs["ref_per_token_logps"], self.args.divergence_estimator, importance_weight=weight
            )
        per_token_div = per_token_div.to(dtype)
        weighted = per_token_div
        if "divergence_weight" in inputs:
            weighted = per_token_div * inputs["divergence_weight"].to(dtype).unsqueeze(-1)
        self._log_divergence(mode, self._global_masked_mean(per_token_div.detach(), mask), log_kl=True)
        return self._coef_now * trl_loss_normalize(self, weighted, mask, inputs)

    def _lp_reg_loss(self, mode, per_token_logps, inputs, state, mask) -> Tensor:
        """Lp-Reg: on its selected tokens (removed from TRL's clipped term by the mask) the unclipped −A·ratio plus
        coef × the clamped k3 toward the proxy, aggregated like TRL's loss."""
        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        selected = state["selected"]
        per_token, k3 = self.divergence.selected_token_loss(
            per_token_logps, old, inputs["proxy_per_token_logps"], inputs["advantages"], selected, self._coef_now
        )
        chosen = selected.to(k3.dtype)
        self._log_divergence(mode, self._global_masked_mean(k3.detach(), chosen), log_kl=True)
        self._metrics[mode]["divergence/lp_reg/selected_fraction"].append(self._global_masked_mean(chosen, mask))
        return trl_loss_normalize(self, per_token.to(per_token_logps.dtype), mask, inputs)

    def _log_masks(self, mode: str, state: dict[str, Any], mask: Tensor) -> None:
        """``mask/<name>/kept_fraction`` (policy-gradient tokens kept, over all processes) and each mask's metrics."""
        metrics = self._metrics[mode]
        for name, out in state.get("outputs", {}).items():
            metrics[f"mask/{name}/kept_fraction"].append(self._global_masked_mean(out.keep.to(mask.dtype), mask))
            for key, value in out.metrics.items():
                metrics[f"mask/{name}/{key}"].append(value)

    # ---- pieces mirroring TRL's loss (kept identical; the parity tests compare against TRL) -----------------------
    def _importance_weights(self, per_token_logps: Tensor, inputs: dict[str, Any], mask: Tensor) -> Tensor:
        """TRL's ``coef_1`` = π/π_old at token or sequence level (``importance_sampling_level``)."""
        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        log_ratio = per_token_logps - old
        if self.importance_sampling_level == "sequence":
            log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
        return torch.exp(log_ratio)

    def _global_masked_mean(self, x: Tensor, mask: Tensor) -> float:
        totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().to(x.dtype)]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def _log_divergence(self, mode: str, value: float, log_kl: bool) -> None:
        """TRL's ``kl`` key (kept for dashboards) plus ``divergence/<name>``, its estimator, and the coefficient."""
        metrics = self._metrics[mode]
        name = self._divergence_now.name
        if log_kl:
            metrics["kl"].append(value)
        metrics[f"divergence/{name}"].append(value)
        metrics[f"divergence/{name}/{self.args.divergence_estimator}"].append(value)
        metrics["divergence/coef"].append(self._coef_now)

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def methods_state_dict(self) -> dict[str, Any]:
        """State of every stateful method (curriculum sampler, masks, reweighting, schedule, scheduled values)."""
        sampler = getattr(self, "_curriculum_sampler", None)
        return {
            "curriculum": None if self.curriculum is None else self.curriculum.state_dict(),
            "sampler": None if sampler is None else sampler.state_dict(),
            "token_masks": {m.name: m.state_dict() for m in self.token_masks},
            "reweighting": None if self.reweighting is None else self.reweighting.state_dict(),
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "coef_now": self._coef_now,
            "divergence_now": self._divergence_now.name,
        }

    def load_methods_state_dict(self, state: dict[str, Any]) -> None:
        sampler = getattr(self, "_curriculum_sampler", None)
        if state["sampler"] is not None and sampler is not None:
            sampler.load_state_dict(state["sampler"])
        elif state["curriculum"] is not None:
            self.curriculum.load_state_dict(state["curriculum"])
        for mask in self.token_masks:
            mask.load_state_dict(state["token_masks"][mask.name])
        if self.reweighting is not None:
            self.reweighting.load_state_dict(state["reweighting"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        self._coef_now = state["coef_now"]
        self._divergence_now = self._scheduled_divergence(state["divergence_now"])

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            (folder / STATE_FILE).write_text(json.dumps(self.methods_state_dict()))
            if self._rehearsal is not None:
                self._rehearsal.save(folder)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = Path(checkpoint) / STATE_FILE
        if path.is_file():
            self.load_methods_state_dict(json.loads(path.read_text()))
        if self._rehearsal is not None:
            self._rehearsal.load(checkpoint)


def _with_prompt_index(dataset):
    """The dataset with a ``td_prompt_index`` column (row number): curricula map rollouts back to prompts with it."""
    from datasets import IterableDataset

    if isinstance(dataset, IterableDataset):
        raise ValueError("curricula need a map-style train_dataset (an IterableDataset has no prompt index)")
    if INDEX_COLUMN in dataset.column_names:
        return dataset
    return dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
