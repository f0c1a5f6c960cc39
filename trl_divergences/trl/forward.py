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

from ..divergences import Divergence
from ..ops import fused_linear_logprob_entropy_divergence, fused_linear_nucleus_stats

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
    """What the wrapped forward computes for one batch of rows; results accumulate in ``results`` by name.

    Attributes:
        n_completion: completion columns C (the statistics are taken at the C positions predicting them).
        exact: {result name: divergence} computed exactly over the vocabulary against ``ref_hidden`` [B, C, H_ref].
        top_p, top_k: the nucleus of ``topp_entropy`` (None: not computed); min_p: the proxy of ``proxy_logp``.
        penultimate: capture the penultimate decoder layer's output at those positions (detached).
    """

    n_completion: int
    temperature: float
    cast_fp32: bool = False
    exact: dict[str, Divergence] = field(default_factory=dict)
    ref_hidden: Tensor | None = None
    ref_weight: Tensor | None = None
    ref_bias: Tensor | None = None
    top_p: float | None = None
    top_k: int = 10000
    min_p: float | None = None
    penultimate: bool = False
    results: dict[str, list[Tensor]] = field(default_factory=lambda: defaultdict(list))
    offset: int = 0

    def result(self, name: str) -> Tensor:
        return torch.cat(self.results[name])

    def get(self, name: str) -> Tensor | None:
        """:meth:`result`, or None when ``name`` was not computed."""
        return self.result(name) if name in self.results else None

    def compute(self, model: Any, hidden: Tensor, targets: Tensor, penultimate: Tensor | None) -> None:
        """Statistics of one forward's rows (``hidden`` [b, C, H] at the completion-predicting positions)."""
        rows = slice(self.offset, self.offset + hidden.size(0))
        self.offset = rows.stop
        weight, bias = lm_head_weight(model)
        if self.cast_fp32:
            hidden = hidden.float()
        computed: dict[str, Tensor] = {}
        for name, div in self.exact.items():
            if repr(div) in computed:  # e.g. the `full` reverse-KL penalty and EKSFT's KL: one pass
                self.results[name].append(computed[repr(div)])
                continue
            _, _, value = fused_linear_logprob_entropy_divergence(
                hidden,
                weight,
                self.ref_hidden[rows].to(hidden.dtype),
                self.ref_weight.to(weight.dtype),
                None,
                div,
                temperature=self.temperature,
                bias=bias,
                ref_bias=self.ref_bias,
            )
            computed[repr(div)] = value
            self.results[name].append(value)
        if self.top_p is not None or self.min_p is not None:
            stats = fused_linear_nucleus_stats(
                hidden,
                weight,
                targets if self.min_p is not None else None,
                bias=bias,
                top_p=self.top_p,
                top_k=self.top_k,
                min_p=self.min_p,
                temperature=self.temperature,
            )
            if self.top_p is not None:
                self.results["topp_entropy"].append(stats.topp_entropy)
            if self.min_p is not None:
                self.results["proxy_logp"].append(stats.proxy_logp)
        if penultimate is not None:
            self.results["penultimate"].append(penultimate.detach())


def install_forward_request_hook(model: Any, current: Callable[[], ForwardRequest | None]) -> None:
    """Wrap ``model``'s (TRL-patched) forward: while ``current()`` returns a request, fused forwards also run it."""
    fused_forward = model.forward

    def forward(model_self, *args: Any, **kwargs: Any):
        request = current()
        if request is None or not kwargs.get("fused_lm_head", False):
            return fused_forward(*args, **kwargs)
        captured: dict[str, Tensor] = {}
        hooks = [
            model_self.base_model.register_forward_hook(
                lambda _m, _i, out: captured.__setitem__("final", out.last_hidden_state)
            )
        ]
        if request.penultimate:
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
