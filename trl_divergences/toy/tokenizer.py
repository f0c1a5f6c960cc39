"""Local WordLevel tokenizer of the toy task: every number 0…99 is one token, plus ``S``, ``=`` and specials.

Built with the ``tokenizers`` library (no download) and wrapped as :class:`transformers.PreTrainedTokenizerFast`.
Load a saved folder with :func:`load_tokenizer`, not ``AutoTokenizer``: a folder whose ``config.json`` says
``qwen2`` makes ``AutoTokenizer`` build a Qwen2 tokenizer that replaces the whitespace pre-tokenizer and splits
"14" into "1", "4".
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)
WORDS = ("S", "=", *(str(i) for i in range(100)))
VOCAB = (*SPECIAL_TOKENS, *WORDS)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace-split WordLevel tokenizer over :data:`VOCAB` (ids in that order); decodes words joined by spaces,
    pads on the left, adds no special tokens when encoding."""
    core = Tokenizer(models.WordLevel({tok: i for i, tok in enumerate(VOCAB)}, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by ``build_tokenizer().save_pretrained(path)`` (model folders included)."""
    return PreTrainedTokenizerFast.from_pretrained(str(path))
