"""``DivergenceGRPOTrainer``: TRL 1.16's ``GRPOTrainer`` with the divergence penalty swapped.

Overridden (all private TRL methods below are covered by tests that fail if TRL changes them):

* ``__init__``: builds the divergence; TRL loads and wraps the reference model as usual (``beta != 0``). For the
  ``full`` estimator the policy's fused forward is wrapped once more so the exact divergence is computed *inside*
  the model's forward (DDP/FSDP see one forward), from the policy's final hidden states and lm_head.
* ``_generate_and_score_completions``: for ``full``, stores the reference model's final hidden states of the
  completion positions (tokens × hidden, not tokens × vocab) in the batch; TRL's shuffling/splitting carries them.
* ``_get_per_token_logps_and_entropies``: records the policy log-probs of the loss forward (with their graph).
* ``_compute_loss``: runs TRL's loss with TRL's own k3 switched off (``self.beta = 0`` for the duration), then adds
  ``beta ×`` the chosen per-token divergence, aggregated with the normalizer of the configured ``loss_type``.
* with ``rehearsal_dataset`` set (reference-sample rehearsal, DPH-RL; ``trl/rehearsal.py``): ``__init__`` drops the
  store's perfect prompts from ``train_dataset``; ``_compute_loss`` adds the rehearsal term on stored samples;
  ``_save_checkpoint`` / ``_load_optimizer_and_scheduler`` save and restore the rehearsal stream's position.

With ``divergence="reverse_kl"`` and ``divergence_estimator="k3"`` (the defaults) and no rehearsal, TRL's code runs
untouched.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.trainer.utils import use_adapter

from ..ops import fused_linear_logprob_entropy_divergence
from .config import FULL, DivergenceGRPOConfig
from .rehearsal import Rehearsal, exploration_only

try:
    from peft import PeftModel
except ImportError:  # peft is optional
    PeftModel = None


def _is_peft(model: Any) -> bool:
    return PeftModel is not None and isinstance(model, PeftModel)


def _hf_model(model: Any) -> Any:
    """The transformers model whose ``forward`` TRL patched (the base model under PEFT)."""
    return model.get_base_model() if _is_peft(model) else model


def _lm_head_weight(model: Any) -> tuple[Tensor, Tensor | None]:
    head = model.get_output_embeddings()
    weight, bias = head.weight, head.bias
    if hasattr(weight, "full_tensor"):  # FSDP2 DTensor
        weight = weight.full_tensor()
        bias = None if bias is None else bias.full_tensor()
    return weight, bias


def _check_plain_lm_head(model: Any) -> None:
    """The exact divergence ops implement logits = h Wᵀ + b (/ temperature); refuse heads TRL scales or softcaps."""
    cfg = model.config.get_text_config()
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        value = getattr(cfg, attr, None)
        if value not in (None, 1.0):
            raise ValueError(
                f"divergence_estimator='full' does not support models with {attr}={value!r} yet; "
                "use a sampled estimator (k1, k3, k3+) for this model"
            )


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
    exactly over the vocabulary. Use with :class:`DivergenceGRPOConfig`; everything else is TRL's."""

    _tag_names = [*GRPOTrainer._tag_names, "trl-divergences"]
    _capturing: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        train_args = kwargs.get("args", args[2] if len(args) > 2 else None)
        if train_args is not None and not isinstance(train_args, DivergenceGRPOConfig):
            raise TypeError(
                f"DivergenceGRPOTrainer needs args=DivergenceGRPOConfig(...), got {type(train_args).__name__}"
            )
        if train_args is not None and train_args.rehearsal_dataset and train_args.rehearsal_exploration_only:
            args, kwargs = self._exploration_prompts(args, kwargs, train_args.rehearsal_dataset)
        super().__init__(*args, **kwargs)
        self._rehearsal = (
            Rehearsal(self.args, self.processing_class.pad_token_id) if self.args.rehearsal_dataset else None
        )
        self.divergence = self.args.build_divergence()
        self.divergence_coef = float(self.args.beta)
        self._stock_kl = self.args.uses_stock_kl
        self._captured_logps: Tensor | None = None
        self._full_ctx: dict[str, Any] | None = None
        if self.divergence_coef != 0.0 and self.args.divergence_estimator == FULL:
            _check_plain_lm_head(_hf_model(self.model))
            self._wrap_forward_for_full(_hf_model(self.model))

    # ---- helpers ------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _beta_as(self, value: float) -> Iterator[None]:
        """TRL reads ``self.beta`` to decide whether to compute ref log-probs and add its k3; set it temporarily."""
        saved = self.beta
        self.beta = value
        try:
            yield
        finally:
            self.beta = saved

    @property
    def _active(self) -> bool:
        return self.divergence_coef != 0.0 and not self._stock_kl

    def _wrap_forward_for_full(self, hf_model: Any) -> None:
        """Wrap TRL's fused forward: while ``self._full_ctx`` is set, capture the backbone's last hidden state and
        compute the exact per-token divergence against the stored reference hidden states inside the forward."""
        fused_forward = hf_model.forward
        trainer = self

        def forward(model_self, *args: Any, **kwargs: Any):
            ctx = trainer._full_ctx
            if ctx is None or not kwargs.get("fused_lm_head", False):
                return fused_forward(*args, **kwargs)
            captured: dict[str, Tensor] = {}
            hook = model_self.base_model.register_forward_hook(
                lambda _m, _i, out: captured.__setitem__("h", out.last_hidden_state)
            )
            try:
                out = fused_forward(*args, **kwargs)
            finally:
                hook.remove()
            weight, bias = _lm_head_weight(model_self)
            ref_hidden = ctx["ref_hidden"]
            n_completion = ref_hidden.shape[1]
            hidden = captured["h"][:, :-1][:, -n_completion:]
            if trainer.args.cast_lm_head_to_fp32:
                hidden = hidden.float()
            _, _, div = fused_linear_logprob_entropy_divergence(
                hidden,
                weight,
                ref_hidden.to(hidden.dtype),
                ctx["ref_weight"].to(weight.dtype),
                None,
                trainer.divergence,
                temperature=trainer.temperature,
                bias=bias,
                ref_bias=ctx["ref_bias"],
            )
            ctx["per_token_div"] = div
            return out

        hf_model.forward = types.MethodType(forward, hf_model)

    def _reference_backbone_and_head(self) -> tuple[contextlib.AbstractContextManager, Any, Any]:
        """(context, backbone, model with the reference lm_head): the reference model, or under PEFT the policy with
        its adapter disabled (or TRL's 'ref' adapter when it created one)."""
        if self.ref_model is not None:
            ref = self.accelerator.unwrap_model(self.ref_model)
            return contextlib.nullcontext(), ref.base_model, ref
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not _is_peft(unwrapped):
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

    # ---- TRL overrides ------------------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        full = self._active and self.args.divergence_estimator == FULL
        # The exact path needs no sampled-token ref log-probs: skip TRL's ref forward by hiding beta.
        with self._beta_as(0.0) if full else contextlib.nullcontext():
            output = super()._generate_and_score_completions(inputs)
        if full:
            output["ref_hidden_states"] = self._reference_hidden_states(output)
        return output

    def _get_per_token_logps_and_entropies(self, model, *args: Any, **kwargs: Any):
        result = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        if self._captured_logps is None and self._capturing:
            self._captured_logps = result[0]
        return result

    def _compute_loss(self, model, inputs: dict[str, Any]) -> Tensor:
        loss = self._divergence_loss(model, inputs)
        if self._rehearsal is not None and self.model.training:
            loss = loss + self._rehearsal.term(self, model, inputs)
        return loss

    # ---- reference-sample rehearsal (trl/rehearsal.py) -----------------------------------------------------------
    @staticmethod
    def _exploration_prompts(args: tuple, kwargs: dict[str, Any], store: str) -> tuple[tuple, dict[str, Any]]:
        """Replace the train_dataset argument by its exploration prompts (the store's perfect ones removed)."""
        if len(args) > 3:
            return (*args[:3], exploration_only(args[3], store), *args[4:]), kwargs
        if kwargs.get("train_dataset") is not None:
            kwargs = {**kwargs, "train_dataset": exploration_only(kwargs["train_dataset"], store)}
        return args, kwargs

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self._rehearsal is not None and self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self._rehearsal.save(folder)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if self._rehearsal is not None and checkpoint is not None:
            self._rehearsal.load(checkpoint)

    # ---- the divergence penalty ------------------------------------------------------------------------------------
    def _divergence_loss(self, model, inputs: dict[str, Any]) -> Tensor:
        mode = "train" if self.model.training else "eval"
        if not self._active:
            loss = super()._compute_loss(model, inputs)
            if self.divergence_coef != 0.0:
                self._log_divergence(mode, self._metrics[mode]["kl"][-1], log_kl=False)
            return loss

        full = self.args.divergence_estimator == FULL
        self._captured_logps, self._capturing = None, True
        if full:
            ref_weight, ref_bias = _lm_head_weight(self._reference_backbone_and_head()[2])
            self._full_ctx = {
                "ref_hidden": inputs["ref_hidden_states"],
                "ref_weight": ref_weight.detach(),
                "ref_bias": None if ref_bias is None else ref_bias.detach(),
            }
        try:
            with self._beta_as(0.0):
                loss = super()._compute_loss(model, inputs)
            per_token_logps = self._captured_logps
            per_token_div = self._full_ctx["per_token_div"] if full else None
        finally:
            self._capturing, self._captured_logps, self._full_ctx = False, None, None

        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        if not full:
            weight = (
                self._importance_weights(per_token_logps, inputs, mask) if self.args.use_bias_correction_kl else None
            )
            per_token_div = self.divergence.sampled(
                per_token_logps, inputs["ref_per_token_logps"], self.args.divergence_estimator, importance_weight=weight
            )
        per_token_div = per_token_div.to(loss.dtype)
        loss = loss + self.divergence_coef * trl_loss_normalize(self, per_token_div, mask, inputs)
        self._log_divergence(mode, self._global_masked_mean(per_token_div.detach(), mask), log_kl=True)
        return loss

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
        if log_kl:
            metrics["kl"].append(value)
        metrics[f"divergence/{self.divergence.name}"].append(value)
        metrics[f"divergence/{self.divergence.name}/{self.args.divergence_estimator}"].append(value)
        metrics["divergence/coef"].append(self.divergence_coef)
