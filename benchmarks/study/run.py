"""Run the divergence study: every configuration × seed of the protocol, one JSON file per finished run (a rerun
skips them), then the summary (``study.json``), the plots and a markdown table.

    python -m benchmarks.study                       # the full protocol (make study)
    python -m benchmarks.study --quick --out DIR     # smoke test: 1 config × 1 seed × 4 steps, tiny model
    python -m benchmarks.study --configs no_penalty,forward_kl_full --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from trl_divergences.analysis import parameter_snapshot, update_statistics
from trl_divergences.demo import toy_grpo_args, versions
from trl_divergences.toy import (
    build_hinted_model,
    default_cache_dir,
    evaluate,
    hinted_is_correct,
    hinted_prompts,
    hinted_reward,
    load_tokenizer,
    make_hinted_dataset,
)

from .protocol import BASE, QUICK, Protocol, StudyConfig, config_by_name
from .report import write_report

#: metrics the final evaluation reports besides pass@k
EVAL_METRICS = ("distinct_correct", "entropy", "forward_kl", "reverse_kl")
#: TRL log keys kept in the per-run file (besides the analysis/ ones)
LOG_KEYS = ("reward", "entropy", "kl", "divergence/coef")


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path))


class _Trajectory(TrainerCallback):
    """Every ``every`` steps: pass@1, entropy and the exact KLs to the base on a small fixed prompt set."""

    def __init__(self, every: int, measure) -> None:
        self.every, self.measure, self.points = every, measure, []

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.points.append({"step": state.global_step, **self.measure(model)})


class _Progress(TrainerCallback):
    def __init__(self, bar) -> None:
        self.bar = bar

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.bar.set_postfix_str(f"step {state.global_step}/{state.max_steps}", refresh=False)


class Study:
    """One study: the protocol, the base model and tokenizer, the prompt sets and the output folder."""

    def __init__(self, protocol: Protocol, out: Path, *, quick: bool, cache_dir: Path | None, progress: bool) -> None:
        self.protocol, self.out, self.progress = protocol, out, progress
        self.name = "study_quick" if quick else "study"
        self.runs_dir = out / f"{self.name}_runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir = cache_dir
        self.base_path = build_hinted_model(
            cache_dir, protocol.base_seed, config=protocol.base_model, progress=progress
        )
        self.tokenizer = load_tokenizer(self.base_path)
        self.base = _load(self.base_path)
        p = protocol
        self.eval_sets = {
            "train": hinted_prompts("train", n_train=p.train_pool)[: p.eval_prompts],
            "heldout": hinted_prompts("heldout", n_train=p.train_pool)[: p.eval_prompts],
        }
        self.trajectory_set = self.eval_sets["train"][: p.trajectory_prompts]
        self.dataset = make_hinted_dataset("train", n_train=p.train_pool)

    # ---- measurement ---------------------------------------------------------------------------------------------
    def final_eval(self, model, seed: int) -> dict[str, Any]:
        p, out = self.protocol, {}
        for split, prompts in self.eval_sets.items():
            per_prompt: dict[str, list[int]] = {}
            row = evaluate(
                model, self.tokenizer, prompts, n_samples=p.eval_samples, ks=p.ks, base_model=self.base, seed=seed,
                max_new_tokens=p.max_completion_length, verifier=hinted_is_correct, per_prompt=per_prompt,
            )  # fmt: skip
            out[split] = {**row, "per_prompt": per_prompt}
        return out

    def trajectory_point(self, model) -> dict[str, float]:
        p = self.protocol
        row = evaluate(
            model, self.tokenizer, self.trajectory_set, n_samples=p.trajectory_samples, ks=(1,), base_model=self.base,
            seed=12345, max_new_tokens=p.max_completion_length, verifier=hinted_is_correct,
        )  # fmt: skip
        return {k: row[k] for k in ("pass@1", "entropy", "forward_kl", "reverse_kl")}

    # ---- runs ----------------------------------------------------------------------------------------------------
    def run_path(self, config: str, seed: int) -> Path:
        return self.runs_dir / f"{config}-seed{seed}.json"

    def rehearsal_store(self) -> Path:
        """DPH-RL's store of the base model on the training pool (k = 8, T = 1, top-p 0.95), built once, cached."""
        from trl_divergences.rehearsal.build import BuildConfig, build_store

        root = self.cache_dir or default_cache_dir()
        path = root / f"{self.base_path.name}-rehearsal-pool{self.protocol.train_pool}"
        config = BuildConfig(k=8, temperature=1.0, top_p=0.95, max_new_tokens=self.protocol.max_completion_length)
        build_store(self.base, self.tokenizer, self.dataset, [hinted_reward], path, config, progress=self.progress)
        return path

    def train(self, config: StudyConfig, seed: int, bar) -> dict[str, Any]:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from trl_divergences.trl import DivergenceGRPOTrainer
        from trl_divergences.trl.callbacks import UpdateRankCallback, UpdateSparsityCallback

        p = self.protocol
        store = self.rehearsal_store() if config.spec.rehearsal else None
        with tempfile.TemporaryDirectory(prefix="study-") as tmp:
            args = toy_grpo_args(
                config.spec,
                output_dir=tmp,
                seed=seed,
                lr=p.lr,
                steps=p.steps,
                num_generations=p.num_generations,
                prompts_per_step=p.prompts_per_step,
                max_completion_length=p.max_completion_length,
                logging_steps=p.trajectory_every,
                store=store,
            )
            trainer = DivergenceGRPOTrainer(
                model=str(self.base_path),
                reward_funcs=hinted_reward,
                args=args,
                train_dataset=self.dataset,
                processing_class=self.tokenizer,
            )
            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
            trajectory = _Trajectory(p.trajectory_every, self.trajectory_point)
            for callback in (
                UpdateSparsityCallback(trainer),
                UpdateRankCallback(trainer, trajectory=True),
                trajectory,
                _Progress(bar),
            ):
                trainer.add_callback(callback)
            reference = parameter_snapshot(trainer.model)
            start = time.perf_counter()
            trainer.train()
            train_s = time.perf_counter() - start
            model = trainer.model
        logs = [
            {"step": h["step"], **{k: v for k, v in h.items() if k in LOG_KEYS or k.startswith("analysis/")}}
            for h in trainer.state.log_history
            if "reward" in h
        ]
        return {
            "model": model,
            "train_s": train_s,
            "trajectory": trajectory.points,
            "logs": logs,
            "update": update_statistics(model, reference),
        }

    def run(self, name: str, seed: int, bar) -> dict[str, Any]:
        """Train (unless ``name`` is the base) and evaluate one run; writes and returns its record."""
        torch.manual_seed(seed)
        start, load = time.perf_counter(), os.getloadavg()
        record: dict[str, Any] = {"config": name, "seed": seed}
        if name == BASE:
            model = self.base
            record["trajectory"] = [{"step": 0, **self.trajectory_point(model)}]
        else:
            trained = self.train(config_by_name(name), seed, bar)
            model = trained.pop("model")
            record.update(trained)
            record["trajectory"] = [{"step": 0, **self.trajectory_point(self.base)}, *record["trajectory"]]
        eval_start = time.perf_counter()
        record["eval"] = self.final_eval(model, seed)
        record["eval_s"] = time.perf_counter() - eval_start
        record["wall_s"] = time.perf_counter() - start
        record["load_average"] = {"start": load, "end": os.getloadavg()}
        path = self.run_path(name, seed)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)  # a run killed mid-write leaves no partial record
        return record


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke-test protocol (1 config × 1 seed, tiny model, < 60 s)")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--configs", help="comma-separated subset of the protocol's configurations (default: all)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the protocol's)")
    p.add_argument("--cache-dir", help="cache of the base model and rehearsal store (default: the toy cache)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    """The default (or ``--quick``) protocol with ``--configs`` / ``--seeds`` applied; unknown names fail here."""
    protocol = QUICK if args.quick else Protocol()
    if args.configs:
        names = tuple(c.strip() for c in args.configs.split(",") if c.strip())
        for name in names:
            config_by_name(name)
        protocol = replace(protocol, configs=names)
    if args.seeds:
        try:
            seeds = tuple(int(s) for s in args.seeds.split(","))
        except ValueError:
            raise SystemExit(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        protocol = replace(protocol, seeds=seeds)
    return protocol


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        protocol = protocol_from_args(args)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    torch.set_num_threads(protocol.threads)
    start = time.perf_counter()
    study = Study(
        protocol,
        Path(args.out),
        quick=args.quick,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        progress=args.progress,
    )
    plan = [(name, seed) for seed in protocol.seeds for name in (BASE, *protocol.configs)]  # seed-major
    todo = [(n, s) for n, s in plan if not study.run_path(n, s).is_file()]
    bar = tqdm(todo, desc="study runs", disable=not args.progress)
    for name, seed in bar:
        bar.set_description(f"{name} seed {seed}")
        study.run(name, seed, bar)
    payload = write_report(
        study.out,
        study.name,
        protocol,
        {(n, s): json.loads(study.run_path(n, s).read_text()) for n, s in plan if study.run_path(n, s).is_file()},
        plan,
        meta={
            "versions": versions(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": protocol.threads},
            "this_invocation_s": time.perf_counter() - start,
            "resumed_runs": len(plan) - len(todo),
            "command": "python -m benchmarks.study" + (" --quick" if args.quick else ""),
        },
    )
    print(payload["table"])
    print(f"\nwrote {study.out / (study.name + '.json')} and the plots")
    return payload


if __name__ == "__main__":
    main()
