"""One whole GRPO step (generation, reference forward, policy forward + backward, optimizer) of
``DivergenceGRPOTrainer`` against stock TRL ``GRPOTrainer`` with its k3 penalty, on a tiny Qwen2 with a 151,936-token
vocabulary built locally (tiny layers, so the lm_head dominates): step time and peak memory, side by side.

    python benchmarks/bench_trainer.py                       # 8 completions x 32 tokens, every divergence (full)
    python benchmarks/bench_trainer.py --runs trl_k3 js      # a subset

Rows: ``trl_k3`` (stock TRL, reference for the ratios), ``ours_k3`` (ours with the default reverse-KL k3) and one row
per divergence with the exact ``full`` estimator. Every row runs in its own subprocess with the same model, prompts,
seed and ``beta``; time is the median of the timed steps after warm-up steps; peak memory is the RSS high-water mark
during those steps minus the RSS before them. Only the public API (``trl_divergences.DivergenceGRPOConfig`` /
``DivergenceGRPOTrainer``) is used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from report import trainer_section

VOCAB_SIZE = 151_936


def build_model(folder: Path, args) -> None:
    """A random tiny Qwen2 (``--hidden`` wide, ``--layers`` deep, tied embeddings) with a WordLevel tokenizer of
    ``VOCAB_SIZE`` tokens (``t0`` ... and the specials), saved to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + [f"t{i}" for i in range(VOCAB_SIZE - len(specials))])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=1, pad_token_id=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _reward(completions, **kwargs) -> list[float]:
    """A deterministic reward with spread inside each group (so advantages are non-zero): token parity counts."""
    return [float(sum(int(w[1:]) % 2 for w in c.split() if w[1:].isdigit())) for c in completions]


def _run_specs(divergences: list[str]) -> dict[str, dict]:
    specs = {"trl_k3": {"stock": True}, "ours_k3": {"divergence": "reverse_kl", "divergence_estimator": "k3"}}
    for name in divergences:
        specs[f"{name}_full"] = {"divergence": name, "divergence_estimator": "full"}
    return specs


def worker(args) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(args.threads)
    spec = _run_specs(args.divergences)[args.worker]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    prompts = [" ".join(f"t{(7 * i + j) % 1000}" for j in range(args.prompt_len)) for i in range(64)]
    dataset = Dataset.from_dict({"prompt": prompts})
    common = dict(
        output_dir=tempfile.mkdtemp(prefix="bench_trainer_"),
        beta=args.beta,
        learning_rate=1e-5,
        max_steps=args.warmup + args.steps,
        num_generations=args.completions,
        per_device_train_batch_size=args.completions,
        max_completion_length=args.completion_len,
        temperature=1.0,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        bf16=False,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    if spec.get("stock"):
        from trl import GRPOConfig, GRPOTrainer

        config, trainer_cls = GRPOConfig(**common), GRPOTrainer
    else:
        from trl_divergences import DivergenceGRPOConfig, DivergenceGRPOTrainer

        config, trainer_cls = DivergenceGRPOConfig(**common, **spec), DivergenceGRPOTrainer
    from transformers import TrainerCallback

    marks: dict[str, float] = {}
    times: list[float] = []
    warmup = args.warmup

    class Timer(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kw):
            if state.global_step == warmup:  # the timed steps start: reset the memory high-water mark
                marks["rss"] = rss_bytes()
                marks["reset"] = reset_peak_rss()
            marks["t0"] = time.perf_counter()

        def on_step_end(self, targs, state, control, **kw):
            if state.global_step > warmup:
                times.append(time.perf_counter() - marks["t0"])

    trainer = trainer_cls(
        model=model, reward_funcs=_reward, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.add_callback(Timer())
    trainer.train()
    peak = peak_rss_bytes() - marks["rss"]
    out = {"time_s": statistics.median(times), "times_s": times, "peak_mb": peak / 2**20, "hwm_reset": marks["reset"]}
    print(json.dumps(out))


def main() -> None:
    import trl_divergences as td

    full = [n for n in td.list_divergences() if td.get_divergence(n).supports_full]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=None, help="subset of rows (trl_k3, ours_k3, <divergence>_full)")
    p.add_argument("--divergences", nargs="+", default=full)
    p.add_argument("--completions", type=int, default=8)
    p.add_argument("--completion-len", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results/trainer_cpu.json")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    runs = args.runs or list(_run_specs(args.divergences))
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir, args)
        for name in runs:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--model", str(model_dir)]
            for key in ("completions", "completion_len", "prompt_len", "beta", "warmup", "steps", "threads"):
                cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
            cmd += ["--divergences", *args.divergences]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()
                results[name] = {"error": tail[-1] if tail else f"rc {proc.returncode}"}
            else:
                results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name}: {results[name]}", flush=True)
    meta = {
        "device": platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "vocab": VOCAB_SIZE,
        **{k: getattr(args, k) for k in ("completions", "completion_len", "prompt_len", "hidden", "layers", "beta")},
        **{k: getattr(args, k) for k in ("warmup", "steps", "threads")},
    }
    print(f"\n{meta}\n")
    print(trainer_section({"meta": meta, "results": results}, args.out))  # the README's block, from this run
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
