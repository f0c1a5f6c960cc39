"""The divergence study (benchmarks/study): its statistics on hand-computed values, the protocol's validation, and a
``--quick`` run whose outputs have the documented structure (the numbers are not asserted)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.study.protocol import CONFIGS, QUICK, Protocol, config_by_name
from benchmarks.study.run import main, parse_args, protocol_from_args
from benchmarks.study.stats import crossover_k, mean_ci, t_quantile_975


def test_t_quantiles():
    assert t_quantile_975(1) == 12.7062 and t_quantile_975(2) == 4.3027 and t_quantile_975(30) == 2.0423
    assert t_quantile_975(40) == pytest.approx(2.021075, abs=1e-4)  # tabulated values beyond the table
    assert t_quantile_975(120) == pytest.approx(1.979930, abs=1e-4)
    with pytest.raises(ValueError, match="df"):
        t_quantile_975(0)


def test_mean_ci_by_hand():
    stat = mean_ci([1.0, 2.0, 3.0])  # s = 1, n = 3: half-width t_{.975,2} / √3
    assert stat["mean"] == 2.0 and stat["n"] == 3
    assert stat["ci"] == pytest.approx(4.3027 / math.sqrt(3), abs=1e-12)
    assert mean_ci([0.5, 0.5])["ci"] == 0.0
    single = mean_ci([0.25])
    assert single["mean"] == 0.25 and math.isnan(single["ci"])
    with pytest.raises(ValueError):
        mean_ci([])


def test_crossover_is_the_first_k_below_the_base():
    ks = (1, 2, 4, 8)
    assert crossover_k(ks, [0.5, 0.6, 0.7, 0.75], [0.3, 0.5, 0.7, 0.8]) == 8  # equal is not below
    assert crossover_k(ks, [0.2, 0.9, 0.9, 0.9], [0.3, 0.5, 0.7, 0.8]) == 1
    assert crossover_k(ks, [0.5, 0.6, 0.7, 0.8], [0.3, 0.5, 0.7, 0.8]) is None


def test_protocol_names_and_arguments():
    default = Protocol()
    assert set(default.configs) == {c.name for c in CONFIGS} and len(default.seeds) >= 3
    assert default.steps * default.prompts_per_step == default.train_pool  # each pool prompt drawn once
    assert default.num_generations < default.ks[-1] <= default.eval_samples
    assert protocol_from_args(parse_args(["--configs", "js_full,nsr", "--seeds", "4"])).configs == ("js_full", "nsr")
    with pytest.raises(ValueError, match="unknown configuration 'nope'"):
        protocol_from_args(parse_args(["--configs", "nope"]))
    with pytest.raises(SystemExit, match="seeds"):
        protocol_from_args(parse_args(["--seeds", "a"]))
    assert config_by_name("reverse_kl_k3_no_is").spec.catalog == {"use_bias_correction_kl": False}
    assert "rehearsal_forward_kl" in default.configs  # DPH-RL runs in the default protocol


@pytest.mark.slow
def test_quick_study_writes_the_documented_outputs_and_resumes(tmp_path):
    argv = ["--quick", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    payload = main(argv)
    out = tmp_path / "out"
    saved = json.loads((out / "study_quick.json").read_text())
    assert saved["complete"] and saved["missing_runs"] == []
    assert saved["protocol"]["configs"] == list(QUICK.configs) and saved["protocol"]["eval_samples"] == 16
    ks = QUICK.ks
    for name in ("base", *QUICK.configs):
        entry = saved["summary"][name]
        assert entry["seeds"] == list(QUICK.seeds)
        for split in ("train", "heldout"):
            block = entry["splits"][split]
            assert {f"pass@{k}" for k in ks} | {"distinct_correct", "entropy", "forward_kl", "reverse_kl"} <= set(block)
            assert set(block[f"pass@{ks[-1]}"]) == {"mean", "ci", "n"}
            assert "buckets" in block
        assert {"steps", "pass@1", "entropy", "forward_kl", "reverse_kl"} == set(entry["trajectory"])
    trained = saved["summary"][QUICK.configs[0]]
    assert trained["trajectory"]["steps"] == [0, 2, 4]
    assert set(trained["crossover"]) == {"train", "heldout"}
    assert {"updated_fraction", "effective_rank", "top1_energy", "trajectory_top1_energy"} <= set(trained["update"])
    run = json.loads((out / "study_quick_runs" / f"{QUICK.configs[0]}-seed0.json").read_text())
    assert run["logs"] and "analysis/updated_fraction" in run["logs"][-1]  # logged through TRL's metrics
    assert {"start", "end"} == set(run["load_average"]) and run["wall_s"] > 0
    assert (out / "study_quick_passk.png").stat().st_size > 1000 and payload["plots"]
    assert "| base model |" in (out / "study_quick.md").read_text()
    again = main(argv)  # every run is found on disk: nothing retrains
    assert again["resumed_runs"] == 2 and json.dumps(again["summary"]) == json.dumps(payload["summary"])


def test_study_and_demo_share_the_grpo_arguments(tmp_path):
    from trl_divergences.demo import toy_grpo_args

    p = Protocol()
    shared = {
        "output_dir": tmp_path, "seed": 1, "lr": p.lr, "steps": p.steps, "num_generations": p.num_generations,
        "prompts_per_step": p.prompts_per_step, "max_completion_length": p.max_completion_length, "logging_steps": 30,
    }  # fmt: skip
    args = toy_grpo_args(config_by_name("reverse_kl_k3_no_is").spec, **shared)
    assert args.beta == 0.2 and args.use_bias_correction_kl is False and args.temperature == 1.0
    assert args.per_device_train_batch_size == p.num_generations * p.prompts_per_step and args.max_steps == p.steps
    rehearsal = config_by_name("rehearsal_forward_kl").spec
    with pytest.raises(ValueError, match="rehearsal store"):
        toy_grpo_args(rehearsal, **shared)
    with pytest.raises(ValueError, match="not a finished rehearsal store"):  # the store path reaches the config
        toy_grpo_args(rehearsal, **shared, store=tmp_path / "store")
