"""Top-k predictions from an exported ONNX file, computed by ONNX Runtime, numpy and PIL (no model code, no torch).

The preprocessing is read from the file's metadata (written by `mambaout export`) and reproduces timm's eval
transform for PIL images: resize the shorter side to size / crop_pct, center crop, scale to [0, 1], normalize.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..data.images import ImageReadError, readable_images
from ..errors import MambaoutError
from ..tasks.classification.predict import Guess, Prediction

# timm's interpolation names -> PIL's filters (torchvision resizes PIL images with these)
INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class OnnxModelError(MambaoutError, ValueError):
    """The ONNX file cannot be opened, or carries no preprocessing metadata."""

    exit_code = 11


@dataclass(frozen=True)
class Preprocessing:
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    interpolation: str
    class_names: list[str]

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Preprocessing:
        try:
            size = json.loads(metadata["mambaout.input_size"])
            return cls(
                input_size=(int(size[-2]), int(size[-1])),
                mean=tuple(json.loads(metadata["mambaout.mean"])),
                std=tuple(json.loads(metadata["mambaout.std"])),
                crop_pct=float(json.loads(metadata["mambaout.crop_pct"])),
                interpolation=metadata["mambaout.interpolation"],
                class_names=list(json.loads(metadata["mambaout.class_names"])),
            )
        except (KeyError, ValueError, TypeError, IndexError) as error:
            raise OnnxModelError(
                f"the ONNX file carries no usable mambaout preprocessing metadata ({error!r}); "
                f"export it with `mambaout export`"
            ) from error

    def __call__(self, image: Image.Image) -> np.ndarray:
        """(3, H, W) float32, as timm's eval transform makes it from a PIL image."""
        height, width = self.input_size
        scale_h, scale_w = math.floor(height / self.crop_pct), math.floor(width / self.crop_pct)
        filt = INTERPOLATION.get(self.interpolation, Image.Resampling.BICUBIC)
        w, h = image.size
        if scale_h == scale_w:  # torchvision's Resize(int): the shorter side to the size, the longer one floored
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = scale_h, int(scale_h * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:  # timm's ResizeKeepRatio: cover the scaled target, keeping the aspect ratio
            ratio = max(scale_h / h, scale_w / w)
            new_w, new_h = round(w * ratio), round(h * ratio)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), filt)
        top, left = round((new_h - height) / 2.0), round((new_w - width) / 2.0)
        image = image.crop((left, top, left + width, top + height))
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))


class OnnxClassifier:
    """An exported classifier on ONNX Runtime's CPU provider with its own preprocessing."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/NoSuchFile types
            raise OnnxModelError(f"cannot open ONNX file {os.fspath(path)!r}: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.preprocess = Preprocessing.from_metadata(metadata)
        self.input_name = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    @property
    def class_names(self) -> list[str]:
        return self.preprocess.class_names

    def logits(self, images: np.ndarray) -> np.ndarray:
        if self.fixed_batch is None or len(images) == self.fixed_batch:
            return self.session.run(None, {self.input_name: images})[0]
        # a fixed-batch file takes its batch size at a time
        rows = [self.session.run(None, {self.input_name: images[i : i + 1]})[0] for i in range(len(images))]
        return np.concatenate(rows)

    def predict_images(self, images: Sequence[Image.Image], topk: int = 5) -> list[list[Guess]]:
        batch = np.stack([self.preprocess(image) for image in images])
        logits = self.logits(batch).astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        topk = max(1, min(topk, probs.shape[1]))
        results = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:topk]
            results.append([Guess(int(i), self._label(int(i)), float(row[i])) for i in order])
        return results

    def _label(self, index: int) -> str:
        names = self.class_names
        return names[index] if index < len(names) else f"class {index}"


def predict_onnx_files(
    path: str | os.PathLike, images: Sequence[str | os.PathLike], topk: int = 5
) -> tuple[list[Prediction], list[ImageReadError]]:
    """Predict every readable image with the ONNX file; unreadable ones come back as errors, in input order."""
    classifier = OnnxClassifier(path)
    predictions, errors = [], []
    for path, image in readable_images(images, errors):
        predictions.append(Prediction(path, classifier.predict_images([image], topk)[0]))
    return predictions, errors
