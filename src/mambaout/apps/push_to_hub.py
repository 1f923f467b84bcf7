"""`mambaout push-to-hub`: a trained model on the Hugging Face Hub in timm's layout, with a model card.

The folder is what timm's `push_to_hf_hub` writes (timm's own `save_for_hf`: config.json with the architecture, its
build arguments and pretrained config, and model.safetensors), so `mambaout.create_model("hf-hub:ORG/NAME")` and,
after `import mambaout`, `timm.create_model("hf-hub:ORG/NAME", pretrained=True)` load it. The model card (README.md)
gives the training recipe, what was changed from it, and the validation result of the pushed weights.
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData
from timm.models import save_for_hf
from timm.models._features import FeatureGetterNet
from torch import nn

from ..checkpoints import CheckpointError, read_checkpoint
from ..engine.checkpointing import BEST, LAST
from ..engine.run_log import ARGS, SUMMARY
from ..factory import load_checkpoint
from ..registry import get_model_spec

# the options a reader of a model card compares runs by
CARD_OPTIONS = ("epochs", "batch_size", "lr_used", "opt", "weight_decay", "sched", "warmup_epochs", "drop_path",
                "smoothing", "aa", "mixup", "cutmix", "reprob", "model_ema_decay", "amp_used", "img_size")
RESULT_KEYS = ("val_top1", "val_top5", "val_loss")


@dataclass
class Release:
    """A trained model and what its run says about it."""

    model: nn.Module
    source: Path
    args: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    results: dict[str, float] = field(default_factory=dict)
    weights: str = "model"  # or 'model_ema': the copy the checkpoint releases


def read_release(run_or_checkpoint: str | os.PathLike) -> Release:
    """The release weights of a run folder (best.pth, else last.pth) or of one checkpoint, with the run's training
    options (args.yaml) and the validation numbers of those weights at the checkpoint's epoch (summary.csv)."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        found = [path / name for name in (BEST, LAST) if (path / name).is_file()]
        if not found:
            raise CheckpointError(f"{path} holds no {BEST} or {LAST}: give a training run folder or a checkpoint")
        path = found[0]
    obj, _ = read_checkpoint(path)
    model = load_checkpoint(path)
    release = Release(model, path, epoch=obj.get("epoch"), weights=obj.get("release_weights") or "model")
    args_file = path.parent / ARGS
    release.args = yaml.safe_load(args_file.read_text()) if args_file.is_file() else dict(obj.get("args") or {})
    release.results = _results(path.parent / SUMMARY, release.epoch, "ema_" if release.weights == "model_ema" else "")
    return release


def _results(summary: Path, epoch: int | None, prefix: str) -> dict[str, float]:
    if epoch is None or not summary.is_file():
        return {}
    with open(summary, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("epoch") == str(epoch)]
    if not rows:
        return {}
    return {key: float(rows[-1][prefix + key]) for key in RESULT_KEYS if rows[-1].get(prefix + key)}


def model_card(release: Release, repo_id: str) -> str:
    """README.md for the Hub: the card metadata timm's cards carry, the architecture, recipe and validation result."""
    model = release.model
    spec = get_model_spec(model.model_name)
    args = release.args
    details: dict[str, Any] = {
        "Model Type": "Image classification / feature backbone",
        "Architecture": f"{model.model_name} ({spec.family} family, mambaout)",
        "Params (M)": f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}",
        "Image size": "x".join(str(side) for side in model.pretrained_cfg["input_size"][1:]),
        "Classes": model.num_classes,
    }
    if args.get("data_dir"):
        details["Dataset"] = Path(args["data_dir"]).name
    if args.get("recipe"):
        whose = "its authors' own" if args.get("recipe_is_own") else "another model's"
        details["Training recipe"] = f"{args['recipe']} ({whose}; `mambaout recipes {args['recipe']}` gives sources)"
        details["Training options"] = {key: args[key] for key in CARD_OPTIONS if args.get(key) is not None}
        overrides = args.get("overrides") or {}
        if overrides:
            details["Changed from the recipe"] = {k: f"{v['recipe']} -> {v['used']}" for k, v in overrides.items()}
    if release.results:
        which = "EMA weights" if release.weights == "model_ema" else "weights"
        details[f"Validation ({which} pushed, epoch {release.epoch})"] = {
            key.removeprefix("val_"): round(value, 4) for key, value in release.results.items()
        }
    usage = (
        "```python\nimport mambaout, timm\n\n"
        f'model = mambaout.create_model("hf-hub:{repo_id}").eval()\n'
        "# or, after `import mambaout`, through timm:\n"
        f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True)\n'
        "```\n"
    )
    metadata = ModelCardData(library_name="timm", pipeline_tag="image-classification",
                             tags=["image-classification", "timm", "mambaout"])
    lines = [f"# Model card for {repo_id.split('/')[-1]}", "",
             f"{model.model_name} trained with mambaout ({release.source.name}).", "", "## Model Details"]
    for key, value in details.items():
        if isinstance(value, dict):
            lines += [f"- **{key}:**", *(f"  - {k}: {v}" for k, v in value.items())]
        else:
            lines.append(f"- **{key}:** {value}")
    lines += ["", "## Model Usage", usage]
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n" + "\n".join(lines)))


def save_for_hub(model: nn.Module, folder: str | os.PathLike, card: str | None = None) -> Path:
    """Write what the Hub repository holds: timm's config.json and model.safetensors, and README.md (`card`)."""
    if isinstance(model, FeatureGetterNet) or not getattr(model, "model_name", None):
        raise CheckpointError("push a classification model made by mambaout.create_model (not a feature extractor)")
    folder = Path(folder)
    labels = model.pretrained_cfg.get("label_names")
    save_for_hf(model, folder, model_config={"label_names": labels} if labels else None, safe_serialization=True)
    if card is not None:
        (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    card: str | None = None,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Add model",
    api: HfApi | None = None,
) -> str:
    """Create (or reuse) the Hub repository and upload the model in timm's layout; returns the commit URL.

    `card`: the model card (default: the architecture alone; `mambaout push-to-hub` writes the run's recipe and
    validation result). `api`: an `HfApi` (default: one with `token`)."""
    from .. import __version__  # the package's own __init__ imports this module: read the version at call time

    api = api or HfApi(token=token, library_name="mambaout", library_version=__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if card is None:
        card = model_card(Release(model, Path(model.model_name)), repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        save_for_hub(model, tmp, card)
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))
