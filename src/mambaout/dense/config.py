"""What the dense tasks' training options share: the backbone, its own fine-tuning drop path, the linear lr rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..engine.config import EngineConfig, option
from ..registry import get_model_spec


@dataclass
class DenseTrainConfig(EngineConfig):
    """A backbone fine-tuned on a dense task; the lr is given at a global batch of 16 (8 GPUs x 2 images)."""

    #: global batch `lr_base` is given for; the lr scales linearly with the actual global batch
    base_batch_size: ClassVar[int] = 16

    backbone: str = option("mambaout_tiny", "registered model name used as the backbone (`mambaout models`)")
    lr_base: float = option(1e-4, "learning rate at a global batch of 16")
    drop_path: float | None = option(None, "stochastic depth (default: the backbone's dense fine-tuning value, "
                                     "`ModelSpec.dense`)")

    def resolved_drop_path(self) -> float:
        """--drop-path, else the backbone's official dense fine-tuning value (its registration's `dense`)."""
        if self.drop_path is not None:
            return self.drop_path
        return get_model_spec(self.backbone).dense.drop_path

    def resolved_lr(self, world_size: int) -> float:
        """--lr, else lr-base x global batch / 16 (the linear scaling rule)."""
        if self.lr is not None:
            return self.lr
        return self.lr_base * self.actual_global_batch(world_size) / self.base_batch_size
