"""UperNet (mmseg's) on any registered backbone, trained on ADE20K-format data through the engine."""

from .inference import load_segmenter
from .task import SegmentationConfig, SegmentationTask, evaluate_checkpoint, train_segmenter
from .upernet import create_segmenter

__all__ = ["SegmentationConfig", "SegmentationTask", "create_segmenter", "evaluate_checkpoint", "load_segmenter",
           "train_segmenter"]
