"""``DivergenceGRPOConfig``: TRL's ``GRPOConfig`` plus the divergence fields, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from ..divergences import DIVERGENCES, get_divergence
from ..rehearsal.loss import REHEARSAL_DIVERGENCES, build_rehearsal_loss

FULL = "full"


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
        self._validate_rehearsal()
        if self.divergence_kwargs is None:
            self.divergence_kwargs = {}
        if not isinstance(self.divergence_kwargs, dict):
            raise ValueError(f"divergence_kwargs must be a dict, got {type(self.divergence_kwargs).__name__}")
        div = get_divergence(self.divergence, **self.divergence_kwargs)
        valid = (*div.estimators, FULL)
        if self.divergence_estimator not in valid:
            raise ValueError(
                f"divergence_estimator {self.divergence_estimator!r} is not supported by divergence "
                f"{self.divergence!r}; valid: {', '.join(valid)}"
            )

    def _validate_rehearsal(self) -> None:
        from ..rehearsal.store import load_meta

        if self.rehearsal_kwargs is None:
            self.rehearsal_kwargs = {}
        if not isinstance(self.rehearsal_kwargs, dict):
            raise ValueError(f"rehearsal_kwargs must be a dict, got {type(self.rehearsal_kwargs).__name__}")
        build_rehearsal_loss(self.rehearsal_divergence, **self.rehearsal_kwargs)
        if not (isinstance(self.rehearsal_coef, (int, float)) and self.rehearsal_coef >= 0):
            raise ValueError(f"rehearsal_coef must be a non-negative number, got {self.rehearsal_coef!r}")
        if self.rehearsal_batch_size is None:
            self.rehearsal_batch_size = max(1, self.per_device_train_batch_size // 8)
        if not (isinstance(self.rehearsal_batch_size, int) and self.rehearsal_batch_size >= 1):
            raise ValueError(f"rehearsal_batch_size must be a positive integer, got {self.rehearsal_batch_size!r}")
        if self.rehearsal_dataset is not None:
            load_meta(self.rehearsal_dataset)

    def build_divergence(self):
        """The configured :class:`~trl_divergences.divergences.Divergence` instance."""
        return get_divergence(self.divergence, **self.divergence_kwargs)

    @property
    def uses_stock_kl(self) -> bool:
        """True when the configuration is TRL's own penalty (reverse KL by k3): TRL's code path runs unchanged."""
        return self.divergence == "reverse_kl" and self.divergence_estimator == "k3"
