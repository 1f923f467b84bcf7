"""Mask R-CNN (torchvision's) on any registered backbone, trained on COCO-format data through the engine."""
