"""TRL adapter: ``DivergenceGRPOConfig`` / ``DivergenceGRPOTrainer`` (the user's one-line change)."""

from .callbacks import UpdateRankCallback, UpdateSparsityCallback
from .config import DivergenceGRPOConfig
from .trainer import DivergenceGRPOTrainer

__all__ = ["DivergenceGRPOConfig", "DivergenceGRPOTrainer", "UpdateRankCallback", "UpdateSparsityCallback"]
