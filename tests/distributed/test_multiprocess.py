"""Real 2-process runs on CPU (``torch.distributed.run``, DDP over gloo) of every method family, all in one launched
job: runs finish, both ranks end with identical parameters and method state, the curricula draw the same prompts
on every rank and fold the pass rates of both ranks' rollouts into their tables, the global-scope statistics over 2
ranks equal the same statistic on the concatenated batch in one process, and a resumed 2-process run continues
exactly like the uninterrupted one."""

from __future__ import annotations

import math

import pytest
import torch

from tests.trl.helpers import BASE_ARGS
from trl_divergences.curricula import get_curriculum
from trl_divergences.groups import group_mean

from .launch import assert_same_params, launch, ok

pytestmark = pytest.mark.slow

NPROC = 2
SHORT = dict(max_steps=2, learning_rate=0.05)
REHEARSAL = dict(rehearsal=True, rehearsal_batch_size=2, rehearsal_coef=0.1)
CURRICULUM_KWARGS = {"gaussian": {"std": 0.1, "ema": 0.5}, "paced": {"ema": 0.5}}

#: name -> (DivergenceGRPOConfig overrides, a metric key every logged step must carry, dataset)
CONFIGS: dict[str, tuple[dict, str, str]] = {
    "full_forward_kl": (dict(divergence="forward_kl", divergence_estimator="full"), "divergence/forward_kl/full",
                        "prompts"),
    "js_k3_warmup": (dict(divergence="js", coefficient_schedule="warmup", schedule_kwargs={"warmup_steps": 2}),
                     "divergence/js/k3", "prompts"),
    "k3plus_accuracy_conditioned": (dict(divergence_estimator="k3+", coefficient_schedule="accuracy_conditioned"),
                                    "divergence/reverse_kl/k3+", "prompts"),
    "entropy_quantile_global": (dict(beta=0.0, token_masks=["entropy_quantile"]),
                                "mask/entropy_quantile/kept_fraction", "prompts"),
    "eksft_global": (dict(token_masks=["eksft"], token_mask_kwargs={"eksft": {"ratio": 0.5, "scope": "global"}}),
                     "mask/eksft/kept_fraction", "prompts"),
    "low_probability_global": (dict(beta=0.0, token_masks=["low_probability"],
                                    token_mask_kwargs={"low_probability": {"kappa": 0.55, "rho": 1.0,
                                                                           "scope": "global"}}),
                               "mask/low_probability/kept_fraction", "prompts"),
    "siren": (dict(beta=0.0, token_masks=["siren"], token_mask_kwargs={"siren": {"mask_ratio": 0.5}}),
              "mask/siren/anchor", "prompts"),
    "ace": (dict(beta=0.0, advantage_reweighting="ace", reweighting_kwargs={"alpha": 0.5}),
            "reweighting/ace/modulated_fraction", "prompts"),
    # whole groups per process: 4 rows per micro-batch x 2 micro-batches per generation = 2 groups of G = 4
    "resrl": (dict(beta=0.0, advantage_reweighting="resrl", reweighting_kwargs={"rank": 4},
                   per_device_train_batch_size=4, gradient_accumulation_steps=2),
              "reweighting/resrl/mean_negative_weight", "prompts"),
    "w_reinforce_nsr": (dict(beta=0.0, advantage_reweighting="w_reinforce", reweighting_kwargs={"mode": "nsr"},
                             loss_type="dapo"), "reweighting/w_reinforce/correct_fraction", "prompts"),
    "dads": (dict(advantage_reweighting="dads", reweighting_kwargs={"stcr": True}),
             "reweighting/dads/mean_divergence_weight", "prompts"),
    "gaussian": (dict(beta=0.0, curriculum="gaussian", curriculum_kwargs=CURRICULUM_KWARGS["gaussian"], max_steps=3),
                 "curriculum/gaussian/effective_prompts", "prompts"),
    "paced": (dict(beta=0.0, curriculum="paced", curriculum_kwargs=CURRICULUM_KWARGS["paced"], max_steps=3),
              "curriculum/paced/effective_prompts", "prompts"),
    "self": (dict(beta=0.0, curriculum="self"), "curriculum/self/kept_fraction", "prompts"),
    "lp_reg_global": (dict(beta=1.0, divergence="lp_reg",
                           divergence_kwargs={"kappa": 0.55, "rho": 1.0, "scope": "global"}),
                      "divergence/lp_reg/selected_fraction", "prompts"),
    "rehearsal": (dict(beta=0.0, **REHEARSAL), "rehearsal/forward_kl", "rehearsal"),
}  # fmt: skip

#: every stateful piece at once (curriculum sampler, SIREN's anchor, a schedule, the rehearsal stream), 4 steps
RESUME = dict(curriculum="gaussian", curriculum_kwargs=CURRICULUM_KWARGS["gaussian"], token_masks=["siren"],
              coefficient_schedule="warmup", schedule_kwargs={"warmup_steps": 3}, **REHEARSAL, max_steps=4,
              learning_rate=0.05, save_strategy="steps", save_steps=2)  # fmt: skip


@pytest.fixture(scope="module")
def ddp(model_dir, store, tmp_path_factory):
    """One 2-process job running every configuration, the statistics comparison and the resume pair."""
    out = tmp_path_factory.mktemp("ddp")
    jobs = [{"name": "stats", "kind": "stats"}]
    for name, (config, _, dataset) in CONFIGS.items():
        jobs.append({"name": name, "kind": "train", "output_dir": str(out / "runs" / name), "dataset": dataset,
                     "config": {**SHORT, **config}})  # fmt: skip
    resume_dir = str(out / "runs" / "resume")
    jobs.append({"name": "uninterrupted", "kind": "train", "output_dir": resume_dir, "dataset": "rehearsal",
                 "config": RESUME})  # fmt: skip
    jobs.append({"name": "resumed", "kind": "train", "output_dir": str(out / "runs" / "resumed"),
                 "dataset": "rehearsal", "config": RESUME, "resume": f"{resume_dir}/checkpoint-2"})  # fmt: skip
    proc = launch(out, jobs, model=model_dir, store=store, nproc=NPROC)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out


def _step_logs(result: dict) -> list[dict]:
    return [h for h in result["logs"] if "loss" in h and "train_loss" not in h]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_runs_finish_with_identical_parameters_and_method_state_on_every_rank(ddp, name):
    config, metric, _ = CONFIGS[name]
    ranks = ok(ddp, name, NPROC)
    steps = {**SHORT, **config}["max_steps"]
    for result in ranks:
        assert result["global_step"] == steps and result["wrapper"] == "DistributedDataParallel"
        logs = _step_logs(result)
        assert len(logs) == steps and all(math.isfinite(h["loss"]) and metric in h for h in logs), logs
    first, second = ranks
    assert_same_params(first["params"], second["params"])
    assert first["state"] == second["state"]
    assert _metrics(first) == _metrics(second)  # reduced over processes, so equal on both ranks


#: metrics the adapter logs from this process's micro-batch only (not reduced over processes: the logged value is
#: the main process's); every other metric must be equal on all ranks
#: per-process statistics of a rollout batch (masks' micro-batch statistics are averaged over the processes)
LOCAL_METRICS = ("reweighting/resrl/groups_processed_fraction", "reweighting/resrl/mean_negative_weight")


def _metrics(result: dict) -> list[dict]:
    """Each step's logged metrics, timings and :data:`LOCAL_METRICS` aside."""
    return [{k: v for k, v in h.items() if "time" not in k and "per_second" not in k and k not in LOCAL_METRICS}
            for h in _step_logs(result)]  # fmt: skip


def test_stateful_methods_hold_state_that_moved(ddp):
    """The identical states compared above are not the initial ones (else the comparison says little)."""
    state = ok(ddp, "siren", NPROC)[0]["state"]
    assert state["token_masks"]["siren"]["anchor"] > 0
    for name in ("gaussian", "paced"):
        rates = ok(ddp, name, NPROC)[0]["state"]["curriculum"]["pass_rates"]
        assert any(r != 0.5 for r in rates)
    coefs = {ok(ddp, "k3plus_accuracy_conditioned", NPROC)[r]["state"]["coef_now"] for r in range(NPROC)}
    assert len(coefs) == 1 and 0.5 * 0.2 <= coefs.pop() < 0.2


@pytest.mark.parametrize("name", ["gaussian", "paced"])
def test_curricula_draw_the_same_prompts_on_every_rank(ddp, name):
    """Both ranks hold the same drawn chunks, and at step s rank r scores its slice of chunk s: prompts
    drawn[s][2r : 2r + 2], each G = 4 times (TRL's layout, the batch split across processes by accelerate)."""
    ranks = ok(ddp, name, NPROC)
    drawn = ranks[0]["state"]["sampler"]["drawn"]
    assert drawn == ranks[1]["state"]["sampler"]["drawn"]
    prompts = ranks[0]["dataset_prompts"]
    per_rank = BASE_ARGS["per_device_train_batch_size"] // 4
    for r, result in enumerate(ranks):
        steps = [record["step"] for record in result["records"]]
        assert steps == list(range(3))
        for record in result["records"]:
            chunk = drawn[str(record["step"])][r * per_rank : (r + 1) * per_rank]
            assert record["prompts"] == [prompts[i] for i in chunk for _ in range(4)]


@pytest.mark.parametrize("name", ["gaussian", "paced"])
def test_curriculum_pass_rates_are_those_of_both_ranks_rollouts(ddp, name):
    """Replaying in one process the rewards both ranks scored (concatenated in rank order, TRL's gather order)
    through the core curriculum gives exactly the table every rank holds."""
    ranks = ok(ddp, name, NPROC)
    prompts = ranks[0]["dataset_prompts"]
    index = {p: i for i, p in enumerate(prompts)}
    replay = get_curriculum(name, **CURRICULUM_KWARGS[name])
    replay.bind(len(prompts))
    for step in range(3):
        rows = [row for result in ranks for record in result["records"] if record["step"] == step
                for row in zip(record["prompts"], record["rewards"])]  # fmt: skip
        correct = torch.tensor([reward >= 1.0 for _, reward in rows], dtype=torch.float64)
        group_ids = torch.arange(len(rows)) // 4
        rates = group_mean(correct, group_ids)[::4]
        replay.update(torch.tensor([index[p] for p, _ in rows[::4]]), rates)
    for result in ranks:
        assert result["state"]["curriculum"]["pass_rates"] == replay.pass_rates.tolist()


def test_global_statistics_over_two_ranks_equal_the_concatenated_batch(ddp):
    """top_fraction, Lp-Reg's selection (function and divergence), the global entropy_quantile, low_probability
    and EKSFT masks, and a curriculum's pass-rate table, over random micro-batches of different sizes per rank (half
    of the cases with ties at the thresholds): torch.distributed all_gather vs one process on the concatenation."""
    ranks = ok(ddp, "stats", NPROC)
    families: dict[str, list[int]] = {}
    for result in ranks:
        for key, value in result["stats"].items():
            assert value["equal"], (key, value)
            families.setdefault(key.split("/", 2)[1], []).append(value["selected"])
    assert set(families) == {"top_fraction", "low_probability_selection", "lp_reg.select", "mask", "curriculum"}
    assert all(sum(counts) > 0 for counts in families.values())  # not vacuous: something is selected


def test_resumed_two_process_run_continues_like_the_uninterrupted_run(ddp):
    full, resumed = ok(ddp, "uninterrupted", NPROC), ok(ddp, "resumed", NPROC)
    for r in range(NPROC):
        assert full[r]["global_step"] == resumed[r]["global_step"] == 4
        assert_same_params(full[r]["params"], resumed[r]["params"])
        assert resumed[r]["state"] == full[r]["state"]
        later = [rec for rec in full[r]["records"] if rec["step"] >= 2]
        assert resumed[r]["records"] == later  # same prompts, same completions' rewards after the checkpoint
    assert full[0]["state"]["token_masks"]["siren"]["anchor"] is not None
