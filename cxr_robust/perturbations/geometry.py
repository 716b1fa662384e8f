"""Geometry perturbations of a chest film: patient tilt, collimator shutters, and a mirrored film.

None of these has a published parameterisation for chest X-rays (see /work/shared/reference/PERTURBATIONS.md);
the levels are this project's and each class says why.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cxr_robust.perturbations.base import Params, Perturbation, derive_seed, image_rngs, params_to

if TYPE_CHECKING:
    import torch


def pil_rotation_matrix(angle: float, width: int, height: int) -> list[float]:
    """The inverse affine matrix ``(a, b, c, d, e, f)`` PIL's ``Image.rotate(angle)`` samples with.

    Output pixel centre ``(x + 0.5, y + 0.5)`` reads the input at ``(a x' + b y' + c, d x' + e y' + f)``;
    computed with PIL's own Python arithmetic (including its ``round(..., 15)``) so the coordinates match.
    """
    cx, cy = width / 2, height / 2
    rad = -math.radians(angle)
    m = [round(math.cos(rad), 15), round(math.sin(rad), 15), 0.0,
         round(-math.sin(rad), 15), round(math.cos(rad), 15), 0.0]
    m[2] = m[0] * -cx + m[1] * -cy + m[2] + cx
    m[5] = m[3] * -cx + m[4] * -cy + m[5] + cy
    return m


def _affine_taps(m: list[float], h: int, w: int, device: "torch.device") -> tuple["torch.Tensor", ...]:
    """For one inverse matrix: the flat indices of the 2 x 2 neighbours ``(4, H*W)``, the fractions ``dx``,
    ``dy`` ``(H*W,)`` and the ``inside`` mask ``(H*W,)`` of every output pixel, as PIL's ``Geometry.c``."""
    import torch

    xs = torch.arange(w, device=device, dtype=torch.float64).view(1, w) + 0.5
    ys = torch.arange(h, device=device, dtype=torch.float64).view(h, 1) + 0.5
    xin = m[0] * xs + m[1] * ys + m[2]  # PIL's evaluation order, in double precision
    yin = m[3] * xs + m[4] * ys + m[5]
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    xin, yin = xin - 0.5, yin - 0.5
    x0, y0 = xin.floor(), yin.floor()
    dx, dy = xin - x0, yin - y0
    x0, y0 = x0.to(torch.int64), y0.to(torch.int64)
    xa, xb = x0.clamp(0, w - 1), (x0 + 1).clamp(0, w - 1)  # PIL clamps neighbours to the image
    ya, yb = y0.clamp(0, h - 1) * w, (y0 + 1).clamp(0, h - 1) * w
    taps = torch.stack([(ya + xa), (ya + xb), (yb + xa), (yb + xb)]).view(4, h * w)
    return taps, dx.view(-1), dy.view(-1), inside.view(-1)


def pil_bilinear_affine(pixels: "torch.Tensor", matrix: "torch.Tensor") -> "torch.Tensor":
    """PIL's ``Image.transform(AFFINE, resample=BILINEAR)`` (black fill) of a ``uint8 (B, C, H, W)`` batch.

    ``matrix`` is ``float64 (B, 6)``, one inverse matrix per image. Like PIL (``Geometry.c``): an output pixel
    whose source point lies outside ``[0, W) x [0, H)`` is 0; otherwise its 2 x 2 neighbours (indices clamped
    to the image) are interpolated in double precision, x first, and truncated. Every operation is elementwise
    or an index in float64 (no reduction, no matrix product, no fused multiply-add), so a pixel is the same
    whatever the batch size or order, and IEEE float64 gives the same on CUDA.

    Two shortcuts change no bit: the sampling grid is built once per *distinct* matrix (a rotation level has
    two, +-angle), and a batch whose channels are all equal (replicated grey) is resampled on one channel.
    """
    import torch

    b, c, h, w = pixels.shape
    if c > 1 and bool((pixels[:, 1:] == pixels[:, :1]).all()):
        return pil_bilinear_affine(pixels[:, :1], matrix).expand(b, c, h, w).contiguous()
    distinct, which = torch.unique(matrix.to(torch.float64).cpu(), dim=0, return_inverse=True)
    which = which.to(pixels.device)
    out = torch.empty_like(pixels)
    for k, m in enumerate(distinct.tolist()):
        taps, dx, dy, inside = _affine_taps(m, h, w, pixels.device)
        chosen = which == k
        values = pixels[chosen].reshape(-1, h * w)
        upper = values.index_select(1, taps[0]).to(torch.float64)
        upper += (values.index_select(1, taps[1]).to(torch.float64) - upper).mul_(dx)
        lower = values.index_select(1, taps[2]).to(torch.float64)
        lower += (values.index_select(1, taps[3]).to(torch.float64) - lower).mul_(dx)
        upper += (lower - upper).mul_(dy)
        # values lie in [0, 255], so the cast truncates exactly like PIL's (UINT8) cast
        out[chosen] = upper.mul_(inside).to(torch.uint8).view(-1, c, h, w)
    return out


class Rotation(Perturbation):
    """Patient tilt: each film rotated about its centre by the level's angle, clockwise or counter-clockwise at
    random per image, bilinear, with black corners; exactly PIL's ``Image.rotate(angle, BILINEAR)``.

    ``sample_params`` draws the sign (one uniform per image) and returns the signed ``angle`` in degrees
    (counter-clockwise positive, PIL's convention) and PIL's inverse ``matrix``. The resampling is written out
    (:func:`pil_bilinear_affine`) rather than kornia's ``rotate`` / ``grid_sample``, whose float32 weighted sum
    of four neighbours lands below whole grey levels in flat regions and whose zero padding darkens the rotated
    film's edges; the float64 gather reproduces PIL bit for bit, batch-size independent.
    """

    name = "rotation"
    short = "rotate"
    group = "geometry"
    description = "patient tilt: rotation by 2-10 degrees about the centre, random sign, bilinear, black corners"
    unit = "level"
    parameter_name = "rotation angle (degrees; sign random per image)"
    levels = {1: 2.0, 2: 4.0, 3: 6.0, 4: 8.0, 5: 10.0}
    source = ("this project: routine PA/AP films are tilted by a few degrees; 2-degree steps reach 10 degrees, "
              "the usual upper bound of rotation augmentation for chest X-ray models")

    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        magnitude = self.levels[int(severity)]
        angles = np.array([magnitude if rng.random() < 0.5 else -magnitude
                           for rng in image_rngs(image_ids, run_seed, self.name, severity)], dtype=np.float64)
        matrix = np.array([pil_rotation_matrix(a, width, height) for a in angles], dtype=np.float64)
        return {"angle": angles, "matrix": matrix.reshape(len(angles), 6)}

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        return pil_bilinear_affine(pixels, params_to(params, pixels.device)["matrix"])


class Collimation(Perturbation):
    """Collimator shutters: everything outside an axis-aligned window set to black; the window keeps the level's
    share of the image area (90 % down to 50 %).

    Per image, ``sample_params`` splits the lost area between the two axes (rows keep ``share ** u`` of the
    height, ``u`` uniform in [0.2, 0.8], so both shutter pairs always close in), sets the width so that the
    window's area is the share to within half a column, and places the window uniformly, which splits each
    axis' loss at random between its two sides. ``window`` is ``int64 (B, 4)``: top, bottom, left, right
    (bottom and right exclusive). A mask, no resampling: exact on every device.
    """

    name = "collimation"
    short = "collim"
    group = "geometry"
    description = "collimator shutters: black borders keeping 90-50 % of the area, split at random between sides"
    unit = "level"
    parameter_name = "share of the image area kept"
    levels = {1: 0.90, 2: 0.80, 3: 0.70, 4: 0.60, 5: 0.50}
    source = ("this project: tight collimation on chest films trims the lung apices, bases or lateral edges; "
              "keeping 90 % down to half of the field spans a slightly tight to a badly coned exposure")

    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        share = self.levels[int(severity)]
        windows = []
        for rng in image_rngs(image_ids, run_seed, self.name, severity):
            rows = min(height, max(1, round(height * share ** rng.uniform(0.2, 0.8))))
            cols = min(width, max(1, round(share * height * width / rows)))  # guards only bind on tiny images
            top = int(rng.integers(0, height - rows + 1))
            left = int(rng.integers(0, width - cols + 1))
            windows.append((top, top + rows, left, left + cols))
        return {"window": np.array(windows, dtype=np.int64).reshape(len(windows), 4)}

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        import torch

        window = params_to(params, pixels.device)["window"]
        _, _, h, w = pixels.shape
        rows = torch.arange(h, device=pixels.device).view(1, h)
        cols = torch.arange(w, device=pixels.device).view(1, w)
        keep_rows = (rows >= window[:, 0:1]) & (rows < window[:, 1:2])
        keep_cols = (cols >= window[:, 2:3]) & (cols < window[:, 3:4])
        keep = keep_rows[:, None, :, None] & keep_cols[:, None, None, :]
        return pixels * keep  # a uint8 x bool product: 6-30x faster than masked_fill / where on CPU


class LateralFlip(Perturbation):
    """A left-right mirrored film: the heart on the wrong side, clinically a different image (a dextrocardia or
    situs inversus look-alike), used as a sanity probe rather than a nuisance.

    Severity is the share of images flipped (20 % to 100 %). Each image has one uniform draw ``u`` from a
    stream seeded by (run seed, image id, name) *without* the severity (``derive_seed`` with severity 0, which
    is never sampled), and is flipped when ``u < share``: the flipped set of a level contains that of every
    lower level, and level 5 flips every image. ``flip`` is ``bool (B,)``. Exact on every device.
    """

    name = "lateral_flip"
    short = "flip"
    group = "geometry"
    description = "left-right mirrored film (heart on the right), for a share of images: a sanity probe"
    unit = "level"
    parameter_name = "share of images flipped"
    levels = {1: 0.2, 2: 0.4, 3: 0.6, 4: 0.8, 5: 1.0}
    source = ("this project: a mirrored film is a different clinical image, so the share of flipped images "
              "(nested across levels) scales how much of the set carries the wrong anatomy")

    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        share = self.levels[int(severity)]
        draws = np.array([np.random.default_rng(derive_seed(run_seed, iid, self.name, 0)).random()
                          for iid in image_ids], dtype=np.float64)
        return {"flip": draws < share}

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        flip = params_to(params, pixels.device)["flip"]
        out = pixels.clone()
        out[flip] = pixels[flip].flip(-1)
        return out
