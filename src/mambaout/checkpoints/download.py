"""Release weights at a URL: downloaded once into the torch hub cache, checked, and never half-written."""

from __future__ import annotations

import hashlib
import posixpath
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

import torch

from .files import CheckpointError


class PretrainedUnavailableError(CheckpointError):
    """The release file is neither cached nor downloadable."""


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_url(model_name: str, cfg: dict[str, Any], progress: bool = True) -> Path:
    """Path of the cached release file at `cfg["url"]`, downloading it (with a progress bar) if missing."""
    url, sha256 = cfg.get("url"), (cfg.get("sha256") or "").lower() or None
    if not url:
        raise PretrainedUnavailableError(
            f"{model_name} has no released weights; create it with pretrained=False, or pass checkpoint=PATH"
        )
    # A cfg without `file_name` caches the file under the URL's own name.
    file_name = cfg.get("file_name") or posixpath.basename(urllib.parse.urlsplit(url).path)
    target = cache_dir() / file_name
    if target.is_file():
        # `sha256` may be a prefix of the digest, as torch's hash_prefix allows for the download itself.
        if sha256 and not sha256_of(target).startswith(sha256):
            raise CheckpointError(f"cached file {target} does not match its sha256 {sha256}; delete it to re-download")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Downloads to a temporary file beside the target and renames it only once complete and verified.
        torch.hub.download_url_to_file(url, str(target), hash_prefix=sha256, progress=progress)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise PretrainedUnavailableError(
            f"cannot download the {model_name} weights from {url} ({reason}). Without network access, fetch "
            f"that file elsewhere and pass checkpoint=PATH (CLI: --checkpoint PATH), or put it at {target}"
        ) from e
    except RuntimeError as e:  # torch raises RuntimeError for a hash mismatch
        raise CheckpointError(f"download of {url} is corrupt: {e}") from e
    return target
