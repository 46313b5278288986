"""Training: configs, the loop, checkpoints, schedules, evaluation."""

from ..runs.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, RunConfig, load_config
from .evaluate import evaluate
from .loop import Trainer, TrainingDiverged, train

__all__ = ["DataConfig", "DistillConfig", "ModelConfig", "OptimConfig", "RunConfig", "Trainer", "TrainingDiverged",
           "evaluate", "load_config", "train"]
