"""The embedded demo: GRPO from the toy base policy with several divergence penalties, evaluated side by side.

Each configuration trains from the same base for the same steps and seed; the table reports, on training and
held-out prompts, pass@1 and pass@k (unbiased), distinct correct answers per prompt, mean per-token entropy and
the exact per-token KL to the base in both directions. ``--model`` / ``--dataset`` take hub names or local folders
(the same loading path as for real models); with a dataset other than the toy task the table reports the training
reward and divergence from the logs instead (the toy evaluation needs the toy verifier).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .loading import load_callable, load_dataset, load_tokenizer
from .toy import build_base_model, build_teacher_model, evaluate, split_prompts


@dataclass(frozen=True)
class RunSpec:
    """One row of the demo: a label and the DivergenceGRPOConfig fields that differ from the shared ones."""

    label: str
    beta: float = 0.0
    divergence: str = "reverse_kl"
    estimator: str = "k3"
    divergence_kwargs: dict[str, Any] = field(default_factory=dict)
    #: reference-sample rehearsal (DPH-RL): the rehearsal loss and its coefficient; RL then runs on the
    #: exploration prompts only and the store is built once from the base model (see trl_divergences/rehearsal)
    rehearsal: str | None = None
    rehearsal_coef: float = 0.0
    #: method-catalog fields of DivergenceGRPOConfig (token_masks, advantage_reweighting, curriculum, ...)
    catalog: dict[str, Any] = field(default_factory=dict)
    #: a teacher-guided method (``teacher_method``) and its kwargs; the teacher is ``--teacher-model``
    teacher: str | None = None
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)


#: the default rows (coefficients from research/toy-task-findings.md: JS is bounded, so it needs a larger one)
DEFAULT_RUNS: tuple[RunSpec, ...] = (
    RunSpec("no penalty", beta=0.0),
    RunSpec("reverse KL (k3)", beta=0.2),
    RunSpec("forward KL (full)", beta=0.2, divergence="forward_kl", estimator="full"),
    RunSpec("JS (full)", beta=2.0, divergence="js", estimator="full"),
    # rehearsal rows: no penalty on the RL samples (beta = 0, the paper's setting); coefficients as the online rows
    # of the same divergence, so the rows differ only in where the divergence is estimated (stored base samples of
    # the perfect prompts vs. every online sample); the paper's 0.01-0.05 is for lr 1e-6 and would not move here
    RunSpec("rehearsal forward KL", beta=0.0, rehearsal="forward_kl", rehearsal_coef=0.2),
    RunSpec("rehearsal JS", beta=0.0, rehearsal="js", rehearsal_coef=2.0),
    # catalog rows at the official defaults of each method (W-REINFORCE and SIREN train without a KL, as in their
    # papers; the curriculum row adds FG-ExPO's Gaussian sampling to the reverse-KL row)
    RunSpec("W-REINFORCE", beta=0.0, catalog={"advantage_reweighting": "w_reinforce"}),
    RunSpec("SIREN", beta=0.0, catalog={"token_masks": ["siren"]}),
    RunSpec("reverse KL (k3) + Gaussian curriculum", beta=0.2, catalog={"curriculum": "gaussian"}),
)

#: the toy task's dataset and reward, as ``package.module:function`` loaders
TOY_DATASET = "trl_divergences.toy:make_dataset"
TOY_REWARD = "trl_divergences.toy:sum_reward"

#: the teacher rows (``--teacher``): the toy teacher (trained longer) distilled into the base, with the outcome
#: reward (KDRL: GRPO + coef·k2 reverse KL to τ) and without it (exact on-policy distillation, KL(π‖τ) over the
#: vocabulary, no reward); coefficients at the scale of the penalty rows, not the papers' (their lr is 1e-6)
TEACHER_RUNS: tuple[RunSpec, ...] = (
    RunSpec("KDRL from the teacher (reward)", beta=0.0, teacher="kdrl", teacher_kwargs={"coef": 0.2}),
    RunSpec("exact OPD from the teacher (no reward)", beta=0.0, teacher="exact_opd"),
)

METRICS = ("pass@1", "pass@{k}", "distinct_correct", "entropy", "forward_kl", "reverse_kl")


def toy_grpo_args(
    spec: RunSpec,
    *,
    output_dir: str | Path,
    seed: int,
    lr: float,
    steps: int,
    num_generations: int,
    prompts_per_step: int,
    max_completion_length: int,
    logging_steps: int,
    store: str | Path | None = None,
    teacher_model: str | None = None,
    progress: bool = False,
):
    """The ``DivergenceGRPOConfig`` of one toy run (demo and study): ``spec``'s method fields on the shared CPU
    settings (fp32, T = 1, ``prompts_per_step`` prompts × ``num_generations`` completions per step, no checkpoints,
    no reporting). ``store`` is required by a rehearsal spec, ``teacher_model`` by a teacher spec."""
    from .trl import DivergenceGRPOConfig

    if spec.rehearsal is not None and store is None:
        raise ValueError(f"{spec.label!r} rehearses ({spec.rehearsal}): pass the rehearsal store")
    if spec.teacher is not None and teacher_model is None:
        raise ValueError(f"{spec.label!r} is teacher-guided ({spec.teacher}): pass teacher_model")
    return DivergenceGRPOConfig(
        rehearsal_dataset=None if spec.rehearsal is None else str(store),
        teacher_model=None if spec.teacher is None else teacher_model,
        teacher_method=spec.teacher,
        teacher_kwargs=dict(spec.teacher_kwargs),
        rehearsal_divergence=spec.rehearsal or "forward_kl",
        rehearsal_coef=spec.rehearsal_coef,
        output_dir=str(output_dir),
        beta=spec.beta,
        divergence=spec.divergence,
        divergence_estimator=spec.estimator,
        divergence_kwargs=dict(spec.divergence_kwargs),
        **spec.catalog,
        learning_rate=lr,
        max_steps=steps,
        num_generations=num_generations,
        per_device_train_batch_size=num_generations * prompts_per_step,
        max_completion_length=max_completion_length,
        temperature=1.0,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to=[],
        bf16=False,
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        disable_tqdm=not progress,
    )


def _trainer_args(spec: RunSpec, args: argparse.Namespace, output_dir: Path, seed: int, store: Path | None):
    return toy_grpo_args(
        spec,
        output_dir=output_dir,
        seed=seed,
        lr=args.lr,
        steps=args.steps,
        num_generations=args.num_generations,
        prompts_per_step=args.prompts_per_step,
        max_completion_length=args.max_completion_length,
        logging_steps=max(1, args.steps // 10),
        store=store,
        teacher_model=args.teacher_model,
        progress=args.progress,
    )


def build_rehearsal_store(args: argparse.Namespace, model: str, tokenizer, dataset, reward) -> Path:
    """The rehearsal store of the base model on the training prompts, in ``<output-dir>/rehearsal_store`` (DPH-RL's
    sampling: k = 8, T = 1, top-p 0.95; reused when already built with the same settings)."""
    from transformers import AutoModelForCausalLM

    from .rehearsal.build import BuildConfig, build_store

    path = Path(args.output_dir) / "rehearsal_store"
    config = BuildConfig(k=8, temperature=1.0, top_p=0.95, max_new_tokens=args.max_completion_length, seed=0)
    meta = build_store(
        AutoModelForCausalLM.from_pretrained(model), tokenizer, dataset, reward, path, config, progress=args.progress
    )
    print(
        f"rehearsal store: {meta['n_perfect']} perfect / {meta['n_exploration']} exploration prompts, "
        f"{meta['n_samples']} stored samples"
    )
    return path


def train_one(
    spec: RunSpec, args: argparse.Namespace, model: str, tokenizer, dataset, reward, seed: int, store: Path | None
):
    """Train one configuration from ``model``; returns (trained model, log history)."""
    from .trl import DivergenceGRPOTrainer

    out = Path(args.output_dir) / "runs" / f"{spec.label.replace(' ', '_')}-seed{seed}"
    trainer = DivergenceGRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=_trainer_args(spec, args, out, seed, store),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    # the console shows progress bars and the table; TRL's per-step log dicts go to <run dir>/log.jsonl
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_QuietProgress)
    trainer.add_callback(_JsonlLog(out / "log.jsonl"))
    trainer.train()
    return trainer.model, trainer.state.log_history


class _QuietProgress(ProgressCallback):
    """TRL's progress bar without the log dict it prints at every logging step."""

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        pass


class _JsonlLog(TrainerCallback):
    """Appends every log dict of a run to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def _summary_from_logs(history: list[dict[str, float]]) -> dict[str, float]:
    logs = [h for h in history if "reward" in h]
    tail = logs[-max(1, len(logs) // 4) :]
    return {key: sum(h.get(key, 0.0) for h in tail) / len(tail) for key in ("reward", "kl", "entropy")}


def versions() -> dict[str, str]:
    """The versions a result depends on (written into the demo's and the study's results)."""
    import transformers
    import trl

    from . import __version__

    return {
        "trl-divergences": __version__,
        "torch": torch.__version__,
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}


def format_table(results: dict[str, dict[str, dict[str, float]]], k: int) -> str:
    """Markdown table: one row per configuration, metric columns per prompt split."""
    first = next(iter(results.values()))
    splits = list(first)
    metrics = [m.format(k=k) for m in METRICS if m.format(k=k) in first[splits[0]]] or list(first[splits[0]])
    header = ["config"] + [f"{s} {m}" for s in splits for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, by_split in results.items():
        cells = [f"{by_split[s].get(m, math.nan):.3f}" for s in splits for m in metrics]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict[str, float]]], path: Path, ks: Sequence[int]) -> None:
    """pass@k curves per split (left panels) and distinct correct answers / entropy bars (right panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, len(splits) + 1, figsize=(5 * (len(splits) + 1), 4))
    for ax, split in zip(axes, splits):
        for label, by_split in results.items():
            ax.plot(ks, [by_split[split][f"pass@{k}"] for k in ks], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set(title=f"pass@k — {split} prompts", xlabel="k", ylabel="pass@k", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    labels = list(results)
    x = torch.arange(len(labels)).float()
    split = splits[0]
    ax.bar(x - 0.2, [results[lbl][split]["distinct_correct"] for lbl in labels], 0.4, label="distinct correct")
    ax.bar(x + 0.2, [results[lbl][split]["entropy"] * 10 for lbl in labels], 0.4, label="entropy × 10")
    ax.set_xticks(x.tolist(), labels, rotation=30, ha="right", fontsize=8)
    ax.set(title=f"diversity — {split} prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="hub name or local folder of the base policy (default: the embedded toy model)")
    p.add_argument("--dataset", help="hub name or local folder with a 'prompt' column (default: the toy task)")
    p.add_argument(
        "--reward", default=TOY_REWARD, help=f"a 'package.module:function' TRL reward (default {TOY_REWARD})"
    )
    p.add_argument("--output-dir", default="demo_outputs")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=4)
    p.add_argument("--seeds", type=int, default=1, help="seeds per configuration (the table reports the mean)")
    p.add_argument("--eval-samples", type=int, default=64, help="samples per prompt; pass@k is reported up to it")
    p.add_argument("--runs", help="comma-separated subset of run labels to train (default: all)")
    p.add_argument("--teacher", action="store_true", help="add the teacher rows (KDRL, exact OPD from the toy teacher)")
    p.add_argument("--teacher-model", help="teacher of the teacher rows (default: the toy teacher, built and cached)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    runs = DEFAULT_RUNS + TEACHER_RUNS if args.teacher else DEFAULT_RUNS
    if args.runs:
        wanted = [r.strip() for r in args.runs.split(",")]
        known = DEFAULT_RUNS + TEACHER_RUNS
        unknown = sorted(set(wanted) - {r.label for r in known})
        if unknown:
            raise SystemExit(f"unknown --runs {unknown}; valid: {[r.label for r in known]}")
        runs = tuple(r for r in known if r.label in wanted)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    start = time.perf_counter()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    toy_data = args.dataset is None
    model = str(args.model or build_base_model(progress=args.progress))
    tokenizer = load_tokenizer(model)
    dataset = load_dataset(args.dataset or TOY_DATASET, "train")
    reward = load_callable(args.reward)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= args.eval_samples]

    results: dict[str, dict[str, dict[str, float]]] = {}
    base = None
    if toy_data:
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model)
        splits = {"train": split_prompts("train"), "heldout": split_prompts("heldout")}

        def score(policy) -> dict[str, dict[str, float]]:
            return {
                s: evaluate(policy, tokenizer, prompts, n_samples=args.eval_samples, ks=ks, base_model=base)
                for s, prompts in splits.items()
            }

        results["base"] = score(base)
    if any(r.teacher for r in runs):
        if args.teacher_model is None:
            args.teacher_model = str(build_teacher_model(progress=args.progress))
        if toy_data:
            from transformers import AutoModelForCausalLM

            results["teacher"] = score(AutoModelForCausalLM.from_pretrained(args.teacher_model))
    store = build_rehearsal_store(args, model, tokenizer, dataset, reward) if any(r.rehearsal for r in runs) else None
    for spec in tqdm(runs, desc="configurations", disable=not args.progress):
        per_seed = []
        for seed in range(args.seeds):
            policy, history = train_one(spec, args, model, tokenizer, dataset, reward, seed, store)
            per_seed.append(score(policy) if toy_data else {"train": _summary_from_logs(history)})
        results[spec.label] = {s: _mean([r[s] for r in per_seed]) for s in per_seed[0]}

    k_max = ks[-1]
    table = format_table(results, k_max)
    elapsed = time.perf_counter() - start
    payload = {
        "args": vars(args),
        "runs": [asdict(r) for r in runs],
        "results": results,
        "seconds": elapsed,
        "versions": versions(),
    }
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2))
    (out_dir / "results.md").write_text(table + "\n")
    if toy_data:
        plot(results, out_dir / "results.png", ks)
    print(table)
    print(f"\nsaved {out_dir / 'results.json'} and the plot; total {elapsed:.0f} s")
    return payload
