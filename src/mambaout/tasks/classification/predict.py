"""Top-k predictions for image files, preprocessed as the model's pretrained_cfg says."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from torch import nn

from ...data.images import ImageReadError, readable_images
from ...engine.inference import InferenceModel, prepare_for_inference
from ...errors import check_input_size


@dataclass(frozen=True)
class Guess:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image file, most probable first (`predict`, and `predict --onnx`)."""

    path: str
    top: list[Guess]

    def to_dict(self) -> dict:
        return {"image": self.path, "top": [dataclasses.asdict(guess) for guess in self.top]}

    def format(self) -> str:
        return "\n".join([self.path, *(f"  {g.probability:7.2%}  {g.label}  ({g.index})" for g in self.top)])


def eval_transform(model: nn.Module, input_size: tuple[int, int] | None = None):
    """Resize, center crop by crop_pct, interpolation and mean/std from the model's pretrained_cfg (timm.data)."""
    overrides = {}
    if input_size:
        check_input_size(*input_size)
        overrides["input_size"] = (3, *input_size)
    config = resolve_data_config(overrides, model=model)
    return create_transform(**config, is_training=False)


def class_names(model: nn.Module) -> list[str]:
    """Names saved with the weights, else ImageNet-1k's descriptions for 1000-way heads, else numbers."""
    cfg = getattr(model, "pretrained_cfg", {})
    num_classes = getattr(model, "num_classes", cfg.get("num_classes", 0))
    if cfg.get("label_names") and len(cfg["label_names"]) == num_classes:
        return list(cfg["label_names"])
    if num_classes == 1000:
        info = ImageNetInfo("imagenet-1k")
        return [info.index_to_description(i) for i in range(1000)]
    return [f"class {i}" for i in range(num_classes)]


def _batches(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def predict_files(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    topk: int = 5,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    input_size: tuple[int, int] | None = None,
    precision: str = "fp32",
    channels_last: bool | str = "auto",
    fold_norms: bool = True,
    compile: bool = False,
) -> tuple[list[Prediction], list[ImageReadError]]:
    """Predict every readable file; unreadable ones are returned as errors, in input order, not raised.

    The model runs through `prepare_for_inference` (on a copy; yours is untouched): the defaults are exact (fp32,
    folded norms, channels-last for conv networks); precision='auto' adds bf16 autocast where the hardware has it
    and compile=True torch.compile (worth its compile time for many images). An InferenceModel is used as it is.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    transform = eval_transform(model, input_size)
    names = class_names(model)
    topk = max(1, min(topk, len(names)))
    if not isinstance(model, InferenceModel):
        model = prepare_for_inference(
            model,
            device=device,
            precision=precision,
            channels_last=channels_last,
            compile=compile,
            fold_norms=fold_norms,
            input_size=input_size,
        )
    predictions, errors = [], []
    for chunk in _batches([os.fspath(p) for p in paths], batch_size):
        tensors, good = [], []
        for path, image in readable_images(chunk, errors):
            tensors.append(transform(image))
            good.append(path)
        if not tensors:
            continue
        batch = torch.stack(tensors)
        if model.compiled is not None and len(tensors) < batch_size:
            # one batch shape: a short last batch would otherwise recompile the whole model
            batch = torch.cat((batch, batch[-1:].expand(batch_size - len(tensors), *batch.shape[1:])))
        probs = model(batch.to(device))[: len(tensors)].float().softmax(dim=-1)
        values, indices = probs.topk(topk, dim=-1)
        for path, vals, idxs in zip(good, values.tolist(), indices.tolist()):
            predictions.append(Prediction(path, [Guess(i, names[i], v) for v, i in zip(vals, idxs)]))
    return predictions, errors
