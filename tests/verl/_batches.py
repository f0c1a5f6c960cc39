"""verl-shaped micro-batches for ``ppo_loss`` on CPU, built the way verl's v1 path builds them (a TensorDict of
jagged per-sample tensors over prompt + response, plus the non-tensor global batch info)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Rollouts:
    """B sequences with prompt lengths ``prompt_lens`` and response lengths ``response_lens`` over a vocab V:
    per-response-token policy logits ``theta`` [B, T, V] (the leaf gradients are taken w.r.t.), reference log-probs
    ``ref_logits`` [B, T, V], sampled tokens ``tokens`` [B, T] and a response mask [B, T]."""

    theta: Tensor
    ref_logits: Tensor
    tokens: Tensor
    mask: Tensor
    prompt_lens: list[int]
    advantages: Tensor

    @property
    def response_lens(self) -> list[int]:
        return [int(n) for n in self.mask.sum(-1)]

    def logps(self) -> tuple[Tensor, Tensor]:
        """(log π, log ρ) of the sampled tokens [B, T] (log π differentiable w.r.t. ``theta``)."""
        lp = torch.log_softmax(self.theta, -1).gather(-1, self.tokens.unsqueeze(-1)).squeeze(-1)
        lr = torch.log_softmax(self.ref_logits, -1).gather(-1, self.tokens.unsqueeze(-1)).squeeze(-1)
        return lp, lr


def make_rollouts(
    prompt_lens: list[int], response_lens: list[int], vocab: int, seed: int = 0, dtype=torch.float64
) -> Rollouts:
    g = torch.Generator().manual_seed(seed)
    b, t = len(response_lens), max(response_lens)
    theta = torch.randn(b, t, vocab, generator=g, dtype=dtype)
    ref = theta.detach() + 0.7 * torch.randn(b, t, vocab, generator=g, dtype=dtype)
    tokens = torch.multinomial(torch.softmax(theta, -1).reshape(-1, vocab), 1, generator=g).reshape(b, t)
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate(response_lens):
        mask[i, :n] = True
    advantages = torch.randn(b, 1, generator=g, dtype=dtype).expand(b, t).clone()
    return Rollouts(theta.requires_grad_(), ref, tokens, mask, list(prompt_lens), advantages)


def micro_batch(r: Rollouts, rows: slice, old_logps: Tensor, batch_num_tokens: int, global_batch_size: int):
    """(model_output, data) for ``ppo_loss`` over the rows ``rows``: log-probs placed at the prompt + response
    positions verl uses (the log-prob of response token k sits at position P + k - 1)."""
    from verl.utils import tensordict_utils as tu

    lp, lr = r.logps()
    samples, log_probs = [], []
    for i in range(*rows.indices(len(r.prompt_lens))):
        p, n = r.prompt_lens[i], r.response_lens[i]
        prompt = torch.arange(p) % 5
        samples.append(
            {
                "prompts": prompt,
                "responses": r.tokens[i, :n],
                "input_ids": torch.cat([prompt, r.tokens[i, :n]]),
                "response_mask": torch.ones(n, dtype=torch.int64),
                "loss_mask": torch.ones(n, dtype=torch.int64),
                "old_log_probs": old_logps[i, :n].detach(),
                "ref_log_prob": lr[i, :n].detach(),
                "advantages": r.advantages[i, :n],
            }
        )
        zeros = lp.new_zeros(p - 1)
        log_probs.append(torch.cat([zeros, lp[i, :n], lp.new_zeros(1)]))
    data = tu.list_of_dict_to_tensordict(samples)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=batch_num_tokens, global_batch_size=global_batch_size)
    model_output = {"log_probs": torch.nested.as_nested_tensor(log_probs, layout=torch.jagged)}
    return model_output, data


def actor_config(kl_loss_type: str, loss_agg_mode: str = "token-mean", coef: float = 1.0):
    from verl.workers.config import ActorConfig, PolicyLossConfig

    return ActorConfig(
        strategy="fsdp",
        rollout_n=2,
        ppo_micro_batch_size_per_gpu=2,
        use_kl_loss=True,
        kl_loss_type=kl_loss_type,
        kl_loss_coef=coef,
        loss_agg_mode=loss_agg_mode,
        policy_loss=PolicyLossConfig(loss_mode="vanilla"),
    )
