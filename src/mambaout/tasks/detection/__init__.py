"""Mask R-CNN (torchvision's) on any registered backbone, trained on COCO-format data through the engine."""

from .model import create_detector, load_detector
from .task import DetectionConfig, DetectionTask, evaluate_checkpoint, train_detector

__all__ = ["DetectionConfig", "DetectionTask", "create_detector", "evaluate_checkpoint", "load_detector",
           "train_detector"]
