"""Blur perturbations: MedMNIST-C's Gaussian blur scaled to the model input, and a seeded linear motion blur.

Both filter with reflected borders (torchvision's ``gaussian_blur`` border) so film edges do not darken, and
both filter a grey film replicated on three channels once (:func:`distinct_channels`). Every image plane is
one group of a depthwise convolution (``kornia.filters.filter2d`` with one kernel per plane), which on CPU
gives bit-identical pixels whatever the batch size, order or thread count (checked by the tests).

Device: on CUDA the convolutions run in float64 because cuDNN may use TF32 for float32 convolutions (allowed by
default), which would move pixels by a grey level; CPU float32 and CUDA float64 then differ by one grey level
on the rare pixels whose value lands within float32 rounding of a .5.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cxr_robust.perturbations.base import Params, Perturbation, image_rngs, params_to, to_uint8
from cxr_robust.perturbations.noise import distinct_channels, replicate_channels

if TYPE_CHECKING:
    import torch

REFERENCE_SIDE = 224
"""The image side MedMNIST-C's blur kernels were defined for (MedMNIST+ 224 px images)."""


def _planes(pixels: "torch.Tensor") -> "torch.Tensor":
    """The planes to filter, ``(N, 1, H, W)``: the :func:`distinct_channels` of every image, float64 on CUDA
    (see the module docstring), else float32. Each becomes one group of a depthwise convolution."""
    import torch

    films = distinct_channels(pixels)
    return films.reshape(-1, 1, *films.shape[2:]).to(torch.float64 if pixels.is_cuda else torch.float32)


def _filter(planes: "torch.Tensor", kernels: "torch.Tensor") -> "torch.Tensor":
    """Each plane ``(N, 1, H, W)`` correlated with its kernel ``(N, K, K)``, reflected borders, as one depthwise
    convolution. A lone plane is filtered as two copies: PyTorch runs a one-group convolution through another
    CPU kernel whose sums round differently (seen with 3 x 3 kernels), which would make a batch of one differ."""
    from kornia.filters import filter2d

    if planes.shape[0] == 1:
        return filter2d(planes.expand(2, -1, -1, -1), kernels.expand(2, -1, -1), border_type="reflect")[:1]
    return filter2d(planes, kernels, border_type="reflect")


def _restore(planes: "torch.Tensor", like: "torch.Tensor") -> "torch.Tensor":
    """Filtered ``planes`` from :func:`_planes` back to ``like``'s uint8 ``(B, C, H, W)`` shape."""
    b, _, h, w = like.shape
    return replicate_channels(to_uint8(planes).reshape(b, -1, h, w), like)


@functools.lru_cache(maxsize=64)
def gaussian_kernel(side: int, kernel_224: int) -> tuple[int, float, np.ndarray]:
    """(kernel size, sigma in px, normalised float32 1-D weights) of MedMNIST-C's ``kernel_224`` at ``side`` px.

    sigma is torchvision's rule for the 224 px kernel, ``0.15 k + 0.35``, times ``side / 224``; the half-width
    ``(k - 1) / 2`` is scaled the same way and rounded half up, at least 1 (a 3-tap kernel).
    """
    scale = side / REFERENCE_SIDE
    sigma = (0.15 * kernel_224 + 0.35) * scale
    half = max(1, math.floor((kernel_224 - 1) / 2 * scale + 0.5))
    x = np.arange(-half, half + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    return 2 * half + 1, sigma, (weights / weights.sum()).astype(np.float32)


class GaussianBlur(Perturbation):
    """Gaussian blur with MedMNIST-C's kernels (torchvision ``gaussian_blur``), scaled to the input size.

    The levels are MedMNIST-C's kernel sizes k = 3, 5, 7, 9, 11 with torchvision's sigma ``0.15 k + 0.35`` px,
    defined for 224 px images. At a side of S px (the smaller side) the blur keeps its size relative to the
    film: sigma is multiplied by S / 224 and so is the kernel half-width ``(k - 1) / 2`` (rounded half up, at
    least 1). At 224 px this is exactly MedMNIST-C's kernel; at 128 px sigma is 0.46-1.14 px with 3-7 taps; at
    320 px 1.14-2.86 px with 3-15 taps (:func:`gaussian_kernel`). The 2-D kernel is the outer product of the
    1-D weights, applied with reflected borders and rounded to the nearest grey level.
    """

    name = "gaussian_blur"
    short = "gauss_blur"
    group = "blur"
    description = "Gaussian blur, MedMNIST-C kernel sizes scaled with the image side"
    unit = "level"
    parameter_name = "kernel size at 224 px (sigma = 0.15 k + 0.35 px; both scaled by side / 224)"
    levels = {1: 3, 2: 5, 3: 7, 4: 9, 5: 11}
    source = "MedMNIST-C chestmnist (medmnistc 0.1.0); scaling with the image side: this project"

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        import torch

        _, _, h, w = pixels.shape
        _, _, weights = gaussian_kernel(min(h, w), self.levels[int(severity)])
        planes = _planes(pixels)
        one_d = torch.from_numpy(weights).to(device=planes.device, dtype=planes.dtype)
        # one copy of the kernel per plane: a depthwise convolution, much faster on CPU than a 1-channel one
        kernel = torch.outer(one_d, one_d).expand(planes.shape[0], -1, -1)
        return _restore(_filter(planes, kernel), pixels)


def motion_kernels(angles: np.ndarray, length: float) -> np.ndarray:
    """Per-image line kernels ``(B, K, K)`` float32: the mean of the image over a centred segment of ``length``
    px at ``angles`` (degrees, counter-clockwise from the image's horizontal as displayed).

    The segment is sampled at ``n = ceil(length) + 1`` evenly spaced points (spacing < 1 px, both ends
    included), each read with bilinear interpolation, i.e. splatted onto its 4 neighbouring taps with weight
    ``1 / n``; K = 2 floor(length / 2) + 3 holds every splat. Correlating an image with it (K is centrally
    symmetric, so convolution is the same) gives the mean of those samples.
    """
    n = math.ceil(length) + 1
    radius = math.floor(length / 2) + 1
    size = 2 * radius + 1
    t = np.linspace(-length / 2, length / 2, n)
    theta = np.deg2rad(np.asarray(angles, dtype=np.float64))
    dx = t[None, :] * np.cos(theta)[:, None]
    dy = -t[None, :] * np.sin(theta)[:, None]  # rows grow downwards
    ix, iy = np.floor(dx), np.floor(dy)
    fx, fy = dx - ix, dy - iy
    col, row = ix.astype(np.int64) + radius, iy.astype(np.int64) + radius
    kernels = np.zeros((len(theta), size * size), dtype=np.float64)
    image = np.repeat(np.arange(len(theta)), n).reshape(len(theta), n)
    for drow, dcol, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)),
                               (1, 1, fy * fx)):
        np.add.at(kernels, (image, (row + drow) * size + col + dcol), weight / n)
    return kernels.reshape(len(theta), size, size).astype(np.float32)


class MotionBlur(Perturbation):
    """Linear motion blur: each pixel becomes the mean of the film along a centred segment at a random angle.

    The segment length is a fraction of the image side (the smaller side, so the blur is the same share of the
    film at 128, 224 or 320 px), 2 % at level 1 to 10 % at level 5; the angle is uniform in [0, 180) degrees,
    drawn per image in :meth:`sample_params`, which also builds each image's kernel (:func:`motion_kernels`,
    in float64 NumPy then float32, so the kernel is the same on every device). :meth:`apply` correlates each
    image with its own kernel in one grouped convolution (``kornia.filters.filter2d``), reflected borders.
    """

    name = "motion_blur"
    short = "motion_blur"
    group = "blur"
    description = "linear motion blur along a random direction, length a fraction of the image side"
    unit = "level"
    parameter_name = "blur length (fraction of the image side)"
    levels = {1: 0.02, 2: 0.04, 3: 0.06, 4: 0.08, 5: 0.10}
    source = ("this project: MedMNIST-C has no chest motion blur and ImageNet-C's needs ImageMagick; a uniform "
              "centred segment of 2-10 % of the side (4.5-22 px at 224 px), about ImageNet-C's extents")

    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        angles = np.array([rng.uniform(0.0, 180.0) for rng in image_rngs(image_ids, run_seed, self.name, severity)],
                          dtype=np.float64)
        length = self.levels[int(severity)] * min(height, width)
        return {"angle": angles, "kernel": motion_kernels(angles, length)}

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        planes = _planes(pixels)
        kernels = params_to(params, pixels.device)["kernel"].to(planes.dtype)
        kernels = kernels.repeat_interleave(planes.shape[0] // kernels.shape[0], dim=0)  # one per channel plane
        return _restore(_filter(planes, kernels), pixels)
