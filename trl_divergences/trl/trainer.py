"""``DivergenceGRPOTrainer``: TRL 1.16's ``GRPOTrainer`` with the configured objective
(:class:`~trl_divergences.objective.Objective`: divergence penalty, token masks, advantage reweighting, curricula,
schedules, Lp-Reg, rehearsal) plugged in at TRL's narrowest seams. This module only translates: which tensors to
compute comes from ``objective.requirements`` and its requests, every term from the objective.

Overridden (all private TRL methods below are covered by tests that fail if TRL changes them):

* ``__init__``: builds the objective; TRL loads and wraps the reference model iff the objective needs one. The
  policy's fused forward is wrapped once more (:mod:`.forward`) so that vocabulary statistics are computed *inside*
  the model's forward (DDP/FSDP see one forward).
* ``_get_train_sampler``: a curriculum's weighted sampler with ``RepeatSampler``'s layout.
* ``_calculate_rewards``: keeps the gathered rewards for the objective's rollout step.
* ``_generate_and_score_completions``: SELF's greedy filter before the rollouts; after TRL's scoring, the reference
  hidden states, the teacher's pass (its log-probs of the sampled tokens and, for exact divergences, its hidden
  states), the rollout-time policy pass and the objective's rollout step.
* ``_get_per_token_logps_and_entropies``: records the policy log-probs of the loss forward (with their graph) and,
  when a teacher anchors the ratio (TRRD), gives TRL's loss the anchor in place of log π_old.
* ``get_high_entropy_mask``: during our loss, TRL's own mask AND the objective's policy-gradient keep mask.
* ``_compute_loss``: runs TRL's loss (TRL's own k3 only when the penalty is exactly TRL's; on-policy with one exact
  penalty and nothing else, the policy gradient rides in our vocabulary pass and TRL's fused head is skipped:
  ``_policy_gradient_in_forward``), then adds the objective's per-token terms aggregated like TRL's loss, its
  auxiliary losses and the rehearsal term.
* ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: save and restore the methods' state.

Values pass between the overrides through one typed per-call context (:class:`CallContext`), set for the duration of
one TRL call. With every new field at its default, TRL's code runs untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import create_model_from_path, get_config_model_id, use_adapter

from ..curricula import CurriculumSampler
from ..objective import FULL, TokenInputs, TokenTerms, VocabularyRequest, importance_weight
from ..ops import fused_linear_logprob_entropy_divergence
from ..teacher import check_shared_tokenizer
from .config import DivergenceGRPOConfig
from .forward import (
    ForwardRequest,
    check_plain_lm_head,
    hf_model,
    install_forward_request_hook,
    is_peft,
    lm_head_weight,
)
from .rehearsal import Rehearsal, exploration_only
from .rollout import (
    INDEX_COLUMN,
    completion_tokens,
    gather_values,
    greedy_filter,
    reduce_sum,
    rollout_inputs,
    total_rewards,
    write_rollout_outputs,
)

STATE_FILE = "trl_divergences_state.json"

#: the loss micro-batch keys of a text-only on-policy batch (with the exact penalty's): the only batches whose policy
#: gradient may be computed in our vocabulary pass (no tool mask, images, log π_old or importance-sampling ratios)
POLICY_GRADIENT_INPUTS = frozenset(
    {
        "prompt_ids",
        "prompt_mask",
        "completion_ids",
        "completion_mask",
        "advantages",
        "num_items_in_batch",
        "ref_hidden_states",
        "divergence_weight",
        "correct",
        INDEX_COLUMN,
    }
)


def trl_loss_weights(trainer: GRPOTrainer, mask: Tensor, inputs: dict[str, Any]) -> Tensor:
    """[B, T] per-token weights w with Σ w·x = TRL 1.16's ``_compute_loss`` aggregate of a per-token term x for
    ``trainer.loss_type`` (including the gradient-accumulation scaling): adding Σ w·x to TRL's loss equals adding x to
    TRL's per-token loss. Known before the forward, so an exact penalty can be aggregated inside it."""
    mode = "train" if trainer.model.training else "eval"
    accumulation = trainer.current_gradient_accumulation_steps if mode == "train" else 1.0
    loss_type = trainer.loss_type
    mask = mask.float()
    rows = mask.size(0)
    if loss_type in ("grpo", "sapo"):
        return mask / mask.sum(-1, keepdim=True).clamp(min=1.0) / rows / accumulation
    if loss_type == "bnpo":
        return mask / mask.sum().clamp(min=1.0) / accumulation
    if loss_type == "dr_grpo":
        return mask / (rows * trainer.max_completion_length) / accumulation
    if loss_type in ("cispo", "dapo", "vespo"):
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / trainer.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * trainer.current_gradient_accumulation_steps / trainer.args.steps_per_generation
        return mask / normalizer
    if loss_type == "luspo":
        return mask / rows / accumulation
    raise ValueError(f"unsupported loss_type {loss_type!r} for the divergence penalty")


def refuse_zero3_teacher(args: GRPOConfig, role: str = "teacher_model") -> None:
    """Refuse a teacher-guided method under DeepSpeed ZeRO-3: the teacher's log-probs (and its exact term) read its
    lm_head weight outside its forward, where ZeRO-3 holds only this rank's partition (gathering it is not
    implemented, and ZeRO-3 is not tested here). ZeRO-1/2, FSDP2 (the weight is gathered as a full tensor) and DDP
    are unaffected."""
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        raise ValueError(
            f"{role} under DeepSpeed ZeRO-3 is not supported yet: the teacher-side lm_head is read outside its "
            "forward, where ZeRO-3 keeps only a partition; use ZeRO stage 1 or 2, or FSDP2"
        )


@dataclass
class CallContext:
    """What one TRL call (a loss micro-batch, or the rollout-time policy pass) hands between our overrides.

    Attributes:
        request: vocabulary statistics the wrapped forward computes (None: nothing beyond TRL's outputs).
        inputs: the loss micro-batch (None for the rollout pass).
        pg_inputs: the copy of ``inputs`` TRL's loss reads, whose log π_old becomes the teacher's anchor once the
            policy log-probs are known (TRRD), or None.
        logps: the policy log-probs of the call's first forward, with graph (recorded by the log-prob override).
        terms: the objective's terms, once computed inside ``get_high_entropy_mask``.
        rewards_per_func: TRL's gathered rewards of the generation batch being scored.
    """

    request: ForwardRequest | None = None
    inputs: dict[str, Any] | None = None
    pg_inputs: dict[str, Any] | None = None
    logps: Tensor | None = None
    terms: TokenTerms | None = None
    rewards_per_func: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def _as_divergence_config(args: GRPOConfig | None, model: Any) -> DivergenceGRPOConfig:
    """``args`` as a :class:`DivergenceGRPOConfig`: TRL's default config when None (``<model name>-GRPO``), a plain
    ``GRPOConfig``'s fields with our fields at their defaults (= TRL's behaviour)."""
    if isinstance(args, DivergenceGRPOConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else get_config_model_id(model.config)
        return DivergenceGRPOConfig(f"{name.split('/')[-1]}-GRPO")
    if isinstance(args, GRPOConfig):
        return DivergenceGRPOConfig.from_grpo_config(args)
    raise TypeError(f"args must be a DivergenceGRPOConfig or a GRPOConfig, got {type(args).__name__}")


class DivergenceGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose KL penalty is any registered divergence, estimated per token by a sampled estimator or
    exactly over the vocabulary, plus the configured token masks, advantage reweighting, curriculum and coefficient
    schedule, and a teacher-guided method. Takes a :class:`DivergenceGRPOConfig` (a plain ``GRPOConfig`` or none gives
    TRL's behaviour); everything else is TRL's.

    Extra arguments: ``teacher_model`` — a loaded teacher (or a name / path; overrides the config's), and
    ``teacher_processing_class`` — the teacher's tokenizer when it cannot be loaded from the teacher's name or path;
    ``teacher_reference_model`` / ``teacher_reference_processing_class`` the same for a separate reference ρ of
    G-OPD / ExOPD (the teacher's pre-RL base). Both must share the student's tokenizer (checked here)."""

    _tag_names = [*GRPOTrainer._tag_names, "trl-divergences"]

    def __init__(self, model: Any, reward_funcs: Any = None, args: GRPOConfig | None = None, *rest: Any, **kwargs: Any):
        args = _as_divergence_config(args, model)
        teacher = kwargs.pop("teacher_model", None)
        teacher_tokenizer = kwargs.pop("teacher_processing_class", None)
        teacher_reference = kwargs.pop("teacher_reference_model", None)
        teacher_reference_tokenizer = kwargs.pop("teacher_reference_processing_class", None)
        self.objective = args.build_objective(
            given_teacher_reference=teacher_reference is not None or args.teacher_reference_model is not None
        )
        self._context: CallContext | None = None
        requirements = self.objective.requirements
        train_dataset = kwargs.pop("train_dataset", rest[0] if rest else None)
        rest = rest[1:]
        if args.rehearsal_dataset and args.rehearsal_exploration_only and train_dataset is not None:
            train_dataset = exploration_only(train_dataset, args.rehearsal_dataset)
        if requirements.prompt_index and train_dataset is not None:
            train_dataset = _with_prompt_index(train_dataset)
        coef = float(args.beta)
        # TRL loads (and wraps) a reference model iff beta != 0: make beta say whether one is needed, then restore it
        args.beta = 1.0 if requirements.reference_model else 0.0
        try:
            super().__init__(model, reward_funcs, args, train_dataset, *rest, **kwargs)
        finally:
            args.beta = coef
        self.beta = coef
        self._stock_kl = self.objective.plain_reverse_k3
        self._rehearsal = (
            Rehearsal(self.args, self.processing_class.pad_token_id) if self.args.rehearsal_dataset else None
        )
        if requirements.vocabulary:
            check_plain_lm_head(hf_model(self.model), "a method that recomputes vocabulary statistics")
        install_forward_request_hook(hf_model(self.model), self._current_request)
        # from the config: under ZeRO-3 the local lm_head weight is a partition
        self._vocab_size = hf_model(self.model).config.get_text_config().vocab_size
        self.teacher_model = self.teacher_reference_model = None
        if requirements.teacher_model:
            self.teacher_model = self._load_teacher(teacher or self.args.teacher_model, teacher_tokenizer)
        elif teacher is not None:
            raise ValueError("teacher_model given without a teacher_method (DivergenceGRPOConfig) to use it")
        if requirements.teacher_reference_model:
            self.teacher_reference_model = self._load_teacher(
                teacher_reference or self.args.teacher_reference_model,
                teacher_reference_tokenizer,
                role="teacher_reference_model",
            )

    # ---- the per-call context -------------------------------------------------------------------------------------
    def _current_request(self) -> ForwardRequest | None:
        return None if self._context is None else self._context.request

    @contextlib.contextmanager
    def _call(self, context: CallContext) -> Iterator[CallContext]:
        """Make ``context`` the current call's for its duration."""
        self._context = context
        try:
            yield context
        finally:
            self._context = None

    @contextlib.contextmanager
    def _trl_reads(self, **values: Any) -> Iterator[None]:
        """TRL reads ``self.beta`` (whether to compute ref log-probs and its k3) and ``self.top_entropy_quantile``
        (whether to call ``get_high_entropy_mask``) from the instance: set them for the duration of one TRL call."""
        saved = {name: getattr(self, name) for name in values}
        for name, value in values.items():
            setattr(self, name, value)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    def _forward_request(
        self,
        spec: VocabularyRequest | None,
        n_completion: int,
        ref_hidden: Tensor | None,
        teacher_hidden: Tensor | None = None,
    ):
        """A :class:`ForwardRequest` for ``spec`` (None: nothing to compute), with the reference's (the teacher's)
        lm_head when the request has exact divergences to it."""
        if spec is None:
            return None
        ref_weight = ref_bias = teacher_weight = teacher_bias = None
        if spec.needs_reference:
            ref_weight, ref_bias = lm_head_weight(self._reference_backbone_and_head()[2])
        if spec.needs_teacher:
            teacher_weight, teacher_bias = lm_head_weight(self.accelerator.unwrap_model(self.teacher_model))
        return ForwardRequest(
            spec=spec,
            n_completion=n_completion,
            temperature=self.temperature,
            cast_fp32=self.args.cast_lm_head_to_fp32,
            ref_hidden=ref_hidden,
            ref_weight=None if ref_weight is None else ref_weight.detach(),
            ref_bias=None if ref_bias is None else ref_bias.detach(),
            teacher_hidden=teacher_hidden,
            teacher_weight=teacher_weight,
            teacher_bias=teacher_bias,
        )

    def _log(self, mode: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._metrics[mode][key].append(value)

    # ---- the reference model ----------------------------------------------------------------------------------------
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

    def _reference_hidden_states(self, output: dict[str, Any]) -> Tensor:
        """Final hidden states [B, C, H] of the reference at the positions predicting the C completion tokens."""
        ctx, backbone, _ = self._reference_backbone_and_head()
        return self._completion_hidden_states(output, backbone, ctx)

    @torch.no_grad()
    def _completion_hidden_states(
        self, output: dict[str, Any], backbone: Any, ctx: contextlib.AbstractContextManager
    ) -> Tensor:
        """Final hidden states [B, C, H] of ``backbone`` (under ``ctx``) at the positions predicting the C completion
        tokens of the generation batch ``output``, per_device_train_batch_size rows at a time."""
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        n_completion = output["completion_ids"].size(1)
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

    # ---- the teacher ------------------------------------------------------------------------------------------------
    def _load_teacher(self, teacher: Any, teacher_tokenizer: Any, role: str = "teacher_model") -> Any:
        """A frozen model of the teacher method — the teacher (``role="teacher_model"``) or the separate reference ρ
        (``"teacher_reference_model"``) — loaded from a name or path (with ``teacher_model_init_kwargs``) or taken
        loaded, checked to share the student's tokenizer, frozen and prepared for the distributed set-up like TRL's
        reference model."""
        method = self.objective.teacher.name
        refuse_zero3_teacher(self.args, role)
        who = "teacher" if role == "teacher_model" else "teacher's reference ρ"
        if teacher is None:
            raise ValueError(
                f"teacher_method {method!r} needs a {who}: set {role} (a name or path) in the config or pass "
                f"{role}= to the trainer"
            )
        if isinstance(teacher, str):
            kwargs = dict(self.args.teacher_model_init_kwargs)
            kwargs.setdefault("dtype", self.model.dtype)
            model = create_model_from_path(teacher, **kwargs)
        else:
            model = teacher
        teacher_name = get_config_model_id(model.config)
        student = self.processing_class
        student = getattr(student, "tokenizer", student)  # a processor's tokenizer
        processing_kwarg = role.replace("_model", "_processing_class")
        if teacher_tokenizer is None:
            try:
                teacher_tokenizer = type(student).from_pretrained(teacher if isinstance(teacher, str) else teacher_name)
            except (OSError, ValueError) as error:
                raise ValueError(
                    f"could not load the tokenizer of the {who} {teacher_name!r} ({error}); pass "
                    f"{processing_kwarg}= to the trainer"
                ) from error
        exact = role == "teacher_model" and self.objective.requirements.teacher_hidden
        check_shared_tokenizer(
            student,
            getattr(teacher_tokenizer, "tokenizer", teacher_tokenizer),
            student_name=get_config_model_id(hf_model(self.model).config),
            teacher_name=teacher_name,
            student_vocab_size=self._vocab_size if exact else None,
            teacher_vocab_size=model.config.get_text_config().vocab_size if exact else None,
            role=who,
        )
        check_plain_lm_head(model, f"a teacher-guided method (the {who}'s log-probs come from its lm_head)")
        model.requires_grad_(False)
        model.eval()
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(model, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(model, self.accelerator)
        return self.accelerator.prepare_model(model, evaluation_mode=True)

    @torch.no_grad()
    def _teacher_pass(self, output: dict[str, Any]) -> None:
        """One no-grad teacher forward over the generation batch: its log-probs of the sampled tokens at the rollout
        temperature (``teacher_per_token_logps``, from its final hidden states and lm_head tile by tile) and, for an
        exact divergence, the hidden states themselves (``teacher_hidden_states``, carried like the reference's);
        with a separate reference ρ, one more no-grad forward for its log-probs
        (``teacher_reference_per_token_logps``)."""
        requirements = self.objective.requirements
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        hidden = self._completion_hidden_states(output, teacher.base_model, contextlib.nullcontext())
        if requirements.teacher_logps:
            output["teacher_per_token_logps"] = self._sampled_logps(teacher, hidden, output["completion_ids"])
        if requirements.teacher_hidden:
            output["teacher_hidden_states"] = hidden
        if requirements.teacher_reference_model:
            reference = self.accelerator.unwrap_model(self.teacher_reference_model)
            hidden = self._completion_hidden_states(output, reference.base_model, contextlib.nullcontext())
            output["teacher_reference_per_token_logps"] = self._sampled_logps(
                reference, hidden, output["completion_ids"]
            )

    def _sampled_logps(self, model: Any, hidden: Tensor, completion_ids: Tensor) -> Tensor:
        """[B, C] log-probs of the sampled tokens at the rollout temperature from ``model``'s final hidden states
        [B, C, H] and lm_head, tile by tile (no [B, C, V] logits), per_device_train_batch_size rows at a time."""
        weight, bias = lm_head_weight(model)
        rows = self.args.per_device_train_batch_size
        return torch.cat(
            [
                fused_linear_logprob_entropy_divergence(
                    hidden[start : start + rows].float()
                    if self.args.cast_lm_head_to_fp32
                    else hidden[start : start + rows],
                    weight,
                    None,
                    None,
                    completion_ids[start : start + rows],
                    temperature=self.temperature,
                    bias=bias,
                )[0]
                for start in range(0, hidden.size(0), rows)
            ]
        )

    # ---- TRL overrides: rollouts ----------------------------------------------------------------------------------
    def _get_train_sampler(self, dataset=None):
        if not self.objective.requirements.prompt_index:
            return super()._get_train_sampler(dataset)
        dataset = self.train_dataset if dataset is None else dataset
        if not hasattr(self, "_curriculum_sampler"):
            self._curriculum_sampler = CurriculumSampler(
                self.objective.curriculum,
                n_prompts=len(dataset),
                mini_repeat_count=self.num_generations,
                batch_size=self.args.generation_batch_size // self.num_generations,
                repeat_count=self.num_iterations * self.args.steps_per_generation,
                seed=self.args.seed,
            )
        return self._curriculum_sampler

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._context is not None:
            self._context.rewards_per_func = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        objective, requirements = self.objective, self.objective.requirements
        training = self.model.training
        mode = "train" if training else "eval"
        skip = False
        if requirements.greedy_filter and training:
            inputs, skip, metrics = greedy_filter(
                self, inputs, objective.curriculum, objective.correct_reward_threshold
            )
            self._log(mode, metrics)
        with self._call(CallContext()) as context, self._trl_reads(beta=1.0 if requirements.ref_logps else 0.0):
            output = super()._generate_and_score_completions(inputs)
        if skip:
            output["advantages"] = torch.zeros_like(output["advantages"])
        if requirements.ref_hidden:
            output["ref_hidden_states"] = self._reference_hidden_states(output)
        if requirements.teacher_model:
            self._teacher_pass(output)
        if requirements.rollout_statistics:
            rewards = total_rewards(self, context.rewards_per_func)
            old_logps, statistics = output.get("old_per_token_logps"), {}
            spec = objective.rollout_request(has_old_logps=old_logps is not None)
            if spec is not None:
                rollout_logps, statistics = self._rollout_policy_pass(output, spec)
                old_logps = rollout_logps if old_logps is None else old_logps
            x = rollout_inputs(self, output, inputs, rewards, old_logps, statistics, requirements.prompt_index)
            result = objective.rollout_step(
                x, step=self.state.global_step, max_steps=self.state.max_steps, training=training
            )
            write_rollout_outputs(self, output, result)
            self._log(mode, result.metrics)
        return output

    def _rollout_policy_pass(self, output: dict[str, Any], spec: VocabularyRequest) -> tuple[Tensor, dict[str, Tensor]]:
        """One no-grad forward of the rollout policy π_old over the batch, through TRL's fused path (so the log-probs
        are TRL's): (per-token log-probs [B, C], the requested statistics)."""
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        n_completion = output["completion_ids"].size(1)
        request = self._forward_request(spec, n_completion, None)
        with self._call(CallContext(request=request)), torch.no_grad():
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model, input_ids, attention_mask, n_completion, batch_size=self.args.per_device_train_batch_size
            )
        return logps, request.all_results()

    # ---- TRL overrides: loss --------------------------------------------------------------------------------------
    def _get_per_token_logps_and_entropies(self, model, *args: Any, **kwargs: Any):
        result = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        context = self._context
        if context is not None and context.inputs is not None and context.logps is None:
            context.logps = result[0]
            if context.pg_inputs is not None:
                context.pg_inputs["old_per_token_logps"] = self.objective.pg_old_logps(
                    result[0], context.inputs.get("old_per_token_logps"), context.inputs["teacher_per_token_logps"]
                ).to(result[0].dtype)
        return result

    def get_high_entropy_mask(self, entropies: Tensor, mask: Tensor, threshold: float) -> Tensor:
        """Outside our loss, TRL's. Inside it, TRL's own mask (when ``top_entropy_quantile < 1``) AND the objective's
        policy-gradient keep mask."""
        context = vars(self).get("_context")
        if not isinstance(context, CallContext) or context.inputs is None:
            return GRPOTrainer.get_high_entropy_mask(self, entropies, mask, threshold)
        keep = mask.bool()
        if self.args.top_entropy_quantile < 1.0:
            keep = GRPOTrainer.get_high_entropy_mask(self, entropies, mask, 1.0 - self.args.top_entropy_quantile)
        context.terms = self.objective.token_terms(self._token_inputs(context, entropies), penalty=not self._stock_kl)
        return keep if context.terms.pg_keep is None else keep & context.terms.pg_keep

    def _token_inputs(self, context: CallContext, entropies: Tensor | None) -> TokenInputs:
        inputs, logps = context.inputs, context.logps
        mask = completion_tokens(inputs)
        weight = None
        requirements = self.objective.requirements
        sampled_penalty = requirements.penalty and self.objective.estimator != FULL and not self._stock_kl
        if (sampled_penalty or requirements.teacher_sampled_penalty) and self.args.use_bias_correction_kl:
            weight = importance_weight(logps, inputs.get("old_per_token_logps"), mask, self.importance_sampling_level)
        return TokenInputs(
            mask=mask,
            logps=logps,
            entropies=entropies,
            advantages=inputs["advantages"],
            old_logps=inputs.get("old_per_token_logps"),
            ref_logps=inputs.get("ref_per_token_logps"),
            teacher_logps=inputs.get("teacher_per_token_logps"),
            correct=inputs.get("correct"),
            proxy_logps=inputs.get("proxy_per_token_logps"),
            divergence_weight=inputs.get("divergence_weight"),
            importance_weight=weight,
            vocabulary={} if context.request is None else context.request.all_results(),
            vocab_size=self._vocab_size,
            gather=lambda values: gather_values(self, values),
            reduce_sum=lambda values: reduce_sum(self, values),
        )

    def _policy_gradient_in_forward(self, request: ForwardRequest, inputs: dict[str, Any]) -> bool:
        """Whether the loss forward may carry TRL's policy-gradient term in our vocabulary pass (skipping TRL's fused
        head): on-policy (no log π_old, so the ratio is exp(log π − sg(log π)) ≡ 1 and no clip binds) with a loss
        whose gradient w.r.t. log π(y_t) is then −A_t·w_t (w: :func:`trl_loss_weights`), nothing reading the
        log-probs' or entropies' graph, and one exact penalty as the only vocabulary statistic. Anything else takes
        TRL's head unchanged."""
        args, objective, spec = self.args, self.objective, request.spec
        return (
            self.loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
            and self.importance_sampling_level == "token"
            and inputs.get("old_per_token_logps") is None
            and self.epsilon_low > 0.0
            and self.epsilon_high > 0.0
            and args.delta is None
            and self.off_policy_mask_threshold is None
            and self.top_entropy_quantile == 1.0
            and not self._entropy_bonus_enabled
            and not self.aux_loss_enabled
            and not (self.use_vllm and self.vllm_importance_sampling_correction)
            and set(inputs) <= POLICY_GRADIENT_INPUTS
            and list(spec.exact) == ["divergence"]
            and not spec.teacher_exact
            and not spec.nucleus
            and not spec.penultimate
            and not objective.token_masks
            and not objective.divergence_now.replaces_policy_gradient
            and objective.teacher is None
            and self._rehearsal is None
            and hf_model(self.model).config.get_text_config() is hf_model(self.model).config
            and not getattr(hf_model(self.model).config, "output_router_logits", False)
        )

    def _compute_loss(self, model, inputs: dict[str, Any]) -> Tensor:
        objective, requirements = self.objective, self.objective.requirements
        mode = "train" if self.model.training else "eval"
        request = self._forward_request(
            objective.loss_request(),
            inputs["completion_ids"].size(1),
            inputs.get("ref_hidden_states"),
            inputs.get("teacher_hidden_states"),
        )
        mask = completion_tokens(inputs)
        exact_weights = {
            name: weights
            for name, weights in (
                ("divergence", objective.penalty_weights(mask, inputs.get("divergence_weight"))),
                ("teacher_divergence", objective.teacher_penalty_weights(mask, inputs.get("correct"))),
            )
            if weights is not None
        }
        if request is not None and exact_weights and torch.is_grad_enabled():
            # the exact terms' weights are known: aggregate them with their gradient inside the forward
            normaliser = trl_loss_weights(self, mask, inputs)
            request.exact_weights = {name: weights * normaliser for name, weights in exact_weights.items()}
            if self._policy_gradient_in_forward(request, inputs):
                advantages = inputs["advantages"]
                advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
                request.logp_weights = -advantages.to(normaliser.dtype) * normaliser
        selection = requirements.token_selection
        pg_inputs = dict(inputs) if requirements.ratio_anchor else None
        with (
            self._call(CallContext(request=request, inputs=inputs, pg_inputs=pg_inputs)) as context,
            self._trl_reads(
                beta=self.beta if self._stock_kl else 0.0,
                top_entropy_quantile=0.5 if selection else self.top_entropy_quantile,
            ),
        ):
            loss = super()._compute_loss(model, inputs if pg_inputs is None else pg_inputs)
            terms = context.terms or objective.token_terms(
                self._token_inputs(context, None), penalty=not self._stock_kl
            )
        if terms.aux_loss is not None:
            accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            loss = loss + terms.aux_loss.to(loss.dtype) / accumulation
        per_token = terms.per_token
        if per_token is not None:
            loss = loss + (per_token.to(loss.dtype) * trl_loss_weights(self, mask, inputs).to(loss.dtype)).sum()
        if terms.aggregated is not None:
            loss = loss + terms.aggregated.to(loss.dtype)
        if terms.divergence_value is not None:
            self._metrics[mode]["kl"].append(terms.divergence_value)
        elif self._stock_kl and self.beta != 0.0:
            terms.metrics.update(objective.divergence_metrics(self._metrics[mode]["kl"][-1]))
        self._log(mode, terms.metrics)
        if self._rehearsal is not None and self.model.training:
            rehearsal, metrics = self._rehearsal.term(self, model, inputs)
            loss = loss + rehearsal
            self._log(mode, metrics)
        return loss

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def methods_state_dict(self) -> dict[str, Any]:
        """State of every stateful method (curriculum sampler, masks, reweighting, schedule, scheduled values)."""
        sampler = getattr(self, "_curriculum_sampler", None)
        return {**self.objective.state_dict(), "sampler": None if sampler is None else sampler.state_dict()}

    def load_methods_state_dict(self, state: dict[str, Any]) -> None:
        sampler = getattr(self, "_curriculum_sampler", None)
        state = dict(state)
        sampler_state = state.pop("sampler")
        if sampler_state is not None and sampler is not None:
            sampler.load_state_dict(sampler_state)  # holds the curriculum's state too
            state["curriculum"] = None
        self.objective.load_state_dict(state)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            if self._rehearsal is not None:
                self._rehearsal.save(folder)
            # written last, by an atomic rename: its presence marks a complete checkpoint
            tmp = folder / f".{STATE_FILE}.tmp"
            tmp.write_text(json.dumps(self.methods_state_dict()))
            os.replace(tmp, folder / STATE_FILE)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """TRL's ``train``; ``resume_from_checkpoint=True`` takes the last *complete* checkpoint of ``output_dir``
        (transformers takes the highest-numbered folder, which a run killed while saving leaves half-written)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint (with {STATE_FILE}) in {self.args.output_dir}")
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = Path(checkpoint) / STATE_FILE
        if path.is_file():
            self.load_methods_state_dict(json.loads(path.read_text()))
        elif self._has_method_state():
            raise ValueError(
                f"{checkpoint} is not a complete DivergenceGRPOTrainer checkpoint (no {STATE_FILE}: the run stopped "
                "while saving it, or another trainer wrote it) and this configuration's methods keep state; resume "
                "from an earlier checkpoint, or with resume_from_checkpoint=True to take the last complete one"
            )
        if self._rehearsal is not None:
            self._rehearsal.load(checkpoint)

    def _has_method_state(self) -> bool:
        """Any method whose state a resumed run must restore (a stock-TRL checkpoint suits the others)."""
        o = self.objective
        stateful = (o.curriculum, o.reweighting, o.schedule, self._rehearsal, *o.token_masks)
        return any(m is not None for m in stateful)


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The highest-numbered ``checkpoint-N`` folder of ``output_dir`` that holds :data:`STATE_FILE`, or None."""
    steps = {}
    for folder in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = folder.name.rsplit("-", 1)[1]
        if step.isdigit() and (folder / STATE_FILE).is_file():
            steps[int(step)] = folder
    return str(steps[max(steps)]) if steps else None


def _with_prompt_index(dataset):
    """The dataset with a ``td_prompt_index`` column (row number): curricula map rollouts back to prompts with it."""
    from datasets import IterableDataset

    if isinstance(dataset, IterableDataset):
        raise ValueError("curricula need a map-style train_dataset (an IterableDataset has no prompt index)")
    if INDEX_COLUMN in dataset.column_names:
        return dataset
    return dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
