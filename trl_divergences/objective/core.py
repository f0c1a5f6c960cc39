"""The objective: the configured divergence (+ estimator and coefficient schedule), token masks, advantage
reweighting, curriculum and rehearsal loss composed into one per-token objective, framework-agnostic.

With π the policy, π_old the rollout policy, ρ the reference, A the advantages and keep the token masks' AND, an
adapter minimises, per micro-batch and with its framework's token normaliser ``agg``:

    agg[ keep · PG(π, π_old, A') ] + agg[ β_t · w_i · D_t ] + agg[ replaced_t ] + aux

where A' are the reweighted advantages, β_t the coefficient in force (schedule), w_i the per-rollout divergence
weight (DADS), D_t the per-token divergence (a sampled estimator or the exact value over the vocabulary),
``replaced_t`` the policy-gradient term of the tokens a divergence selects itself (Lp-Reg; those tokens leave
``keep``), and ``aux`` the masks' auxiliary losses (SIREN, EKSFT). The framework's own PG term is untouched.

A teacher-guided method (:mod:`trl_divergences.teacher`) enters through the same slots: KDRL / exact OPD add
coef_s · m_i · D(π‖τ)_t to the penalty and may scale A'; G-OPD replaces A' by per-token teacher advantages; TRRD
replaces the ratio's log π_old by its anchor (:meth:`Objective.pg_old_logps`).

Methods are never recognised by name: each declares capabilities (a mask's ``requires`` / ``rollout_requires`` /
``top_p`` / ``min_p``, a divergence's ``needs_reference`` / ``replaces_policy_gradient`` / ``proxy_min_p``, a
reweighting's ``requires`` / ``needs_reference`` / ``reweights_divergence`` / ``drops_rollouts``, a curriculum's
``kind``, a schedule's ``needs_accuracy`` / ``divergences``), and the objective derives what to compute from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..checks import is_finite_number
from ..curricula import CURRICULA, SCHEDULES, Curriculum, Schedule
from ..divergences import FULL, Divergence, check_estimator, get_divergence
from ..groups import ReduceSum, group_mean
from ..masks import TOKEN_MASKS, TokenBatch, TokenMask, compose_token_masks
from ..numerics import compute_dtype
from ..rehearsal.loss import RehearsalLoss, build_rehearsal_loss
from ..reweighting import ADVANTAGE_REWEIGHTINGS, AdvantageReweighting, Rollouts
from ..teacher import TEACHER_METHODS, TeacherMethod
from .batches import RolloutInputs, RolloutOutputs, TokenInputs, TokenTerms
from .requirements import Requirements, VocabularyRequest

#: the keyword-argument dicts of the method catalog, by the config field name both adapters use
KWARGS_FIELDS = (
    "divergence_kwargs",
    "token_mask_kwargs",
    "reweighting_kwargs",
    "curriculum_kwargs",
    "schedule_kwargs",
    "rehearsal_kwargs",
    "teacher_kwargs",
)


def kwargs_dict(field_name: str, value: Any) -> dict:
    """A method's kwargs dict (None -> {}); anything else than a dict raises naming the field."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{field_name} must be a dict, got {type(value).__name__}")
    return value


def importance_weight(logps: Tensor, old_logps: Tensor | None, mask: Tensor, level: str = "token") -> Tensor:
    """π/π_old with its graph: per token [B, T], or per sequence [B, 1] as exp of the masked mean log-ratio
    (``level="sequence"``, GSPO's). ``old_logps`` None: on-policy (π_old = π detached: value 1, gradient ∇log π)."""
    old = logps.detach() if old_logps is None else old_logps
    log_ratio = logps - old
    if level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    elif level != "token":
        raise ValueError(f"importance-sampling level must be 'token' or 'sequence', got {level!r}")
    return torch.exp(log_ratio)


def masked_mean(values: Tensor, mask: Tensor, reduce_sum: ReduceSum | None = None) -> float:
    """Σ values·mask / Σ mask over every process (``reduce_sum``), 0 for an empty mask."""
    v = values.detach()
    m = mask.to(compute_dtype(v.dtype))
    totals = torch.stack([(v.to(m.dtype) * m).sum(), m.sum()])
    if reduce_sum is not None:
        totals = reduce_sum(totals)
    return (totals[0] / totals[1].clamp(min=1.0)).item()


def _build_optional(registry, name: str | None, kwargs: dict, field_name: str):
    """``registry.build(name, **kwargs)``, or None for no method (then ``kwargs`` must be empty)."""
    if name is None:
        if kwargs:
            raise ValueError(f"{field_name} given without a method to apply them to: {kwargs!r}")
        return None
    return registry.build(name, **kwargs)


def build_token_masks(names: Sequence[str], kwargs: dict[str, dict]) -> list[TokenMask]:
    """The configured token masks, in order (unknown names, duplicates or stray kwargs raise ``ValueError``)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"token_masks must be a list of names, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"token_masks lists a mask twice: {list(names)!r}")
    stray = sorted(set(kwargs) - set(names))
    if stray:
        raise ValueError(f"token_mask_kwargs has entries for masks not in token_masks: {stray}")
    return [TOKEN_MASKS.build(name, **kwargs_dict(f"token_mask_kwargs[{name!r}]", kwargs.get(name))) for name in names]


class Objective:
    """The composed objective of one configuration; see the module docstring.

    Args (the config field names both adapters use):
        divergence, divergence_estimator, divergence_kwargs: the penalty D and how it is estimated per token.
        coef: its coefficient β (TRL's ``beta``; 0 switches the penalty off).
        token_masks, token_mask_kwargs: masks of the policy-gradient term, composed by AND.
        advantage_reweighting, reweighting_kwargs; curriculum, curriculum_kwargs; coefficient_schedule,
            schedule_kwargs: one method each, or None.
        correct_reward_threshold: a rollout is correct when its total reward is ≥ this.
        rehearsal_divergence, rehearsal_kwargs, rehearsal_coef: the rehearsal loss on stored reference samples
            (built always, so its kwargs are validated; used when the adapter has a store).
        teacher_method, teacher_kwargs: a teacher-guided method (``td.list_teacher_methods()``), or None.
        given_teacher_reference: the adapter loads a separate ρ for the teacher method (its
            ``teacher_reference_model``, e.g. the teacher's pre-RL base: G-OPD's "reward correction") instead of using
            the reference model (the student's initial weights); only for a method that reads log ρ.

    Every name and kwarg is validated here, with the messages both adapters show.
    """

    def __init__(
        self,
        *,
        divergence: str = "reverse_kl",
        divergence_estimator: str = "k3",
        divergence_kwargs: dict | None = None,
        coef: float = 0.0,
        token_masks: Sequence[str] = (),
        token_mask_kwargs: dict | None = None,
        advantage_reweighting: str | None = None,
        reweighting_kwargs: dict | None = None,
        curriculum: str | None = None,
        curriculum_kwargs: dict | None = None,
        coefficient_schedule: str | None = None,
        schedule_kwargs: dict | None = None,
        correct_reward_threshold: float = 1.0,
        rehearsal_divergence: str = "forward_kl",
        rehearsal_kwargs: dict | None = None,
        rehearsal_coef: float = 0.01,
        teacher_method: str | None = None,
        teacher_kwargs: dict | None = None,
        given_teacher_reference: bool = False,
    ) -> None:
        self.divergence_kwargs = kwargs_dict("divergence_kwargs", divergence_kwargs)
        self.divergence = get_divergence(divergence, **self.divergence_kwargs)
        self.estimator = divergence_estimator
        check_estimator(self.divergence, divergence_estimator)
        if not (is_finite_number(coef)):
            raise ValueError(f"beta (the divergence coefficient) must be a finite number, got {coef!r}")
        self.coef = float(coef)
        self.token_masks = build_token_masks(token_masks, kwargs_dict("token_mask_kwargs", token_mask_kwargs))
        self.reweighting: AdvantageReweighting | None = _build_optional(
            ADVANTAGE_REWEIGHTINGS,
            advantage_reweighting,
            kwargs_dict("reweighting_kwargs", reweighting_kwargs),
            "reweighting_kwargs",
        )
        self.curriculum: Curriculum | None = _build_optional(
            CURRICULA, curriculum, kwargs_dict("curriculum_kwargs", curriculum_kwargs), "curriculum_kwargs"
        )
        self.schedule: Schedule | None = _build_optional(
            SCHEDULES, coefficient_schedule, kwargs_dict("schedule_kwargs", schedule_kwargs), "schedule_kwargs"
        )
        if not (is_finite_number(correct_reward_threshold)):
            raise ValueError(f"correct_reward_threshold must be a finite number, got {correct_reward_threshold!r}")
        self.correct_reward_threshold = float(correct_reward_threshold)
        self.rehearsal_loss: RehearsalLoss = build_rehearsal_loss(
            rehearsal_divergence, **kwargs_dict("rehearsal_kwargs", rehearsal_kwargs)
        )
        if not (is_finite_number(rehearsal_coef) and rehearsal_coef >= 0):
            raise ValueError(f"rehearsal_coef must be a non-negative number, got {rehearsal_coef!r}")
        self.rehearsal_coef = float(rehearsal_coef)
        self.teacher: TeacherMethod | None = _build_optional(
            TEACHER_METHODS, teacher_method, kwargs_dict("teacher_kwargs", teacher_kwargs), "teacher_kwargs"
        )
        if not isinstance(given_teacher_reference, bool):
            raise ValueError(f"given_teacher_reference must be True or False, got {given_teacher_reference!r}")
        self.given_teacher_reference = given_teacher_reference
        self._validate()
        self._divergences = {self.divergence.name: self.divergence}
        #: the exact KL(π‖ρ) masks read (EKSFT), at its defaults
        self._mask_kl = get_divergence("reverse_kl")
        self.coef_now = self.coef
        self.divergence_now = self.divergence
        self.requirements = self._requirements()

    # ---- construction -------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        """Conflicts between methods (each method checked its own kwargs when it was built)."""
        min_ps = {m.min_p for m in self.token_masks if m.min_p is not None}
        if self.divergence.proxy_min_p is not None:
            min_ps.add(self.divergence.proxy_min_p)
        if len(min_ps) > 1:
            raise ValueError(
                f"the min-p proxy is shared: lp_reg's and low_probability's kappa must agree, got {sorted(min_ps)}"
            )
        if sum(m.top_p is not None for m in self.token_masks) > 1:
            raise ValueError("only one token mask may use the top-p nucleus statistics")
        if self.schedule is not None and self.schedule.divergences:
            if self.divergence.name not in self.schedule.divergences:
                raise ValueError(
                    f"coefficient_schedule {self.schedule.name!r} switches between "
                    f"{', '.join(self.schedule.divergences)}; divergence {self.divergence.name!r} conflicts with it"
                )
            for name in self.schedule.divergences:
                check_estimator(get_divergence(name, **self.divergence_kwargs), self.estimator)
        if self.teacher is not None and self.teacher.replaces_advantages and self.reweighting is not None:
            raise ValueError(
                f"teacher_method {self.teacher.name!r} replaces the advantages; advantage_reweighting "
                f"{self.reweighting.name!r} conflicts with it"
            )
        if self.given_teacher_reference:
            if self.teacher is None:
                raise ValueError("teacher_reference_model given without a teacher_method to use it")
            if not self.teacher.requirements.reference_logps:
                raise ValueError(
                    f"teacher_reference_model given, but teacher_method {self.teacher!r} does not read a reference ρ "
                    "(g_opd / exopd with lam != 1 do; at lam = 1 ρ cancels): drop it, or set teacher_kwargs' lam"
                )

    def _requirements(self) -> Requirements:
        div, masks, rw = self.divergence, self.token_masks, self.reweighting
        penalty = self.coef != 0.0 and not div.replaces_policy_gradient
        divergence_to_reference = self.coef != 0.0 and div.needs_reference
        exact = penalty and self.estimator == FULL
        mask_reference = any(m.needs_reference for m in masks)
        mask_ref_logps = any("ref_logps" in m.requires for m in masks)
        rw_reference = rw is not None and rw.needs_reference
        curriculum = self.curriculum
        vocabulary = (
            exact
            or mask_reference
            or any(m.top_p is not None or m.min_p is not None for m in masks)
            or div.proxy_min_p is not None
        )
        whole = [m.name for m in (rw,) if m is not None and m.whole_groups_per_process]
        if curriculum is not None and curriculum.kind == "filter":
            whole.append(curriculum.name)
        teacher = self.teacher
        needs = teacher.requirements if teacher is not None else None
        teacher_reference = needs is not None and needs.reference_logps and not self.given_teacher_reference
        teacher_sampled = teacher is not None and teacher.adds_penalty and needs.teacher_logps
        return Requirements(
            reference_model=divergence_to_reference
            or rw_reference
            or mask_reference
            or mask_ref_logps
            or teacher_reference,
            ref_logps=(divergence_to_reference and self.estimator != FULL)
            or rw_reference
            or mask_ref_logps
            or teacher_reference,
            ref_hidden=exact or mask_reference,
            vocabulary=vocabulary or (needs is not None and needs.teacher_hidden),
            rollout_statistics=bool(
                masks
                or rw is not None
                or curriculum is not None
                or self.schedule is not None
                or div.proxy_min_p is not None
                or teacher is not None
            ),
            token_selection=bool(masks) or div.replaces_policy_gradient,
            penalty=penalty,
            prompt_index=curriculum is not None and curriculum.kind == "sampler",
            greedy_filter=curriculum is not None and curriculum.kind == "filter",
            whole_groups=tuple(whole),
            drops_rollouts=(rw.name,) if rw is not None and rw.drops_rollouts else (),
            teacher_model=teacher is not None,
            teacher_logps=needs is not None and needs.teacher_logps,
            teacher_hidden=needs is not None and needs.teacher_hidden,
            teacher_sampled_penalty=teacher_sampled,
            ratio_anchor=teacher is not None and teacher.anchors_ratio,
            teacher_reference_model=self.given_teacher_reference,
        )

    @property
    def plain_reverse_k3(self) -> bool:
        """The penalty is reverse KL by k3 at a constant coefficient, equal for every rollout: what TRL's and verl's
        built-in ``low_var_kl`` compute, so an adapter may leave it to the framework (not when a teacher anchors the
        ratio: the framework's importance weight of its k3 would be the anchored ratio)."""
        rw = self.reweighting
        return (
            self.divergence.name == "reverse_kl"
            and self.estimator == "k3"
            and self.schedule is None
            and not (rw is not None and rw.reweights_divergence)
            and not (self.teacher is not None and self.teacher.anchors_ratio)
        )

    def check_whole_groups(self, rows_per_process: int, group_size: int, rows: str, group: str) -> None:
        """Methods that need every prompt's rollouts on one process: ``rows_per_process`` (described as ``rows``) must
        be a multiple of ``group_size`` (``group``)."""
        if self.requirements.whole_groups and rows_per_process % group_size:
            raise ValueError(
                f"{', '.join(self.requirements.whole_groups)} needs every prompt's {group_size} rollouts on one "
                f"process: {rows} ({rows_per_process}) must be a multiple of {group} ({group_size})"
            )

    def check_token_count_normaliser(self, field: str, value: str, token_count: Sequence[str]) -> None:
        """Methods that drop rollouts from the token mean need a normaliser that counts tokens (``token_count``)."""
        if self.requirements.drops_rollouts and value not in token_count:
            raise ValueError(
                f"advantage_reweighting {self.reweighting!r} drops rollouts from the token mean: {field} must be one "
                f"of {tuple(token_count)}, got {value!r}"
            )

    # ---- what a forward computes over the vocabulary ---------------------------------------------------------
    def _nucleus_mask(self) -> TokenMask | None:
        return next((m for m in self.token_masks if m.top_p is not None), None)

    @property
    def min_p(self) -> float | None:
        """κ of the shared min-p proxy (a divergence's or a mask's), or None."""
        if self.divergence.proxy_min_p is not None:
            return self.divergence.proxy_min_p
        return next((m.min_p for m in self.token_masks if m.min_p is not None), None)

    def rollout_request(self, has_old_logps: bool) -> VocabularyRequest | None:
        """What one no-grad pass of the rollout policy over the generation batch must compute (its log-probs are
        π_old), or None when no pass is needed. ``has_old_logps``: the framework already has π_old's log-probs."""
        anchors = {f for m in self.token_masks for f in m.rollout_requires}
        nucleus = self._nucleus_mask() if "topp_entropy" in anchors else None
        rw = self.reweighting
        penultimate = rw is not None and "hidden" in rw.requires
        old_logps = not has_old_logps and (
            (rw is not None and "seq_log_ratio" in rw.requires)
            or (self.teacher is not None and self.teacher.requirements.old_logps)
        )
        if self.min_p is None and nucleus is None and not penultimate and not old_logps:
            return None
        return VocabularyRequest(
            top_p=None if nucleus is None else nucleus.top_p,
            top_k=10000 if nucleus is None else nucleus.top_k,
            min_p=self.min_p,
            penultimate=penultimate,
        )

    def loss_request(self) -> VocabularyRequest | None:
        """What the loss forward must compute over the vocabulary this step (the divergence in force may change
        with a schedule), or None."""
        exact: dict[str, Divergence] = {}
        if self.requirements.penalty and self.estimator == FULL:
            exact["divergence"] = self.divergence_now
        if any(m.needs_reference for m in self.token_masks):
            exact["reverse_kl"] = self._mask_kl
        teacher_exact = {}
        if self.requirements.teacher_hidden:
            teacher_exact["teacher_divergence"] = self.teacher.divergence_now
        nucleus = self._nucleus_mask()
        if not exact and not teacher_exact and nucleus is None:
            return None
        return VocabularyRequest(
            exact=exact,
            teacher_exact=teacher_exact,
            top_p=None if nucleus is None else nucleus.top_p,
            top_k=getattr(nucleus, "top_k", 10000),
        )

    def _divergence(self, name: str) -> Divergence:
        """The configured divergence or one a schedule switches to (built once, with the configured kwargs)."""
        if name not in self._divergences:
            self._divergences[name] = get_divergence(name, **self.divergence_kwargs)
        return self._divergences[name]

    # ---- once per generation batch ---------------------------------------------------------------------------
    def rollout_step(self, x: RolloutInputs, *, step: int, max_steps: int, training: bool) -> RolloutOutputs:
        """Correctness, mask anchors, the reweighted advantages and per-rollout weights of one generation batch;
        in training also the curriculum's pass-rate update and the coefficient / divergence in force."""
        correct = torch.nan_to_num(x.rewards, nan=float("-inf")) >= self.correct_reward_threshold
        mask = x.completion_mask
        reduce_sum = x.reduce_sum or _identity
        for m in self.token_masks:
            if m.rollout_requires:
                m.observe_rollouts(dict(x.statistics), mask, reduce_sum)
        out = RolloutOutputs(
            advantages=x.advantages[x.local],
            correct=correct[x.local],
            proxy_logps=x.statistics.get("proxy_logp") if self.min_p is not None else None,
        )
        if self.reweighting is not None:
            self._reweight(x, correct, out)
        if self.teacher is not None:
            self._teacher_rollout(x, out)
        if training:
            if self.requirements.prompt_index:
                out.metrics.update(self._update_curriculum(x, correct))
            if self.schedule is not None:
                accuracy = correct.float().mean().item() if self.schedule.needs_accuracy else None
                multiplier, name = self.schedule(step, max_steps, accuracy)
                self.coef_now = self.coef * multiplier
                if name is not None and name != self.divergence_now.name:
                    self.divergence_now = self._divergence(name)
            if self.teacher is not None:
                accuracy = correct.float().mean().item() if self.teacher.needs_accuracy else None
                self.teacher.step(step, max_steps, accuracy)
        return out

    def _teacher_rollout(self, x: RolloutInputs, out: RolloutOutputs) -> None:
        """The teacher method's advantages (replacing or scaling A') and its rollout metrics."""
        teacher, mask = self.teacher, x.completion_mask
        prefix = f"teacher/{teacher.name}"
        if self.requirements.teacher_logps and x.teacher_logps is None:
            raise ValueError(f"teacher_method {teacher.name!r} needs the teacher's log-probs of the sampled tokens")
        reference_logps = x.ref_logps
        if self.given_teacher_reference:
            if x.teacher_reference_logps is None:
                raise ValueError(
                    f"teacher_method {teacher.name!r} was configured with a teacher_reference_model: it needs that "
                    "model's log-probs of the sampled tokens (teacher_reference_logps)"
                )
            reference_logps = x.teacher_reference_logps
        out.advantages = teacher.advantages(
            out.advantages,
            old_logps=x.old_logps,
            teacher_logps=x.teacher_logps,
            reference_logps=reference_logps,
            mask=mask,
        )
        if x.teacher_logps is not None and x.old_logps is not None:
            out.metrics[f"{prefix}/log_ratio"] = masked_mean(x.teacher_logps - x.old_logps, mask, x.reduce_sum)
        if teacher.requirements.reference_logps and reference_logps is not None and x.teacher_logps is not None:
            out.metrics[f"{prefix}/teacher_reference_log_ratio"] = masked_mean(
                x.teacher_logps - reference_logps, mask, x.reduce_sum
            )
        if teacher.replaces_advantages:
            out.metrics[f"{prefix}/advantage"] = masked_mean(out.advantages, mask, x.reduce_sum)

    def _reweight(self, x: RolloutInputs, correct: Tensor, out: RolloutOutputs) -> None:
        rw = self.reweighting
        gather = x.gather or _identity
        mask = x.completion_mask
        seq_log_ratio = None
        if "seq_log_ratio" in rw.requires:
            if x.old_logps is None or x.ref_logps is None:
                raise ValueError(f"{rw.name} needs π_old's and ρ's log-probs of the sampled tokens")
            seq_log_ratio = gather(((x.old_logps - x.ref_logps) * mask).sum(-1).float())
        hidden = x.statistics.get("penultimate") if "hidden" in rw.requires else None
        result = rw(
            Rollouts(
                rewards=x.rewards,
                advantages=x.advantages,
                group_ids=x.group_ids,
                correct=correct,
                lengths=gather(mask.sum(-1).float()),
                local=x.local,
                seq_log_ratio=seq_log_ratio,
                completion_mask=mask,
                hidden=hidden,
            )
        )
        out.advantages = result.advantages.to(x.advantages.dtype)
        out.divergence_weight, out.keep = result.divergence_weight, result.keep
        out.metrics.update({f"reweighting/{rw.name}/{k}": v for k, v in result.metrics.items()})

    def _update_curriculum(self, x: RolloutInputs, correct: Tensor) -> dict[str, float]:
        """Fold each group's pass rate into the curriculum's table, groups in order of first appearance."""
        if x.prompt_indices is None:
            raise ValueError(f"curriculum {self.curriculum.name!r} needs each rollout's prompt index")
        group_ids = x.group_ids.cpu()
        pass_rates = group_mean(correct.double().cpu(), group_ids)
        _, inverse = torch.unique(group_ids, return_inverse=True)
        rows = torch.arange(group_ids.numel())
        first = torch.full((int(inverse.max()) + 1,), group_ids.numel()).scatter_reduce(0, inverse, rows, "amin")
        first = first.sort().values
        self.curriculum.update(x.prompt_indices.cpu()[first], pass_rates[first])
        weights = self.curriculum.weights()
        probs = weights / weights.sum()
        prefix = f"curriculum/{self.curriculum.name}"
        return {
            f"{prefix}/batch_pass_rate": pass_rates.mean().item(),
            f"{prefix}/mean_pass_rate_estimate": self.curriculum.pass_rates.mean().item(),
            f"{prefix}/effective_prompts": (1.0 / (probs**2).sum()).item(),
        }

    # ---- once per loss micro-batch -----------------------------------------------------------------------------
    def divergence_metrics(self, value: float) -> dict[str, float]:
        """``divergence/<name>`` and ``divergence/<name>/<estimator>`` (the active divergence's mean value) and
        ``divergence/coef`` (the coefficient in force)."""
        name = self.divergence_now.name
        return {
            f"divergence/{name}": value,
            f"divergence/{name}/{self.estimator}": value,
            "divergence/coef": self.coef_now,
        }

    def penalty_weights(self, mask: Tensor, divergence_weight: Tensor | None = None) -> Tensor | None:
        """[B, T] per-token weights of the exact penalty, β_t · w_i · mask, known before the loss forward (None when
        the penalty is not exact): an adapter multiplies them by its normaliser's per-token weights and hands them
        to the forward, which then aggregates the penalty with its gradient in one pass (``exact_weights`` of
        :func:`~trl_divergences.objective.vocabulary.vocabulary_statistics`)."""
        if not (self.requirements.penalty and self.estimator == FULL):
            return None
        weights = self.coef_now * mask.to(compute_dtype(mask.dtype))
        if divergence_weight is not None:
            weights = weights * divergence_weight.to(weights.dtype).unsqueeze(-1)
        return weights

    def teacher_penalty_weights(self, mask: Tensor, correct: Tensor | None = None) -> Tensor | None:
        """[B, T] per-token weights coef_s · m_i · mask of the teacher's exact term (KDRL / exact OPD with ``full``),
        known before the loss forward (None when the teacher adds no exact term): as :meth:`penalty_weights`, an
        adapter multiplies them by its normaliser's weights and hands them to the forward as
        ``exact_weights["teacher_divergence"]``, which then aggregates the term with its gradient in one pass."""
        teacher = self.teacher
        if not self.requirements.teacher_hidden:
            return None
        rows = teacher.response_weights(correct, mask.size(0)).to(mask.device)
        return mask.to(compute_dtype(mask.dtype)) * rows.to(compute_dtype(mask.dtype)).unsqueeze(-1)

    def token_terms(self, x: TokenInputs, penalty: bool = True) -> TokenTerms:
        """The per-token terms of one micro-batch. ``penalty=False``: the framework computes the (plain reverse-KL
        k3) penalty itself, leave it out."""
        reduce_sum = x.reduce_sum
        terms = TokenTerms()
        if self.token_masks:
            batch = TokenBatch(
                mask=x.mask,
                logps=x.logps,
                old_logps=x.old_logps,
                ref_logps=x.ref_logps,
                entropies=x.entropies,
                advantages=x.advantages,
                correct=None if x.correct is None else x.correct.bool(),
                topp_entropy=x.vocabulary.get("topp_entropy"),
                reverse_kl=x.vocabulary.get("reverse_kl"),
                proxy_logps=x.proxy_logps,
                vocab_size=x.vocab_size,
                gather=x.gather,
            )
            terms.pg_keep, terms.aux_loss, outputs = compose_token_masks(self.token_masks, batch)
            local: dict[str, float] = {}
            for name, out in outputs.items():
                terms.metrics[f"mask/{name}/kept_fraction"] = masked_mean(out.keep, x.mask, reduce_sum)
                local.update({f"mask/{name}/{key}": value for key, value in out.metrics.items()})
            terms.metrics.update(_mean_over_processes(local, reduce_sum, x.mask.device))
        div = self.divergence_now
        if div.replaces_policy_gradient:
            selected = div.select(x.logps, x.proxy_logps, x.advantages, x.mask, x.gather)
            keep = x.mask.bool() if terms.pg_keep is None else terms.pg_keep
            terms.pg_keep = keep & ~selected
            old = x.logps.detach() if x.old_logps is None else x.old_logps
            replaced, k3 = div.selected_token_loss(x.logps, old, x.proxy_logps, x.advantages, selected, self.coef_now)
            terms.replaced_pg = replaced.to(x.logps.dtype)
            terms.divergence_value = masked_mean(k3, selected, reduce_sum)
            terms.metrics.update(self.divergence_metrics(terms.divergence_value))
            terms.metrics[f"divergence/{div.name}/selected_fraction"] = masked_mean(selected, x.mask, reduce_sum)
        elif penalty and self.requirements.penalty:
            if self.estimator == FULL:
                per_token = x.vocabulary["divergence"]
                terms.aggregated = x.vocabulary.get("divergence/weighted_sum")
            else:
                per_token = div.sampled(x.logps, x.ref_logps, self.estimator, importance_weight=x.importance_weight)
            per_token = per_token.to(x.logps.dtype)
            if terms.aggregated is None:
                weighted = per_token
                if x.divergence_weight is not None:
                    weighted = per_token * x.divergence_weight.to(per_token.dtype).unsqueeze(-1)
                terms.penalty = self.coef_now * weighted
            terms.divergence_value = masked_mean(per_token, x.mask, reduce_sum)
            terms.metrics.update(self.divergence_metrics(terms.divergence_value))
        if self.teacher is not None:
            self._teacher_terms(x, terms)
        return terms

    def _teacher_terms(self, x: TokenInputs, terms: TokenTerms) -> None:
        """The teacher's per-token penalty (added to ``terms.penalty``) and the ``teacher/<name>/...`` metrics."""
        teacher, reduce_sum = self.teacher, x.reduce_sum
        prefix = f"teacher/{teacher.name}"
        if teacher.anchors_ratio:
            old = x.logps.detach() if x.old_logps is None else x.old_logps
            initial = teacher.initial_log_ratio(old, x.teacher_logps)
            terms.metrics[f"{prefix}/initial_ratio"] = masked_mean(initial.exp(), x.mask, reduce_sum)
            terms.metrics[f"{prefix}/clamped_fraction"] = masked_mean(
                teacher.clamped(x.logps, x.teacher_logps), x.mask, reduce_sum
            )
        if not teacher.adds_penalty:
            return
        aggregated = None
        if teacher.estimator == FULL:
            per_token = x.vocabulary["teacher_divergence"]
            aggregated = x.vocabulary.get("teacher_divergence/weighted_sum")
        else:
            per_token = teacher.sampled(x.logps, x.teacher_logps, importance_weight=x.importance_weight)
        per_token = per_token.to(x.logps.dtype)
        if aggregated is not None:  # aggregated with its gradient inside the forward (teacher_penalty_weights)
            terms.aggregated = aggregated if terms.aggregated is None else terms.aggregated + aggregated
        else:
            penalty = teacher.penalty(per_token, x.correct)
            terms.penalty = penalty if terms.penalty is None else terms.penalty + penalty
        value = masked_mean(per_token, x.mask, reduce_sum)
        name = teacher.divergence_now.name
        terms.metrics[f"{prefix}/{name}"] = value
        terms.metrics[f"{prefix}/{name}/{teacher.estimator}"] = value
        terms.metrics[f"{prefix}/coef"] = teacher.coef_now
        if teacher.only_incorrect:
            weighted = (teacher.response_weights(x.correct, x.mask.size(0)) > 0).to(x.mask.device)
            terms.metrics[f"{prefix}/kd_fraction"] = masked_mean(
                weighted.unsqueeze(-1).expand_as(x.mask), x.mask, reduce_sum
            )

    def pg_old_logps(self, logps: Tensor, old_logps: Tensor | None, teacher_logps: Tensor) -> Tensor:
        """[B, T] what the framework's policy-gradient term uses as log π_old when a teacher anchors the ratio
        (TRRD: log π − log r_t, with graph when clamped); ``old_logps`` None: on-policy (log π detached)."""
        old = logps.detach() if old_logps is None else old_logps
        return self.teacher.effective_old_logps(logps, old, teacher_logps)

    def rehearsal_term(
        self, logps: Tensor, ref_logps: Tensor, mask: Tensor, rl_tokens: Tensor, reduce_sum: ReduceSum | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """(``rehearsal_coef`` × the token-mean rehearsal loss of one batch of stored reference samples, metrics
        ``rehearsal/<divergence>`` (mean per-token value) and ``rehearsal/token_share`` (stored tokens over stored
        + RL tokens ``rl_tokens``, all processes))."""
        loss, values = self.rehearsal_loss(logps, ref_logps, mask)
        totals = torch.stack([(values.detach() * mask).sum(), mask.sum().float(), rl_tokens.sum().float()]).float()
        if reduce_sum is not None:
            totals = reduce_sum(totals)
        metrics = {
            f"rehearsal/{self.rehearsal_loss.name}": (totals[0] / totals[1].clamp(min=1.0)).item(),
            "rehearsal/token_share": (totals[1] / (totals[1] + totals[2]).clamp(min=1.0)).item(),
        }
        return self.rehearsal_coef * loss.to(logps.dtype), metrics

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """State of every stateful method and the scheduled values (JSON-serialisable)."""
        return {
            "curriculum": None if self.curriculum is None else self.curriculum.state_dict(),
            "token_masks": {m.name: m.state_dict() for m in self.token_masks},
            "reweighting": None if self.reweighting is None else self.reweighting.state_dict(),
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "coef_now": self.coef_now,
            "divergence_now": self.divergence_now.name,
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["curriculum"] is not None:
            self.curriculum.load_state_dict(state["curriculum"])
        for mask in self.token_masks:
            mask.load_state_dict(state["token_masks"][mask.name])
        if self.reweighting is not None:
            self.reweighting.load_state_dict(state["reweighting"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.coef_now = state["coef_now"]
        self.divergence_now = self._divergence(state["divergence_now"])


def _mean_over_processes(metrics: dict[str, float], reduce_sum: ReduceSum | None, device) -> dict[str, float]:
    """Each process's micro-batch statistic averaged over the processes (one reduction for all), so every rank
    logs the same value; itself on one process."""
    if not metrics or reduce_sum is None:
        return metrics
    values = torch.tensor([*metrics.values(), 1.0], dtype=torch.float64, device=device)
    totals = reduce_sum(values)
    return {key: (totals[i] / totals[-1]).item() for i, key in enumerate(metrics)}


def _identity(x: Tensor) -> Tensor:
    return x
