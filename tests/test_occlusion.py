"""Invariants of the occluder (hypothesis) and a statistical check that box positions are uniform."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chisquare

from cxr_robust import PAPER_RATIOS
from cxr_robust.occlusion import (
    Box,
    apply_box,
    box_side,
    derive_seed,
    occlude_batch,
    sample_box,
    sample_boxes,
)

sides = st.integers(min_value=20, max_value=96)
ratios = st.floats(min_value=0.0, max_value=0.999, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**63 - 1)


def _box_fits(side: int, ratio: float) -> bool:
    return ratio == 0 or round(math.sqrt(ratio) * side) >= 1


@given(side=sides, ratio=ratios, seed=seeds)
def test_box_lies_inside_and_has_requested_area(side: int, ratio: float, seed: int) -> None:
    if not _box_fits(side, ratio):
        with pytest.raises(ValueError, match="too small"):
            sample_box(side, side, ratio, seed)
        return
    box = sample_box(side, side, ratio, seed)
    assert 0 <= box.top and box.top + box.size <= side
    assert 0 <= box.left and box.left + box.size <= side
    assert box.size == round(math.sqrt(ratio) * side)
    # The realised area is within one row/column of rounding of the requested area.
    assert abs(box.area / side**2 - ratio) <= (2 * math.sqrt(ratio) * side + 1) / side**2 + 1e-12


@given(side=sides, ratio=ratios, seed=seeds, fill=st.integers(0, 255), channels=st.sampled_from([1, 3]))
def test_apply_changes_exactly_the_box(side: int, ratio: float, seed: int, fill: int, channels: int) -> None:
    if not _box_fits(side, ratio):
        return
    rng = np.random.default_rng(seed % 2**32)
    image = rng.integers(0, 256, size=(channels, side, side), dtype=np.uint8)
    before = image.copy()
    box = sample_box(side, side, ratio, seed)
    out = apply_box(image, box, fill=fill)
    inside = np.zeros((side, side), dtype=bool)
    inside[box.top:box.top + box.size, box.left:box.left + box.size] = True
    assert out.shape == image.shape and out.dtype == image.dtype
    assert (out[:, ~inside] == image[:, ~inside]).all()
    assert (out[:, inside] == fill).all()
    assert np.array_equal(image, before)  # the input is never modified


@given(image_id=st.text(min_size=1, max_size=20), ratio=st.sampled_from(PAPER_RATIOS[1:]), seed=seeds)
def test_same_inputs_same_box(image_id: str, ratio: float, seed: int) -> None:
    a = sample_box(224, 224, ratio, derive_seed(seed, image_id, ratio))
    b = sample_box(224, 224, ratio, derive_seed(seed, image_id, ratio))
    assert a == b


def test_different_image_ids_give_different_boxes() -> None:
    ids = [f"img-{i}" for i in range(200)]
    boxes = sample_boxes(ids, 0.04, run_seed=7, height=224, width=224)
    distinct = {tuple(b) for b in boxes.tolist()}
    assert len(distinct) >= 190  # 180x180 positions: collisions are rare, never systematic
    other_seed = sample_boxes(ids, 0.04, run_seed=8, height=224, width=224)
    assert (boxes != other_seed).any(axis=1).mean() > 0.95


@given(seed=seeds, ratio=st.sampled_from(PAPER_RATIOS), batch=st.integers(1, 6),
       channels=st.sampled_from([1, 3]), fill=st.integers(0, 255))
def test_batched_equals_per_image(seed: int, ratio: float, batch: int, channels: int, fill: int) -> None:
    rng = np.random.default_rng(seed % 2**32)
    images = rng.integers(0, 256, size=(batch, channels, 40, 40), dtype=np.uint8)
    ids = [f"s{seed}-{i}" for i in range(batch)]
    boxes = sample_boxes(ids, ratio, seed, 40, 40)
    batched = occlude_batch(torch.from_numpy(images), boxes, fill=fill)
    for i in range(batch):
        expected = apply_box(images[i], Box(*boxes[i].tolist()), fill=fill)
        assert np.array_equal(batched[i].numpy(), expected)
    assert batched.dtype == torch.uint8 and batched.shape == images.shape


def test_batched_preserves_float_dtype_and_device() -> None:
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    out = occlude_batch(x, sample_boxes(["a", "b", "c"], 0.25, 0, 32, 32), fill=0.5)
    assert out.dtype == torch.float64 and out.device == x.device
    assert not torch.equal(out, x)
    if torch.cuda.is_available():  # pragma: no cover - exercised on GPU machines
        gpu = occlude_batch(x.cuda(), sample_boxes(["a", "b", "c"], 0.25, 0, 32, 32), fill=0.5)
        assert torch.equal(gpu.cpu(), out)


@given(seed=seeds, side=sides)
def test_ratio_zero_is_identity(seed: int, side: int) -> None:
    image = np.random.default_rng(seed % 2**32).integers(0, 256, size=(side, side), dtype=np.uint8)
    box = sample_box(side, side, 0.0, seed)
    assert box.size == 0
    assert np.array_equal(apply_box(image, box), image)
    batch = torch.from_numpy(image)[None, None]
    assert torch.equal(occlude_batch(batch, sample_boxes(["x"], 0.0, seed, side, side)), batch)


@pytest.mark.parametrize("ratio", [-0.01, 1.0, 1.5, float("nan"), float("inf"), "a lot", None])
def test_bad_ratio_is_rejected_naming_the_value(ratio: object) -> None:
    with pytest.raises(ValueError, match="ratio"):
        box_side(ratio, 224, 224)  # type: ignore[arg-type]


def test_image_too_small_for_the_ratio_is_an_error_not_a_no_op() -> None:
    # sqrt(0.0025) * 8 = 0.4 px rounds to an empty box: refusing is the only honest answer.
    with pytest.raises(ValueError, match="too small"):
        sample_box(8, 8, 0.0025, 0)


def test_paper_box_sides_at_224() -> None:
    # The paper's ratios are squares of 0.05, 0.1, ..., 0.9 of the side.
    assert [box_side(r, 224, 224) for r in PAPER_RATIOS] == [0, 11, 22, 45, 67, 112, 157, 202]


def test_box_positions_are_uniform() -> None:
    side, ratio, n = 40, 0.25, 12_000  # box side 20: 21 valid positions per axis
    boxes = sample_boxes([f"u{i}" for i in range(n)], ratio, run_seed=123, height=side, width=side)
    for axis in (0, 1):
        counts = np.bincount(boxes[:, axis], minlength=21)
        assert counts.shape == (21,)
        assert chisquare(counts).pvalue > 1e-3
    # Joint positions too (441 cells, ~27 per cell).
    joint = np.bincount(boxes[:, 0] * 21 + boxes[:, 1], minlength=441)
    assert chisquare(joint).pvalue > 1e-3
