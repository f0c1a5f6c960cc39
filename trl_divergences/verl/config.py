"""Validation of our names in a verl config, with the TRL adapter's messages (verl checks none of them), and the
objective of the registered trainer (``trainer.v1.trainer_mode=trl_divergences``) built from ``+trl_divergences.*``.

``ActorConfig.__post_init__`` is wrapped at registration (:func:`install`), so a bad
``actor_rollout_ref.actor.kl_loss_type`` fails where verl builds the actor config: in the driver's
``validate_config`` and in every actor worker. ``algorithm.kl_penalty`` (a plain DictConfig in verl) is checked
by :func:`validate_config` and, at the latest, when ``kl_penalty`` first sees it on the driver; so is the
``algorithm.trl_divergences`` section of ``adv_estimator=trl_divergences`` (at the latest at the first advantage
computation). ``verl.utils.config.validate_config`` is wrapped too, so ``main_ppo`` runs :func:`validate_config` on the
whole config on the driver, before any worker starts: that is where the exact path's needs (its trainer, FSDP, no
LoRA, no sequence parallelism, no fused kernels, no distillation) are checked.
"""

from __future__ import annotations

from typing import Any

from ..objective import Objective
from . import advantage
from .kl import FULL, VERL_KL_TYPES, KLSpec, is_verl_name, parse_kl_type

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


#: the trainer (``trainer.v1.trainer_mode``) that installs the exact-divergence workers (:mod:`.full_trainer`)
FULL_TRAINER_MODE = "trl_divergences_full"
#: every trainer mode whose trainer inherits :class:`~.full_trainer.FullDivergenceMixin`
FULL_TRAINER_MODES = (FULL_TRAINER_MODE,)
#: engine strategies whose logits processor sees the whole vocabulary on each rank (Megatron's is vocab-parallel)
FULL_STRATEGIES = ("fsdp", "fsdp2")


def full_kl_spec(actor: Any) -> KLSpec | None:
    """The parsed ``kl_loss_type`` of a verl actor config (ActorConfig or DictConfig) when ``use_kl_loss`` is on and
    the name is one of ours with the exact estimator (``<name>:full``); None otherwise."""
    name = actor.get("kl_loss_type")
    if not actor.get("use_kl_loss", False) or is_verl_name(name):
        return None
    spec = parse_kl_type(name, "actor_rollout_ref.actor.kl_loss_type")
    return spec if spec.estimator == FULL else None


def check_kl_type(name: Any, field: str, allow_full: bool = False) -> None:
    """Raise ``ValueError`` for a malformed or unsupported name of ours; verl's own names pass through. The exact
    estimator ``full`` exists only as the actor's KL loss (``allow_full``), run by the plugin's workers."""
    if is_verl_name(name):
        return
    spec = parse_kl_type(name, field)
    if spec.estimator == FULL and not allow_full:
        raise ValueError(
            f"{field} {name!r}: the exact estimator 'full' is a KL loss of the actor (actor_rollout_ref.actor."
            "kl_loss_type with trainer.v1.trainer_mode=" + FULL_TRAINER_MODE + "), not an in-reward penalty, which "
            "sees only the sampled tokens' log-probs; use a sampled estimator here (e.g. ':k3')"
        )


def _refuse(field: str, value: Any, valid: str) -> None:
    raise ValueError(f"actor_rollout_ref.actor.kl_loss_type '<name>:full' cannot run with {field}={value!r}: {valid}")


def check_full_actor(actor: Any) -> None:
    """The engine settings the exact path needs, from the actor config (the plugin's loss sees the whole
    vocabulary's logits on each rank, one packed row per token)."""
    if actor.get("strategy") not in FULL_STRATEGIES:
        _refuse(
            "actor.strategy",
            actor.get("strategy"),
            f"use {' or '.join(FULL_STRATEGIES)} (Megatron's logits are "
            "vocab-parallel and its logits processor is not ours)",
        )
    fsdp = actor.get("fsdp_config") or {}
    sp = actor.get("ulysses_sequence_parallel_size") or fsdp.get("ulysses_sequence_parallel_size", 1)
    if sp != 1:
        _refuse("ulysses_sequence_parallel_size", sp, "use 1 (the logits processor would see a sequence shard)")
    if actor.get("use_fused_kernels", False):
        _refuse("use_fused_kernels", True, "use false (the fused kernels never form the policy logits)")
    if actor.get("pad_to_length", False) or fsdp.get("pad_to_length", False):
        _refuse("pad_to_length", True, "use false (verl refuses its logits processor with it)")


def check_actor_config(actor: Any) -> None:
    """Our checks of a verl ``ActorConfig`` (or its DictConfig): ``kl_loss_type`` when ``use_kl_loss``."""
    if actor.get("use_kl_loss", False):
        name = actor.get("kl_loss_type")
        check_kl_type(name, "actor_rollout_ref.actor.kl_loss_type", allow_full=True)
        if full_kl_spec(actor) is not None:
            check_full_actor(actor)


def check_full_config(config: Any) -> None:
    """Whole-config checks of the exact path: our trainer, a separate reference model, no distillation."""
    trainer = config.trainer
    mode = trainer.get("v1", {}).get("trainer_mode")
    if mode == TRAINER_MODE:
        _refuse(
            "trainer.v1.trainer_mode",
            mode,
            f"the exact path runs under trainer.v1.trainer_mode={FULL_TRAINER_MODE}; the {TRAINER_MODE} trainer's "
            "methods (masks, curricula, schedules, reweightings) do not combine with it yet (their actor loss is "
            "verl's ppo_loss, the exact path's is its own): use a sampled estimator (e.g. ':k3+') with them",
        )
    if not trainer.get("use_v1", True) or mode not in FULL_TRAINER_MODES:
        _refuse(
            "trainer.v1.trainer_mode",
            mode,
            f"set trainer.use_v1=true trainer.v1.trainer_mode={FULL_TRAINER_MODE}"
            " (its workers emit the reference hidden states and run the exact loss)",
        )
    model = config.actor_rollout_ref.model
    lora = (model.get("lora") or {}).get("rank", 0) or model.get("lora_rank", 0)
    if lora > 0 or model.get("lora_adapter_path") is not None:
        _refuse(
            "model.lora rank",
            lora,
            "train without LoRA (with it verl computes the reference in the actor, "
            "which keeps no reference hidden states)",
        )
    if model.get("use_fused_kernels", False):
        _refuse("model.use_fused_kernels", True, "use false (the fused kernels never form the policy logits)")
    if (config.get("distillation") or {}).get("enabled", False):
        _refuse("distillation.enabled", True, "use one of them (both run through verl's logits-processor hook)")
    ref = config.actor_rollout_ref.ref
    ref_sp = ref.get("ulysses_sequence_parallel_size") or (ref.get("fsdp_config") or {}).get(
        "ulysses_sequence_parallel_size", 1
    )
    if ref_sp != 1:
        _refuse("ref.ulysses_sequence_parallel_size", ref_sp, "use 1 (the ref's lm_head would see a sequence shard)")


def validate_config(config: Any) -> None:
    """Our checks of a composed verl ``ppo_trainer`` config (run next to verl's ``validate_config``)."""
    actor = config.actor_rollout_ref.actor
    check_actor_config(actor)
    if full_kl_spec(actor) is not None:
        check_full_config(config)
    algorithm = config.algorithm
    if algorithm.get("use_kl_in_reward", False):
        check_kl_type(algorithm.get("kl_penalty"), "algorithm.kl_penalty")
    if algorithm.get("adv_estimator") == advantage.ESTIMATOR:
        advantage.objective_from(algorithm)
    distillation = config.get("distillation") or {}
    if distillation.get("enabled", False) and distillation.distillation_loss.get("loss_mode") == "trl_divergences":
        from .teacher import check_teacher_config

        check_teacher_config(config)
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
    """Wrap ``ActorConfig.__post_init__`` with :func:`check_actor_config` and ``verl.utils.config.validate_config``
    (verl's ``main_ppo`` imports it by name, after the plugin has loaded) with :func:`validate_config` (idempotent).
    """
    import verl.utils.config as verl_config
    from verl.workers.config.actor import ActorConfig

    original = ActorConfig.__post_init__
    if getattr(original, "_trl_divergences", False):
        return
    verl_validate = verl_config.validate_config

    def validate(config, *args, **kwargs):
        verl_validate(config, *args, **kwargs)
        validate_config(config)

    validate._trl_divergences = True
    verl_config.validate_config = validate

    def __post_init__(self) -> None:
        original(self)
        check_actor_config(self)

    __post_init__._trl_divergences = True
    ActorConfig.__post_init__ = __post_init__
