"""Image folders in ImageNet's layout, DATA_DIR/<split>/<class>/<images>, that skip unreadable files instead of failing.

Class indices come from sorted folder names (as torchvision's ImageFolder and ImageNet's synsets), or from a
given list of class names (the train split's, or a checkpoint's). Which files are read:

- files whose extension is one of torchvision's IMG_EXTENSIONS, in any case (.JPG, .Png), in the class folder or
  any folder below it;
- hidden files and folders (.DS_Store, ._x.jpg, .ipynb_checkpoints) and obvious non-images (.txt, .csv, .xml, ...)
  are ignored without a word;
- other extensions (.heic, .avif, .gif, no extension) are ignored too, as ImageFolder does, but listed in
  `.ignored` and counted in one warning, since they may be images this reader does not take;
- zero-byte image files are recorded in `.skipped` while scanning; files that fail to decode (not an image,
  truncated, corrupt) are found when read: `__getitem__` returns a `Skipped` marker. In training the engine
  replaces it by another sample (`data.training_stream`), so batches keep their size; in evaluation
  `collate_skipping` takes it out of the batch.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from ..errors import MambaoutError
from .augment import TransformError, apply_transform
from .images import ImageReadError, open_rgb

log = logging.getLogger("mambaout")

# Files that sit beside images in real datasets (annotations, listings, OS metadata): never worth a warning.
NON_IMAGE_EXTENSIONS = frozenset({
    ".txt", ".md", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".xml", ".yaml", ".yml", ".ini", ".cfg", ".log",
    ".db", ".pdf", ".html", ".htm", ".py", ".sh", ".zip", ".tar", ".gz", ".npy", ".npz", ".pkl", ".pth", ".mat",
})
_IMAGE_EXTENSIONS = frozenset(IMG_EXTENSIONS)


class DatasetError(MambaoutError, ValueError):
    """A data folder that cannot be used as it is (missing split, empty class folder, unknown classes)."""

    exit_code = 5


@dataclass(frozen=True)
class Skipped:
    """A file left out of training or evaluation, and why."""

    path: str
    reason: str
    in_transform: bool = False  # read fine, but a (random) transform raised on it this time


@dataclass(frozen=True)
class Redrawn:
    """A training sample that stands in for unusable ones (`data.training_stream`): `item` (None when no draw
    gave a usable sample) and the failures it replaces, which are counted and listed like any `Skipped`."""

    item: Any
    failed: tuple[Skipped, ...]


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _split_folder(root: str | os.PathLike, split: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"data folder {str(root)!r} {problem}")
    folder = root / split
    if not folder.is_dir():
        present = [e.name for e in _visible_entries(root) if e.is_dir()]
        found = f"the folders there are: {', '.join(present)}" if present else "it has no folders at all"
        raise DatasetError(
            f"no {split!r} split in {str(root)!r} (expected {str(folder)!r}; {found}). "
            "The layout is DATA_DIR/<split>/<class>/<image>, as ImageNet's train/ and val/"
        )
    return folder


def find_classes(root: str | os.PathLike, split: str) -> list[str]:
    """The class folder names of root/split, sorted (their positions are the class indices)."""
    folder = _split_folder(root, split)
    entries = _visible_entries(folder)
    classes = [e.name for e in entries if e.is_dir()]
    if not classes:
        loose = sum(1 for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in _IMAGE_EXTENSIONS)
        hint = (
            f" but {loose} images directly inside it: put each image in a folder named after its class "
            "(ImageNet's validation images come unsorted; sort them into class folders first)"
            if loose
            else ""
        )
        raise DatasetError(f"no class folders in {str(folder)!r}{hint}")
    return classes


class FolderDataset(Dataset):
    """root/split/<class>/<image> as (image tensor, class index); unreadable images come back as `Skipped`.

    `classes` fixes the class indices (for instance the train split's classes, or a checkpoint's class names):
    every class folder of this split must be among them, though some of them may have no folder here.
    `classes_from` names where they came from in error messages ("train", "the checkpoint's class names").
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Callable | None = None,
        classes: Sequence[str] | None = None,
        classes_from: str = "the given classes",
        progress: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.folder = self.root / split
        self.transform = transform
        folders = find_classes(root, split)
        if classes is None:
            classes = folders
        else:
            classes = list(classes)
            known = set(classes)
            unknown = [name for name in folders if name not in known]
            if unknown:
                raise DatasetError(
                    f"{len(unknown)} class folder(s) in {str(self.folder)!r} that are not in {classes_from}: "
                    f"{_names(unknown)}"
                )
        self.classes: list[str] = classes
        self.class_to_idx: dict[str, int] = {name: i for i, name in enumerate(classes)}
        self.samples: list[tuple[str, int]] = []
        self.skipped: list[Skipped] = []
        self.ignored: list[Skipped] = []
        empty = []
        show = progress and sys.stderr.isatty()
        for name in tqdm(folders, desc=f"scanning {split}", unit="class", disable=not show, leave=False):
            count = len(self.samples)
            self._scan(self.folder / name, self.class_to_idx[name], set())
            if len(self.samples) == count:
                empty.append(name)
        if empty:
            raise DatasetError(
                f"{len(empty)} class folder(s) in {str(self.folder)!r} without a single non-empty image file "
                f"({', '.join(sorted(IMG_EXTENSIONS))}): {_names(empty)}"
            )
        if self.ignored:
            kinds = Counter(os.path.splitext(s.path)[1].lower() or "no extension" for s in self.ignored)
            log.warning(
                "%s: ignored %d file(s) that are not read as images (%s)",
                self.folder,
                len(self.ignored),
                ", ".join(f"{ext}: {n}" for ext, n in kinds.most_common()),
            )
        self.targets: list[int] = [target for _, target in self.samples]

    def _scan(self, folder: Path, target: int, seen: set[str]) -> None:
        seen.add(os.path.realpath(folder))  # symlinked folders are followed, but a link loop is walked once
        for entry in _visible_entries(folder):
            if entry.is_dir():
                if os.path.realpath(entry.path) not in seen:
                    self._scan(Path(entry.path), target, seen)
                continue
            ext = os.path.splitext(entry.name)[1].lower()
            if ext not in _IMAGE_EXTENSIONS:
                if ext not in NON_IMAGE_EXTENSIONS:
                    self.ignored.append(Skipped(entry.path, f"extension {ext or '(none)'} is not read as an image"))
                continue
            try:
                size = entry.stat().st_size
            except OSError as e:  # a broken symlink, a file removed while scanning
                self.skipped.append(Skipped(entry.path, f"cannot be opened ({e.strerror})"))
                continue
            if size == 0:
                self.skipped.append(Skipped(entry.path, "empty file (0 bytes)"))
            else:
                self.samples.append((entry.path, target))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | Skipped:
        path, target = self.samples[index]
        try:
            image = open_rgb(path)  # decodes the whole file: truncated data fails here
        except ImageReadError as e:
            return Skipped(path, e.reason)
        if self.transform is None:
            return image, target
        try:
            return apply_transform(self.transform, image), target
        except TransformError as e:
            return Skipped(path, str(e), in_transform=True)

    def __repr__(self) -> str:
        return (
            f"FolderDataset({str(self.folder)!r}, {len(self.classes)} classes, {len(self.samples)} images, "
            f"{len(self.skipped)} skipped)"
        )


def _names(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def split_skipped(samples: Sequence[Any]) -> tuple[list[Any], list[Skipped]]:
    """(readable samples, `Skipped` markers) of a batch of dataset items: what every task's collate starts with.
    A `Redrawn` item gives its stand-in sample and its failures."""
    good: list[Any] = []
    skipped: list[Skipped] = []
    for item in samples:
        if isinstance(item, Redrawn):
            skipped.extend(item.failed)
            item = item.item
        if isinstance(item, Skipped):
            skipped.append(item)
        elif item is not None:
            good.append(item)
    return good, skipped


def collate_skipping(batch: Sequence[tuple[Tensor, int] | Skipped]) -> tuple[Tensor, Tensor, list[Skipped]]:
    """Stack the readable items; return the `Skipped` markers beside them (they travel back from workers).

    When every item of a batch was skipped, images and targets are empty (shape (0,)): skip the step.
    """
    good, skipped = split_skipped(batch)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([image for image, _ in good])
    targets = torch.tensor([target for _, target in good], dtype=torch.long)
    return images, targets, skipped


class SkipLog:
    """The files skipped over an epoch (each once, by path): written to a file and summed up in one line."""

    def __init__(self, items: Sequence[Skipped] = ()) -> None:
        self._items: dict[str, Skipped] = {}
        self.written_to: Path | None = None
        self.transform_failures = 0  # samples a transform raised on, counted every time (it is random)
        self.add(items)

    def add(self, items: Sequence[Skipped]) -> None:
        for item in items:
            self._items.setdefault(item.path, item)
            self.transform_failures += item.in_transform

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items.values())

    def write(self, path: str | os.PathLike) -> Path:
        """One `path<TAB>reason` line per file, sorted by path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{item.path}\t{item.reason}\n" for item in sorted(self._items.values(), key=lambda s: s.path)]
        path.write_text("".join(lines), encoding="utf-8")
        self.written_to = path
        return path

    def summary(self) -> str:
        count = len(self._items)
        noun = "file" if count == 1 else "files"
        if count == 0:
            return "no unreadable files"
        where = f" (listed in {self.written_to})" if self.written_to else ""
        failed = f", {self.transform_failures} samples failed in a transform" if self.transform_failures else ""
        return f"skipped {count} unreadable {noun}{failed}{where}"
