"""Batched occlusion of 1,770 model-input images against a per-image PIL implementation (same boxes).

Ratio measured in the same run; pytest-benchmark records absolute times.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cxr_robust.occlusion import occlude_batch, sample_boxes

pytestmark = pytest.mark.benchmark
M, S = 1770, 224


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, np.ndarray]:
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (M, 3, S, S), dtype=np.uint8))
    boxes = sample_boxes([f"img{i}" for i in range(M)], 0.25, 0, S, S)
    return pixels, boxes


def pil_occlude(pixels: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """The naive way: per image, to PIL, draw a black rectangle, back to a tensor."""
    out = []
    for img, (top, left, size) in zip(pixels.numpy(), boxes):
        pil = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
        if size:
            ImageDraw.Draw(pil).rectangle((left, top, left + size - 1, top + size - 1), fill=(0, 0, 0))
        out.append(torch.from_numpy(np.asarray(pil).transpose(2, 0, 1).copy()))
    return torch.stack(out)


def test_batched_occlusion_vs_per_image_pil(benchmark, batch) -> None:
    pixels, boxes = batch
    ours = benchmark(occlude_batch, pixels, boxes)
    t0 = time.perf_counter()
    naive = pil_occlude(pixels, boxes)
    naive_s = time.perf_counter() - t0
    assert torch.equal(ours, naive)  # identical pixels: the speed-up changes nothing in the result
    best = min(benchmark.stats.stats.data)
    benchmark.extra_info.update(pil_s=naive_s, speedup=naive_s / best)
    print(f"\nocclusion of {M} images at 25 %: batched {best * 1e3:.0f} ms, per-image PIL {naive_s * 1e3:.0f} ms, "
          f"speed-up {naive_s / best:.1f}x")
    assert naive_s / best > 1.0
