"""Slow, obvious per-image references of the intensity, geometry and overlay perturbations (PIL / NumPy only).

Each reference is ``ref(image, params, severity)``: ``image`` is one ``uint8 (C, H, W)`` film (C = 1 or 3),
``params`` that image's parameters (every array of ``sample_params`` indexed ``[i]``), ``severity`` a level
1-5. They are the test oracles of the batched implementations and the per-image baseline of the speed
benchmark. The level tables are written out again here (MedMNIST-C's published values) on purpose, so a
changed table in the package fails the tests.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image, ImageEnhance

Reference = Callable[[np.ndarray, dict[str, Any], int], np.ndarray]

BRIGHTNESS_UP = {1: 1.1, 2: 1.2, 3: 1.3, 4: 1.4, 5: 1.5}
BRIGHTNESS_DOWN = {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.5}
CONTRAST_UP = {1: 1.1, 2: 1.2, 3: 1.3, 4: 1.4, 5: 1.6}
CONTRAST_DOWN = {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.4}
GAMMA_UP = {1: 1.1, 2: 1.2, 3: 1.3, 4: 1.4, 5: 1.6}
GAMMA_DOWN = {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.4}


def to_pil(image: np.ndarray) -> Image.Image:
    """A ``(1, H, W)`` film as an ``L`` image, a ``(3, H, W)`` one as ``RGB``."""
    if image.shape[0] == 1:
        return Image.fromarray(np.ascontiguousarray(image[0]))  # 2-D uint8: mode L
    return Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))  # (H, W, 3) uint8: RGB


def from_pil(pil: Image.Image) -> np.ndarray:
    """Back to ``uint8 (C, H, W)``."""
    array = np.asarray(pil)
    return array[None].copy() if array.ndim == 2 else array.transpose(2, 0, 1).copy()


def _enhance(enhancer: type, table: dict[int, float]) -> Reference:
    def ref(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
        return from_pil(enhancer(to_pil(image)).enhance(table[severity]))

    return ref


def _gamma(table: dict[int, float]) -> Reference:
    def ref(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
        # torchvision's adjust_gamma on a PIL image (what MedMNIST-C calls), written out without torch
        pil = to_pil(image)
        lut = [int((255 + 1 - 1e-3) * pow(v / 255.0, table[severity])) for v in range(256)]
        return from_pil(pil.point(lut * len(pil.getbands())))

    return ref


def rotation(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
    """PIL's bilinear rotation about the centre by the image's signed angle, black corners."""
    return from_pil(to_pil(image).rotate(float(params["angle"]), resample=Image.Resampling.BILINEAR))


def collimation(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
    """Black outside the window (top, bottom, left, right; bottom and right exclusive)."""
    top, bottom, left, right = (int(v) for v in params["window"])
    out = np.zeros_like(image)
    out[:, top:bottom, left:right] = image[:, top:bottom, left:right]
    return out


def lateral_flip(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
    """The film mirrored left-right when the image's ``flip`` is set."""
    return image[:, :, ::-1].copy() if bool(params["flip"]) else image.copy()


def burn_in(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
    """White (255) wherever the image's ``(1, H, W)`` mask is set, on every channel."""
    out = image.copy()
    out[:, np.asarray(params["mask"])[0]] = 255
    return out


REFERENCES: dict[str, Reference] = {
    "brightness_up": _enhance(ImageEnhance.Brightness, BRIGHTNESS_UP),
    "brightness_down": _enhance(ImageEnhance.Brightness, BRIGHTNESS_DOWN),
    "contrast_up": _enhance(ImageEnhance.Contrast, CONTRAST_UP),
    "contrast_down": _enhance(ImageEnhance.Contrast, CONTRAST_DOWN),
    "gamma_up": _gamma(GAMMA_UP),
    "gamma_down": _gamma(GAMMA_DOWN),
    "rotation": rotation,
    "collimation": collimation,
    "lateral_flip": lateral_flip,
    "burn_in": burn_in,
}
"""Per-image reference of every perturbation of this group, by registry name."""

PUBLISHED_LEVELS: dict[str, dict[int, float]] = {
    "brightness_up": BRIGHTNESS_UP, "brightness_down": BRIGHTNESS_DOWN, "contrast_up": CONTRAST_UP,
    "contrast_down": CONTRAST_DOWN, "gamma_up": GAMMA_UP, "gamma_down": GAMMA_DOWN,
}
"""MedMNIST-C chestmnist factors (medmnistc 0.1.0), as listed in the project's PERTURBATIONS.md."""
