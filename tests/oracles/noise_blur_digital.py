"""Slow, obvious per-image references of the noise, blur and digital perturbations (PIL and NumPy, no torch).

Each reference is ``ref(image, params, severity) -> image``: ``image`` is one ``uint8 (C, H, W)`` film,
``params`` that image's entries of :meth:`Perturbation.sample_params` (each array already indexed ``[i]``),
``severity`` a level 1-5. They re-derive everything from the written definitions, in float64 where those are
float arithmetic (float32 only where the definition says so: the uniforms' thresholds, the Poisson table), or
run PIL itself (pixelate, JPEG). They serve as the test oracles and as the per-image baseline of the speed
benchmark (the random draws are inputs, so a baseline timing excludes them).
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable

import numpy as np
from PIL import Image

# The published levels, written out again so the oracles do not read the classes they check.
GAUSSIAN_SIGMA = {1: 0.04, 2: 0.08, 3: 0.12, 4: 0.18, 5: 0.26}
SPECKLE_SIGMA = {1: 0.05, 2: 0.15, 3: 0.20, 4: 0.35, 5: 0.45}
SHOT_PHOTONS = {1: 60, 2: 25, 3: 18, 4: 10, 5: 5}
IMPULSE_AMOUNT = {1: 0.01, 2: 0.03, 3: 0.06, 4: 0.09, 5: 0.17}
BLUR_KERNEL_224 = {1: 3, 2: 5, 3: 7, 4: 9, 5: 11}
MOTION_LENGTH = {1: 0.02, 2: 0.04, 3: 0.06, 4: 0.08, 5: 0.10}
PIXELATE_FACTOR = {1: 0.30, 2: 0.25, 3: 0.20, 4: 0.15, 5: 0.10}
JPEG_QUALITY = {1: 50, 2: 30, 3: 15, 4: 10, 5: 7}

Reference = Callable[[np.ndarray, dict[str, Any], int], np.ndarray]


def _to_uint8(grey: np.ndarray) -> np.ndarray:
    """Round to the nearest grey level (half to even, like torch.round) and clip."""
    return np.clip(np.round(grey), 0, 255).astype(np.uint8)


def gaussian_noise(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
    x = image / 255.0
    noisy = np.clip(x + GAUSSIAN_SIGMA[severity] * params["noise"].astype(np.float64), 0.0, 1.0)
    return _to_uint8(noisy * 255.0)


def speckle_noise(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
    x = image / 255.0
    noisy = np.clip(x + x * SPECKLE_SIGMA[severity] * params["noise"].astype(np.float64), 0.0, 1.0)
    return _to_uint8(noisy * 255.0)


def _poisson_cdf32(mu: float, top: int) -> np.ndarray:
    """P(Poisson(mu) <= k) for k = 0..top, from log-pmfs, rounded to float32 (the documented table)."""
    k = np.arange(top + 1)
    log_pmf = k * math.log(mu) - mu - np.array([math.lgamma(i + 1) for i in k])
    return np.cumsum(np.exp(log_pmf)).astype(np.float32)


def shot_noise(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
    lam = SHOT_PHOTONS[severity]
    u = np.broadcast_to(params["uniform"], image.shape)
    photons = np.zeros(image.shape, dtype=np.int64)
    for grey in np.unique(image):
        if grey == 0:
            continue  # no photons at all: the count is 0
        where = image == grey
        cdf = _poisson_cdf32(grey / 255.0 * lam, lam - 1)
        photons[where] = np.searchsorted(cdf, u[where], side="left")  # inversion: first k with cdf >= u
    # k * 255 / lam is exact at the .5 ties, so floor(+ 0.5) rounds half up exactly
    return np.floor(np.minimum(photons, lam) * 255 / lam + 0.5).astype(np.uint8)


def impulse_noise(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
    amount = IMPULSE_AMOUNT[severity]
    u = params["uniform"][0]
    out = image.copy()
    out[:, u < np.float32(amount / 2)] = 0
    out[:, (u >= np.float32(amount / 2)) & (u < np.float32(amount))] = 255
    return out


def _correlate_reflect(plane: np.ndarray, taps: dict[tuple[int, int], float], radius: int) -> np.ndarray:
    """sum over taps (dy, dx) of weight * plane[y + dy, x + dx], borders reflected (without the edge)."""
    h, w = plane.shape
    padded = np.pad(plane.astype(np.float64), radius, mode="reflect")
    out = np.zeros((h, w))
    for (dy, dx), weight in taps.items():
        out += weight * padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
    return out


def gaussian_blur(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
    side = min(image.shape[1:])
    k = BLUR_KERNEL_224[severity]
    sigma = (0.15 * k + 0.35) * side / 224  # torchvision's sigma of kernel k, scaled to the side
    half = max(1, math.floor((k - 1) / 2 * side / 224 + 0.5))
    x = np.arange(-half, half + 1)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    taps = {(dy, dx): g[dy + half] * g[dx + half] for dy in x for dx in x}
    return np.stack([_to_uint8(_correlate_reflect(plane, taps, half)) for plane in image])


def motion_blur(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
    length = MOTION_LENGTH[severity] * min(image.shape[1:])
    n = math.ceil(length) + 1
    t = np.linspace(-length / 2, length / 2, n)
    theta = math.radians(float(params["angle"]))
    dx, dy = t * math.cos(theta), -t * math.sin(theta)  # points of the segment; rows grow downwards
    radius = math.ceil(length / 2) + 1
    taps = {}
    for row in range(-radius, radius + 1):
        for col in range(-radius, radius + 1):
            # bilinear reading of the image at each point = a tent weight on each pixel around it
            weight = np.mean(np.maximum(0, 1 - np.abs(col - dx)) * np.maximum(0, 1 - np.abs(row - dy)))
            if weight > 0:
                taps[(row, col)] = weight
    return np.stack([_to_uint8(_correlate_reflect(plane, taps, radius)) for plane in image])


def pixelate(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
    _, h, w = image.shape
    factor = PIXELATE_FACTOR[severity]
    small = (max(1, int(w * factor)), max(1, int(h * factor)))
    return np.stack([np.asarray(Image.fromarray(plane).resize(small, Image.BOX).resize((w, h), Image.BOX))
                     for plane in image])


def jpeg(image: np.ndarray, params: dict[str, Any], severity: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image[0]).save(buffer, "JPEG", quality=JPEG_QUALITY[severity])  # films are grey: channel 0
    buffer.seek(0)
    film = np.asarray(Image.open(buffer).convert("L"))
    return np.repeat(film[None], image.shape[0], axis=0)


REFERENCES: dict[str, Reference] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "speckle_noise": speckle_noise,
    "impulse_noise": impulse_noise,
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "pixelate": pixelate,
    "jpeg": jpeg,
}
