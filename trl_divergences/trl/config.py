"""``DivergenceGRPOConfig``: TRL's ``GRPOConfig`` plus the divergence fields, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from ..divergences import DIVERGENCES, get_divergence

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

    def __post_init__(self) -> None:
        super().__post_init__()
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

    def build_divergence(self):
        """The configured :class:`~trl_divergences.divergences.Divergence` instance."""
        return get_divergence(self.divergence, **self.divergence_kwargs)

    @property
    def uses_stock_kl(self) -> bool:
        """True when the configuration is TRL's own penalty (reverse KL by k3): TRL's code path runs unchanged."""
        return self.divergence == "reverse_kl" and self.divergence_estimator == "k3"
