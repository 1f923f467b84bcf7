"""Image classification on folder datasets with each model's official recipe; validation and prediction."""

from .config import TrainConfig
from .task import ClassificationTask, train

__all__ = ["ClassificationTask", "TrainConfig", "train"]
