"""Validation of our names in a verl config, with the TRL adapter's messages (verl checks none of them), and the
objective of the registered trainer (``trainer.v1.trainer_mode=trl_divergences``) built from ``+trl_divergences.*``.

``ActorConfig.__post_init__`` is wrapped at registration (:func:`install`), so a bad
``actor_rollout_ref.actor.kl_loss_type`` fails where verl builds the actor config: in the driver's
``validate_config`` and in every actor worker. ``algorithm.kl_penalty`` (a plain DictConfig in verl) is checked
by :func:`validate_config` and, at the latest, when ``kl_penalty`` first sees it on the driver; so is the
``algorithm.trl_divergences`` section of ``adv_estimator=trl_divergences`` (at the latest at the first advantage
computation).
"""

from __future__ import annotations

from typing import Any

from ..objective import Objective
from . import advantage
from .kl import FULL, VERL_KL_TYPES, is_verl_name, parse_kl_type

#: the top-level config section of the registered trainer (``+trl_divergences.<key>=...``)
SECTION = "trl_divergences"
#: the registered trainer's name (``trainer.v1.trainer_mode``)
TRAINER_MODE = "trl_divergences"
#: the section's keys: DivergenceGRPOConfig's field names (the divergence and its coefficient stay verl's
#: ``actor_rollout_ref.actor.kl_loss_type`` / ``kl_loss_coef``)
SECTION_KEYS = (
    "token_masks",
    "token_mask_kwargs",
    "advantage_reweighting",
    "reweighting_kwargs",
    "curriculum",
    "curriculum_kwargs",
    "coefficient_schedule",
    "schedule_kwargs",
    "correct_reward_threshold",
)
#: DivergenceGRPOConfig fields with no verl path yet, and why
TRL_ONLY_KEYS = {
    "rehearsal_dataset": "rehearsal needs a second forward on stored reference samples inside the actor update",
    "teacher_method": "the teacher wiring is the verl teacher path's (distillation.*)",
}
#: verl's loss_agg_modes whose normaliser is the global token count (rollouts dropped from the loss leave it)
TOKEN_COUNT_AGG_MODES = ("token-mean",)
#: verl's own kl_loss_type names as (divergence, estimator) of the objective (``abs`` has no twin: |log r|)
VERL_KL_TWINS = {"kl": "k1", "k1": "k1", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}


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
    mode = config.trainer.get("v1", {}).get("trainer_mode") if config.get("trainer") is not None else None
    if mode == TRAINER_MODE:
        trainer_objective(config)
    elif config.get(SECTION):
        raise ValueError(f"{SECTION}.* is read by trainer.v1.trainer_mode={TRAINER_MODE}, got trainer_mode={mode!r}")


def _plain(value: Any) -> Any:
    return advantage._plain(value)


def trainer_section(config: Any) -> dict:
    """The ``trl_divergences`` section of a verl config as a plain dict, keys checked (unknown ones raise naming
    the valid ones; DivergenceGRPOConfig fields with no verl path yet raise with the reason)."""
    section = _plain(config.get(SECTION)) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{SECTION} must be a mapping, got {section!r}")
    for key in sorted(set(section) & set(TRL_ONLY_KEYS)):
        raise ValueError(f"{SECTION}.{key}: TRL only for now ({TRL_ONLY_KEYS[key]})")
    unknown = sorted(set(section) - set(SECTION_KEYS))
    if unknown:
        raise ValueError(f"{SECTION} got unknown key(s) {unknown}; valid: {', '.join(SECTION_KEYS)}")
    return section


def actor_divergence(actor: Any) -> dict:
    """The objective's ``divergence`` / ``divergence_estimator`` / ``divergence_kwargs`` / ``coef`` from verl's
    actor KL loss (``use_kl_loss``, ``kl_loss_type``, ``kl_loss_coef``); verl's own names are reverse KL."""
    if not actor.get("use_kl_loss", False):
        return {"coef": 0.0}
    name = actor.get("kl_loss_type")
    coef = float(actor.get("kl_loss_coef"))
    if is_verl_name(name):
        base = name[:-1] if name.endswith("+") else name
        if base not in VERL_KL_TWINS:
            raise ValueError(
                f"actor_rollout_ref.actor.kl_loss_type {name!r} has no divergence of ours to schedule; use one of "
                f"{', '.join(VERL_KL_TWINS)} or our names (verl's: {', '.join(VERL_KL_TYPES)})"
            )
        return {"divergence": "reverse_kl", "divergence_estimator": VERL_KL_TWINS[base], "coef": coef}
    check_kl_type(name, "actor_rollout_ref.actor.kl_loss_type")
    spec = parse_kl_type(name)
    return {
        "divergence": spec.divergence.name,
        "divergence_estimator": spec.estimator,
        "divergence_kwargs": spec.divergence.kwargs(),
        "coef": coef,
    }


def scheduled_kl_type(configured: str, objective: Objective) -> str:
    """The ``kl_loss_type`` in force: the configured name while the objective's divergence is the configured one,
    else the divergence a schedule switched to, spelled ``<name>(<kwargs>):<estimator>``."""
    div = objective.divergence_now
    if div is objective.divergence:
        return configured
    args = ", ".join(f"{k}={v!r}" for k, v in div.kwargs().items())
    return f"{div.name}({args}):{objective.estimator}"


def objective_kwargs(config: Any) -> dict:
    """The :class:`~trl_divergences.objective.Objective` kwargs of a verl config: the actor's KL loss and the
    ``trl_divergences`` section (JSON-serialisable: they travel to the actor workers in the step info)."""
    return {**actor_divergence(config.actor_rollout_ref.actor), **trainer_section(config)}


def trainer_objective(config: Any) -> Objective:
    """The :class:`~trl_divergences.objective.Objective` of the registered trainer: the actor's KL loss as the
    divergence and the ``trl_divergences`` section's methods, validated by the objective (the TRL adapter's
    messages), then refused where verl gives the method no input (see :func:`check_reachable`)."""
    actor = config.actor_rollout_ref.actor
    objective = Objective(**objective_kwargs(config))
    check_reachable(objective, actor)
    if objective.requirements.ref_logps and not (actor.get("use_kl_loss") or config.algorithm.get("use_kl_in_reward")):
        raise ValueError(
            f"{SECTION}: this configuration needs the reference model's log-probs, which verl computes only with a KL "
            "term: set actor_rollout_ref.actor.use_kl_loss=true (kl_loss_coef=0 keeps the penalty off)"
        )
    if objective.reweighting is not None and config.algorithm.get("adv_estimator") == advantage.ESTIMATOR:
        raise ValueError(
            f"{SECTION}.advantage_reweighting and algorithm.adv_estimator={advantage.ESTIMATOR} would reweight the "
            "advantages twice; keep one (the trainer's reaches every reweighting the estimator does)"
        )
    return objective


def check_reachable(objective: Objective, actor: Any) -> None:
    """Refuse, with the reason, the methods whose inputs verl's actor loss and batch do not carry: statistics over
    the vocabulary (nucleus entropy, the min-p proxy, the exact KL to ρ), the policy's hidden states, a greedy
    decode before the rollouts; masks reading the policy's entropy need ``calculate_entropy``; dropping rollouts
    (their response and loss masks zeroed in the batch, so verl's global token count leaves them) needs
    ``loss_agg_mode=token-mean``."""
    req = objective.requirements
    rw = objective.reweighting
    missing = [
        reason
        for reason, needed in (
            ("statistics over the vocabulary (nucleus entropy, min-p proxy or exact KL)", req.vocabulary),
            ("the policy's penultimate hidden states", rw is not None and "hidden" in rw.requires),
            ("a greedy decode of every prompt before the rollouts", req.greedy_filter),
        )
        if needed
    ]
    if missing:
        raise ValueError(
            f"trainer.v1.trainer_mode={TRAINER_MODE}: this configuration needs {' and '.join(missing)}, which verl "
            "0.9.1's actor loss does not see (log-probs and entropy only); it is TRL only for now"
        )
    global_scope = [m.name for m in objective.token_masks if getattr(m, "scope", None) == "global"]
    if global_scope and actor.get("use_dynamic_bsz", False):
        raise ValueError(
            f"token mask(s) {global_scope} with scope 'global' gather every data-parallel rank's micro-batch, which "
            "needs the same number of micro-batches on every rank; with actor_rollout_ref.actor.use_dynamic_bsz=true "
            "set their token_mask_kwargs scope to 'micro_batch'"
        )
    objective.check_token_count_normaliser(
        "actor_rollout_ref.actor.loss_agg_mode", actor.get("loss_agg_mode", "token-mean"), TOKEN_COUNT_AGG_MODES
    )
    if any("entropies" in m.requires for m in objective.token_masks) and not actor.get("calculate_entropy", False):
        names = [m.name for m in objective.token_masks if "entropies" in m.requires]
        raise ValueError(
            f"token mask(s) {names} read the policy's entropy: set actor_rollout_ref.actor.calculate_entropy=true"
        )


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
