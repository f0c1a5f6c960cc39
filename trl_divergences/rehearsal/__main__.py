"""CLI of the offline rehearsal step:

    python -m trl_divergences.rehearsal build --model DIR_OR_NAME|pkg.module:fn --dataset DIR_OR_NAME|pkg.module:fn \\
        --reward pkg.module:fn [--reward ...] --k 8 --temperature 1.0 --top-p 0.95 --output DIR --seed 0

A ``pkg.module:fn`` model loader is called with no arguments and returns a model folder or name; a dataset loader is
called with the split. The embedded toy task: ``--model trl_divergences.toy:build_base_model
--dataset trl_divergences.toy:make_dataset --reward trl_divergences.toy:sum_reward``.

Re-running the same command resumes an interrupted build (finished shards are skipped).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from .build import BuildConfig, build_store


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m trl_divergences.rehearsal",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="sample, score, split and store reference samples")
    b.add_argument("--model", required=True, help="hub name, local folder or 'pkg.module:fn' of the base model")
    b.add_argument("--dataset", required=True, help="hub name, local folder or 'pkg.module:fn' with a 'prompt' column")
    b.add_argument("--split", default="train", help="dataset split (default: train)")
    b.add_argument("--reward", action="append", required=True, help="'package.module:function'; repeatable")
    b.add_argument("--output", required=True, help="store folder (resumable)")
    defaults = BuildConfig()
    b.add_argument("--k", type=int, default=defaults.k)
    b.add_argument("--temperature", type=float, default=defaults.temperature)
    b.add_argument("--top-p", type=float, default=defaults.top_p)
    b.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    b.add_argument("--seed", type=int, default=defaults.seed)
    b.add_argument("--shard-size", type=int, default=defaults.shard_size)
    b.add_argument(
        "--correct-threshold",
        type=float,
        default=defaults.correct_threshold,
        help="a completion is correct iff its summed reward is at least this",
    )
    b.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    from transformers import AutoModelForCausalLM

    from ..loading import load_callable, load_dataset, load_tokenizer, resolve_model

    args = parse_args(argv)
    model_path = resolve_model(args.model)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    config = BuildConfig(
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        shard_size=args.shard_size,
        correct_threshold=args.correct_threshold,
    )
    meta = build_store(
        model,
        load_tokenizer(model_path),
        load_dataset(args.dataset, args.split),
        [load_callable(r) for r in args.reward],
        args.output,
        config,
        progress=args.progress,
    )
    print(json.dumps(meta, indent=2))
    return meta


if __name__ == "__main__":
    main()
