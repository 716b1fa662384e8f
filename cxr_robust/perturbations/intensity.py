"""Intensity perturbations of MedMNIST-C's chest set: brightness, contrast and gamma, up and down.

Each is deterministic (no random parameters) and reproduces, pixel for pixel, the library call MedMNIST-C
makes on a PIL image: ``ImageEnhance.Brightness`` / ``ImageEnhance.Contrast`` (a blend with black / with the
image's rounded mean grey, float32 arithmetic, truncated) and torchvision ``adjust_gamma(gain=1)`` on a PIL
image (a 256-entry table computed in double precision, truncated).

Brightness is a gain (exposure, detector scaling). Contrast and gamma are *windowing* changes: they remap the
grey levels around a mid grey (window width) and along a power curve (the display transfer curve), the way a
reader's window/level or a vendor's look-up table changes a film.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cxr_robust.perturbations.base import Params, Perturbation

if TYPE_CHECKING:
    import torch

MEDMNISTC = "MedMNIST-C chestmnist (medmnistc 0.1.0)"


class _Intensity(Perturbation):
    """Shared attributes of the six intensity families (deterministic: no parameters to sample)."""

    group = "intensity"
    unit = "level"
    source = MEDMNISTC

    def factor(self, severity: float) -> float:
        """The level's factor (or gamma)."""
        return self.levels[int(severity)]


# ----- brightness ------------------------------------------------------------------------------------------
class _Brightness(_Intensity):
    parameter_name = "brightness factor (PIL ImageEnhance.Brightness)"

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        # torchvision's uint8 kernel is PIL's blend with black bit for bit: float32 x * factor, clamped,
        # truncated (checked on all 256 grey levels for every factor). One IEEE multiply: the same on CUDA.
        import torchvision.transforms.v2.functional as F

        return F.adjust_brightness(pixels, self.factor(severity))


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

    Written out rather than torchvision's ``adjust_contrast``, which blends with the unrounded float mean of a
    float greyscale: PIL takes the mean of the image's ``L`` conversion (integer luma, exact for grey), rounds
    it with ``int(mean + 0.5)``, blends ``mean + factor * (x - mean)`` in float32 and truncates. Integer sums
    and separate IEEE float32 operations give the same pixels on every device and batch size.
    """
    import torch

    b, c, h, w = pixels.shape
    wide = pixels.to(torch.int32)
    if c == 3:  # PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, which maps grey v to v exactly
        grey = (wide[:, 0] * 19595 + wide[:, 1] * 38470 + wide[:, 2] * 7471 + 0x8000) >> 16
    elif c == 1:
        grey = wide[:, 0]
    else:
        raise ValueError(f"contrast needs 1 or 3 channels, got {c}")
    total = grey.sum(dim=(1, 2), dtype=torch.int64)  # one mean per image, never a batch statistic
    n = h * w
    mean = ((2 * total + n) // (2 * n)).to(torch.float32).view(b, 1, 1, 1)  # == int(total / n + 0.5), exactly
    blended = (pixels.to(torch.float32) - mean) * factor + mean
    return blended.floor_().clamp_(0, 255).to(torch.uint8)


class _Contrast(_Intensity):
    parameter_name = "contrast factor (PIL ImageEnhance.Contrast)"

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
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
def gamma_table(gamma: float) -> np.ndarray:
    """The 256-entry ``uint8`` table of torchvision ``adjust_gamma(pil_image, gamma, gain=1)``."""
    return np.array([int((255 + 1 - 1e-3) * pow(v / 255.0, gamma)) for v in range(256)], dtype=np.uint8)


class _Gamma(_Intensity):
    parameter_name = "gamma (torchvision adjust_gamma, gain 1)"

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        # A table look-up rather than torchvision's tensor kernel (float32 pow): MedMNIST-C calls adjust_gamma
        # on PIL images, i.e. this double-precision table; float32 pow agrees on CPU but CUDA's powf is not
        # correctly rounded and could move a value across a truncation step. A gather is exact on any device.
        import torch

        table = torch.from_numpy(gamma_table(self.factor(severity))).to(pixels.device)
        return table[pixels.to(torch.int64)]


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
