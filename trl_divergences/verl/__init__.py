"""verl 0.9.1 plugin: our divergences as ``kl_loss_type`` / ``algorithm.kl_penalty`` names (:mod:`.kl`), validated
early (:mod:`.config`); advantage reweightings as ``algorithm.adv_estimator=trl_divergences`` (:mod:`.advantage`);
the exact divergence's engine-level loss functions (:mod:`.full`), the workers that install them (:mod:`.workers`)
and the registered trainer ``trainer.v1.trainer_mode=trl_divergences_full`` that maps verl's roles to those workers
(:mod:`.full_trainer`: ``kl_loss_type=<name>:full``); the registered trainer ``trainer.v1.trainer_mode=trl_divergences``
(:mod:`.trainer`: token masks, curricula, schedules and the reweightings that need the batch's log-probs, configured
by ``+trl_divergences.*``) and its actor loss (:mod:`.loss`); teacher methods as verl's distillation loss
``distillation.distillation_loss.loss_mode=trl_divergences`` (:mod:`.teacher`).

Loaded by the ``verl.plugins`` entry point, which verl imports on ``import verl`` in every process (driver,
TaskRunner, every Ray worker); where the package cannot be pip-installed on the workers, set
``VERL_USE_EXTERNAL_MODULES=trl_divergences.verl`` (e.g. ``+ray_kwargs.ray_init.runtime_env.env_vars.
VERL_USE_EXTERNAL_MODULES=trl_divergences.verl``). Registration runs at import time (verl imports entry points, it
never calls them). verl logs a failing plugin at DEBUG level only, so a failure here is logged at ERROR with its
traceback and re-raised; :data:`REGISTERED` says whether it succeeded.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

#: True once every patch below is installed in this process
REGISTERED = False


def _register() -> None:
    global REGISTERED
    from . import advantage, config, full_trainer, kl, loss, teacher, trainer  # noqa: F401  (registration)

    kl.install()
    config.install()
    advantage.install()
    loss.install()
    REGISTERED = True


try:
    _register()
except Exception:
    logger.exception(
        "trl-divergences: registering the verl plugin failed; our kl_loss_type names are NOT available in this "
        "process (verl would only log this at DEBUG level)"
    )
    raise
