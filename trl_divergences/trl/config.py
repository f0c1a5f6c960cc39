"""``DivergenceGRPOConfig``: TRL's ``GRPOConfig`` plus the divergence fields, validated at construction."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from ..curricula import CURRICULA, SCHEDULES
from ..divergences import DIVERGENCES
from ..masks import TOKEN_MASKS
from ..objective import KWARGS_FIELDS, Objective, kwargs_dict
from ..rehearsal.loss import REHEARSAL_DIVERGENCES
from ..reweighting import ADVANTAGE_REWEIGHTINGS
from ..teacher import TEACHER_METHODS

#: loss types whose normalizer is a token count, so rollouts dropped from the loss leave the mean (PSR/NSR)
TOKEN_MEAN_LOSS_TYPES = ("bnpo", "dapo")


#: the dict fields of the config: the methods' kwargs and the teacher's from_pretrained kwargs
JSON_FIELDS = (*KWARGS_FIELDS, "teacher_model_init_kwargs")


def _parse_json_fields(config: Any) -> None:
    """Decode the ``*_kwargs`` fields given as strings (the command line's form, ``--divergence_kwargs '{"beta":
    0.3}'``; typed ``dict | str | None`` for ``HfArgumentParser``, as TRL types ``model_init_kwargs``); bad JSON raises
    ``ValueError`` naming the field."""
    for name in JSON_FIELDS:
        value = getattr(config, name)
        if not isinstance(value, str):
            continue
        try:
            setattr(config, name, json.loads(value))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{name} must be a JSON object, e.g. --{name} '{{\"key\": 0.5}}'; got {value!r} ({err})"
            ) from None


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
    divergence_kwargs: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={
            "help": 'Hyper-parameters of the divergence (JSON on the command line), e.g. {"beta": 0.5} for js, '
            '{"alpha": 0.5} for alpha.'
        },
    )

    # ---- the method catalog: token masks, advantage reweighting, curricula, schedules -------------------------
    token_masks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Token masks applied to the policy-gradient term, composable: any of "
            f"{', '.join(TOKEN_MASKS.names())}."
        },
    )
    token_mask_kwargs: dict[str, dict[str, Any]] | str | None = field(
        default_factory=dict,
        metadata={
            "help": 'Hyper-parameters per mask (JSON on the command line), e.g. {"siren": {"coef": 0.005}, '
            '"eksft": {"ratio": 0.2}}.'
        },
    )
    advantage_reweighting: str | None = field(
        default=None,
        metadata={"help": f"Advantage reweighting: one of {', '.join(ADVANTAGE_REWEIGHTINGS.names())}, or None."},
    )
    reweighting_kwargs: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={
            "help": 'Hyper-parameters of the reweighting (JSON on the command line), e.g. {"alpha": 0.5} for ace.'
        },
    )
    curriculum: str | None = field(
        default=None, metadata={"help": f"Prompt curriculum: one of {', '.join(CURRICULA.names())}, or None."}
    )
    curriculum_kwargs: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={"help": 'Hyper-parameters of the curriculum (JSON on the command line), e.g. {"std": 0.35}.'},
    )
    coefficient_schedule: str | None = field(
        default=None,
        metadata={
            "help": f"Schedule of the divergence coefficient `beta` (and direction): one of "
            f"{', '.join(SCHEDULES.names())}, or None."
        },
    )
    schedule_kwargs: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={"help": 'Hyper-parameters of the schedule (JSON on the command line), e.g. {"warmup_steps": 50}.'},
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
    rehearsal_kwargs: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={
            "help": "Rehearsal loss options (JSON on the command line): log_ratio_clamp, value_clamp (None = off; "
            "default the official 20 / 10 for forward_kl), beta for js, alpha for alpha (default 0.8 = DPH-RL's 0.2)."
        },
    )
    rehearsal_exploration_only: bool = field(
        default=True,
        metadata={"help": "Drop the store's perfect prompts from train_dataset (DPH-RL runs RL on the rest only)."},
    )

    # ---- teacher-guided RL: a frozen teacher sharing the student's tokenizer ----------------------------------
    teacher_model: str | None = field(
        default=None,
        metadata={
            "help": "Name or path of the teacher τ (or pass a loaded model as the trainer's teacher_model=); it must "
            "share the student's tokenizer. Runs at the rollout temperature, one no-grad forward per generation batch."
        },
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={
            "help": "from_pretrained kwargs of the teacher (JSON on the command line; dtype defaults to the policy's)."
        },
    )
    teacher_reference_model: str | None = field(
        default=None,
        metadata={
            "help": "Name or path of a separate reference ρ for g_opd / exopd with lam != 1 (or pass a loaded model as "
            "the trainer's teacher_reference_model=), e.g. the teacher's pre-RL base: G-OPD's reward correction. "
            "None: ρ is the reference model (the student's initial weights). Loaded like the teacher "
            "(teacher_model_init_kwargs), sharing the student's tokenizer; one no-grad forward per generation batch."
        },
    )
    teacher_method: str | None = field(
        default=None,
        metadata={
            "help": f"Teacher-guided method: one of {', '.join(TEACHER_METHODS.names())}, or None. kdrl = GRPO + "
            "coef·D(π‖τ); exact_opd = D(π‖τ) exact over the vocabulary; g_opd / exopd = teacher log-ratio "
            "advantages; trrd = the PPO ratio anchored to τ."
        },
    )
    teacher_kwargs: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={
            "help": "Hyper-parameters of the teacher method (JSON on the command line), e.g. "
            '{"coef": 5e-3, "schedule": "linear_anneal"}.'
        },
    )

    def __post_init__(self) -> None:
        _parse_json_fields(self)
        super().__post_init__()
        self._validate_fields()

    @classmethod
    def from_grpo_config(cls, args: GRPOConfig) -> DivergenceGRPOConfig:
        """A plain ``GRPOConfig`` (already post-initialised) with our fields at their defaults: TRL's behaviour."""
        new = copy.copy(args)
        new.__class__ = cls
        for f in dataclasses.fields(cls):
            if f.name not in vars(new):
                setattr(new, f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
        new._validate_fields()
        return new

    def _validate_fields(self) -> None:
        """Our fields, once TRL's ``__post_init__`` has run."""
        objective = self.build_objective()  # validates every name, kwarg and cross-method conflict
        for name in KWARGS_FIELDS:
            setattr(self, name, kwargs_dict(name, getattr(self, name)))
        self._validate_rehearsal()
        objective.check_whole_groups(
            self.per_device_train_batch_size * self.steps_per_generation,
            self.num_generations,
            rows="per_device_train_batch_size × steps_per_generation",
            group="num_generations",
        )
        objective.check_token_count_normaliser("loss_type", self.loss_type, TOKEN_MEAN_LOSS_TYPES)
        self.teacher_model_init_kwargs = kwargs_dict("teacher_model_init_kwargs", self.teacher_model_init_kwargs)
        if self.teacher_model is not None and self.teacher_method is None:
            raise ValueError(
                f"teacher_model {self.teacher_model!r} given without a teacher_method to use it; one of "
                f"{', '.join(TEACHER_METHODS.names())}"
            )
        if objective.requirements.greedy_filter and self.use_vllm:
            raise ValueError(
                f"curriculum {self.curriculum!r} greedy-decodes with transformers; use_vllm is not supported yet"
            )

    def _validate_rehearsal(self) -> None:
        from ..rehearsal.store import load_meta

        if self.rehearsal_batch_size is None:
            self.rehearsal_batch_size = max(1, self.per_device_train_batch_size // 8)
        if not (
            isinstance(self.rehearsal_batch_size, int)
            and not isinstance(self.rehearsal_batch_size, bool)
            and self.rehearsal_batch_size >= 1
        ):
            raise ValueError(f"rehearsal_batch_size must be a positive integer, got {self.rehearsal_batch_size!r}")
        if not isinstance(self.rehearsal_exploration_only, bool):
            raise ValueError(f"rehearsal_exploration_only must be a bool, got {self.rehearsal_exploration_only!r}")
        if self.rehearsal_dataset is not None:
            if not isinstance(self.rehearsal_dataset, (str, os.PathLike)):
                raise ValueError(
                    f"rehearsal_dataset must be a store folder path or None, got {self.rehearsal_dataset!r}"
                )
            if load_meta(self.rehearsal_dataset)["n_samples"] == 0:
                raise ValueError(
                    f"rehearsal store {self.rehearsal_dataset} is empty (no prompt was solved in every base sample): "
                    "there is nothing to rehearse; build it with more samples per prompt or drop rehearsal_dataset"
                )

    def build_objective(self, given_teacher_reference: bool | None = None) -> Objective:
        """The configured :class:`~trl_divergences.objective.Objective` (fresh method state).
        ``given_teacher_reference`` None: a separate ρ is given iff ``teacher_reference_model`` is set (the trainer
        also counts a loaded one)."""
        if given_teacher_reference is None:
            given_teacher_reference = self.teacher_reference_model is not None
        return Objective(
            divergence=self.divergence,
            divergence_estimator=self.divergence_estimator,
            divergence_kwargs=self.divergence_kwargs,
            coef=self.beta,
            token_masks=self.token_masks,
            token_mask_kwargs=self.token_mask_kwargs,
            advantage_reweighting=self.advantage_reweighting,
            reweighting_kwargs=self.reweighting_kwargs,
            curriculum=self.curriculum,
            curriculum_kwargs=self.curriculum_kwargs,
            coefficient_schedule=self.coefficient_schedule,
            schedule_kwargs=self.schedule_kwargs,
            correct_reward_threshold=self.correct_reward_threshold,
            rehearsal_divergence=self.rehearsal_divergence,
            rehearsal_kwargs=self.rehearsal_kwargs,
            rehearsal_coef=self.rehearsal_coef,
            teacher_method=self.teacher_method,
            teacher_kwargs=self.teacher_kwargs,
            given_teacher_reference=given_teacher_reference,
        )

    @property
    def uses_stock_kl(self) -> bool:
        """True when the penalty is TRL's own (reverse KL by k3 at a constant coefficient, equal for every rollout):
        TRL's k3 code runs unchanged."""
        return self.build_objective().plain_reverse_k3
