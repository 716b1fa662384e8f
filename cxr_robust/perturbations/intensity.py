"""Intensity perturbations of MedMNIST-C's chest set: brightness, contrast and gamma, up and down.

Each is deterministic (no random parameters) and reproduces, pixel for pixel, the library call MedMNIST-C
makes on a PIL image: ``ImageEnhance.Brightness`` / ``ImageEnhance.Contrast`` (a blend with black / with the
image's rounded mean grey in float32, truncated) and torchvision ``adjust_gamma(gain=1)`` on a PIL image (a
256-entry table computed in double precision, truncated).

All three are look-ups in ``uint8`` tables computed on the host with the reference's own arithmetic, then one
gather on the device: exact on every device (no float arithmetic runs there) and, on CPU, faster than
torchvision's float kernels (measured at 224 px: contrast 1.5-2x, brightness 4x, gamma 4-9x).

Brightness is a gain (exposure, detector scaling). Contrast and gamma are *windowing* changes: they remap the
grey levels about a mid grey (the window width) and along a power curve (the display transfer curve), the way
a reader's window/level or a vendor's look-up table changes a film.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from cxr_robust.perturbations.base import Params, Perturbation

if TYPE_CHECKING:
    import torch

MEDMNISTC = "MedMNIST-C chestmnist (medmnistc 0.1.0)"


@lru_cache(maxsize=64)
def blend_table(factor: float, bases: int = 1) -> np.ndarray:
    """PIL's ``Image.blend(Image.new(mode, size, base), image, factor)`` for every base grey ``0 .. bases - 1``
    and every grey level: ``uint8 (bases, 256)``.

    PIL (``Blend.c``) computes ``base + factor * (x - base)`` in float32 (``factor`` rounded to float32), clips
    to [0, 255] and truncates; NumPy's float32 operations round the same way, so the table is PIL's bit for bit.
    """
    base = np.arange(bases, dtype=np.float32).reshape(bases, 1)
    grey = np.arange(256, dtype=np.float32).reshape(1, 256)
    blended = base + np.float32(factor) * (grey - base)
    table = np.floor(np.clip(blended, 0, 255)).astype(np.uint8)
    table.flags.writeable = False  # shared by the cache
    return table


@lru_cache(maxsize=64)
def gamma_table(gamma: float) -> np.ndarray:
    """The 256-entry ``uint8`` table of torchvision ``adjust_gamma(pil_image, gamma, gain=1)``."""
    table = np.array([int((255 + 1 - 1e-3) * pow(v / 255.0, gamma)) for v in range(256)], dtype=np.uint8)
    table.flags.writeable = False  # shared by the cache
    return table


def lookup(table: np.ndarray, index: "torch.Tensor") -> "torch.Tensor":
    """``table.reshape(-1)[index]`` as ``uint8``, gathered on ``index``'s device (int32 indices: half the memory
    traffic of int64, and accepted by ``index_select``)."""
    import torch

    flat = torch.from_numpy(table.reshape(-1).copy()).to(index.device)
    return flat.index_select(0, index.reshape(-1)).view(index.shape)


class _Intensity(Perturbation):
    """Shared attributes of the six intensity families (deterministic: no parameters to sample)."""

    group = "intensity"
    unit = "level"
    source = MEDMNISTC

    def factor(self, severity: float) -> float:
        """The level's factor (or gamma)."""
        return self.levels[int(severity)]

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        b, c, h, w = pixels.shape
        if c > 1 and bool((pixels[:, 1:] == pixels[:, :1]).all()):
            # replicated grey (3-channel models): every channel maps to the same bits, so map one
            return self.remap(pixels[:, :1], severity).expand(b, c, h, w).contiguous()
        return self.remap(pixels, severity)

    def remap(self, pixels: "torch.Tensor", severity: float) -> "torch.Tensor":
        """The perturbed batch (``apply`` without the replicated-grey shortcut)."""
        raise NotImplementedError


# ----- brightness ------------------------------------------------------------------------------------------
class _Brightness(_Intensity):
    parameter_name = "brightness factor (PIL ImageEnhance.Brightness)"

    def remap(self, pixels: "torch.Tensor", severity: float) -> "torch.Tensor":
        import torch

        # torchvision's adjust_brightness gives the same pixels (float32 x * factor, truncated) but takes
        # about 4x longer than the look-up on CPU.
        return lookup(blend_table(self.factor(severity)), pixels.to(torch.int32))


class BrightnessUp(_Brightness):
    """Brighter film: every pixel times the factor (1.1-1.5), truncated and clipped at 255, as
    ``PIL.ImageEnhance.Brightness(image).enhance(factor)`` (a blend with a black image)."""

    name = "brightness_up"
    short = "bright_up"
    description = "brighter film: grey levels times 1.1-1.5, clipped at 255 (PIL ImageEnhance.Brightness)"
    levels = {1: 1.1, 2: 1.2, 3: 1.3, 4: 1.4, 5: 1.5}


class BrightnessDown(_Brightness):
    """Darker film: every pixel times the factor (0.9-0.5), truncated, as
    ``PIL.ImageEnhance.Brightness(image).enhance(factor)`` (a blend with a black image)."""

    name = "brightness_down"
    short = "bright_down"
    description = "darker film: grey levels times 0.9-0.5 (PIL ImageEnhance.Brightness)"
    levels = {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.5}


# ----- contrast --------------------------------------------------------------------------------------------
def pil_contrast(pixels: "torch.Tensor", factor: float) -> "torch.Tensor":
    """``PIL.ImageEnhance.Contrast(image).enhance(factor)`` of every image of a ``uint8 (B, C, H, W)`` batch.

    Not torchvision's ``adjust_contrast``, which blends with the unrounded mean of a float greyscale: PIL
    takes the mean of the image's ``L`` conversion (integer luma, exact for grey), rounds it with
    ``int(mean + 0.5)`` and blends with that grey level (:func:`blend_table`). The mean is an exact integer
    sum per image, never a batch statistic.
    """
    import torch

    b, c, h, w = pixels.shape
    index = pixels.to(torch.int32)
    if c == 3:  # PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, which maps grey v to v exactly
        grey = (index[:, 0] * 19595 + index[:, 1] * 38470 + index[:, 2] * 7471 + 0x8000) >> 16
    elif c == 1:
        grey = index[:, 0]
    else:
        raise ValueError(f"contrast needs 1 or 3 channels, got {c}")
    n = h * w
    # exact integer sums; int32 (several times faster on CPU) holds 255 * n below 2 ** 31 up to ~2900 x 2900
    total = grey.reshape(b, n).sum(dim=1, dtype=torch.int32 if n < 2**23 else torch.int64)
    mean = (2 * total.to(torch.int64) + n) // (2 * n)  # == int(total / n + 0.5), exactly
    index += (mean.to(torch.int32) * 256).view(b, 1, 1, 1)  # row `mean` of the table
    return lookup(blend_table(factor, 256), index)


class _Contrast(_Intensity):
    parameter_name = "contrast factor (PIL ImageEnhance.Contrast)"

    def remap(self, pixels: "torch.Tensor", severity: float) -> "torch.Tensor":
        return pil_contrast(pixels, self.factor(severity))


class ContrastUp(_Contrast):
    """Wider grey spread (a narrower window): each image's grey levels pushed away from its own rounded mean
    grey by the factor (1.1-1.6), clipped to [0, 255], as ``PIL.ImageEnhance.Contrast(image).enhance(factor)``.
    A windowing change."""

    name = "contrast_up"
    short = "contrast_up"
    description = "more contrast (narrower window): grey levels spread 1.1-1.6x about the image's mean grey"
    levels = {1: 1.1, 2: 1.2, 3: 1.3, 4: 1.4, 5: 1.6}


class ContrastDown(_Contrast):
    """Flatter film (a wider window): each image's grey levels pulled towards its own rounded mean grey by the
    factor (0.9-0.4), as ``PIL.ImageEnhance.Contrast(image).enhance(factor)``. A windowing change."""

    name = "contrast_down"
    short = "contrast_down"
    description = "less contrast (wider window): grey levels pulled to 0.9-0.4x their spread about the mean"
    levels = {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.4}


# ----- gamma -----------------------------------------------------------------------------------------------
class _Gamma(_Intensity):
    parameter_name = "gamma (torchvision adjust_gamma, gain 1)"

    def remap(self, pixels: "torch.Tensor", severity: float) -> "torch.Tensor":
        import torch

        # Not torchvision's tensor kernel (float32 pow): it agrees on CPU, but CUDA's powf is not correctly
        # rounded and could move a value across a truncation step, and the look-up is 4-9x faster on CPU.
        return lookup(gamma_table(self.factor(severity)), pixels.to(torch.int32))


class GammaUp(_Gamma):
    """Darker mid-tones (gamma 1.1-1.6): ``255 * (x / 255) ** gamma``, truncated; 0 and 255 stay fixed.
    torchvision ``adjust_gamma(image, gamma, gain=1)`` on a PIL image. A windowing change."""

    name = "gamma_up"
    short = "gamma_up"
    description = "darker mid-tones: gamma 1.1-1.6 on [0, 1] grey (torchvision adjust_gamma, gain 1)"
    levels = {1: 1.1, 2: 1.2, 3: 1.3, 4: 1.4, 5: 1.6}


class GammaDown(_Gamma):
    """Brighter mid-tones (gamma 0.9-0.4): ``255 * (x / 255) ** gamma``, truncated; 0 and 255 stay fixed.
    torchvision ``adjust_gamma(image, gamma, gain=1)`` on a PIL image. A windowing change."""

    name = "gamma_down"
    short = "gamma_down"
    description = "brighter mid-tones: gamma 0.9-0.4 on [0, 1] grey (torchvision adjust_gamma, gain 1)"
    levels = {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.4}
