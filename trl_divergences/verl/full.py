"""The exact divergence over the vocabulary (``kl_loss_type=<name>:full``) at verl's engine level, with the reference
carried as final hidden states, never as logits.

* Reference side, :func:`ref_hidden_loss`: the loss function of the ref model's ``infer_batch``
  (``compute_loss=True``). A forward hook on the ref model's lm_head (:class:`LMHeadInput`) keeps its input, the final
  hidden states; the loss puts those of the completion positions into ``model_output["ref_hidden"]`` (jagged
  [bs, response_len, H]), which verl concatenates over micro-batches and stores with the batch.
* Policy side, :func:`full_ppo_loss`: the actor's loss function, called twice per micro-batch by verl's FSDP engine
  when the micro-batch flag ``distillation_use_topk`` is set: first as its logits processor with the tempered policy
  logits [1, nnz, V], where it returns the per-token divergence from
  :func:`~trl_divergences.ops.divergence_from_ref_hidden` (the reference logits are recomputed from the stored hidden
  states and the frozen reference lm_head one row chunk at a time, in the forward and in the backward); then as the
  loss, where it adds ``kl_loss_coef`` × verl's aggregation of that divergence to verl's ``ppo_loss``.

Both are loss functions for verl's workers (``TrainingWorker.set_loss_fn``); :mod:`.workers` installs them and
:mod:`.full_trainer` maps verl's roles to those workers (``trainer.v1.trainer_mode=trl_divergences_full``).

Memory per completion token: H reference hidden values in the batch (2H bytes in bf16; 7 KB for a 7B model with
H = 3584, instead of 2V = 304 KB of reference logits for V = 151,936), plus a frozen copy of the reference lm_head
(V × H) on each actor worker and chunk_rows × V temporaries; the policy logits are verl's own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from ..ops import divergence_from_ref_hidden
from .kl import FULL, KLSpec, parse_kl_type

#: the batch key of the reference hidden states
REF_HIDDEN = "ref_hidden"
#: the per-token output of the logits-processor call
DIVERGENCE = "trl_divergences_divergence"


class LMHeadInput:
    """Forward hook keeping the input of a model's output embedding (its final hidden states) of the last call."""

    def __init__(self, model: torch.nn.Module) -> None:
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__} has no output embedding (lm_head) to read hidden states from")
        self.hidden: Tensor | None = None
        self.handle = head.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.hidden = inputs[0].detach()

    def remove(self) -> None:
        self.handle.remove()


def _lengths(data) -> tuple[Tensor, Tensor]:
    """Per-sample prompt and response lengths of a jagged verl micro-batch."""
    prompts, responses = data["prompts"], data["responses"]
    if not (prompts.is_nested and responses.is_nested):
        raise ValueError("the exact-divergence path needs verl's jagged (no-padding) micro-batches")
    return prompts.offsets().diff(), responses.offsets().diff()


def completion_rows(data) -> Tensor:
    """Rows of the packed prompt+response tokens whose logits predict the completion tokens (verl's left shift:
    response token k of a sample with prompt length P sits at row offset + P + k − 1)."""
    prompt_lens, response_lens = _lengths(data)
    starts = torch.cumsum(prompt_lens + response_lens, 0) - response_lens - prompt_lens
    return torch.cat([torch.arange(n) + s + p - 1 for s, p, n in zip(starts, prompt_lens, response_lens)])


def _packed(hidden: Tensor, data) -> Tensor:
    """[nnz, H] packed hidden states from the rmpad ([1, nnz, H]) or padded ([bs, seq, H]) forward."""
    prompt_lens, response_lens = _lengths(data)
    lengths = (prompt_lens + response_lens).tolist()
    if hidden.shape[0] == 1 and hidden.shape[1] == sum(lengths):
        return hidden[0]
    if hidden.shape[0] == len(lengths) and hidden.shape[1] >= max(lengths):
        return torch.cat([hidden[i, :n] for i, n in enumerate(lengths)])
    raise ValueError(
        f"lm_head input {tuple(hidden.shape)} does not match the micro-batch's sequence lengths {lengths} "
        "(Ulysses sequence parallelism and pad_to_length are not supported by the exact path)"
    )


def ref_hidden_loss(model_output: dict, data, dp_group=None, *, capture: LMHeadInput):
    """Reference-side loss function: stores the completion positions' final hidden states in ``model_output``."""
    from verl.utils.metric import AggregationType, Metric

    if capture.hidden is None:
        raise RuntimeError("the reference lm_head hook saw no forward")
    rows = completion_rows(data)
    hidden = _packed(capture.hidden, data)[rows.to(capture.hidden.device)]
    _, response_lens = _lengths(data)
    model_output[REF_HIDDEN] = torch.nested.as_nested_tensor(
        list(hidden.split(response_lens.tolist())), layout=torch.jagged
    )
    capture.hidden = None
    zero = torch.zeros((), device=hidden.device)
    return zero, {"ref/hidden_tokens": Metric(value=float(rows.numel()), aggregation=AggregationType.SUM)}


def full_spec(divergence: str) -> KLSpec:
    """A ``<divergence>[(<kwargs>)]:full`` name, parsed and validated as ``kl_loss_type`` names are."""
    spec = parse_kl_type(divergence, "divergence")
    if spec.estimator != FULL or spec.verl_straight_through:
        raise ValueError(f"full_ppo_loss needs a divergence '<name>[(<kwargs>)]:full', got {divergence!r}")
    return spec


def _row_temperature(data, response_lens: Tensor, device) -> Tensor | float:
    """The engine's temperature (a scalar, or one per sample) per completion row, as it scaled the policy logits."""
    temperature = data["temperature"] if "temperature" in data.keys() else 1.0
    temperature = getattr(temperature, "data", temperature)  # NonTensorData
    if isinstance(temperature, Tensor) and temperature.numel() > 1:
        return temperature.to(device).repeat_interleave(response_lens.to(device)).unsqueeze(-1)
    return float(temperature)


def full_ppo_loss(
    config,
    model_output: dict | None = None,
    data=None,
    dp_group=None,
    student_logits: Tensor | None = None,
    *,
    divergence: str,
    ref_weight: Tensor,
    ref_bias: Tensor | None = None,
    chunk_rows: int | None = None,
) -> Any:
    """verl's ``ppo_loss`` (its own KL loss off) plus ``config.kl_loss_coef`` × agg(exact per-token divergence), the
    divergence named ``<name>[(<kwargs>)]:full``; see the module docstring.

    With ``student_logits`` (the logits-processor call): returns {DIVERGENCE: [1, nnz]} (zero off the completion
    rows). Without: returns verl's (loss, metrics) with the penalty added and its metrics (``kl_loss``, ``kl_coef``
    as verl names them, and ``divergence/<name>``).
    """
    from verl.trainer.ppo.core_algos import agg_loss
    from verl.utils.metric import Metric
    from verl.workers.utils.losses import ppo_loss
    from verl.workers.utils.padding import no_padding_2_padding

    spec = full_spec(divergence)
    if student_logits is not None:
        logits = student_logits.squeeze(0)
        rows = completion_rows(data).to(logits.device)
        _, response_lens = _lengths(data)
        hidden = data[REF_HIDDEN].values().to(logits.device)
        hidden = hidden / _row_temperature(data, response_lens, logits.device)
        weight = ref_weight.to(device=logits.device, dtype=hidden.dtype)
        bias = None if ref_bias is None else ref_bias.to(device=logits.device, dtype=hidden.dtype)
        values = divergence_from_ref_hidden(
            logits, hidden, weight, spec.divergence, rows=rows, ref_bias=bias, chunk_rows=chunk_rows
        )
        per_token = values.new_zeros(logits.shape[0]).index_put((rows,), values)
        return {DIVERGENCE: per_token.unsqueeze(0)}

    loss, metrics = ppo_loss(dataclasses.replace(config, use_kl_loss=False), model_output, data, dp_group)
    divergence = no_padding_2_padding(model_output[DIVERGENCE], data)
    mask = data["response_mask"].to_padded_tensor(0).to(torch.bool)
    info = dict(config.global_batch_info)
    info.update(dp_size=data["dp_size"], batch_num_tokens=data["batch_num_tokens"])
    info.update(global_batch_size=data["global_batch_size"], loss_scale_factor=config.loss_scale_factor)
    kl_loss = agg_loss(loss_mat=divergence, loss_mask=mask, loss_agg_mode=config.loss_agg_mode, **info)
    aggregation = metrics["actor/pg_loss"].aggregation
    metrics["kl_loss"] = Metric(value=kl_loss.detach(), aggregation=aggregation)
    metrics[f"divergence/{spec.divergence.name}"] = Metric(value=kl_loss.detach(), aggregation=aggregation)
    metrics["kl_coef"] = config.kl_loss_coef
    return loss + config.kl_loss_coef * kl_loss.to(loss.dtype), metrics
