"""Intensity, geometry and overlay perturbations: batched pixels equal the per-image PIL / NumPy references
exactly, levels match MedMNIST-C, known properties hold, and seeded parameters ignore the batch.

Tolerance: none. Every family reproduces its reference's arithmetic (PIL's float32 blend and truncation,
the double-precision gamma table, PIL's double-precision bilinear resampling, exact masks), so every pixel is
compared with equality, on random films and on phantom chest films, grey and 3-channel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance

from cxr_robust.data.phantom import phantom
from cxr_robust.perturbations.base import Perturbation
from cxr_robust.perturbations.geometry import Collimation, LateralFlip, Rotation
from cxr_robust.perturbations.intensity import (BrightnessDown, BrightnessUp, ContrastDown, ContrastUp, GammaDown,
                                                GammaUp, blend_table, gamma_table, pil_contrast)
from cxr_robust.perturbations.overlay import BurnIn
from tests.oracles.intensity_geometry_overlay import PUBLISHED_LEVELS, REFERENCES, from_pil, to_pil

ALL: tuple[Perturbation, ...] = (BrightnessUp(), BrightnessDown(), ContrastUp(), ContrastDown(), GammaUp(),
                                 GammaDown(), Rotation(), Collimation(), LateralFlip(), BurnIn())
BY_NAME = {p.name: p for p in ALL}
LEVELS = (1, 2, 3, 4, 5)
SEED = 1234


def make_ids(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


@pytest.fixture(scope="module")
def image_sets() -> dict[str, np.ndarray]:
    """Small batches: random grey / RGB films (even and odd sides) and phantom chest films, grey and replicated."""
    rng = np.random.default_rng(7)
    films = np.stack(phantom("tiny", num_studies=2, image_size=128).image_arrays)[:, None]
    return {
        "random-grey-64": rng.integers(0, 256, (3, 1, 64, 64), dtype=np.uint8),
        "random-grey-65": rng.integers(0, 256, (2, 1, 65, 65), dtype=np.uint8),
        "random-rgb-48": rng.integers(0, 256, (2, 3, 48, 48), dtype=np.uint8),
        "phantom-grey-128": films,
        "phantom-replicated-rgb-128": np.repeat(films[:2], 3, axis=1),
    }


def per_image(params: dict[str, Any], i: int) -> dict[str, Any]:
    """Image ``i``'s parameters, as the references take them."""
    return {k: v[i] for k, v in params.items()}


# ----- pixels equal the references ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BY_NAME))
def test_batched_apply_equals_reference(name: str, image_sets: dict[str, np.ndarray]) -> None:
    spec, ref = BY_NAME[name], REFERENCES[name]
    for set_name, images in image_sets.items():
        ids = make_ids(len(images), set_name)
        _, _, h, w = images.shape
        for level in LEVELS:
            out = spec(torch.from_numpy(images), ids, level, SEED)
            assert out.dtype == torch.uint8 and out.shape == images.shape
            params = spec.sample_params(ids, level, SEED, h, w)
            for i, image in enumerate(images):
                expected = ref(image, per_image(params, i), level)
                differ = int((out[i].numpy() != expected).sum())
                assert differ == 0, f"{name} s{level} on {set_name}[{i}]: {differ} pixels differ from the reference"


def test_blend_table_is_pils_blend_for_every_base_and_grey_level() -> None:
    ramp = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    for spec in (BrightnessUp(), BrightnessDown(), ContrastUp(), ContrastDown()):
        for level in LEVELS:
            table = blend_table(spec.levels[level], 256)
            for base in range(256):
                expected = np.asarray(Image.blend(Image.new("L", (16, 16), base), ramp, spec.levels[level]))
                assert np.array_equal(table[base], expected.reshape(-1)), (spec.name, level, base)


def test_contrast_rounds_the_mean_like_pil() -> None:
    # films [k, k + 1] have mean k + 0.5, which PIL's int(mean + 0.5) rounds up; 15-pixel films never tie,
    # and RGB ones take the mean of PIL's integer luma
    ties = np.stack([np.array([[k, k + 1], [k + 1, k]], dtype=np.uint8) for k in range(255)])[:, None]
    rng = np.random.default_rng(5)
    grey, rgb = (rng.integers(0, 256, (64, c, 3, 5), dtype=np.uint8) for c in (1, 3))
    for films in (ties, grey, rgb):
        for factor in (ContrastUp.levels[5], ContrastDown.levels[5]):
            out = pil_contrast(torch.from_numpy(films), factor).numpy()
            for i, film in enumerate(films):
                assert np.array_equal(out[i], from_pil(ImageEnhance.Contrast(to_pil(film)).enhance(factor))), i


def test_gamma_table_is_torchvision_adjust_gamma_on_pil_images() -> None:
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for spec in (GammaUp(), GammaDown()):
        for level in LEVELS:
            gamma = spec.levels[level]
            expected = np.asarray(TF.adjust_gamma(Image.fromarray(ramp), gamma, gain=1)).reshape(-1)
            assert np.array_equal(gamma_table(gamma), expected), (spec.name, level)


def test_brightness_matches_pil_on_every_grey_level() -> None:
    ramp = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    for spec in (BrightnessUp(), BrightnessDown()):
        for level in LEVELS:
            expected = from_pil(ImageEnhance.Brightness(to_pil(ramp[0])).enhance(spec.levels[level]))
            assert np.array_equal(spec(torch.from_numpy(ramp), ["ramp"], level, SEED)[0].numpy(), expected)


# ----- level tables and class attributes ------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PUBLISHED_LEVELS))
def test_levels_are_medmnistc_chest_factors(name: str) -> None:
    spec = BY_NAME[name]
    assert spec.levels == PUBLISHED_LEVELS[name]
    assert spec.source == "MedMNIST-C chestmnist (medmnistc 0.1.0)"
    assert [spec.parameter(level) for level in LEVELS] == [PUBLISHED_LEVELS[name][k] for k in LEVELS]


@pytest.mark.parametrize("spec", ALL, ids=lambda p: p.name)
def test_class_attributes(spec: Perturbation) -> None:
    assert spec.group == {"bri": "intensity", "con": "intensity", "gam": "intensity", "rot": "geometry",
                          "col": "geometry", "lat": "geometry", "bur": "overlay"}[spec.name[:3]]
    assert spec.short and spec.description and spec.parameter_name and spec.unit == "level"
    assert sorted(spec.levels) == list(LEVELS) and type(spec).__doc__
    assert spec.source.startswith("MedMNIST-C" if spec.group == "intensity" else "this project: ")
    assert spec.id_token(3) == f"{spec.short}-s3"


def test_short_ids() -> None:
    assert {p.name: p.short for p in ALL if p.short != p.name} == {
        "brightness_up": "bright_up", "brightness_down": "bright_down", "rotation": "rotate",
        "collimation": "collim", "lateral_flip": "flip"}
    assert len({p.short for p in ALL}) == len(ALL)


# ----- known properties -----------------------------------------------------------------------------------
def test_brightness_down_level_5_halves_a_mid_grey() -> None:
    film = torch.tensor([128, 200, 255, 0, 1], dtype=torch.uint8).view(1, 1, 1, 5)
    assert BrightnessDown()(film, ["a"], 5, SEED).view(-1).tolist() == [64, 100, 127, 0, 0]  # PIL truncates
    assert BrightnessUp()(film, ["a"], 5, SEED).view(-1).tolist() == [192, 255, 255, 0, 1]


def test_contrast_keeps_each_images_mean_grey(image_sets: dict[str, np.ndarray]) -> None:
    # out = floor(m + f (x - m)) with m the mean rounded to a grey level: the mean moves by less than
    # 1 (truncation) + |1 - f| / 2 (rounding of m) <= 1.3 grey levels, unless values clip at 0 or 255.
    rng = np.random.default_rng(3)
    unclipped = rng.integers(70, 186, (4, 1, 64, 64), dtype=np.uint8)  # 1.6 x (x - m) stays inside [0, 255]
    unclipped[1] //= 2  # per-image means differ widely: never a batch statistic
    for images, specs in ((unclipped, (ContrastUp(), ContrastDown())),
                          (image_sets["phantom-grey-128"], (ContrastDown(),))):
        before = images.reshape(len(images), -1).mean(axis=1)
        for spec in specs:
            for level in LEVELS:
                out = spec(torch.from_numpy(images), make_ids(len(images)), level, SEED).numpy()
                after = out.reshape(len(images), -1).mean(axis=1)
                assert np.all(np.abs(after - before) < 1.3), (spec.name, level, after - before)


def test_gamma_fixes_black_and_white_and_bends_the_mid_tones() -> None:
    ramp = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    for level in LEVELS:
        up, down = GammaUp()(ramp, ["r"], level, SEED).view(-1), GammaDown()(ramp, ["r"], level, SEED).view(-1)
        for out in (up, down):
            assert (out[0].item(), out[255].item()) == (0, 255)
        assert bool((up <= ramp.view(-1)).all()) and bool((down >= ramp.view(-1)).all())
        assert up[128] < 128 < down[128]


@pytest.mark.parametrize("side", [64, 65, 128])
def test_rotation_keeps_the_centre_and_blackens_the_corners(side: int) -> None:
    rng = np.random.default_rng(side)
    film = rng.integers(1, 256, (8, 1, side, side), dtype=np.uint8)
    yy, xx = np.mgrid[:side, :side] + 0.5 - side / 2
    radius = np.hypot(yy, xx)
    film[:, :, radius < 20] = 150
    ids = make_ids(8)
    for level in LEVELS:
        out = Rotation()(torch.from_numpy(film), ids, level, SEED).numpy()
        # a pixel samples at its own distance from the centre: its 2 x 2 neighbours lie inside radius 20
        assert np.all(out[:, :, radius <= 18] == 150)
        assert np.all(out[:, :, [0, 0, -1, -1], [0, -1, 0, -1]] == 0)
        angles = Rotation().sample_params(ids, level, SEED, side, side)["angle"]
        assert set(np.abs(angles)) == {Rotation.levels[level]} and len(set(np.sign(angles))) == 2


@pytest.mark.parametrize("side", [64, 128, 224, 320])
def test_collimation_keeps_the_stated_share_and_blackens_the_borders(side: int) -> None:
    ids = make_ids(6)
    film = np.random.default_rng(side).integers(1, 256, (6, 1, side, side), dtype=np.uint8)  # no black pixel
    for level in LEVELS:
        share = Collimation.levels[level]
        window = Collimation().sample_params(ids, level, SEED, side, side)["window"]
        out = Collimation()(torch.from_numpy(film), ids, level, SEED).numpy()
        kept = (out != 0).sum(axis=(1, 2, 3))
        assert np.all(np.abs(kept - share * side * side) <= side)  # within one row or column
        for i, (top, bottom, left, right) in enumerate(window):
            assert (top > 0 or bottom < side) and (left > 0 or right < side)  # both shutter pairs close in
            assert np.array_equal(out[i, :, top:bottom, left:right], film[i, :, top:bottom, left:right])
            assert kept[i] == (bottom - top) * (right - left)  # everything outside the window is 0


def test_lateral_flip_shares_are_nested_and_level_5_flips_everything() -> None:
    ids = make_ids(400)
    flips = {level: LateralFlip().sample_params(ids, level, SEED, 8, 8)["flip"] for level in LEVELS}
    assert flips[5].all()
    for lower, higher in zip(LEVELS, LEVELS[1:]):
        assert np.all(flips[higher] | ~flips[lower])  # flipped at a lower level => flipped at the higher one
    for level in LEVELS[:-1]:
        assert abs(flips[level].mean() - LateralFlip.levels[level]) < 0.1  # 400 draws: sd <= 0.025
    film = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    assert torch.equal(LateralFlip()(film, ["a", "b"], 5, SEED), film.flip(-1))


@pytest.mark.parametrize("side", [64, 128, 224, 320])
def test_burn_in_only_writes_white_and_grows_with_level(side: int) -> None:
    ids = make_ids(8)
    film = np.random.default_rng(side).integers(0, 255, (8, 3, side, side), dtype=np.uint8)  # no white pixel
    areas = []
    for level in LEVELS:
        mask = BurnIn().sample_params(ids, level, SEED, side, side)["mask"]
        out = BurnIn()(torch.from_numpy(film), ids, level, SEED).numpy()
        assert np.all(out >= film)
        assert np.array_equal(out != film, np.broadcast_to(mask, film.shape))
        assert np.all(out[np.broadcast_to(mask, out.shape)] == 255)
        areas.append(mask.sum(axis=(1, 2, 3)))
    assert np.all(np.diff(np.stack(areas), axis=0) > 0), np.stack(areas)


# ----- seeded determinism and validation ------------------------------------------------------------------
@pytest.mark.parametrize("spec", ALL, ids=lambda p: p.name)
def test_pixels_do_not_depend_on_batch_size_order_or_company(spec: Perturbation) -> None:
    rng = np.random.default_rng(11)
    films = np.repeat(rng.integers(0, 256, (6, 1, 40, 40), dtype=np.uint8), 3, axis=1)
    films[3:] = rng.integers(0, 256, (3, 3, 40, 40), dtype=np.uint8)
    ids = make_ids(6)
    x = torch.from_numpy(films)
    for level in LEVELS:
        full = spec(x, ids, level, SEED)
        order = [4, 1, 5, 0, 3, 2]
        assert torch.equal(spec(x[order], [ids[i] for i in order], level, SEED), full[order])
        singles = torch.cat([spec(x[i:i + 1], ids[i:i + 1], level, SEED) for i in range(6)])
        assert torch.equal(singles, full)
        company = torch.cat([x[:2], torch.full((3, 3, 40, 40), 255, dtype=torch.uint8)])
        assert torch.equal(spec(company, [*ids[:2], "w0", "w1", "w2"], level, SEED)[:2], full[:2])
        # replicated grey stays replicated
        assert torch.equal(full[:3, 1:], full[:3, :1].expand(3, 2, 40, 40))
        assert torch.equal(spec(x, ids, level, SEED), full)
        assert torch.equal(x, torch.from_numpy(films))  # the input is left alone


def test_random_families_depend_on_the_seed() -> None:
    ids = make_ids(64)
    for spec, key in ((Rotation(), "angle"), (Collimation(), "window"), (LateralFlip(), "flip"),
                      (BurnIn(), "mask")):
        a, b = (spec.sample_params(ids, 3, seed, 64, 64)[key] for seed in (SEED, SEED + 1))
        assert not np.array_equal(a, b), spec.name


@pytest.mark.parametrize("spec", ALL, ids=lambda p: p.name)
@pytest.mark.parametrize("bad", [6, -1, 2.5])
def test_invalid_severity_is_rejected_with_the_perturbations_name(spec: Perturbation, bad: float) -> None:
    film = torch.zeros((1, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match=spec.name):
        spec(film, ["a"], bad, SEED)


@pytest.mark.parametrize("spec", ALL, ids=lambda p: p.name)
def test_level_0_is_an_identity_copy(spec: Perturbation) -> None:
    film = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 1, 16, 16), dtype=np.uint8))
    out = spec(film, ["a", "b"], 0, SEED)
    assert torch.equal(out, film) and out.data_ptr() != film.data_ptr()
