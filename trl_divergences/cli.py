"""The ``trl_divergences`` command: GRPO with any :class:`~trl_divergences.DivergenceGRPOConfig` field, the way
``trl grpo`` runs (TRL's ``TrlParser``: a YAML recipe by ``--config``, command-line flags override it)::

    trl_divergences grpo --config examples/recipes/divergence_sampled.yaml [--max_steps 20 --output_dir runs/x ...]
    python -m trl_divergences.cli grpo ...        # the same, without the console script

Besides every ``DivergenceGRPOConfig`` (= ``GRPOConfig`` + ours) and ``ModelConfig`` field (PEFT, dtype, ...):

* ``model_name_or_path``: a hub name or a local folder, or ``module:function`` returning one (called without
  arguments; ``trl_divergences.toy:build_base_model`` builds and caches the toy task's base model);
* ``dataset_name``: a hub name, a local folder (``save_to_disk`` output or data files), or ``module:function`` called
  with the split name (``trl_divergences.toy:make_dataset`` is the toy task); splits ``dataset_train_split`` and,
  when evaluating, ``dataset_test_split``;
* ``reward_funcs``: TRL reward functions as ``module:function`` paths (``trl_divergences.toy:sum_reward``);
* ``processing_class``: optional ``module:function`` called with the model's path, returning its processing class
  (default: the model's tokenizer, :func:`trl_divergences.loading.load_tokenizer`).

Names, folders and ``module:function`` paths are resolved by :mod:`trl_divergences.loading`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trl import ScriptArguments

from .loading import load_callable, load_dataset, load_tokenizer, resolve_model

COMMANDS = ("grpo",)


@dataclass
class GRPOScriptArguments(ScriptArguments):
    """What ``trl grpo`` takes besides the configs, with rewards, datasets and tokenizers also as Python objects."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub name, local folder (save_to_disk output or data files), or `module:function` called with "
            "the split name (e.g. trl_divergences.toy:make_dataset)."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=list,
        metadata={"help": "TRL reward functions as `module:function` paths, e.g. trl_divergences.toy:sum_reward."},
    )
    processing_class: str | None = field(
        default=None,
        metadata={
            "help": "`module:function` called with the model's path, returning its processing class (default: the "
            "model's tokenizer, as saved)."
        },
    )


def load_named(spec: str, what: str) -> Callable[..., Any]:
    """:func:`~trl_divergences.loading.load_callable` with the field named in its errors; the working directory is
    importable (a ``rewards.py`` beside the recipe), as for ``trl grpo``."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return load_callable(spec)
    except (ValueError, ImportError) as err:
        raise ValueError(f"{what} {spec!r}: {err}") from err


def load_split(name: str, split: str, config: str | None = None, streaming: bool = False):
    """One split of ``dataset_name`` (:func:`~trl_divergences.loading.load_dataset`; a hub configuration name or
    streaming go to ``datasets.load_dataset`` directly)."""
    if config is None and not streaming:
        return load_dataset(name, split)
    import datasets

    return datasets.load_dataset(name, name=config, split=split, streaming=streaming)


def load_reward_funcs(specs: Sequence[str]) -> list[Callable[..., list[float]]]:
    """The reward functions named by ``module:function`` paths (at least one)."""
    if not specs:
        raise ValueError("reward_funcs is required: one or more 'module:function' TRL reward functions")
    return [load_named(spec, "reward_funcs") for spec in specs]


def make_parser(prog: str = "trl_divergences grpo"):
    from trl import ModelConfig, TrlParser

    from .trl import DivergenceGRPOConfig

    return TrlParser((GRPOScriptArguments, DivergenceGRPOConfig, ModelConfig), prog=prog)


def train(script_args: GRPOScriptArguments, training_args, model_args):
    """Build :class:`~trl_divergences.DivergenceGRPOTrainer` from the parsed arguments, train and save; returns it."""
    from trl import get_peft_config, get_quantization_config

    from .trl import DivergenceGRPOTrainer

    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required (a hub name, a local folder or 'module:function')")
    if not script_args.dataset_name:
        raise ValueError("dataset_name is required (a hub name, a local folder or 'module:function')")
    model = resolve_model(model_args.model_name_or_path)
    reward_funcs = load_reward_funcs(script_args.reward_funcs)
    init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    if model_args.attn_implementation is not None:
        init_kwargs["attn_implementation"] = model_args.attn_implementation
    training_args.model_init_kwargs = {**init_kwargs, **(training_args.model_init_kwargs or {})}

    def split(name: str):
        return load_split(script_args.dataset_name, name, script_args.dataset_config, script_args.dataset_streaming)

    if script_args.processing_class:
        processing_class = load_named(script_args.processing_class, "processing_class")(model)
    else:
        processing_class = load_tokenizer(model)
    trainer = DivergenceGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=split(script_args.dataset_train_split),
        eval_dataset=split(script_args.dataset_test_split) if training_args.eval_strategy != "no" else None,
        processing_class=processing_class,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    return trainer


def main(argv: Sequence[str] | None = None) -> None:
    """``trl_divergences COMMAND [--config recipe.yaml] [--field value ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: trl_divergences {{{','.join(COMMANDS)}}} [--config recipe.yaml] [--field value ...]\n")
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise SystemExit(f"trl_divergences: unknown command {command!r}; valid: {', '.join(COMMANDS)}")
    train(*make_parser().parse_args_and_config(rest))


if __name__ == "__main__":
    main()
