"""Training-step time of the teacher-guided methods on the toy task (base student, toy teacher: H = 160 vs 128),
against GRPO with the reference penalty (reverse KL, k3: TRL's stock path) and without a penalty, side by side.

Each configuration trains ``--steps`` steps from the base model in its own process (TRL's ``step_time``, the mean
over the steps after the first); the ratio column is to GRPO with the k3 reference penalty. The teacher costs one
no-grad forward per generation batch (like TRL's reference forward); G-OPD adds the rollout policy's log-probs
(on-policy TRL does not compute them) and ExOPD the reference's; the exact path carries the teacher's final hidden
states [B, C, H_τ] with the batch and computes D(π‖τ) tile by tile in the loss forward.

    python benchmarks/bench_teacher.py                  # builds the toy base and teacher on first use (cached)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

CONFIGS = {
    "grpo, no penalty": {"beta": 0.0},
    "grpo + reverse KL k3 (TRL's)": {"beta": 0.04},
    "kdrl (k2)": {"beta": 0.0, "teacher_method": "kdrl"},
    "kdrl (full)": {"beta": 0.0, "teacher_method": "kdrl", "teacher_kwargs": {"estimator": "full"}},
    "exact_opd (reverse KL)": {"beta": 0.0, "teacher_method": "exact_opd"},
    "g_opd": {"beta": 0.0, "teacher_method": "g_opd"},
    "exopd": {"beta": 0.0, "teacher_method": "exopd"},
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
    trainer.train()
    times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    print(json.dumps({"step_time_s": statistics.mean(times[1:]), "times": times}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--out", default="benchmarks/results_teacher_cpu.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory() as out_dir:  # the trainer's output folder (nothing is saved)
            worker(args.worker, args.steps, out_dir)
        return
    results = {}
    for name in args.configs:
        cmd = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = proc.stdout.strip().splitlines()
        results[name] = json.loads(lines[-1]) if proc.returncode == 0 else {"error": proc.stderr.strip()[-300:]}
        print(name, results[name], flush=True)
    base = results.get(BASELINE, {}).get("step_time_s")
    print("\n| configuration | step time s | vs GRPO + k3 |\n|---|---|---|")
    for name, r in results.items():
        if "step_time_s" in r:
            ratio = f"{r['step_time_s'] / base:.2f}" if base else ""
            print(f"| {name} | {r['step_time_s']:.3f} | {ratio} |")
    with open(args.out, "w") as f:
        json.dump({"steps": args.steps, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
