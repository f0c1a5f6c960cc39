"""The tensors an adapter hands to the objective and gets back: once per generation batch (:class:`RolloutInputs`
-> :class:`RolloutOutputs`) and once per loss micro-batch (:class:`TokenInputs` -> :class:`TokenTerms`).

Per-rollout vectors marked [N] cover every process (process-major order, so group statistics are exact wherever a
group's rows live); [n] and [n, T] are this process's rows, [B, T] the rows of one loss micro-batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from ..groups import Gather, ReduceSum


@dataclass
class RolloutInputs:
    """One generation batch after scoring.

    Attributes:
        rewards: [N] total reward per rollout (NaN = unscored).
        advantages: [N] the framework's advantages.
        group_ids: [N] rollouts of one prompt share an id.
        local: this process's rows, a slice of range(N).
        completion_mask: [n, T] valid completion tokens (tool masks applied).
        old_logps: [n, T] log π_old of the sampled tokens (the rollout policy), or None (on-policy and not computed).
        ref_logps: [n, T] log ρ of the sampled tokens, or None.
        teacher_logps: [n, T] log τ of the sampled tokens at the rollout temperature, or None.
        teacher_reference_logps: [n, T] log ρ of the sampled tokens under a separately given reference for the
            teacher method (``Requirements.teacher_reference_model``), at the rollout temperature, or None.
        statistics: results of the rollout-time policy pass (:meth:`Objective.rollout_request`), local rows.
        prompt_indices: [N] dataset row of each rollout's prompt (curriculum samplers), or None.
        gather: concatenates a 1-D local tensor over processes (None: one process).
        reduce_sum: sums a tensor over processes (None: one process).
    """

    rewards: Tensor
    advantages: Tensor
    group_ids: Tensor
    local: slice
    completion_mask: Tensor
    old_logps: Tensor | None = None
    ref_logps: Tensor | None = None
    teacher_logps: Tensor | None = None
    teacher_reference_logps: Tensor | None = None
    statistics: Mapping[str, Tensor] = field(default_factory=dict)
    prompt_indices: Tensor | None = None
    gather: Gather | None = None
    reduce_sum: ReduceSum | None = None


@dataclass
class RolloutOutputs:
    """What the loss needs from one generation batch, this process's rows.

    Attributes:
        advantages: [n] or [n, T] (rewritten by the reweighting or a teacher method, else the framework's).
        correct: [n] bool, reward ≥ the correctness threshold.
        divergence_weight: [n] per-rollout multiplier of the penalty, or None (all 1).
        keep: [n] bool rollouts kept in the loss, or None (all kept).
        proxy_logps: [n, T] log π_proxy of the sampled tokens (min-p proxy of π_old), or None.
        metrics: scalars to log (already global).
    """

    advantages: Tensor
    correct: Tensor
    divergence_weight: Tensor | None = None
    keep: Tensor | None = None
    proxy_logps: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TokenInputs:
    """One loss micro-batch.

    Attributes:
        mask: [B, T] valid completion tokens.
        logps: [B, T] log π(y_t), with graph.
        entropies: [B, T] H(π(·|s_t)), with graph, or None.
        advantages: [B] or [B, T].
        old_logps: [B, T] log π_old (None: on-policy, the detached ``logps``).
        ref_logps: [B, T] log ρ(y_t) (sampled estimators).
        teacher_logps: [B, T] log τ(y_t) at the rollout temperature (teacher-guided methods).
        correct: [B] bool (correctness-based masks).
        proxy_logps: [B, T] log π_proxy(y_t) (Lp-Reg, the low-probability mask).
        divergence_weight: [B] per-rollout penalty weights, or None.
        importance_weight: π/π_old ([B, T] or [B, 1], with its graph) applied to sampled estimators, or None
            (see :func:`importance_weight`).
        vocabulary: results of the loss forward's :meth:`Objective.loss_request` (``"divergence"``, ``"reverse_kl"``,
            ``"topp_entropy"``, ``"teacher_divergence"``), [B, T] each; ``"divergence/weighted_sum"`` (scalar) when
            the forward aggregated the exact penalty with :meth:`Objective.penalty_weights`, and
            ``"teacher_divergence/weighted_sum"`` the teacher's exact term with
            :meth:`Objective.teacher_penalty_weights`.
        vocab_size: |V|.
        gather / reduce_sum: as in :class:`RolloutInputs`.
    """

    mask: Tensor
    logps: Tensor
    entropies: Tensor | None = None
    advantages: Tensor | None = None
    old_logps: Tensor | None = None
    ref_logps: Tensor | None = None
    teacher_logps: Tensor | None = None
    correct: Tensor | None = None
    proxy_logps: Tensor | None = None
    divergence_weight: Tensor | None = None
    importance_weight: Tensor | None = None
    vocabulary: Mapping[str, Tensor] = field(default_factory=dict)
    vocab_size: int | None = None
    gather: Gather | None = None
    reduce_sum: ReduceSum | None = None


@dataclass
class TokenTerms:
    """The objective's terms for one micro-batch; the adapter aggregates the per-token ones with its own normaliser.

    Attributes:
        pg_keep: [B, T] bool tokens kept in the framework's policy-gradient term (None: no selection).
        penalty: [B, T] coefficient × per-rollout weight × per-token divergence (to the reference, plus the teacher
            term of a teacher-guided method), or None.
        replaced_pg: [B, T] the policy-gradient term of the tokens a divergence selects (removed from ``pg_keep``),
            or None.
        aggregated: the penalty already aggregated with the adapter's normaliser (scalar; computed with its gradient
            inside the forward from :meth:`Objective.penalty_weights` and :meth:`Objective.teacher_penalty_weights`;
            the two summed), or None.
        aux_loss: scalar auxiliary loss of this micro-batch (masks' terms; not divided by gradient accumulation).
        divergence_value: the active divergence's mean per-token value over all processes (TRL's ``kl``), or None.
        metrics: scalars to log (already global where the statistic is).
    """

    pg_keep: Tensor | None = None
    penalty: Tensor | None = None
    replaced_pg: Tensor | None = None
    aggregated: Tensor | None = None
    aux_loss: Tensor | None = None
    divergence_value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def per_token(self) -> Tensor | None:
        """``penalty`` + ``replaced_pg`` [B, T] (the terms aggregated like the policy-gradient loss), or None."""
        terms = [t for t in (self.penalty, self.replaced_pg) if t is not None]
        return None if not terms else terms[0] if len(terms) == 1 else terms[0] + terms[1]
