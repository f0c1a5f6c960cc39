"""Faults: a training run SIGKILLed between steps, during a checkpoint write, and after TRL's part of a checkpoint but
before the methods' state, then resumed with ``train(resume_from_checkpoint=True)`` (the last checkpoint), must end
exactly where the uninterrupted run ends (parameters, methods' state, the curriculum sampler, the rehearsal stream,
every checkpoint file); a rehearsal store build (``python -m trl_divergences.rehearsal build``) SIGKILLed during
sampling, between a shard's write and its rename, and during the final save, then re-run, must give the same store
as an uninterrupted build. Each fault runs in a separate process that kills itself at a chosen point
(:func:`tests.distributed.worker.arm_fault`)."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from .launch import assert_same_params, killed, launch, ok

pytestmark = pytest.mark.slow

#: every stateful piece (curriculum sampler and table, SIREN's anchor, the warm-up schedule, the rehearsal stream)
RUN = dict(curriculum="gaussian", curriculum_kwargs={"std": 0.1, "ema": 0.5}, token_masks=["siren"],
           token_mask_kwargs={"siren": {"mask_ratio": 0.5}}, coefficient_schedule="warmup",
           schedule_kwargs={"warmup_steps": 3}, rehearsal=True, rehearsal_batch_size=2, rehearsal_coef=0.1,
           max_steps=6, learning_rate=0.05, save_strategy="steps", save_steps=2)  # fmt: skip
STEPS = RUN["max_steps"]

#: name -> (fault, the last complete checkpoint when it strikes)
TRAIN_FAULTS = {
    "between_steps": ({"after_step": 3}, 2),
    # checkpoint-4's weights are written, its optimizer, RNG and trainer state are not
    "during_checkpoint_write": ({"target": "torch:save", "from_step": 4, "call": 1, "when": "before"}, 2),
    # checkpoint-4 is complete for transformers, the methods' state and the rehearsal stream are not written yet
    "after_trainer_state": (
        {"target": "transformers.trainer_callback:TrainerState.save_to_json", "from_step": 4, "call": 1,
         "when": "after"}, 2),
}  # fmt: skip
#: checkpoint files that differ between two identical runs: wall-clock timings, the output directory
RUN_SPECIFIC_FILES = {"trainer_state.json", "training_args.bin"}


@pytest.fixture(scope="module")
def train_faults(model_dir, store, tmp_path_factory):
    """Launches chained so that each process resumes the previous fault's run, then dies of the next fault."""
    out = tmp_path_factory.mktemp("train_faults")

    def job(name: str, **extra):
        return {"name": name, "kind": "train", "output_dir": str(out / "runs" / name.removeprefix("resumed_")),
                "dataset": "rehearsal", "config": RUN, **extra}  # fmt: skip

    chain = [[job("uninterrupted")]]
    procs = {}
    for name, (fault, _) in TRAIN_FAULTS.items():
        chain[-1].append(job(name, fault=fault))
        chain.append([job(f"resumed_{name}", resume=True)])
    for jobs in chain:
        proc = launch(out, jobs, model=model_dir, store=store)
        procs[jobs[-1]["name"]] = proc
    return out, procs


def _checkpoint_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _check_fault(out: Path, procs: dict, name: str) -> None:
    fault, last_complete = TRAIN_FAULTS[name]
    assert killed(procs[name]), procs[name].stderr[-3000:]
    assert not (out / name / "rank0.pt").exists()  # the killed job never got to write its result
    reference = ok(out, "uninterrupted")[0]
    resumed = ok(out, f"resumed_{name}")[0]
    assert resumed["global_step"] == reference["global_step"] == STEPS
    assert_same_params(reference["params"], resumed["params"])
    assert resumed["state"] == reference["state"]
    assert resumed["records"] == [r for r in reference["records"] if r["step"] >= last_complete]
    final = f"checkpoint-{STEPS}"
    ref_dir, run_dir = out / "runs" / "uninterrupted" / final, out / "runs" / name / final
    files = _checkpoint_files(ref_dir)
    assert files == _checkpoint_files(run_dir)
    compared = [f for f in files if f not in RUN_SPECIFIC_FILES]
    _, different, errors = filecmp.cmpfiles(ref_dir, run_dir, compared, shallow=False)
    assert not different and not errors, different + errors


def test_killed_between_steps_resumes_from_the_last_checkpoint(train_faults):
    _check_fault(*train_faults, "between_steps")


def test_killed_during_a_checkpoint_write_resumes_from_the_last_complete_checkpoint(train_faults):
    _check_fault(*train_faults, "during_checkpoint_write")


def test_killed_before_the_methods_state_is_written_resumes_from_the_last_complete_checkpoint(train_faults):
    _check_fault(*train_faults, "after_trainer_state")


# ---- the rehearsal store build ------------------------------------------------------------------------------------
BUILD_ARGS = ["--reward", "tests.rehearsal.conftest:synthetic_reward", "--k", "4", "--max-new-tokens", "3",
              "--shard-size", "3", "--seed", "0", "--no-progress"]  # fmt: skip
#: name -> fault of a build of 9 prompts in 3 shards
BUILD_FAULTS = {
    # the 5th prompt: shard 0 written, shard 1 half sampled
    "during_sampling": {"target": "tests.rehearsal.conftest:synthetic_reward", "call": 5, "when": "before"},
    # shard 1's temporary file fully written, not yet renamed into place
    "between_shard_write_and_rename": {"target": "pyarrow.parquet:write_table", "call": 2, "when": "after"},
    # samples/ in place, prompts/ saved to its temporary folder, exploration/ and meta.json not written
    "during_the_final_save": {"target": "datasets:Dataset.save_to_disk", "call": 2, "when": "after"},
}


@pytest.fixture(scope="module")
def build_faults(model_dir, tmp_path_factory):
    from trl_divergences.toy import make_dataset

    out = tmp_path_factory.mktemp("build_faults")
    make_dataset("train").select(range(9)).save_to_disk(str(out / "data"))

    def job(name: str, **extra):
        argv = ["build", "--model", model_dir, "--dataset", str(out / "data"), *BUILD_ARGS,
                "--output", str(out / "stores" / name.removeprefix("resumed_"))]  # fmt: skip
        return {"name": name, "kind": "cli", "module": "trl_divergences.rehearsal", "argv": argv, **extra}

    chain = [[job("uninterrupted")]]
    procs = {}
    for name, fault in BUILD_FAULTS.items():
        chain[-1].append(job(name, fault=fault))
        chain.append([job(f"resumed_{name}")])
    for jobs in chain:
        procs[jobs[-1]["name"]] = launch(out, jobs, model=model_dir)
    return out, procs


@pytest.mark.parametrize("name", list(BUILD_FAULTS))
def test_killed_store_build_resumes_to_the_same_store(build_faults, name):
    out, procs = build_faults
    assert killed(procs[name]), procs[name].stderr[-3000:]
    ok(out, "uninterrupted")
    ok(out, f"resumed_{name}")
    reference, resumed = out / "stores" / "uninterrupted", out / "stores" / name
    files = _checkpoint_files(reference)
    assert files == _checkpoint_files(resumed)  # no leftover temporary files either
    _, different, errors = filecmp.cmpfiles(reference, resumed, files, shallow=False)
    assert not different and not errors, different + errors
