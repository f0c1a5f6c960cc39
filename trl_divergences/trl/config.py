"""``DivergenceGRPOConfig``: TRL's ``GRPOConfig`` plus the divergence fields, validated at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from ..curricula import CURRICULA, SCHEDULES, Curriculum, Schedule
from ..divergences import DIVERGENCES, Divergence, get_divergence
from ..masks import TOKEN_MASKS, TokenMask
from ..rehearsal.loss import REHEARSAL_DIVERGENCES, build_rehearsal_loss
from ..reweighting import ADVANTAGE_REWEIGHTINGS, AdvantageReweighting

FULL = "full"
#: loss types whose normalizer is a token count, so rollouts dropped from the loss leave the mean (PSR/NSR)
TOKEN_MEAN_LOSS_TYPES = ("bnpo", "dapo")


def _kwargs_dict(field_name: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{field_name} must be a dict, got {type(value).__name__}")
    return value


@dataclass
class DivergenceGRPOConfig(GRPOConfig):
    """``GRPOConfig`` with a choice of divergence penalty. Every ``GRPOConfig`` field keeps its meaning; ``beta`` is
    the penalty's coefficient. With the new fields at their defaults (``reverse_kl``, ``k3``), training is exactly
    TRL's ``GRPOTrainer``."""

    divergence: str = field(
        default="reverse_kl",
        metadata={
            "help": "Divergence between the policy π and the reference ρ penalized with coefficient `beta`: "
            f"one of {', '.join(DIVERGENCES.names())}. reverse_kl = KL(π‖ρ) (TRL's), forward_kl = KL(ρ‖π)."
        },
    )
    divergence_estimator: str = field(
        default="k3",
        metadata={
            "help": "How the divergence is estimated per completion token: 'full' (exact over the vocabulary, from "
            "the reference model's hidden states), or a sampled-token estimator: 'k1', 'k3' (default, TRL's), 'k3+' "
            "(value k3, unbiased gradient) for every divergence, and 'k2' for reverse_kl."
        },
    )
    divergence_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Hyper-parameters of the divergence, e.g. {'beta': 0.5} for js, {'alpha': 0.5} for alpha."},
    )

    # ---- the method catalog: token masks, advantage reweighting, curricula, schedules -------------------------
    token_masks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Token masks applied to the policy-gradient term, composable: any of "
            f"{', '.join(TOKEN_MASKS.names())}."
        },
    )
    token_mask_kwargs: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={"help": "Hyper-parameters per mask, e.g. {'siren': {'coef': 0.005}, 'eksft': {'ratio': 0.2}}."},
    )
    advantage_reweighting: str | None = field(
        default=None,
        metadata={"help": f"Advantage reweighting: one of {', '.join(ADVANTAGE_REWEIGHTINGS.names())}, or None."},
    )
    reweighting_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Hyper-parameters of the reweighting, e.g. {'alpha': 0.5} for ace."}
    )
    curriculum: str | None = field(
        default=None, metadata={"help": f"Prompt curriculum: one of {', '.join(CURRICULA.names())}, or None."}
    )
    curriculum_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Hyper-parameters of the curriculum, e.g. {'std': 0.35}."}
    )
    coefficient_schedule: str | None = field(
        default=None,
        metadata={
            "help": f"Schedule of the divergence coefficient `beta` (and direction): one of "
            f"{', '.join(SCHEDULES.names())}, or None."
        },
    )
    schedule_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Hyper-parameters of the schedule, e.g. {'warmup_steps': 50}."}
    )
    correct_reward_threshold: float = field(
        default=1.0,
        metadata={
            "help": "A rollout counts as correct (pass rates, correctness-based masks and reweightings, SELF) when its "
            "total reward (the weighted sum of the reward functions) is >= this."
        },
    )

    # ---- reference-sample rehearsal (DPH-RL); see trl_divergences/rehearsal/README.md -------------------------
    rehearsal_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Folder of a rehearsal store (`python -m trl_divergences.rehearsal build ...`); None = off. "
            "Adds rehearsal_coef × a divergence on stored correct base-model samples each micro-batch."
        },
    )
    rehearsal_divergence: str = field(
        default="forward_kl",
        metadata={"help": f"Rehearsal loss: one of {', '.join(REHEARSAL_DIVERGENCES)} (nll = plain SFT)."},
    )
    rehearsal_coef: float = field(
        default=0.01,
        metadata={
            "help": "Coefficient of the rehearsal loss (DPH-RL's default 0.01; their ranges: forward_kl/alpha "
            "0.01–0.05, js 0.05–0.2 for their 2× JS, i.e. 0.1–0.4 for ours)."
        },
    )
    rehearsal_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Stored samples per micro-batch; None = per_device_train_batch_size // 8 (at least 1), "
            "DPH-RL's ratio of 256 stored to 2048 RL samples."
        },
    )
    rehearsal_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Rehearsal loss options: log_ratio_clamp, value_clamp (None = off; default the official "
            "20 / 10 for forward_kl), beta for js, alpha for alpha (default 0.8 = DPH-RL's 0.2)."
        },
    )
    rehearsal_exploration_only: bool = field(
        default=True,
        metadata={"help": "Drop the store's perfect prompts from train_dataset (DPH-RL runs RL on the rest only)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (
            "divergence_kwargs",
            "token_mask_kwargs",
            "reweighting_kwargs",
            "curriculum_kwargs",
            "schedule_kwargs",
            "rehearsal_kwargs",
        ):
            setattr(self, name, _kwargs_dict(name, getattr(self, name)))
        self._validate_rehearsal()
        div = get_divergence(self.divergence, **self.divergence_kwargs)
        self._check_estimator(div)
        masks = self.build_token_masks()
        reweighting, curriculum, schedule = self.build_reweighting(), self.build_curriculum(), self.build_schedule()
        self._validate_catalog(div, masks, reweighting, curriculum, schedule)

    def _check_estimator(self, div: Divergence) -> None:
        valid = (*div.estimators, FULL) if div.supports_full else div.estimators
        if self.divergence_estimator not in valid:
            raise ValueError(
                f"divergence_estimator {self.divergence_estimator!r} is not supported by divergence "
                f"{div.name!r}; valid: {', '.join(valid)}"
            )

    def _validate_catalog(
        self,
        div: Divergence,
        masks: list[TokenMask],
        reweighting: AdvantageReweighting | None,
        curriculum: Curriculum | None,
        schedule: Schedule | None,
    ) -> None:
        """Cross-field checks of the method catalog (each method's own kwargs are checked when it is built)."""
        if not (
            isinstance(self.correct_reward_threshold, (int, float)) and math.isfinite(self.correct_reward_threshold)
        ):
            raise ValueError(f"correct_reward_threshold must be a finite number, got {self.correct_reward_threshold!r}")
        min_ps = {m.min_p for m in masks if m.min_p is not None} | ({div.kappa} if div.name == "lp_reg" else set())
        if len(min_ps) > 1:
            raise ValueError(
                f"the min-p proxy is shared: lp_reg's and low_probability's kappa must agree, got {sorted(min_ps)}"
            )
        whole_groups = [m.name for m in (reweighting, curriculum) if m is not None and _needs_whole_groups(m)]
        per_process = self.per_device_train_batch_size * self.steps_per_generation
        if whole_groups and per_process % self.num_generations:
            raise ValueError(
                f"{', '.join(whole_groups)} needs every prompt's {self.num_generations} rollouts on one process: "
                f"per_device_train_batch_size × steps_per_generation ({per_process}) must be a multiple of "
                f"num_generations ({self.num_generations})"
            )
        if reweighting is not None and reweighting.drops_rollouts and self.loss_type not in TOKEN_MEAN_LOSS_TYPES:
            raise ValueError(
                f"advantage_reweighting {reweighting!r} drops rollouts from the token mean: loss_type must be one of "
                f"{TOKEN_MEAN_LOSS_TYPES}, got {self.loss_type!r}"
            )
        if curriculum is not None and curriculum.kind == "filter" and self.use_vllm:
            raise ValueError(
                f"curriculum {curriculum.name!r} greedy-decodes with transformers; use_vllm is not supported yet"
            )
        if schedule is not None and schedule.divergences:
            if self.divergence not in schedule.divergences:
                raise ValueError(
                    f"coefficient_schedule {schedule.name!r} switches between {', '.join(schedule.divergences)}; "
                    f"divergence {self.divergence!r} conflicts with it"
                )
            for name in schedule.divergences:
                self._check_estimator(get_divergence(name, **self.divergence_kwargs))

    def _validate_rehearsal(self) -> None:
        from ..rehearsal.store import load_meta

        build_rehearsal_loss(self.rehearsal_divergence, **self.rehearsal_kwargs)
        if not (isinstance(self.rehearsal_coef, (int, float)) and self.rehearsal_coef >= 0):
            raise ValueError(f"rehearsal_coef must be a non-negative number, got {self.rehearsal_coef!r}")
        if self.rehearsal_batch_size is None:
            self.rehearsal_batch_size = max(1, self.per_device_train_batch_size // 8)
        if not (isinstance(self.rehearsal_batch_size, int) and self.rehearsal_batch_size >= 1):
            raise ValueError(f"rehearsal_batch_size must be a positive integer, got {self.rehearsal_batch_size!r}")
        if self.rehearsal_dataset is not None:
            load_meta(self.rehearsal_dataset)

    def build_divergence(self) -> Divergence:
        """The configured :class:`~trl_divergences.divergences.Divergence` instance."""
        return get_divergence(self.divergence, **self.divergence_kwargs)

    def build_token_masks(self) -> list[TokenMask]:
        """The configured token masks, in order (unknown names, duplicates or stray kwargs raise ``ValueError``)."""
        if isinstance(self.token_masks, str) or not isinstance(self.token_masks, (list, tuple)):
            raise ValueError(f"token_masks must be a list of names, got {self.token_masks!r}")
        if len(set(self.token_masks)) != len(self.token_masks):
            raise ValueError(f"token_masks lists a mask twice: {self.token_masks!r}")
        stray = sorted(set(self.token_mask_kwargs) - set(self.token_masks))
        if stray:
            raise ValueError(f"token_mask_kwargs has entries for masks not in token_masks: {stray}")
        return [
            TOKEN_MASKS.build(name, **_kwargs_dict(f"token_mask_kwargs[{name!r}]", self.token_mask_kwargs.get(name)))
            for name in self.token_masks
        ]

    def build_reweighting(self) -> AdvantageReweighting | None:
        return _build_optional(
            ADVANTAGE_REWEIGHTINGS, self.advantage_reweighting, self.reweighting_kwargs, "reweighting_kwargs"
        )

    def build_curriculum(self) -> Curriculum | None:
        return _build_optional(CURRICULA, self.curriculum, self.curriculum_kwargs, "curriculum_kwargs")

    def build_schedule(self) -> Schedule | None:
        return _build_optional(SCHEDULES, self.coefficient_schedule, self.schedule_kwargs, "schedule_kwargs")

    @property
    def uses_stock_kl(self) -> bool:
        """True when the penalty is TRL's own (reverse KL by k3 at a constant coefficient, equal for every rollout):
        TRL's k3 code runs unchanged."""
        reweighting = self.build_reweighting()
        return (
            self.divergence == "reverse_kl"
            and self.divergence_estimator == "k3"
            and self.coefficient_schedule is None
            and not (reweighting is not None and reweighting.reweights_divergence)
        )


def _needs_whole_groups(method: AdvantageReweighting | Curriculum) -> bool:
    """ResRL's per-group PCA and SELF's per-prompt filter work on one process's rows."""
    if isinstance(method, AdvantageReweighting):
        return method.whole_groups_per_process
    return method.kind == "filter"


def _build_optional(registry, name: str | None, kwargs: dict, field_name: str):
    """``registry.build(name, **kwargs)``, or None for no method (then ``kwargs`` must be empty)."""
    if name is None:
        if kwargs:
            raise ValueError(f"{field_name} given without a method to apply them to: {kwargs!r}")
        return None
    return registry.build(name, **kwargs)
