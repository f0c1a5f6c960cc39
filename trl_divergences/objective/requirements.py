"""What a configuration needs from the framework: typed answers an adapter reads once, at construction, and per
step (the vocabulary statistics of a forward)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..divergences import Divergence


@dataclass(frozen=True)
class VocabularyRequest:
    """What one policy forward computes over the vocabulary, from the final hidden states at the positions that
    predict the completion tokens and the lm_head, tile by tile (never [tokens × V] logits); see
    :func:`~trl_divergences.objective.vocabulary.vocabulary_statistics` for the result names.

    Attributes:
        exact: {result name: divergence} computed exactly against the reference's final hidden states.
        teacher_exact: {result name: divergence} computed exactly against the teacher's final hidden states.
        top_p, top_k: the nucleus of ``"topp_entropy"`` (None: not computed).
        min_p: the min-p proxy of ``"proxy_logp"`` (None: not computed).
        penultimate: capture the penultimate decoder layer's output (``"penultimate"``, detached).
    """

    exact: Mapping[str, Divergence] = field(default_factory=dict)
    teacher_exact: Mapping[str, Divergence] = field(default_factory=dict)
    top_p: float | None = None
    top_k: int = 10000
    min_p: float | None = None
    penultimate: bool = False

    @property
    def needs_reference(self) -> bool:
        """The reference's final hidden states and lm_head must be supplied."""
        return bool(self.exact)

    @property
    def needs_teacher(self) -> bool:
        """The teacher's final hidden states and lm_head must be supplied."""
        return bool(self.teacher_exact)

    @property
    def nucleus(self) -> bool:
        return self.top_p is not None or self.min_p is not None


@dataclass(frozen=True)
class Requirements:
    """Which tensors and framework passes a configuration needs.

    Attributes:
        reference_model: a frozen reference model ρ must be loaded.
        ref_logps: ρ's log-probs of the sampled tokens, computed at rollout time (sampled estimators, ACE).
        ref_hidden: ρ's final hidden states at the completion positions, carried with the batch (exact divergences,
            EKSFT's exact KL): [tokens × H] instead of [tokens × V] logits.
        vocabulary: some statistic is recomputed from the policy's lm_head (the adapter must check the model's head
            is plain: logits = h Wᵀ + b).
        rollout_statistics: :meth:`Objective.rollout_step` must run once per generation batch (rewards needed).
        token_selection: :meth:`Objective.token_terms` returns a policy-gradient keep mask (masks, or a divergence
            that replaces the policy gradient on the tokens it selects).
        penalty: :meth:`Objective.token_terms` returns a divergence penalty (a non-zero coefficient).
        prompt_index: a curriculum sampler needs each rollout's prompt (dataset row) index.
        greedy_filter: a curriculum filters each step's prompts by a greedy decode before the rollouts (SELF).
        whole_groups: names of methods needing all of a prompt's rollouts on one process.
        drops_rollouts: names of methods that drop rollouts from the loss (need a token-count normaliser).
        teacher_model: a frozen teacher τ must be loaded (a teacher-guided method).
        teacher_logps: τ's log-probs of the sampled tokens at the rollout temperature, computed at rollout time.
        teacher_hidden: τ's final hidden states at the completion positions, carried with the batch (an exact
            divergence to the teacher), like ``ref_hidden``.
        teacher_sampled_penalty: the teacher's penalty is a sampled-token estimate (it takes the importance weight
            π/π_old, like a sampled reference penalty).
        ratio_anchor: the policy-gradient ratio's log π_old is replaced at loss time by
            :meth:`Objective.pg_old_logps` (TRRD).
        teacher_reference_model: a separate frozen ρ for the teacher method must be loaded (G-OPD's reward
            correction: the teacher's pre-RL base), and its log-probs of the sampled tokens at the rollout
            temperature computed at rollout time (``RolloutInputs.teacher_reference_logps``); the reference model
            is then not needed for the teacher method.
    """

    reference_model: bool
    ref_logps: bool
    ref_hidden: bool
    vocabulary: bool
    rollout_statistics: bool
    token_selection: bool
    penalty: bool
    prompt_index: bool
    greedy_filter: bool
    whole_groups: tuple[str, ...] = ()
    drops_rollouts: tuple[str, ...] = ()
    teacher_model: bool = False
    teacher_logps: bool = False
    teacher_hidden: bool = False
    teacher_sampled_penalty: bool = False
    ratio_anchor: bool = False
    teacher_reference_model: bool = False
