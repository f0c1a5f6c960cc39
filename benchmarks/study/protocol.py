"""The study's pre-stated protocol: the task, the training and evaluation budget, and the configurations.

Everything here is fixed before any run and written into the results file (``protocol`` and ``configs`` keys).
Coefficients follow research/toy-task-findings.md and the demo: β = 0.2 for the KL penalties (exact and sampled),
β = 2 for JS (bounded by log 2, so it needs a larger coefficient), rehearsal at the online coefficient of its
divergence; the catalog methods at their official defaults except where a default cannot act at this scale (each
such change is said in the config's ``note``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from trl_divergences.demo import RunSpec
from trl_divergences.toy import N_TRAIN_POOL, HintedModelConfig

KS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class StudyConfig:
    """One configuration: a short name, the demo's :class:`~trl_divergences.demo.RunSpec` (label and the
    ``DivergenceGRPOConfig`` fields that differ from the protocol's shared ones) and why a default was changed."""

    name: str
    spec: RunSpec
    note: str = ""

    @property
    def label(self) -> str:
        return self.spec.label


#: the base model is evaluated, not trained (the reference row of every comparison)
BASE = "base"

CONFIGS: tuple[StudyConfig, ...] = (
    StudyConfig("no_penalty", RunSpec("no penalty (GRPO, β = 0)")),
    StudyConfig("reverse_kl_k3", RunSpec("reverse KL k3, β = 0.2 (TRL's)", beta=0.2)),
    StudyConfig(
        "reverse_kl_k3_no_is",
        RunSpec(
            "reverse KL k3, β = 0.2, use_bias_correction_kl off",
            beta=0.2,
            catalog={"use_bias_correction_kl": False},
        ),
        note="without TRL's importance weight, k3's gradient is the forward-KL gradient",
    ),
    StudyConfig(
        "forward_kl_full",
        RunSpec("forward KL exact, β = 0.2", beta=0.2, divergence="forward_kl", estimator="full"),
    ),
    StudyConfig("forward_kl_k3", RunSpec("forward KL k3 (sampled), β = 0.2", beta=0.2, divergence="forward_kl")),
    StudyConfig(
        "forward_kl_k3plus",
        RunSpec("forward KL k3+ (sampled), β = 0.2", beta=0.2, divergence="forward_kl", estimator="k3+"),
    ),
    StudyConfig("js_full", RunSpec("JS exact, β = 2", beta=2.0, divergence="js", estimator="full")),
    StudyConfig(
        "rehearsal_forward_kl",
        RunSpec("DPH-RL rehearsal, forward KL, coef 0.2", rehearsal="forward_kl", rehearsal_coef=0.2),
        note="RL on the exploration prompts only (DPH-RL); coefficient of the online forward-KL row",
    ),
    StudyConfig(
        "lp_reg",
        RunSpec("Lp-Reg, β = 1, ρ = 0.1", beta=1.0, divergence="lp_reg", divergence_kwargs={"rho": 0.1}),
        note="ρ = 0.1 instead of the official 0.01: ⌊0.01·n⌋ of a micro-batch's ~100 negative tokens selects none",
    ),
    StudyConfig("w_reinforce", RunSpec("W-REINFORCE, λ = 0.1", catalog={"advantage_reweighting": "w_reinforce"})),
    StudyConfig(
        "nsr",
        RunSpec(
            "NSR (negative samples only)",
            catalog={"advantage_reweighting": "w_reinforce", "reweighting_kwargs": {"mode": "nsr"}},
        ),
    ),
    StudyConfig(
        "ace",
        RunSpec("ACE, α = 0.5", catalog={"advantage_reweighting": "ace", "reweighting_kwargs": {"alpha": 0.5}}),
        note="no published α; 0.5, the middle of the README's 0.1–1 sweep range",
    ),
    StudyConfig(
        "gaussian_curriculum",
        RunSpec("reverse KL k3, β = 0.2 + Gaussian curriculum", beta=0.2, catalog={"curriculum": "gaussian"}),
        note="FG-ExPO's Gaussian sampling at its defaults; prompts may repeat (weighted sampling with replacement)",
    ),
)


@dataclass(frozen=True)
class Protocol:
    """Shared settings of every run. Rollouts per prompt during training (``num_generations`` × the ~1 visit of each
    pool prompt = 8) are far fewer than the largest evaluation k (256)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    #: every configuration, DPH-RL's rehearsal included (its store: the pool prompts the base solves in all k = 8
    #: samples — the easy targets of the base's data give it material)
    configs: tuple[str, ...] = tuple(c.name for c in CONFIGS)
    #: base model (hinted task, cached); the architecture and SFT recipe enter its cache key
    base_model: HintedModelConfig = HintedModelConfig()
    base_seed: int = 0
    #: GRPO: steps × prompts_per_step = the pool size, so each pool prompt is drawn once per run
    train_pool: int = N_TRAIN_POOL
    steps: int = 300
    prompts_per_step: int = 8
    num_generations: int = 8
    lr: float = 1e-3
    max_completion_length: int = 4
    #: final evaluation: the first ``eval_prompts`` of the training pool and of the held-out prompts (seeded order)
    eval_prompts: int = 48
    eval_samples: int = 256
    ks: tuple[int, ...] = KS
    #: trajectories over training: every ``trajectory_every`` steps, on the first ``trajectory_prompts`` eval
    #: prompts of the training pool, ``trajectory_samples`` samples each
    trajectory_every: int = 30
    trajectory_prompts: int = 32
    trajectory_samples: int = 16
    #: torch threads (one: the matrices are tiny and the cores are shared)
    threads: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: ``--quick``: one configuration, one seed, a few steps, small k, a tiny base model (a smoke test of the outputs)
QUICK = Protocol(
    seeds=(0,),
    configs=("forward_kl_full",),
    base_model=replace(
        HintedModelConfig(), hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1, steps=40
    ),
    steps=4,
    prompts_per_step=2,
    num_generations=4,
    eval_prompts=6,
    eval_samples=16,
    ks=(1, 2, 4, 8, 16),
    trajectory_every=2,
    trajectory_prompts=4,
    trajectory_samples=4,
)


def config_by_name(name: str) -> StudyConfig:
    """The configuration called ``name``; ValueError naming the valid ones."""
    for config in CONFIGS:
        if config.name == name:
            return config
    raise ValueError(f"unknown configuration {name!r}; valid: {[c.name for c in CONFIGS]}")
