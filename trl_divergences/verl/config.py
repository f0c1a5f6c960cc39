"""Validation of our names in a verl config, with the TRL adapter's messages (verl checks none of them).

``ActorConfig.__post_init__`` is wrapped at registration (:func:`install`), so a bad
``actor_rollout_ref.actor.kl_loss_type`` fails where verl builds the actor config: in the driver's
``validate_config`` and in every actor worker. ``algorithm.kl_penalty`` (a plain DictConfig in verl) is checked
by :func:`validate_config` and, at the latest, when ``kl_penalty`` first sees it on the driver; so is the
``algorithm.trl_divergences`` section of ``adv_estimator=trl_divergences`` (at the latest at the first advantage
computation). ``verl.utils.config.validate_config`` is wrapped too, so ``main_ppo`` runs :func:`validate_config` on the
whole config on the driver, before any worker starts: that is where the exact path's needs (our trainer, FSDP, no
LoRA, no sequence parallelism, no fused kernels, no distillation) are checked.
"""

from __future__ import annotations

from typing import Any

from . import advantage
from .kl import FULL, KLSpec, is_verl_name, parse_kl_type

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
