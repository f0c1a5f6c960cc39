"""The framework-agnostic objective layer (see :mod:`.core`): which tensors a configuration needs
(:class:`Requirements`, :class:`VocabularyRequest`), what changes per generation batch (:meth:`Objective.rollout_step`)
and the per-token terms (:meth:`Objective.token_terms`). Adapters translate their batches into :mod:`.batches` and
aggregate the terms with their framework's normalisation."""

from ..divergences import FULL, check_estimator
from .batches import RolloutInputs, RolloutOutputs, TokenInputs, TokenTerms
from .core import KWARGS_FIELDS, Objective, importance_weight, kwargs_dict, masked_mean
from .requirements import Requirements, VocabularyRequest
from .vocabulary import vocabulary_statistics

__all__ = [
    "FULL",
    "KWARGS_FIELDS",
    "Objective",
    "Requirements",
    "RolloutInputs",
    "RolloutOutputs",
    "TokenInputs",
    "TokenTerms",
    "VocabularyRequest",
    "check_estimator",
    "importance_weight",
    "kwargs_dict",
    "masked_mean",
    "vocabulary_statistics",
]
