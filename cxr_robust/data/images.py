"""Decoding image files into 8-bit grayscale, with errors that name the file and say what to do.

What is accepted (and converted) and what is refused is listed in ``docs/bad_inputs.md``. Every refusal is
a :class:`BadImageError` carrying a machine-readable ``reason`` (one of :data:`BAD_IMAGE_REASONS`), so a
sweep run with ``on_bad_image="skip"`` can count skipped images by reason.

Two size limits are checked from the file's header, before any pixel is decoded: :data:`MAX_PIXELS` (pixel
count) and :data:`MAX_DECODED_BYTES` (pixel count times the bytes Pillow holds per pixel for the image's
mode). The second matters for 32-bit and colour images: a deflate-compressed float TIFF of 8190 x 8190 px is
a few hundred kB on disk, under the pixel limit, yet decodes to 268 MB.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from cxr_robust.data.retrieval_set import RetrievalSet

__all__ = ["BAD_IMAGE_REASONS", "MAX_PIXELS", "MAX_DECODED_BYTES", "BadImageError", "bytes_per_pixel",
           "decoded_bytes", "load_grayscale", "check_image", "find_unusable_images"]

BAD_IMAGE_REASONS = ("missing", "empty_file", "too_large", "undecodable")
"""Why an image file cannot be used: absent, zero bytes, above a size limit, or not decodable."""

MAX_PIXELS = 8192 * 8192
"""Larger images are refused before decoding (a decompression-bomb guard; chest films are about 3,000 px).

It sits below Pillow's own ``Image.MAX_IMAGE_PIXELS`` (about 89.5 M), so Pillow never warns about an image
that is accepted here, and Pillow's ``DecompressionBombError`` is reported as a ``too_large`` refusal.
"""

MAX_DECODED_BYTES = 2 * MAX_PIXELS
"""Images whose decoded pixels would take more bytes (128 MiB) are refused before decoding.

Every 8- or 16-bit grayscale image within :data:`MAX_PIXELS` fits; 32-bit (``I``, ``F``) and colour images
(which Pillow holds in 4 bytes per pixel) fit up to half that many pixels (about 5,790 px square). With the
conversion to 8 bits done in bounded chunks, one decode then peaks at about 2.5 times this limit.
"""

# Bytes per pixel of Pillow's in-memory layout (libImaging Storage.c): multi-band 8-bit modes are padded to
# 4 bytes, so RGB costs 4, not 3. Measured, not just read: an 8000 x 4000 RGB image adds 122 MB of RSS.
_BYTES_PER_PIXEL = {
    "1": 1, "L": 1, "P": 1,
    "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "BGR;15": 2, "BGR;16": 2, "BGR;24": 3,
    "I": 4, "F": 4, "LA": 4, "La": 4, "PA": 4, "RGB": 4, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4,
    "YCbCr": 4, "LAB": 4, "HSV": 4,
}
_UNKNOWN_MODE_BYTES = 8  # a mode this table does not know is charged generously rather than let through

# Rows per conversion chunk are chosen so the float64 temporaries stay near this many pixels (8 MB each).
_CHUNK_PIXELS = 1 << 20

_SKIP_HINT = "or pass on_bad_image='skip' (pytest --cxr-on-bad-image=skip) to leave such images out and count them"


class BadImageError(ValueError):
    """An image file that cannot be used as a query; the message names the file and image id."""

    def __init__(self, message: str, *, reason: str = "undecodable", image_id: str = "", path: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.image_id = image_id
        self.path = path


def bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow holds per decoded pixel of ``mode`` (e.g. ``F`` 4, ``I;16`` 2, ``RGB`` 4, ``L`` 1)."""
    return _BYTES_PER_PIXEL.get(mode, _UNKNOWN_MODE_BYTES)


def decoded_bytes(mode: str, size: tuple[int, int]) -> int:
    """Bytes the decoded pixels of an image of ``mode`` and ``size`` (width, height) take in memory."""
    return int(size[0]) * int(size[1]) * bytes_per_pixel(mode)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _open_checked(path: Path, image_id: str, max_pixels: int, max_bytes: int) -> "Image.Image":
    """``path`` opened lazily (header only) after every check that needs no decoding; BadImageError if not.

    The caller owns the returned image and must close it.
    """
    from PIL import Image, UnidentifiedImageError

    label = f"image {image_id!r} ({path})" if image_id else f"image {path}"

    def bad(reason: str, what: str) -> BadImageError:
        return BadImageError(f"{label} {what}; {_SKIP_HINT}", reason=reason, image_id=image_id, path=str(path))

    if not path.exists():
        raise bad("missing", "does not exist: check the dataset root and the file name")
    if path.stat().st_size == 0:
        raise bad("empty_file", "is an empty (zero-byte) file: re-download or re-export it")
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise bad("too_large", f"is refused by Pillow's decompression-bomb guard ({exc}): downscale it first") \
            from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise bad("undecodable", f"cannot be decoded ({type(exc).__name__}: {exc}); the file is corrupt, "
                                 "truncated or not an image: replace it") from exc
    try:
        if im.width * im.height > max_pixels:
            raise bad("too_large", f"is {im.width}x{im.height} pixels, above the {max_pixels:,}-pixel limit "
                                   "(decompression-bomb guard): downscale it first")
        need = decoded_bytes(im.mode, im.size)
        if need > max_bytes:
            # Checked on the header's mode and full size, before any draft: a file must not be usable in
            # draft mode and unusable without it.
            raise bad("too_large", f"is {im.width}x{im.height} pixels of mode {im.mode} "
                                   f"({bytes_per_pixel(im.mode)} bytes per pixel): {_mb(need)} once decoded, "
                                   f"above the {_mb(max_bytes)} limit (memory guard): downscale it or save it "
                                   "as 8- or 16-bit grayscale first")
    except BaseException:
        im.close()
        raise
    return im


def check_image(path: str | Path, image_id: str = "", max_pixels: int = MAX_PIXELS,
                max_bytes: int = MAX_DECODED_BYTES) -> None:
    """Every check :func:`load_grayscale` makes before decoding (exists, not empty, a known image format,
    within both size limits), reading only the header; raises :class:`BadImageError`.

    Damage inside the compressed data is only found by decoding (:func:`load_grayscale`).
    """
    _open_checked(Path(path), image_id, max_pixels, max_bytes).close()


def load_grayscale(path: str | Path, image_id: str = "", draft_size: int | None = None,
                   max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_DECODED_BYTES) -> "Image.Image":  # noqa: F821
    """Open ``path`` as a mode-``L`` PIL image, decoding JPEGs at reduced size when ``draft_size`` allows.

    16-bit images are rescaled to 8 bits by their full range; RGB, RGBA and palette images are converted
    with PIL's luminance rule (alpha dropped). Any failure raises :class:`BadImageError`; the size limits
    (:data:`MAX_PIXELS`, :data:`MAX_DECODED_BYTES`) are checked from the header, before decoding.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    label = f"image {image_id!r} ({path})" if image_id else f"image {path}"

    def bad(reason: str, what: str) -> BadImageError:
        return BadImageError(f"{label} {what}; {_SKIP_HINT}", reason=reason, image_id=image_id, path=str(path))

    with _open_checked(path, image_id, max_pixels, max_bytes) as im:
        try:
            if draft_size and im.format == "JPEG":
                im.draft("L", (draft_size, draft_size))
            im.load()
            return _to_l(im)
        except Image.DecompressionBombError as exc:
            raise bad("too_large", f"is refused by Pillow's decompression-bomb guard ({exc}): downscale it "
                                   "first") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise bad("undecodable", f"cannot be decoded ({type(exc).__name__}: {exc}); the file is corrupt, "
                                     "truncated or not an image: replace it") from exc


def find_unusable_images(data: "RetrievalSet", workers: int = 0) -> dict[int, BadImageError]:
    """Images of ``data`` (on disk) that the sweep would refuse, by header checks only (:func:`check_image`).

    Returns ``{image index: error}``; cheap enough for a data check of a whole split (no pixel is decoded).
    An in-memory set has nothing to check.
    """
    if data.image_paths is None:
        return {}
    paths, ids = data.image_paths, data.image_ids

    def one(i: int) -> BadImageError | None:
        try:
            check_image(paths[i], ids[i])
        except BadImageError as exc:
            return exc
        return None

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        found = list(pool.map(one, range(len(paths))))
    return {i: e for i, e in enumerate(found) if e is not None}


def _to_l(im: "Image.Image") -> "Image.Image":  # noqa: F821
    """Convert any PIL mode to 8-bit grayscale."""
    from PIL import Image

    if im.mode == "L":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_rescale_to_u8(np.asarray(im)), mode="L")
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA" if im.mode in ("RGBA", "P", "PA") else "LA")
    return im.convert("L")


def _rescale_to_u8(arr: np.ndarray) -> np.ndarray:
    """``arr`` linearly mapped from its own [min, max] onto 0..255 (rounded), in row chunks.

    Same float64 arithmetic as a whole-array expression, but the float64 temporaries cover about
    :data:`_CHUNK_PIXELS` pixels at a time instead of four full-size copies (what made an 8190 x 8190 float
    image peak at 1.9 GB).
    """
    lo, hi = float(arr.min()), float(arr.max())
    out = np.zeros(arr.shape, dtype=np.uint8)
    if hi <= lo:
        return out
    scale = 255.0 / (hi - lo)
    step = max(1, _CHUNK_PIXELS // max(1, arr.shape[-1]))
    for r in range(0, arr.shape[0], step):
        out[r:r + step] = np.round((arr[r:r + step].astype(np.float64) - lo) * scale).astype(np.uint8)
    return out
