"""Validation of our names in a verl config, with the TRL adapter's messages (verl checks none of them).

``ActorConfig.__post_init__`` is wrapped at registration (:func:`install`), so a bad
``actor_rollout_ref.actor.kl_loss_type`` fails where verl builds the actor config: in the driver's
``validate_config`` and in every actor worker. ``algorithm.kl_penalty`` (a plain DictConfig in verl) is checked
by :func:`validate_config` and, at the latest, when ``kl_penalty`` first sees it on the driver; so is the
``algorithm.trl_divergences`` section of ``adv_estimator=trl_divergences`` (at the latest at the first advantage
computation).
"""

from __future__ import annotations

from typing import Any

from . import advantage
from .kl import FULL, is_verl_name, parse_kl_type


def check_kl_type(name: Any, field: str) -> None:
    """Raise ``ValueError`` for a malformed or unsupported name of ours; verl's own names pass through. The exact
    estimator ``full`` is refused here: its loss functions (:mod:`.full`) run at verl's engine level, but no trainer
    of this plugin installs them on the workers yet, and verl's own ``ppo_loss`` cannot compute it."""
    if is_verl_name(name):
        return
    spec = parse_kl_type(name, field)
    if spec.estimator == FULL:
        raise ValueError(
            f"{field} {name!r}: the exact estimator 'full' needs the plugin's full-vocabulary actor and reference "
            "losses installed on verl's workers, which this version does not do from a config; use a sampled "
            "estimator (e.g. ':k3+', whose gradient is the exact divergence's in expectation)"
        )


def check_actor_config(actor: Any) -> None:
    """Our checks of a verl ``ActorConfig`` (or its DictConfig): ``kl_loss_type`` when ``use_kl_loss``."""
    if actor.get("use_kl_loss", False):
        check_kl_type(actor.get("kl_loss_type"), "actor_rollout_ref.actor.kl_loss_type")


def validate_config(config: Any) -> None:
    """Our checks of a composed verl ``ppo_trainer`` config (run next to verl's ``validate_config``)."""
    check_actor_config(config.actor_rollout_ref.actor)
    algorithm = config.algorithm
    if algorithm.get("use_kl_in_reward", False):
        check_kl_type(algorithm.get("kl_penalty"), "algorithm.kl_penalty")
    if algorithm.get("adv_estimator") == advantage.ESTIMATOR:
        advantage.objective_from(algorithm)


def install() -> None:
    """Wrap ``ActorConfig.__post_init__`` with :func:`check_actor_config` (idempotent)."""
    from verl.workers.config.actor import ActorConfig

    original = ActorConfig.__post_init__
    if getattr(original, "_trl_divergences", False):
        return

    def __post_init__(self) -> None:
        original(self)
        check_actor_config(self)

    __post_init__._trl_divergences = True
    ActorConfig.__post_init__ = __post_init__
