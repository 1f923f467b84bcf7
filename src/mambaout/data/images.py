"""Opening any image file as RGB, or failing with one line that names the file."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MambaoutError


class ImageReadError(MambaoutError, ValueError):

    exit_code = 5
    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"cannot read {self.path!r}: {reason}")


def open_rgb(path: str | os.PathLike, exif_transpose: bool = False) -> Image.Image:
    """Decode a whole image and convert it to 8-bit RGB from any PIL mode.

    Images over `PIL.Image.MAX_IMAGE_PIXELS` (PIL's bomb threshold, 89.5 MP by default) are refused, not
    just warned about. Transparent pixels are composited onto white; 16/32-bit grey is rescaled, not clipped.
    """
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode now: truncated data fails here, not later in a transform
                if exif_transpose:
                    img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(path, f"refused as a possible decompression bomb ({e})") from e
    except FileNotFoundError as e:
        raise ImageReadError(path, "no such file") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(path, "not an image (unknown format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageReadError(path, f"corrupt or truncated image ({reason})") from e


def readable_images(paths: Iterable[str | os.PathLike],
                    errors: list[ImageReadError]) -> Iterator[tuple[str, Image.Image]]:
    """Each readable file as (path, RGB image with its EXIF orientation applied); an unreadable one goes into
    `errors` and is passed over, so a command does what it can and reports the rest."""
    for path in paths:
        try:
            image = open_rgb(path, exif_transpose=True)
        except ImageReadError as error:
            errors.append(error)
            continue
        yield os.fspath(path), image


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _wide_grey_to_rgb(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "La":  # PIL has no La -> RGBA conversion; it does have La -> LA
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _wide_grey_to_rgb(img: Image.Image) -> Image.Image:
    values = np.asarray(img, dtype=np.float64)
    peak = values.max() if values.size else 0.0
    if img.mode.startswith("I;16"):
        top = 65535.0
    elif img.mode == "F":
        top = 1.0 if peak <= 1.0 else 255.0
    else:  # 32-bit "I": 16-bit PNGs open this way; 8-bit content stays as it is
        top = 65535.0 if peak > 255 else 255.0
    grey = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
