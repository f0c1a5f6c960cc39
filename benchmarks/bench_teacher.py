"""Training-step time and memory of the teacher-guided methods on the toy task (base student, toy teacher: H = 160 vs
128), against GRPO with the reference penalty (reverse KL, k3: TRL's stock path) and without a penalty, side by side.

Each configuration trains ``--steps`` steps from the base model in its own process, one after the other in one run
(so the ratios share the machine's load), ``--rounds`` times in turn. Reported per configuration, each a median over
the rounds' steps after the first: TRL's ``step_time``; the teacher-side no-grad passes per generation batch (the
teacher forward, and ExOPD's separate ρ when given), timed around the trainer's ``_teacher_pass``; the training peak
memory, the process's RSS high-water mark during training (reset once the trainer is built, :mod:`_memory`) minus its
RSS then (models loaded).
Ratios are to GRPO with the k3 reference penalty. The teacher costs one no-grad forward per generation batch (like
TRL's reference forward); G-OPD adds the rollout policy's log-probs (on-policy TRL does not compute them) and ExOPD
the reference's (or the given ρ's); the exact path carries the teacher's final hidden states [B, C, H_τ] with the
batch and computes D(π‖τ) tile by tile in the loss forward, its gradient inside the forward.

    python benchmarks/bench_teacher.py                  # builds the toy base and teacher on first use (cached)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

from _memory import peak_rss_bytes, reset_peak_rss, rss_bytes

CONFIGS = {
    "grpo, no penalty": {"beta": 0.0},
    "grpo + reverse KL k3 (TRL's)": {"beta": 0.04},
    "kdrl (k2)": {"beta": 0.0, "teacher_method": "kdrl"},
    "kdrl (full)": {"beta": 0.0, "teacher_method": "kdrl", "teacher_kwargs": {"estimator": "full"}},
    "exact_opd (reverse KL)": {"beta": 0.0, "teacher_method": "exact_opd"},
    "g_opd": {"beta": 0.0, "teacher_method": "g_opd"},
    "exopd": {"beta": 0.0, "teacher_method": "exopd"},
    "exopd, given ρ": {"beta": 0.0, "teacher_method": "exopd", "teacher_reference_model": "BASE"},
    "trrd": {"beta": 0.0, "teacher_method": "trrd"},
}
BASELINE = "grpo + reverse KL k3 (TRL's)"


def worker(name: str, steps: int, out_dir: str) -> None:
    import torch

    from trl_divergences import DivergenceGRPOConfig, DivergenceGRPOTrainer
    from trl_divergences.toy import build_base_model, build_teacher_model, load_tokenizer, make_dataset, sum_reward

    torch.set_num_threads(1)
    base, teacher = build_base_model(progress=False), build_teacher_model(progress=False)
    config = dict(CONFIGS[name])
    if "teacher_method" in config:
        config["teacher_model"] = str(teacher)
    if (
        config.get("teacher_reference_model") == "BASE"
    ):  # the toy has no pre-RL teacher base: ρ = the base, loaded again
        config["teacher_reference_model"] = str(base)
    args = DivergenceGRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=64,
        num_generations=8,
        max_completion_length=4,
        max_steps=steps,
        learning_rate=1e-5,
        report_to=[],
        logging_steps=1,
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        **config,
    )
    trainer = DivergenceGRPOTrainer(
        model=str(base),
        reward_funcs=sum_reward,
        args=args,
        train_dataset=make_dataset("train"),
        processing_class=load_tokenizer(base),
    )
    teacher_times: list[float] = []
    if trainer.teacher_model is not None:
        teacher_pass = trainer._teacher_pass

        def timed(output):
            start = time.perf_counter()
            teacher_pass(output)
            teacher_times.append(time.perf_counter() - start)

        trainer._teacher_pass = timed
    rss_built = rss_bytes() / 2**20
    hwm_reset = reset_peak_rss()  # the build's freed temporaries out of the high-water mark
    trainer.train()
    peak = peak_rss_bytes() / 2**20
    times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    result = {
        "step_time_s": statistics.median(times[1:]),
        "times": times,
        "train_peak_mb": peak - rss_built,
        "rss_built_mb": rss_built,
        "hwm_reset": hwm_reset,
    }
    if teacher_times:
        result["teacher_pass_s"] = statistics.median(teacher_times[1:] or teacher_times)
        result["teacher_times"] = teacher_times
    print(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2, help="runs of every configuration, in turn")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--out", default="benchmarks/results/teacher_cpu.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory() as out_dir:  # the trainer's output folder (nothing is saved)
            worker(args.worker, args.steps, out_dir)
        return
    rounds: dict[str, list[dict]] = {name: [] for name in args.configs}
    for round_index in range(args.rounds):
        for name in args.configs:
            cmd = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = proc.stdout.strip().splitlines()
            run = json.loads(lines[-1]) if proc.returncode == 0 else {"error": proc.stderr.strip()[-300:]}
            rounds[name].append(run)
            print(round_index, name, run, flush=True)
    results = {}
    for name, runs in rounds.items():
        done = [r for r in runs if "error" not in r]
        if len(done) < len(runs):
            results[name] = {"error": next(r["error"] for r in runs if "error" in r), "rounds": runs}
            continue
        results[name] = {
            "step_time_s": statistics.median(t for r in done for t in r["times"][1:]),
            "train_peak_mb": statistics.median(r["train_peak_mb"] for r in done),
            "rounds": runs,
        }
        if "teacher_times" in done[0]:
            results[name]["teacher_pass_s"] = statistics.median(
                t for r in done for t in (r["teacher_times"][1:] or r["teacher_times"])
            )
    base = results.get(BASELINE, {})
    print(
        "\n| configuration | step time s | vs GRPO + k3 | teacher passes s / generation batch | training peak MB "
        "| vs GRPO + k3 |\n|---|---|---|---|---|---|"
    )
    for name, r in results.items():
        if "step_time_s" in r:
            time_ratio = f"{r['step_time_s'] / base['step_time_s']:.2f}" if "step_time_s" in base else ""
            mem_ratio = f"{r['train_peak_mb'] / base['train_peak_mb']:.2f}" if base.get("train_peak_mb") else ""
            teacher = f"{r['teacher_pass_s']:.3f}" if "teacher_pass_s" in r else "—"
            print(
                f"| {name} | {r['step_time_s']:.3f} | {time_ratio} | {teacher} | {r['train_peak_mb']:.0f} "
                f"| {mem_ratio} |"
            )
    with open(args.out, "w") as f:
        json.dump({"steps": args.steps, "rounds": args.rounds, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
