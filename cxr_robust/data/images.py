"""Decoding image files into 8-bit grayscale, with errors that name the file and say what to do.

What is accepted (and converted) and what is refused is listed in ``docs/bad_inputs.md``. Every refusal is
a :class:`BadImageError` carrying a machine-readable ``reason`` (one of :data:`BAD_IMAGE_REASONS`), so a
sweep run with ``on_bad_image="skip"`` can count skipped images by reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

BAD_IMAGE_REASONS = ("missing", "empty_file", "too_large", "undecodable")
"""Why an image file cannot be used: absent, zero bytes, above :data:`MAX_PIXELS`, or not decodable."""

MAX_PIXELS = 8192 * 8192
"""Larger images are refused before decoding (a decompression-bomb guard; chest films are about 3,000 px).

It sits below Pillow's own ``Image.MAX_IMAGE_PIXELS`` (about 89.5 M), so Pillow never warns about an image
that is accepted here, and Pillow's ``DecompressionBombError`` is reported as a ``too_large`` refusal.
"""

_SKIP_HINT = "or pass on_bad_image='skip' (pytest --on-bad-image=skip) to leave such images out and count them"


class BadImageError(ValueError):
    """An image file that cannot be used as a query; the message names the file and image id."""

    def __init__(self, message: str, *, reason: str = "undecodable", image_id: str = "", path: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.image_id = image_id
        self.path = path


def load_grayscale(path: str | Path, image_id: str = "", draft_size: int | None = None,
                   max_pixels: int = MAX_PIXELS) -> "Image.Image":  # noqa: F821
    """Open ``path`` as a mode-``L`` PIL image, decoding JPEGs at reduced size when ``draft_size`` allows.

    16-bit images are rescaled to 8 bits by their full range; RGB, RGBA and palette images are converted
    with PIL's luminance rule (alpha dropped). Any failure raises :class:`BadImageError`.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    label = f"image {image_id!r} ({path})" if image_id else f"image {path}"

    def bad(reason: str, what: str) -> BadImageError:
        return BadImageError(f"{label} {what}; {_SKIP_HINT}", reason=reason, image_id=image_id, path=str(path))

    if not path.exists():
        raise bad("missing", "does not exist: check the dataset root and the file name")
    if path.stat().st_size == 0:
        raise bad("empty_file", "is an empty (zero-byte) file: re-download or re-export it")
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise bad("too_large", f"is {im.width}x{im.height} pixels, above the {max_pixels:,}-pixel limit "
                                       "(decompression-bomb guard): downscale it first")
            if draft_size and im.format == "JPEG":
                im.draft("L", (draft_size, draft_size))
            im.load()
            return _to_l(im)
    except BadImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise bad("too_large", f"is refused by Pillow's decompression-bomb guard ({exc}): downscale it first") \
            from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise bad("undecodable", f"cannot be decoded ({type(exc).__name__}: {exc}); the file is corrupt, "
                                 "truncated or not an image: replace it") from exc


def _to_l(im: "Image.Image") -> "Image.Image":  # noqa: F821
    """Convert any PIL mode to 8-bit grayscale."""
    from PIL import Image

    if im.mode == "L":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA" if im.mode in ("RGBA", "P", "PA") else "LA")
    return im.convert("L")
