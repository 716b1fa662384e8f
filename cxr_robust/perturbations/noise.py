"""Noise perturbations with MedMNIST-C's chest parameters: Gaussian, shot (Poisson), speckle and impulse noise.

Every random field is drawn per image in :meth:`sample_params` as one ``(1, H, W)`` plane and broadcast over the
channels in :meth:`apply`, so a grey film replicated on three channels stays grey. Gaussian and speckle noise are
separate element-wise float32 operations (no reductions, each IEEE-rounded), shot and impulse noise integer
lookups and comparisons: the same pixels on CPU and CUDA. :func:`distinct_channels` and
:func:`replicate_channels`, which compute a replicated grey film once, serve the blur and digital modules too.

Differences from ``medmnistc`` 0.1.0, all deliberate: draws are seeded per (run seed, image id, perturbation,
severity) instead of NumPy's global stream; the result is rounded to the nearest grey level where MedMNIST-C
truncates (``astype(uint8)``, a -0.5 grey-level bias); one field per pixel rather than per channel.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cxr_robust.perturbations.base import Params, Perturbation, image_rngs, params_to, to_uint8

if TYPE_CHECKING:
    import torch

MEDMNISTC_CHEST = "MedMNIST-C chestmnist (medmnistc 0.1.0)"


def distinct_channels(pixels: "torch.Tensor") -> "torch.Tensor":
    """``pixels`` reduced to channel 0, ``(B, 1, H, W)``, when every channel of the batch equals it (grey films
    replicated on C channels: the suite then computes each film once), else ``pixels`` unchanged.

    Every perturbation computes each channel on its own, so an image's pixels are the same whichever way the
    batch goes: the check only saves the work on the copies.
    """
    import torch

    c = pixels.shape[1]
    if c > 1 and torch.equal(pixels[:, 1:], pixels[:, :1].expand(-1, c - 1, -1, -1)):
        return pixels[:, :1]
    return pixels


def replicate_channels(out: "torch.Tensor", like: "torch.Tensor") -> "torch.Tensor":
    """``out`` computed on :func:`distinct_channels` of ``like``, as a new tensor with ``like``'s channels."""
    return out if out.shape == like.shape else out.expand(like.shape).contiguous()


def _normal_planes(image_ids: Sequence[str], run_seed: int, name: str, severity: float, height: int,
                   width: int) -> np.ndarray:
    """One standard-normal ``(1, H, W)`` float32 plane per image, ``(B, 1, H, W)``."""
    out = np.empty((len(image_ids), 1, height, width), dtype=np.float32)
    for rng, plane in zip(image_rngs(image_ids, run_seed, name, severity), out):
        rng.standard_normal(dtype=np.float32, out=plane)
    return out


def _uniform_planes(image_ids: Sequence[str], run_seed: int, name: str, severity: float, height: int,
                    width: int) -> np.ndarray:
    """One uniform [0, 1) ``(1, H, W)`` float32 plane per image, ``(B, 1, H, W)``."""
    out = np.empty((len(image_ids), 1, height, width), dtype=np.float32)
    for rng, plane in zip(image_rngs(image_ids, run_seed, name, severity), out):
        rng.random(dtype=np.float32, out=plane)
    return out


class GaussianNoise(Perturbation):
    """Additive Gaussian noise: ``x + N(0, sigma^2)`` with x = grey / 255, clipped to [0, 1], rounded to uint8.

    Computed in grey levels as ``grey + (255 sigma) z`` (the same up to float rounding), z one standard normal
    per pixel shared by the channels.
    """

    name = "gaussian_noise"
    short = "gauss_noise"
    group = "noise"
    description = "additive Gaussian noise of standard deviation sigma (intensity in [0, 1])"
    unit = "level"
    parameter_name = "sigma (intensity, [0, 1])"
    levels = {1: 0.04, 2: 0.08, 3: 0.12, 4: 0.18, 5: 0.26}
    source = MEDMNISTC_CHEST

    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        return {"noise": _normal_planes(image_ids, run_seed, self.name, severity, height, width)}

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        import torch

        z = params_to(params, pixels.device)["noise"]
        scale = torch.tensor(255.0 * self.levels[int(severity)], dtype=torch.float32, device=pixels.device)
        return replicate_channels(to_uint8(distinct_channels(pixels).float() + z * scale), pixels)


class SpeckleNoise(Perturbation):
    """Multiplicative (speckle) noise: ``x + x N(0, sigma^2)``, clipped to [0, 1], rounded to uint8.

    Computed in grey levels as ``grey + grey (sigma z)``, z one standard normal per pixel shared by the channels.
    """

    name = "speckle_noise"
    short = "speckle"
    group = "noise"
    description = "multiplicative Gaussian noise x + x N(0, sigma^2) (intensity in [0, 1])"
    unit = "level"
    parameter_name = "sigma (relative, of x)"
    levels = {1: 0.05, 2: 0.15, 3: 0.20, 4: 0.35, 5: 0.45}
    source = MEDMNISTC_CHEST

    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        return {"noise": _normal_planes(image_ids, run_seed, self.name, severity, height, width)}

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        import torch

        z = params_to(params, pixels.device)["noise"]
        sigma = torch.tensor(self.levels[int(severity)], dtype=torch.float32, device=pixels.device)
        grey = distinct_channels(pixels).float()
        return replicate_channels(to_uint8(grey + grey * (z * sigma)), pixels)


@functools.lru_cache(maxsize=16)
def poisson_tables(lam: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-CDF tables of shot noise with ``lam`` photons at full intensity.

    Returns ``cdf`` (256, 2^b) float32 with 2^b > lam: ``cdf[g, j] = P(Poisson(g lam / 255) <= j)`` for j < lam
    and 2.0 (above any uniform) from j = lam on; and ``grey`` (lam + 1,) uint8: the output grey level of k
    photons, ``k * 255 / lam`` rounded half up in exact integer arithmetic (k = lam stands for every k >= lam,
    which the clip to 1 maps to 255).
    """
    mu = np.arange(256, dtype=np.float64) * lam / 255.0
    pmf = np.empty((256, lam), dtype=np.float64)
    pmf[:, 0] = np.exp(-mu)
    for j in range(1, lam):  # p(j) = p(j - 1) mu / j: accurate for the few dozen photons used here
        pmf[:, j] = pmf[:, j - 1] * mu / j
    cdf = np.full((256, 1 << lam.bit_length()), 2.0, dtype=np.float32)
    cdf[:, :lam] = np.cumsum(pmf, axis=1)
    k = np.arange(lam + 1, dtype=np.int64)
    return cdf, ((510 * k + lam) // (2 * lam)).astype(np.uint8)


class ShotNoise(Perturbation):
    """Shot (Poisson) noise: ``Poisson(x lam) / lam`` with x = grey / 255, clipped to [0, 1], rounded to uint8.

    The Poisson count of each pixel is drawn by inversion, ``k = min{k : P(Poisson(x lam) <= k) >= u}``, from a
    uniform u per pixel drawn in :meth:`sample_params` (shared by the channels): the exact Poisson law (its CDF
    tabulated in float32), with draws that do not depend on the image, as the protocol requires. Counts of
    ``lam`` or more all clip to 255, so the table stops there; k photons give ``k * 255 / lam`` rounded half up
    exactly (:func:`poisson_tables`). The inversion is a branch-free binary search of the table (integer
    arithmetic, lookups and comparisons: identical on every device).
    """

    name = "shot_noise"
    short = "shot_noise"
    group = "noise"
    description = "Poisson photon noise with lam photons at full intensity (fewer photons: more noise)"
    unit = "level"
    parameter_name = "photons at full intensity (lambda)"
    levels = {1: 60, 2: 25, 3: 18, 4: 10, 5: 5}
    source = MEDMNISTC_CHEST

    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        return {"uniform": _uniform_planes(image_ids, run_seed, self.name, severity, height, width)}

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        import torch

        lam = self.levels[int(severity)]
        u = params_to(params, pixels.device)["uniform"]
        cdf_np, grey_np = poisson_tables(lam)
        bits = cdf_np.shape[1].bit_length() - 1
        cdf = torch.from_numpy(cdf_np).to(pixels.device).reshape(-1)
        row = distinct_channels(pixels).long() << bits
        # count = #{j : cdf[g, j] < u}, found by binary lifting over the 2^bits sorted entries of the row
        count = torch.zeros_like(row)
        for step in (1 << shift for shift in reversed(range(bits))):
            count += (torch.take(cdf, row.add(count).add_(step - 1)) < u) * step
        return replicate_channels(torch.from_numpy(grey_np).to(pixels.device)[count], pixels)


class ImpulseNoise(Perturbation):
    """Salt-and-pepper noise: each pixel independently becomes 0 (pepper) with probability ``amount / 2`` and
    255 (salt) with probability ``amount / 2``, like scikit-image's ``random_noise(mode="s&p")`` (a Bernoulli
    share ``amount`` of pixels, half salt, half pepper).

    One uniform u per pixel decides (pepper if u < amount / 2, salt if u < amount), shared by the channels.
    """

    name = "impulse_noise"
    short = "impulse"
    group = "noise"
    description = "salt-and-pepper noise: a share of pixels set to black or white, half each"
    unit = "level"
    parameter_name = "share of pixels replaced (amount)"
    levels = {1: 0.01, 2: 0.03, 3: 0.06, 4: 0.09, 5: 0.17}
    source = MEDMNISTC_CHEST + ", scikit-image s&p semantics"

    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        return {"uniform": _uniform_planes(image_ids, run_seed, self.name, severity, height, width)}

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        import torch

        u = params_to(params, pixels.device)["uniform"]
        amount = self.levels[int(severity)]
        # float32 thresholds, the precision of u (torch compares a float32 tensor in float32 anyway)
        pepper = u < np.float32(amount / 2)
        salt = u < np.float32(amount)
        out = torch.where(pepper, 0, torch.where(salt, 255, distinct_channels(pixels)))
        return replicate_channels(out, pixels)
