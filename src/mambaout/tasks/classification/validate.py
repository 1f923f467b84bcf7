"""`mambaout validate`: a model's accuracy on an image folder in ImageNet's layout, as the model preprocesses."""

from __future__ import annotations

import dataclasses
import logging
import os

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...data.folder import DatasetError, FolderDataset, SkipLog, collate_skipping, find_classes
from ...engine.device import resolve_device
from ...engine.inference import prepare_for_inference
from ...factory import create_model
from .evaluate import EvalResult, evaluate
from .predict import eval_transform

log = logging.getLogger("mambaout")


def dataset_classes(model: nn.Module, folders: list[str], folder: str) -> tuple[list[str], str]:
    """The class list (index = model output) for the folder names, and where it comes from."""
    names = model.pretrained_cfg.get("label_names")
    if names:
        return list(names), "the checkpoint's class names"
    num_classes = model.num_classes
    if len(folders) > num_classes:
        raise DatasetError(
            f"{len(folders)} class folders in {folder!r} but the model has {num_classes} outputs and no class names: "
            "give a checkpoint trained on these classes"
        )
    if len(folders) < num_classes:
        log.warning(
            "%d class folders for %d model outputs and no class names in the weights: "
            "folder i (sorted by name) is taken as class i",
            len(folders),
            num_classes,
        )
    return folders, "the model's classes"


def validate(
    data_dir: str | os.PathLike,
    model_name: str,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    batch_size: int = 64,
    split: str = "val",
    workers: int = 4,
    device: str | torch.device | None = None,
    input_size: tuple[int, int] | None = None,
    use_ema: bool | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Top-1/top-5/loss of a model on data_dir/split; unreadable files are left out, counted and logged.

    Class indices: by name when the weights carry class names, else folder i (sorted) is class i.
    """
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    device = resolve_device(device)
    folders = find_classes(data_dir, split)  # a wrong path fails before a large model is built
    model = create_model(model_name, pretrained=pretrained, checkpoint=checkpoint, use_ema=use_ema)
    folder = os.path.join(os.fspath(data_dir), split)
    classes, classes_from = dataset_classes(model, folders, folder)
    dataset = FolderDataset(
        data_dir, split, eval_transform(model, input_size), classes=classes, classes_from=classes_from
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_skipping,
        pin_memory=device.type == "cuda",
    )
    wrapped = prepare_for_inference(model, device=device, precision=precision, channels_last=channels_last)
    skip_log = SkipLog(dataset.skipped)
    result = evaluate(wrapped, loader, device, progress=progress, desc=f"validate {model_name}", skip_log=skip_log)
    result = dataclasses.replace(result, skipped=len(skip_log))
    _log_skipped(skip_log)
    if result.images == 0:
        raise DatasetError(f"none of the {len(skip_log)} image files in {folder!r} could be read")
    return result


def _log_skipped(skip_log: SkipLog, limit: int = 20) -> None:
    items = list(skip_log)
    for item in items[:limit]:
        log.warning("skipped %s: %s", item.path, item.reason)
    if len(items) > limit:
        log.warning("... and %d more unreadable files", len(items) - limit)
