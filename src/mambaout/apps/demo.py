"""`mambaout demo`: a gradio page that classifies an uploaded image (the `demo` extra).

Upload an image or click an example: the top-k classes (`gr.Label`), the crop the model saw (after the eval
transform) and the gradient saliency of the top class on that crop. A picker switches between the checkpoints found
in a folder and the registry's models (release weights) without a restart. With no arguments it serves the
checkpoint `make quickstart` trains, with examples from its generated validation set.

Nothing about models is decided here: images are read by `data.images.open_rgb` (bombs, truncated and odd-mode files
handled there), preprocessed by `engine.predict.eval_transform` and run through `engine.inference`'s fast path.
Uploads are size-limited, the queue is bounded and each event has a concurrency limit; a bad upload or a model that
cannot be loaded is reported in the page's status line and the server keeps serving.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..checkpoints import CheckpointError, atomic_write, read_checkpoint
from ..data.images import ImageReadError, open_rgb
from ..data.sizes import height_width
from ..engine.inference import InferenceModel, prepare_for_inference
from ..errors import InputSizeError, MambaoutError
from ..registry import UnknownModelError, get_model_spec, list_models
from ..tasks.classification.predict import class_names, eval_transform

log = logging.getLogger("mambaout")

QUICKSTART_DIR = Path("quickstart_output")  # `make quickstart`'s --out default
QUICKSTART_CHECKPOINT = QUICKSTART_DIR / "runs" / "quickstart" / "best.pth"
QUICKSTART_EXAMPLES = QUICKSTART_DIR / "shapes" / "val"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
CHECKPOINT_PREFIX = "checkpoint: "
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
TOPK = 5
MAX_FILE_SIZE = "20mb"  # gradio refuses bigger uploads before they reach the model
QUEUE_SIZE = 32  # requests waiting beyond this are refused with "queue full" rather than piling up
CONCURRENCY = 2  # predictions running at once (the CPU's cores are shared between them)
CACHED_MODELS = 3  # loaded models kept for switching back without reloading
DISPLAY_SIZE = 224  # the crop and saliency are shown at least this large (nearest-neighbour for small inputs)
SHOWN_IMAGES_KEPT = 512  # crops and saliency maps kept on disk for pages to fetch; older ones are removed
SHOWN_IMAGE_MIN_AGE_S = 600  # never remove an image younger than this: a page may not have fetched it yet


class DemoError(MambaoutError, ValueError):
    """The demo cannot start: no model to serve, or an unsafe interface."""

    exit_code = 12


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model picker: a checkpoint file (its recorded model, or `model_name`) or release weights."""

    key: str
    model_name: str | None
    checkpoint: Path | None = None
    pretrained: bool = False


@dataclass
class LoadedModel:
    fast: InferenceModel  # predictions and saliency; the eager model is not kept (half the memory)
    transform: object
    names: list[str]
    input_size: tuple[int, int]


def checkpoint_model_name(path: Path) -> str | None:
    """The model name a checkpoint records (our training .pth files and safetensors do), else None."""
    obj, metadata = read_checkpoint(path)
    name = metadata.get("model_name") or (obj.get("model_name") if isinstance(obj, dict) else None)
    return name if isinstance(name, str) else None


def training_input_size(checkpoint: Path | None) -> tuple[int, int] | None:
    """The img_size a training run recorded in args.yaml beside its checkpoints (quickstart trains at 32), or None."""
    args = None if checkpoint is None else checkpoint.parent / "args.yaml"
    if args is None or not args.is_file():
        return None
    import yaml

    try:
        size = (yaml.safe_load(args.read_text()) or {}).get("img_size")
    except (yaml.YAMLError, AttributeError):
        return None
    try:
        height, width = height_width(size)
    except (TypeError, ValueError):
        return None
    return (height, width) if min(height, width) > 0 else None


def find_checkpoints(folder: str | os.PathLike | None) -> list[ModelChoice]:
    """Checkpoint files under `folder` (best.pth first), as picker entries keyed by their relative path."""
    if folder is None or not Path(folder).is_dir():
        return []
    folder = Path(folder)
    files = [p for p in folder.rglob("*") if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()]
    files.sort(key=lambda p: (p.name != "best.pth", str(p)))
    return [ModelChoice(f"{CHECKPOINT_PREFIX}{p.relative_to(folder)}", None, p) for p in files]


def _display(image: Image.Image) -> Image.Image:
    scale = max(1, -(-DISPLAY_SIZE // max(image.size)))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST) if scale > 1 else image


def crop_image(tensor: torch.Tensor, model: nn.Module) -> Image.Image:
    """The normalised (3, H, W) input back as the RGB crop the model saw."""
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(cfg["std"]).view(3, 1, 1)
    pixels = ((tensor * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels)


def predict_with_saliency(fast: InferenceModel, tensor: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Class probabilities of one (3, H, W) input and the saliency of the top class, |d logit / d input| summed over
    colour channels and scaled to [0, 1], from one forward and one backward pass of the fast model (its precision,
    memory format and folded norms), so the map explains the very pass that gave the label."""
    x = fast.as_input(tensor.unsqueeze(0)).requires_grad_(True)
    with torch.enable_grad(), fast.precision_context():
        logits = fast.model(x)[0].float()
        (grad,) = torch.autograd.grad(logits.max(), x)
    heat = grad[0].float().abs().sum(0)
    return logits.detach().softmax(-1), (heat / heat.max().clamp_min(1e-12)).numpy()


def overlay(crop: Image.Image, heat: np.ndarray) -> Image.Image:
    """The saliency as a heat map over the crop (matplotlib's inferno colour map)."""
    from matplotlib import colormaps

    colours = (colormaps["inferno"](heat)[..., :3] * 255).astype(np.uint8)
    return Image.blend(crop, Image.fromarray(colours), alpha=0.6)


class ModelPool:
    """Loads picker entries on demand and keeps the last few; safe to call from gradio's worker threads."""

    def __init__(self, choices: Sequence[ModelChoice], input_size: tuple[int, int] | None = None) -> None:
        self.choices = {c.key: c for c in choices}
        self.input_size = input_size
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def choice(self, key: str) -> ModelChoice:
        if key in self.choices:
            return self.choices[key]
        if key.startswith(CHECKPOINT_PREFIX):  # only files the server found: never a path a client names
            raise CheckpointError(f"{key!r} is not one of the checkpoints this demo serves")
        get_model_spec(key)  # an unknown name raises UnknownModelError naming the closest ones
        return ModelChoice(key, key, pretrained=True)

    def get(self, key: str) -> LoadedModel:
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            loaded = self._load(self.choice(key))
            self._loaded[key] = loaded
            while len(self._loaded) > CACHED_MODELS:
                self._loaded.popitem(last=False)
            return loaded

    def _load(self, choice: ModelChoice) -> LoadedModel:
        from ..factory import create_model

        name = choice.model_name
        if name is None:
            name = checkpoint_model_name(choice.checkpoint)
            if name is None:
                raise CheckpointError(
                    f"{choice.checkpoint} does not record its model name: serve it with --model NAME --checkpoint PATH"
                )
        model = create_model(name, pretrained=choice.pretrained, checkpoint=choice.checkpoint).eval()
        size = self.input_size or training_input_size(choice.checkpoint)
        size = size or tuple(model.pretrained_cfg["input_size"][-2:])
        # the fast path without torch.compile: a demo serves single images from several threads
        fast = prepare_for_inference(model, fast=True, compile=False, input_size=size)
        return LoadedModel(fast, eval_transform(model, size), class_names(model), size)


@dataclass(frozen=True)
class DemoResult:
    """What one prediction shows: label -> probability, the crop, the saliency overlay, a status line."""

    label: dict[str, float] | None
    crop: Image.Image | None
    explanation: Image.Image | None
    status: str


def classify(pool: ModelPool, key: str, path: str | os.PathLike | None) -> DemoResult:
    """Read, preprocess and classify one upload; every failure a user can cause becomes the status line."""
    if not path:
        return DemoResult(None, None, None, "Upload an image (or click an example) to classify it.")
    try:
        loaded = pool.get(key)
    except (UnknownModelError, CheckpointError, InputSizeError, ValueError) as error:
        return DemoResult(None, None, None, f"Error: cannot load model {key!r}: {error}")
    try:
        image = open_rgb(path, exif_transpose=True)
    except ImageReadError as error:
        return DemoResult(None, None, None, f"Error: {Path(error.path).name}: {error.reason}")
    tensor = loaded.transform(image)
    probs, heat = predict_with_saliency(loaded.fast, tensor)
    values, indices = probs.topk(min(TOPK, len(loaded.names)))
    label = {loaded.names[i]: float(v) for v, i in zip(values.tolist(), indices.tolist())}
    crop = crop_image(tensor, loaded.fast)
    top = loaded.names[int(indices[0])]
    seen = f"{image.width}x{image.height} image seen as a {crop.width}x{crop.height} crop"
    status = f"{top} ({float(values[0]):.1%}), {seen}"
    return DemoResult(label, _display(crop), _display(overlay(crop, heat)), status)


def cached_png(image: Image.Image | None, cache_dir: str | os.PathLike) -> str | None:
    """The image as a PNG in `cache_dir`, named by its content and written once, by rename.

    gradio's own cache of returned images rewrites the file in place on every request that produces the same image,
    so two users classifying the same picture at once could download a truncated file. A file gradio already finds
    in its cache is served as it is."""
    if image is None:
        return None
    data = io.BytesIO()
    image.save(data, format="PNG")
    path = Path(cache_dir) / "mambaout" / f"{hashlib.sha256(data.getvalue()).hexdigest()}.png"
    if not path.exists():
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data.getvalue()))
        _prune_shown_images(path.parent)
    return str(path)


def _prune_shown_images(folder: Path) -> None:
    """Bound the disk a long-running demo uses: beyond SHOWN_IMAGES_KEPT, remove the oldest that are old enough."""
    images = []
    for file in folder.glob("*.png"):
        try:
            images.append((file.stat().st_mtime, file))
        except FileNotFoundError:  # removed by a concurrent request
            continue
    if len(images) <= SHOWN_IMAGES_KEPT:
        return
    oldest_kept = time.time() - SHOWN_IMAGE_MIN_AGE_S
    for modified, file in sorted(images)[: len(images) - SHOWN_IMAGES_KEPT]:
        if modified < oldest_kept:
            file.unlink(missing_ok=True)


def example_images(folder: str | os.PathLike | None, per_class: int = 1, limit: int = 10) -> list[str]:
    """A few images from a class-folder split (folder/<class>/<image>), one per class first."""
    if folder is None or not Path(folder).is_dir():
        return []
    picked: list[str] = []
    for class_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        images = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        picked += [str(p) for p in images[:per_class]]
    return picked[:limit]


def build_demo(pool: ModelPool, default_key: str, examples: Sequence[str] = ()):
    """The gradio Blocks app (queue configured; not launched)."""
    import gradio as gr

    def run(key: str, path: str | None):
        result = classify(pool, key, path)
        cache = crop.GRADIO_CACHE
        return result.label, cached_png(result.crop, cache), cached_png(result.explanation, cache), result.status

    keys = list(pool.choices)
    registry = [name for name in list_models() if not name.endswith("_test")]
    with gr.Blocks(title="mambaout demo") as demo:
        gr.Markdown("# mambaout image classification\nUpload an image or click an example.")
        with gr.Row():
            with gr.Column():
                picker = gr.Dropdown(
                    choices=keys + [k for k in registry if k not in keys],
                    value=default_key,
                    label="model (checkpoints found, then registry models with release weights)",
                    allow_custom_value=True,
                )
                upload = gr.File(label="image", file_types=["image"], type="filepath")
                button = gr.Button("Classify", variant="primary")
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[upload], label="examples")
            with gr.Column():
                status = gr.Textbox(label="status", interactive=False, elem_id="status")
                label = gr.Label(num_top_classes=TOPK, label="top classes", elem_id="prediction")
                with gr.Row():
                    crop = gr.Image(label="what the model saw (preprocessed crop)", type="filepath", interactive=False)
                    explanation = gr.Image(label="gradient saliency of the top class", type="filepath",
                                           interactive=False)
        outputs = [label, crop, explanation, status]
        button.click(run, [picker, upload], outputs, api_name="classify", concurrency_limit=CONCURRENCY)
        upload.upload(run, [picker, upload], outputs, api_name=False, concurrency_limit=CONCURRENCY)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo


def resolve_choices(
    model: str | None,
    checkpoint: str | os.PathLike | None,
    pretrained: bool,
    checkpoint_dir: str | os.PathLike | None,
) -> tuple[list[ModelChoice], str]:
    """The picker's entries and the one shown first; DemoError saying how to get a model when there is none."""
    if checkpoint is None and not pretrained and model is None:
        if not QUICKSTART_CHECKPOINT.is_file():
            raise DemoError(
                f"no model to serve: {QUICKSTART_CHECKPOINT} does not exist yet. Run `make quickstart` (it trains "
                f"MambaOut-Femto on generated shapes in a few minutes, offline), or pass --model NAME --pretrained "
                f"or --checkpoint PATH"
            )
        checkpoint = QUICKSTART_CHECKPOINT
    if checkpoint_dir is None:
        checkpoint_dir = Path(checkpoint).parent if checkpoint is not None else QUICKSTART_DIR
    found = find_checkpoints(checkpoint_dir)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        first = ModelChoice(f"{CHECKPOINT_PREFIX}{path.name}", model, path)
        found = [first] + [c for c in found if c.checkpoint.resolve() != path.resolve()]
    elif model is not None:
        first = ModelChoice(model, model, pretrained=pretrained)
        found = [first, *found]
    else:
        raise DemoError("--pretrained needs --model NAME")
    return found, first.key


def check_host(host: str, allow_remote: bool) -> None:
    if host not in LOCAL_HOSTS and not allow_remote:
        raise DemoError(
            f"--host {host} would serve the demo to other machines; add --allow-remote to do that on purpose "
            f"(the default is 127.0.0.1, this machine only)"
        )


def launch_demo(
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    host: str = "127.0.0.1",
    port: int = 7860,
    checkpoint_dir: str | os.PathLike | None = None,
    share_host: bool = False,
    examples_dir: str | os.PathLike | None = None,
    input_size: tuple[int, int] | None = None,
    block: bool = True,
):
    """Check the request, load the first model (so a bad one fails here, not in the page) and serve.

    With `block=False` the server runs in a background thread and the Blocks app is returned (`.close()` stops it).
    """
    check_host(host, share_host)
    choices, first = resolve_choices(model, checkpoint, pretrained, checkpoint_dir)
    pool = ModelPool(choices, input_size)
    pool.get(first)
    if examples_dir is None and Path(choices[0].checkpoint or "").resolve() == QUICKSTART_CHECKPOINT.resolve():
        examples_dir = QUICKSTART_EXAMPLES
    demo = build_demo(pool, first, example_images(examples_dir))
    allowed = [str(examples_dir)] if examples_dir else None
    demo.launch(server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE, prevent_thread_lock=not block,
                show_error=True, quiet=not block, allowed_paths=allowed)
    return demo
