"""Decoding image files into 8-bit grayscale, with errors that name the file and say what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class BadImageError(ValueError):
    """An image file that cannot be used as a query; the message names the file and image id."""


MAX_PIXELS = 16_000 * 16_000
"""Larger images are refused rather than risk a decompression bomb (chest films are about 3,000 px)."""


def load_grayscale(path: str | Path, image_id: str = "", draft_size: int | None = None) -> "Image.Image":  # noqa: F821
    """Open ``path`` as a mode-``L`` PIL image, decoding JPEGs at reduced size when ``draft_size`` allows.

    16-bit images are rescaled to 8 bits by their full range; RGB, RGBA and palette images are converted
    with PIL's luminance rule (alpha dropped). Any failure raises :class:`BadImageError`.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    label = f"image {image_id!r} ({path})" if image_id else f"image {path}"
    if not path.exists():
        raise BadImageError(f"{label} does not exist; check the dataset root or use --on-bad-image=skip")
    if path.stat().st_size == 0:
        raise BadImageError(f"{label} is an empty (zero-byte) file; re-download it or use --on-bad-image=skip")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise BadImageError(f"{label} is {im.width}x{im.height} pixels, above the {MAX_PIXELS:,} limit; "
                                    "downscale it first")
            if draft_size and im.format == "JPEG":
                im.draft("L", (draft_size, draft_size))
            im.load()
            return _to_l(im)
    except BadImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{label} cannot be decoded ({type(exc).__name__}: {exc}); the file is corrupt, "
                            "truncated or not an image: replace it or use --on-bad-image=skip") from exc


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
