"""The Hugging Face Hub as the weights store: release files and pushed models through the Hub's shared cache.

`huggingface_hub.hf_hub_download` keeps the one cache every timm user shares (`HF_HOME`, `HF_HUB_CACHE`), honours
`HF_HUB_OFFLINE=1` and resumes broken downloads. A model name `hf-hub:ORG/NAME[@REVISION]` (or timm's
`local-dir:FOLDER`) names a folder in timm's layout: config.json (the architecture and its pretrained config) and
model.safetensors.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .download import PretrainedUnavailableError, fetch_url, sha256_of
from .files import CheckpointError

HUB_PREFIX, LOCAL_PREFIX = "hf-hub:", "local-dir:"
# what timm's save_for_hf writes, the safe format first (timm's loaders look in this order too)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_hub_name(name: str) -> bool:
    """A model name that names a folder of weights and config (`hf-hub:` or `local-dir:`), not a registered model."""
    return name.startswith((HUB_PREFIX, LOCAL_PREFIX))


def split_revision(model_id: str) -> tuple[str, str | None]:
    """'ORG/NAME@REVISION' -> ('ORG/NAME', 'REVISION'), as timm writes a revision."""
    repo_id, _, revision = model_id.partition("@")
    return repo_id, revision or None


def hub_file(model_id: str, filename: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A file of a Hub repository through the shared cache, downloaded if missing (and allowed), checked.

    Files the Hub stores in LFS (every weights file) are cached under their SHA-256, so a cached copy that does not
    hash to its own name is damaged: refused, naming the file to delete.
    """
    repo_id, revision = split_revision(model_id)
    where = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))
    except HFValidationError as e:
        raise CheckpointError(f"{model_id!r} is not a Hub repository id (ORG/NAME[@REVISION]): {e}") from e
    except LocalEntryNotFoundError as e:  # offline (HF_HUB_OFFLINE=1, or no network) and not cached
        raise PretrainedUnavailableError(
            f"{where} is not in the Hugging Face cache and cannot be downloaded ({_first_line(e)}). Download it "
            f"where there is network access (the cache is HF_HUB_CACHE, or HF_HOME/hub), or pass checkpoint=PATH "
            "(CLI: --checkpoint PATH)"
        ) from e
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as e:
        raise PretrainedUnavailableError(f"cannot read {where}: {_first_line(e)}") from e
    except EntryNotFoundError as e:
        raise PretrainedUnavailableError(f"{where} does not exist on the Hub") from e
    except OSError as e:  # HfHubHTTPError and connection failures are OSErrors
        raise PretrainedUnavailableError(f"cannot download {where}: {_first_line(e)}") from e
    blob = path.resolve()
    if _SHA256.fullmatch(blob.name) and sha256_of(blob) != blob.name:
        raise CheckpointError(f"cached {where} ({blob}) is damaged: it does not hash to its name; delete it")
    return path


def fetch_pretrained(
    model_name: str, cfg: dict[str, Any], progress: bool = True, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Path of a model's release file: from the Hub cache where the config names a Hub repository (`hf_hub_id`),
    else from the URL; checked against the config's `sha256` (a prefix of it is enough) where it gives one."""
    if not cfg.get("hf_hub_id"):
        return fetch_url(model_name, cfg, progress)
    path = hub_file(cfg["hf_hub_id"], cfg.get("hf_hub_filename") or WEIGHT_FILES[0], cache_dir)
    sha256 = (cfg.get("sha256") or "").lower()
    if sha256 and not sha256_of(path).startswith(sha256):
        raise CheckpointError(f"{path} does not match its sha256 {sha256}; delete it to re-download")
    return path


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@dataclass(frozen=True)
class HubModel:
    """What a folder in timm's layout says: the architecture, its pretrained config and its build arguments."""

    name: str
    architecture: str
    pretrained_cfg: dict[str, Any]
    model_args: dict[str, Any] = field(default_factory=dict)

    def weights_file(self, cache_dir: str | os.PathLike | None = None) -> Path:
        """The folder's weights (model.safetensors, else pytorch_model.bin), from the cache or downloaded."""
        if self.name.startswith(LOCAL_PREFIX):
            folder = Path(self.name[len(LOCAL_PREFIX) :])
            for filename in WEIGHT_FILES:
                if (folder / filename).is_file():
                    return folder / filename
            raise CheckpointError(f"{folder} has none of {', '.join(WEIGHT_FILES)}")
        errors = []
        for filename in WEIGHT_FILES:
            try:
                return hub_file(self.name[len(HUB_PREFIX) :], filename, cache_dir)
            except PretrainedUnavailableError as e:
                errors.append(e)
        raise errors[0]


def read_hub_model(name: str, cache_dir: str | os.PathLike | None = None) -> HubModel:
    """The config.json of `hf-hub:ORG/NAME[@REVISION]` or `local-dir:FOLDER`, as timm's create_model reads it."""
    if name.startswith(HUB_PREFIX):
        model_id = name[len(HUB_PREFIX) :]
        path, source = hub_file(model_id, "config.json", cache_dir), {"hf_hub_id": model_id, "source": "hf-hub"}
    elif name.startswith(LOCAL_PREFIX):
        folder = Path(name[len(LOCAL_PREFIX) :])
        path, source = folder / "config.json", {"file": str(folder), "source": "local-dir"}
        if not path.is_file():
            raise CheckpointError(f"{folder} has no config.json (what timm's save_for_hf and push-to-hub write)")
    else:
        raise ValueError(f"{name!r} names no Hub model: expected {HUB_PREFIX}ORG/NAME or {LOCAL_PREFIX}FOLDER")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        architecture = config["architecture"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{name}: config.json does not give the model's architecture ({e!r})") from e
    # timm's older single-dict configs hold the pretrained config at the top level
    cfg = dict(config.get("pretrained_cfg", config))
    cfg.pop("architecture", None)
    for key in ("num_classes", "label_names", "label_descriptions"):
        if key in config:
            cfg[key] = config[key]
    return HubModel(name, architecture, {**cfg, **source}, dict(config.get("model_args") or {}))
