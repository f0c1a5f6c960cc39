"""Embedded toy task for the demo and tests: ``S n =`` → ``a b`` with a + b = n, a local tokenizer, a tiny cached
Qwen2 base policy whose pass@1 is well below its pass@k, a stronger cached teacher for the teacher-guided methods,
a sampling evaluation (pass@k, diversity, divergence), and the study's hinted variant ``S n m =`` (4,000 prompts)."""

from .evaluate import evaluate, pass_at_k
from .hinted import (
    N_TRAIN_POOL,
    HintedModelConfig,
    build_hinted_model,
    hinted_is_correct,
    hinted_pairs,
    hinted_prompt,
    hinted_prompts,
    hinted_reward,
    make_hinted_dataset,
    parse_hinted_prompt,
    target_correct_share,
)
from .model import (
    TEACHER_CONFIG,
    BaseModelConfig,
    build_base_model,
    build_random_model,
    build_teacher_model,
    default_cache_dir,
)
from .task import (
    N_TRAIN,
    is_correct,
    make_dataset,
    parse_answer,
    parse_prompt,
    prompt_text,
    split_prompts,
    split_targets,
    sum_reward,
    valid_answers,
)
from .tokenizer import VOCAB, build_tokenizer, load_tokenizer

__all__ = [
    "N_TRAIN",
    "N_TRAIN_POOL",
    "HintedModelConfig",
    "build_hinted_model",
    "hinted_is_correct",
    "hinted_pairs",
    "hinted_prompt",
    "hinted_prompts",
    "hinted_reward",
    "make_hinted_dataset",
    "parse_hinted_prompt",
    "target_correct_share",
    "TEACHER_CONFIG",
    "VOCAB",
    "BaseModelConfig",
    "build_base_model",
    "build_random_model",
    "build_teacher_model",
    "build_tokenizer",
    "default_cache_dir",
    "evaluate",
    "is_correct",
    "load_tokenizer",
    "make_dataset",
    "parse_answer",
    "parse_prompt",
    "pass_at_k",
    "prompt_text",
    "split_prompts",
    "split_targets",
    "sum_reward",
    "valid_answers",
]
