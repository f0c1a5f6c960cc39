"""Loading what a command line names: a model, tokenizer, dataset or reward function by hub name, local folder or
``package.module:function`` (used by the demo, the rehearsal CLI and the training CLI; nothing here is specific
to the toy task)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: tokenizer classes saved by a plain ``tokenizers`` tokenizer: loaded as they are (AutoTokenizer would pick the
#: model family's tokenizer class from the model config and may replace the saved pre-tokenizer)
_PLAIN_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def is_callable_spec(spec: str) -> bool:
    """``package.module:function`` (a local path or hub name has no ':' after its first character)."""
    module, sep, name = spec.partition(":")
    return bool(sep and name and module and not Path(spec).exists() and "/" not in module)


def load_callable(spec: str) -> Callable[..., Any]:
    """The function named by ``package.module:function``; a clear error otherwise."""
    if not is_callable_spec(spec):
        raise ValueError(f"expected 'package.module:function', got {spec!r}")
    module, _, name = spec.partition(":")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"{spec!r}: {module} has no callable {name!r}")
    return fn


def resolve_model(spec: str) -> str:
    """A model name or folder; ``package.module:function`` is called (no arguments) and must return one."""
    return str(load_callable(spec)()) if is_callable_spec(spec) else spec


def load_dataset(spec: str, split: str = "train"):
    """A dataset split: ``package.module:function`` called with ``split``, a ``save_to_disk`` folder, or a hub
    dataset name."""
    import datasets

    if is_callable_spec(spec):
        return load_callable(spec)(split)
    path = Path(spec)
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(spec, split=split)


def load_tokenizer(model: str):
    """The tokenizer of a model folder or hub name: a plain ``tokenizers`` tokenizer as saved, else
    ``AutoTokenizer``."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(model) / "tokenizer_config.json"
    if config.is_file() and json.loads(config.read_text()).get("tokenizer_class") in _PLAIN_TOKENIZER_CLASSES:
        return PreTrainedTokenizerFast.from_pretrained(model)
    return AutoTokenizer.from_pretrained(model)
