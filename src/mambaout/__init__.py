"""MambaOut and the visual Mamba family in plain PyTorch."""

from . import models  # noqa: F401  (fills the registry)
from .apps.push_to_hub import push_to_hub
from .dense.backbone import create_backbone
from .factory import create_model, load_checkpoint, save_checkpoint
from .registry import get_model_spec, list_models
from .tasks.detection.model import create_detector
from .tasks.segmentation.upernet import create_segmenter
from .timm_models import register_in_timm

register_in_timm()

__all__ = [
    "create_backbone", "create_detector", "create_model", "create_segmenter", "get_model_spec", "list_models",
    "load_checkpoint", "push_to_hub", "save_checkpoint",
]
__version__ = "0.1.0"
