"""Per-token vocabulary statistics computed *inside* the policy's fused forward (TRL 1.16 patches ``forward`` with a
fused LM head that returns log-probs and entropies only).

The policy's ``forward`` is wrapped once more. While a :class:`ForwardRequest` is active, each fused forward also
captures the backbone's final hidden states (a hook on ``base_model``) — and the penultimate layer's output when
asked (ResRL) — at the positions that predict the completion tokens, and computes from them, tile by tile against
the lm_head (never [tokens × vocab] logits):

* exact divergences to the reference, given its final hidden states (the ``full`` estimator; EKSFT's KL(π‖ρ));
* nucleus statistics: SIREN's top-p entropy, with gradient; Lp-Reg's min-p proxy log-prob of the sampled token.

Doing it inside the forward keeps it inside the DDP / FSDP wrapper, like TRL's own fused head. TRL may split the rows
of one call into several forwards (``batch_size``): results are concatenated in row order.
"""

from __future__ import annotations

import types
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..objective import VocabularyRequest, vocabulary_statistics

try:
    from peft import PeftModel
except ImportError:  # peft is optional
    PeftModel = None


def is_peft(model: Any) -> bool:
    return PeftModel is not None and isinstance(model, PeftModel)


def hf_model(model: Any) -> Any:
    """The transformers model whose ``forward`` TRL patched (the base model under PEFT)."""
    return model.get_base_model() if is_peft(model) else model


def lm_head_weight(model: Any) -> tuple[Tensor, Tensor | None]:
    head = model.get_output_embeddings()
    weight, bias = head.weight, head.bias
    if hasattr(weight, "full_tensor"):  # FSDP2 DTensor
        weight = weight.full_tensor()
        bias = None if bias is None else bias.full_tensor()
    return weight, bias


def check_plain_lm_head(model: Any, what: str) -> None:
    """Our vocabulary ops implement logits = h Wᵀ + b (/ temperature); refuse heads TRL scales or softcaps."""
    cfg = model.config.get_text_config()
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        value = getattr(cfg, attr, None)
        if value not in (None, 1.0):
            raise ValueError(
                f"{what} does not support models with {attr}={value!r} yet (it recomputes the lm_head tile by tile); "
                "use a sampled estimator and masks that need no vocabulary statistics for this model"
            )


def decoder_layers(model: Any) -> Any:
    """The decoder-layer list of a transformers causal LM (``model.model.layers`` for Llama/Qwen-style models)."""
    layers = getattr(model.base_model, "layers", None)
    if layers is None or len(layers) < 2:
        raise ValueError(
            f"{type(model).__name__} has no `base_model.layers` with ≥ 2 decoder layers: the penultimate-layer hook "
            "(ResRL) supports Llama/Qwen/Mistral-style models"
        )
    return layers


@dataclass
class ForwardRequest:
    """One TRL call's :class:`~trl_divergences.objective.VocabularyRequest` (what the wrapped forward computes for its
    rows) with what TRL's call adds: the completion length, the temperature, the lm_head cast, and the reference's
    (and the teacher's) hidden states and lm_head for exact divergences. Results accumulate in ``results`` by name,
    in row order.
    """

    spec: VocabularyRequest
    n_completion: int
    temperature: float
    cast_fp32: bool = False
    ref_hidden: Tensor | None = None
    ref_weight: Tensor | None = None
    ref_bias: Tensor | None = None
    teacher_hidden: Tensor | None = None
    teacher_weight: Tensor | None = None
    teacher_bias: Tensor | None = None
    results: dict[str, list[Tensor]] = field(default_factory=lambda: defaultdict(list))
    offset: int = 0

    #: {name: [rows, C]} per-token loss weights of exact divergences aggregated, with their gradient, in the forward
    exact_weights: dict[str, Tensor] | None = None
    #: [rows, C] per-token weights of log π(y_t) (an on-policy policy gradient known before the forward): the loss
    #: forward then runs the backbone and our one vocabulary pass only, in place of TRL's fused head (whose log-probs
    #: and entropies it returns, detached: the whole gradient is in ``<name>/weighted_sum``)
    logp_weights: Tensor | None = None

    def result(self, name: str) -> Tensor:
        """[rows, C] concatenated over the call's forwards; a scalar (``<name>/weighted_sum``) summed over them."""
        parts = self.results[name]
        return torch.stack(parts).sum() if parts[0].dim() == 0 else torch.cat(parts)

    def all_results(self) -> dict[str, Tensor]:
        """Every computed statistic, [rows, C] each."""
        return {name: self.result(name) for name in self.results}

    def compute(self, model: Any, hidden: Tensor, targets: Tensor, penultimate: Tensor | None) -> None:
        """Statistics of one forward's rows (``hidden`` [b, C, H] at the completion-predicting positions)."""
        rows = slice(self.offset, self.offset + hidden.size(0))
        self.offset = rows.stop
        weight, bias = lm_head_weight(model)
        if self.cast_fp32:
            hidden = hidden.float()
        stats = vocabulary_statistics(
            self.spec,
            hidden,
            weight,
            targets,
            temperature=self.temperature,
            bias=bias,
            ref_hidden=None if self.ref_hidden is None else self.ref_hidden[rows],
            ref_weight=self.ref_weight,
            ref_bias=self.ref_bias,
            teacher_hidden=None if self.teacher_hidden is None else self.teacher_hidden[rows],
            teacher_weight=self.teacher_weight,
            teacher_bias=self.teacher_bias,
            penultimate=penultimate,
            exact_weights=None
            if self.exact_weights is None
            else {name: w[rows] for name, w in self.exact_weights.items()},
            logp_weights=None if self.logp_weights is None else self.logp_weights[rows],
        )
        for name, value in stats.items():
            self.results[name].append(value)


#: the keyword arguments TRL's loss forward passes for a text-only batch (the fast path takes nothing else)
POLICY_HEAD_KWARGS = frozenset({"input_ids", "attention_mask", "labels", "fused_lm_head"})


def policy_head_forward(model: Any, request: ForwardRequest, args: tuple, kwargs: dict[str, Any]) -> Any:
    """TRL's fused forward with its lm_head pass replaced by ours (``request.logp_weights`` set): the backbone, then
    one vocabulary pass giving the loss gradient (policy gradient + exact divergence) and, detached, the log-probs
    and entropies TRL's output carries ([rows, C], 0 where TRL masks the label, like TRL's)."""
    extra = sorted(k for k, v in kwargs.items() if k not in POLICY_HEAD_KWARGS and v is not None)  # PEFT adds Nones
    if args or extra:
        raise ValueError(f"the fused policy-head path takes {sorted(POLICY_HEAD_KWARGS)} only, got {extra}")
    from trl.trainer.utils import FusedCausalLMOutput

    input_ids, labels = kwargs["input_ids"], kwargs["labels"]
    hidden = model.base_model(input_ids=input_ids, attention_mask=kwargs["attention_mask"], use_cache=False)
    c = request.n_completion
    request.compute(model, hidden.last_hidden_state[:, :-1][:, -c:], input_ids[:, -c:], None)
    valid = labels[:, 1:][:, -c:] != -100
    logps, entropies = (request.results[name][-1].masked_fill(~valid, 0.0) for name in ("logp", "entropy"))
    return FusedCausalLMOutput(log_probs=logps, entropy=entropies, label_mask=valid)


def install_forward_request_hook(model: Any, current: Callable[[], ForwardRequest | None]) -> None:
    """Wrap ``model``'s (TRL-patched) forward: while ``current()`` returns a request, fused forwards also run it."""
    fused_forward = model.forward

    def forward(model_self, *args: Any, **kwargs: Any):
        request = current()
        if request is None or not kwargs.get("fused_lm_head", False):
            return fused_forward(*args, **kwargs)
        if request.logp_weights is not None:
            return policy_head_forward(model_self, request, args, kwargs)
        captured: dict[str, Tensor] = {}
        hooks = [
            model_self.base_model.register_forward_hook(
                lambda _m, _i, out: captured.__setitem__("final", out.last_hidden_state)
            )
        ]
        if request.spec.penultimate:
            hooks.append(
                decoder_layers(model_self)[-2].register_forward_hook(
                    lambda _m, _i, out: captured.__setitem__("penultimate", out[0] if isinstance(out, tuple) else out)
                )
            )
        try:
            out = fused_forward(*args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        c = request.n_completion
        at_completion = {k: v[:, :-1][:, -c:] for k, v in captured.items()}
        targets = kwargs["input_ids"][:, -c:]
        request.compute(model_self, at_completion["final"], targets, at_completion.get("penultimate"))
        return out

    model.forward = types.MethodType(forward, model)
