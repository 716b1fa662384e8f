"""Digital perturbations with MedMNIST-C's chest parameters: pixelation and JPEG compression.

Both reproduce MedMNIST-C's PIL pipeline pixel for pixel on greyscale ("L") films: :class:`Pixelate` emulates
PIL's BOX resampling including its fixed-point rounding, and :class:`JpegCompression` runs libjpeg (through
torchvision) with the settings PIL uses, which writes the same bytes as PIL.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

import numpy as np

from cxr_robust.perturbations.base import Params, Perturbation
from cxr_robust.perturbations.noise import distinct_channels, replicate_channels

if TYPE_CHECKING:
    import torch

MEDMNISTC_CHEST = "MedMNIST-C chestmnist (medmnistc 0.1.0)"
PRECISION_BITS = 22
"""PIL's fixed-point precision for 8-bit resampling (``32 - 8 - 2`` in Resample.c)."""


@functools.lru_cache(maxsize=64)
def pil_box_boxes(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PIL's BOX resampling of one axis from ``in_size`` to ``out_size`` samples: output sample o averages the
    input samples ``first[o] .. stop[o] - 1`` with PIL's fixed-point weight ``coeff[o]`` each (all int64).

    The arithmetic follows ``precompute_coeffs`` in PIL's Resample.c step for step (same float64 operations),
    so the boxes are PIL's at every size: down-scaling takes the samples whose centres fall inside the box;
    up-scaling (support 0.5 input samples) takes the one sample under the output centre, weight exactly 1.
    ``coeff`` is PIL's ``(int)(0.5 + 2^22 / samples in the box)``.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    first = np.zeros(out_size, dtype=np.int64)
    stop = np.zeros(out_size, dtype=np.int64)
    coeff = np.zeros(out_size, dtype=np.int64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        samples = np.arange(max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size))
        arg = (samples - center + 0.5) * (1.0 / filterscale)
        inside = samples[(arg > -0.5) & (arg <= 0.5)]  # a contiguous run: arg grows with the sample
        first[out], stop[out] = inside[0], inside[-1] + 1
        coeff[out] = int(0.5 + 1.0 / len(inside) * (1 << PRECISION_BITS))
    return first, stop, coeff


def _box_pass(values: "torch.Tensor", out_size: int, dim: int) -> "torch.Tensor":
    """One PIL BOX pass along ``dim`` (-1 or -2) of integer grey levels ``values``, in integer arithmetic (exact
    on every device): up-scaling copies samples; down-scaling takes box sums from a cumulative sum and PIL's
    fixed-point mean ``(coeff * sum + 2^21) >> 22``, clipped to 0-255 (int32)."""
    import torch
    import torch.nn.functional as F

    first, stop, coeff = (torch.from_numpy(a).to(values.device) for a in pil_box_boxes(values.shape[dim], out_size))
    if out_size >= values.shape[dim]:
        return values.index_select(dim, first)
    coeff = coeff.to(torch.int32)  # coeff * sum + 2^21 <= 255 * 2^22 + 2^21 + 128 * box < 2^31: exact in int32
    # cumsum[i]: the sum of the first i samples along dim (a zero prepended), so box o sums to
    # cumsum[stop[o]] - cumsum[first[o]]
    cumsum = F.pad(values.cumsum(dim, dtype=torch.int32), (1, 0) if dim == -1 else (0, 0, 1, 0))
    if dim == -1:  # advanced indexing: faster than index_select on CPU
        sums = cumsum[..., stop] - cumsum[..., first]
    else:
        sums, coeff = cumsum[..., stop, :] - cumsum[..., first, :], coeff[:, None]
    return ((sums * coeff + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp_(0, 255)


def pil_box_resize(values: "torch.Tensor", height: int, width: int) -> "torch.Tensor":
    """Integer grey levels ``values`` (..., H, W) resized like PIL ``Image.resize((width, height), Image.BOX)``
    on an "L" image: a horizontal pass, rounded to integers, then a vertical pass (PIL's order)."""
    return _box_pass(_box_pass(values, width, -1), height, -2)


class Pixelate(Perturbation):
    """Pixelation as MedMNIST-C: PIL BOX down-scaling to ``int(side * factor)`` px, then BOX up-scaling back.

    Down-scaling averages the pixels whose centres fall in each box (boxes of ``1 / factor`` px, so the blocks
    are the same share of the film at every input size); up-scaling with BOX is nearest-neighbour (each output
    pixel copies the small-image pixel under its centre). Both passes are emulated exactly, PIL's fixed-point
    rounding included (:func:`pil_box_resize`), in integer arithmetic: identical pixels on every device. Each
    channel is resized on its own, as PIL does.
    """

    name = "pixelate"
    short = "pixelate"
    group = "digital"
    description = "pixelation: box down-scaling by a factor, then nearest up-scaling (PIL BOX both ways)"
    unit = "level"
    parameter_name = "resize factor (small side / side)"
    levels = {1: 0.30, 2: 0.25, 3: 0.20, 4: 0.15, 5: 0.10}
    source = MEDMNISTC_CHEST

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        import torch

        _, _, h, w = pixels.shape
        factor = self.levels[int(severity)]
        # MedMNIST-C's int(size * factor); at least 1 px so tiny inputs stay valid
        small = pil_box_resize(distinct_channels(pixels), max(1, int(h * factor)), max(1, int(w * factor)))
        return replicate_channels(pil_box_resize(small.to(torch.uint8), h, w), pixels)


class JpegCompression(Perturbation):
    """JPEG compression as MedMNIST-C: encode at a quality, decode, with libjpeg's baseline settings.

    Films are greyscale, so each image is encoded as a one-channel (greyscale) JPEG: a ``C == 1`` image as is,
    and a ``C == 3`` image (the same film on every channel) from channel 0, the decoded film then replicated on
    the three channels. torchvision's ``encode_jpeg`` / ``decode_jpeg`` on CPU give the same bytes and pixels as
    PIL's ``save(..., "JPEG", quality=q)`` / ``open``. The codec always runs on CPU (nvjpeg on CUDA decodes to
    different pixels) and the result moves back to the input's device. The codec call takes a list of images,
    one JPEG each, the one per-image loop of the suite: JPEG has no batched form.
    """

    name = "jpeg"
    short = "jpeg"
    group = "digital"
    description = "JPEG compression at decreasing quality (greyscale JPEG, libjpeg quality scale)"
    unit = "level"
    parameter_name = "JPEG quality (1-100)"
    levels = {1: 50, 2: 30, 3: 15, 4: 10, 5: 7}
    source = MEDMNISTC_CHEST

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

        films = pixels[:, :1].cpu().contiguous()
        with warnings.catch_warnings():
            # torchvision 0.29 announces a move of its codecs to TorchCodec; the libjpeg calls are unchanged and
            # a test pins their output to PIL's, so a removal would fail loudly rather than change pixels.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision.io")
            encoded = encode_jpeg(list(films), quality=self.levels[int(severity)])
            decoded = torch.stack(decode_jpeg(encoded, mode=ImageReadMode.GRAY))
        return replicate_channels(decoded, pixels).to(pixels.device)
