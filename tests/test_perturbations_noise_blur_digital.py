"""The noise, blur and digital perturbations: batched apply against the per-image oracles, the published levels,
statistical properties, seeded determinism and severity validation.

Tolerances against the oracles (tests/oracles/noise_blur_digital.py):

* exact for shot and impulse noise (same uniforms, integer or comparison arithmetic), pixelate (PIL itself is
  the oracle) and JPEG (PIL's libjpeg is the oracle);
* at most 1 grey level on at most 0.1 % of the pixels for Gaussian and speckle noise and both blurs: the
  oracles compute in float64, the batched code in float32 (and the convolutions sum in another order), so a
  value within ~1e-4 of a .5 can round the other way. Observed: 0.002 % at most, one pixel in 50,000; a wrong
  sigma, kernel or border would change most pixels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from cxr_robust.data.phantom import make_study
from cxr_robust.perturbations.base import Perturbation
from cxr_robust.perturbations.blur import GaussianBlur, MotionBlur, gaussian_kernel, motion_kernels
from cxr_robust.perturbations.digital import JpegCompression, Pixelate, pil_box_resize
from cxr_robust.perturbations.noise import GaussianNoise, ImpulseNoise, ShotNoise, SpeckleNoise, poisson_tables
from tests.oracles.noise_blur_digital import REFERENCES

FAMILIES: dict[str, Perturbation] = {cls.name: cls() for cls in (
    GaussianNoise, ShotNoise, SpeckleNoise, ImpulseNoise, GaussianBlur, MotionBlur, Pixelate, JpegCompression)}
RANDOM_FAMILIES = ("gaussian_noise", "shot_noise", "speckle_noise", "impulse_noise", "motion_blur")
LEVELS = (1, 2, 3, 4, 5)
SEED = 20240611

# (max |difference| in grey levels, max share of differing pixels) against the oracle; see the module docstring
TOLERANCE: dict[str, tuple[int, float]] = {
    "gaussian_noise": (1, 1e-3), "speckle_noise": (1, 1e-3), "gaussian_blur": (1, 1e-3), "motion_blur": (1, 1e-3),
    "shot_noise": (0, 0.0), "impulse_noise": (0, 0.0), "pixelate": (0, 0.0), "jpeg": (0, 0.0),
}

# /work/shared/reference/PERTURBATIONS.md, MedMNIST-C chestmnist; motion blur is this project's own
PUBLISHED: dict[str, dict[int, float]] = {
    "gaussian_noise": {1: 0.04, 2: 0.08, 3: 0.12, 4: 0.18, 5: 0.26},
    "speckle_noise": {1: 0.05, 2: 0.15, 3: 0.20, 4: 0.35, 5: 0.45},
    "impulse_noise": {1: 0.01, 2: 0.03, 3: 0.06, 4: 0.09, 5: 0.17},
    "shot_noise": {1: 60, 2: 25, 3: 18, 4: 10, 5: 5},
    "gaussian_blur": {1: 3, 2: 5, 3: 7, 4: 9, 5: 11},
    "pixelate": {1: 0.30, 2: 0.25, 3: 0.20, 4: 0.15, 5: 0.10},
    "jpeg": {1: 50, 2: 30, 3: 15, 4: 10, 5: 7},
    "motion_blur": {1: 0.02, 2: 0.04, 3: 0.06, 4: 0.08, 5: 0.10},
}
IDENTITY = {  # name: (short, group)
    "gaussian_noise": ("gauss_noise", "noise"), "shot_noise": ("shot_noise", "noise"),
    "speckle_noise": ("speckle", "noise"), "impulse_noise": ("impulse", "noise"),
    "gaussian_blur": ("gauss_blur", "blur"), "motion_blur": ("motion_blur", "blur"),
    "pixelate": ("pixelate", "digital"), "jpeg": ("jpeg", "digital"),
}


def ids(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


@pytest.fixture(scope="module")
def films() -> np.ndarray:
    """Four phantom chest films, 128 px (the demo model's input), ``(4, H, W)`` uint8."""
    return np.stack([make_study("eval", 0, i, 128).images[0] for i in range(4)])


@pytest.fixture(scope="module")
def image_sets(films: np.ndarray) -> dict[str, torch.Tensor]:
    """Phantom films replicated on 3 channels (the model inputs) and random colour images (channels differ)."""
    rng = np.random.default_rng(0)
    return {"phantom": torch.from_numpy(np.repeat(films[:, None], 3, axis=1)),
            "random": torch.from_numpy(rng.integers(0, 256, (3, 3, 80, 80), dtype=np.uint8))}


def constant(value: int, n: int = 16, size: int = 128) -> torch.Tensor:
    return torch.full((n, 1, size, size), value, dtype=torch.uint8)


# ----- the batched apply against the per-image oracles -------------------------------------------------------
@pytest.mark.parametrize("kind", ["phantom", "random"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_matches_reference(name: str, kind: str, image_sets: dict[str, torch.Tensor]) -> None:
    p, ref = FAMILIES[name], REFERENCES[name]
    pixels = image_sets[kind]
    b, _, h, w = pixels.shape
    max_abs, max_share = TOLERANCE[name]
    for level in LEVELS:
        params = p.sample_params(ids(b), float(level), SEED, h, w)
        out = p.apply(pixels, params, float(level))
        assert out.dtype == torch.uint8 and out.shape == pixels.shape
        expected = np.stack([ref(pixels[i].numpy(), {k: v[i] for k, v in params.items()}, level) for i in range(b)])
        diff = np.abs(out.numpy().astype(np.int16) - expected.astype(np.int16))
        assert diff.max() <= max_abs, f"{name} s{level}: off by {diff.max()} grey levels"
        assert (diff > 0).mean() <= max_share, f"{name} s{level}: {(diff > 0).mean():.2e} of the pixels differ"
        assert not torch.equal(out, pixels), f"{name} s{level} left the images unchanged"


def test_pixelate_matches_pil_at_odd_and_non_square_sizes() -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for h, w in ((13, 300), (97, 97), (100, 130), (320, 320)):
        planes = rng.integers(0, 256, (2, h, w), dtype=np.uint8)
        for out_h, out_w in ((h // 3 + 1, 2 * w), (2 * h, max(1, w // 7)), (h, w)):
            ours = pil_box_resize(torch.from_numpy(planes), out_h, out_w).numpy()
            pil = np.stack([np.asarray(Image.fromarray(p).resize((out_w, out_h), Image.BOX)) for p in planes])
            np.testing.assert_array_equal(ours, pil)


def test_gaussian_blur_is_torchvisions_at_224() -> None:
    """At 224 px the kernels are MedMNIST-C's: torchvision gaussian_blur(kernel_size=k), sigma = 0.15 k + 0.35."""
    import torchvision.transforms.v2.functional as TF

    pixels = torch.from_numpy(np.stack([make_study("eval", 0, i, 224).images[0] for i in range(2)]))[:, None]
    for level, k in PUBLISHED["gaussian_blur"].items():
        size, sigma, _ = gaussian_kernel(224, k)
        assert (size, sigma) == (k, pytest.approx(0.15 * k + 0.35))
        ours = FAMILIES["gaussian_blur"](pixels, ids(2), level, SEED)
        theirs = TF.gaussian_blur(pixels, kernel_size=[k, k])
        diff = (ours.int() - theirs.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-3


def test_gaussian_blur_scales_with_the_side() -> None:
    """The documented sizes: 3-7 taps at 128 px, MedMNIST-C's 3-11 at 224, 3-15 at 320; sigma in proportion."""
    expected = {128: (3, 3, 5, 5, 7), 224: (3, 5, 7, 9, 11), 320: (3, 7, 9, 13, 15)}
    for side, sizes in expected.items():
        got = [gaussian_kernel(side, k) for k in PUBLISHED["gaussian_blur"].values()]
        assert tuple(size for size, _, _ in got) == sizes
        for (_, sigma, weights), k in zip(got, PUBLISHED["gaussian_blur"].values()):
            assert sigma == pytest.approx((0.15 * k + 0.35) * side / 224)
            assert weights.sum() == pytest.approx(1.0, abs=1e-6)


def test_motion_kernels() -> None:
    kernels = motion_kernels(np.array([0.0, 37.0, 90.0, 151.5]), 11.2)
    assert kernels.shape == (4, 13, 13) and kernels.dtype == np.float32
    np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 1.0, atol=1e-6)
    np.testing.assert_allclose(kernels, kernels[:, ::-1, ::-1], atol=1e-7)  # centred: no shift of the film
    horizontal, vertical = kernels[0] > 1e-9, kernels[2] > 1e-9  # cos(90 deg) is 6e-17, not 0
    assert horizontal.any(axis=1).sum() == 1 and vertical.any(axis=0).sum() == 1
    assert horizontal.sum() == vertical.sum() == 13  # a 11.2 px segment touches 13 pixels


# ----- the published levels ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_levels_are_the_published_table(name: str) -> None:
    p = FAMILIES[name]
    assert (p.name, (p.short, p.group)) == (name, IDENTITY[name])
    assert p.levels == PUBLISHED[name] and p.unit == "level"
    assert [p.parameter(level) for level in LEVELS] == [PUBLISHED[name][level] for level in LEVELS]
    assert p.parameter(0) is None
    assert p.description and p.parameter_name and p.source and p.__doc__
    assert ("this project" in p.source) if name == "motion_blur" else ("MedMNIST-C chestmnist" in p.source)


def test_poisson_tables_are_the_poisson_cdf() -> None:
    for lam in PUBLISHED["shot_noise"].values():
        cdf, grey = poisson_tables(lam)
        mu = np.arange(256)[:, None] * lam / 255
        np.testing.assert_allclose(cdf[:, :lam], stats.poisson.cdf(np.arange(lam)[None, :], mu), atol=1e-6)
        assert (cdf[:, lam:] == 2.0).all() and cdf.shape[1] > lam
        assert grey[0] == 0 and grey[-1] == 255 and (np.diff(grey.astype(int)) > 0).all()


# ----- statistical properties --------------------------------------------------------------------------------
def clipped_rounded_normal_std(mean: float, sd: float) -> float:
    """Standard deviation of clip(round(mean + sd z), 0, 255) for a standard normal z."""
    cdf = np.array([0.5 * (1 + math.erf((v - mean) / (sd * math.sqrt(2)))) for v in np.arange(-0.5, 256.5)])
    probs = np.diff(cdf)
    probs[0] += cdf[0]
    probs[-1] += 1 - cdf[-1]
    levels = np.arange(256)
    avg = (probs * levels).sum()
    return float(np.sqrt((probs * (levels - avg) ** 2).sum()))


def test_gaussian_noise_std_on_mid_grey() -> None:
    pixels = constant(128)
    for level, sigma in PUBLISHED["gaussian_noise"].items():
        out = FAMILIES["gaussian_noise"](pixels, ids(16), level, SEED).double()
        expected = clipped_rounded_normal_std(128, 255 * sigma)
        assert out.std().item() == pytest.approx(expected, rel=0.01)  # 262,144 pixels: standard error 0.14 %
        if level <= 3:  # far from the clip: the std is sigma in grey levels
            assert out.std().item() == pytest.approx(255 * sigma, rel=0.01)


def test_speckle_noise_scales_with_intensity() -> None:
    assert torch.equal(FAMILIES["speckle_noise"](constant(0), ids(16), 5, SEED), constant(0))  # black stays black
    for level in (1, 2, 3):
        out = FAMILIES["speckle_noise"](constant(100), ids(16), level, SEED).double()
        assert out.std().item() == pytest.approx(100 * PUBLISHED["speckle_noise"][level], rel=0.02)


def test_impulse_noise_share_of_changed_pixels() -> None:
    pixels = constant(128)
    n = pixels.numel()
    for level, amount in PUBLISHED["impulse_noise"].items():
        out = FAMILIES["impulse_noise"](pixels, ids(16), level, SEED)
        salt, pepper = (out == 255).double().mean().item(), (out == 0).double().mean().item()
        assert ((out != pixels) == ((out == 0) | (out == 255))).all()
        se = math.sqrt(amount * (1 - amount) / n)
        assert salt + pepper == pytest.approx(amount, abs=5 * se)
        assert salt == pytest.approx(amount / 2, abs=5 * se) and pepper == pytest.approx(amount / 2, abs=5 * se)


def test_shot_noise_is_poisson_and_mean_preserving() -> None:
    for grey in (64, 128):
        pixels = constant(grey)
        for level, lam in PUBLISHED["shot_noise"].items():
            out = FAMILIES["shot_noise"](pixels, ids(16), level, SEED).double()
            # exact law of the output: k ~ Poisson(grey lam / 255), k >= lam clipped, k * 255 / lam rounded
            k = np.arange(lam + 1)
            pmf = stats.poisson.pmf(k, grey * lam / 255)
            pmf[-1] += stats.poisson.sf(lam, grey * lam / 255)
            values = np.floor(k * 255 / lam + 0.5)
            mean = (pmf * values).sum()
            sd = math.sqrt((pmf * (values - mean) ** 2).sum())
            assert out.mean().item() == pytest.approx(mean, abs=5 * sd / math.sqrt(out.numel()))
            assert out.std().item() == pytest.approx(sd, rel=0.02)
            if grey == 64 or lam >= 18:  # mean-preserving wherever the clip at 1 is negligible
                assert abs(mean - grey) < 1.0


@pytest.mark.parametrize("name", ["gaussian_blur", "motion_blur", "pixelate"])
def test_filters_preserve_a_constant_image(name: str) -> None:
    for value in (0, 77, 255):
        pixels = constant(value, n=4, size=96)
        for level in LEVELS:
            assert torch.equal(FAMILIES[name](pixels, ids(4), level, SEED), pixels)


def test_jpeg_changes_the_film_and_loses_quality_with_severity(films: np.ndarray) -> None:
    pixels = torch.from_numpy(films[:, None])
    mse = []
    for level in LEVELS:
        out = FAMILIES["jpeg"](pixels, ids(4), level, SEED)
        assert not torch.equal(out, pixels)
        mse.append(((out.double() - pixels.double()) ** 2).mean().item())
    assert mse[4] > mse[0]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_damage_grows_with_severity(name: str, films: np.ndarray) -> None:
    pixels = torch.from_numpy(films[:, None])
    mse = [((FAMILIES[name](pixels, ids(4), level, SEED).double() - pixels.double()) ** 2).mean().item()
           for level in LEVELS]
    assert all(b > a for a, b in zip(mse, mse[1:])), mse


# ----- determinism -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_seeded_and_independent_of_batching(name: str, image_sets: dict[str, torch.Tensor]) -> None:
    p = FAMILIES[name]
    films = image_sets["phantom"][:, :, 32:96, 32:96]
    pixels = torch.cat([films, films.flip(-1)]).contiguous()  # 8 grey 64 px films on 3 channels
    names = ids(8)
    for level in (1, 5):
        whole = p(pixels, names, level, SEED)
        assert torch.equal(whole, p(pixels, names, level, SEED))
        order = [5, 2, 7, 0, 3, 6, 1, 4]
        assert torch.equal(p(pixels[order], [names[i] for i in order], level, SEED), whole[order])
        parts = torch.cat([p(pixels[:3], names[:3], level, SEED), p(pixels[3:], names[3:], level, SEED)])
        assert torch.equal(parts, whole)
        singles = torch.cat([p(pixels[i:i + 1], names[i:i + 1], level, SEED) for i in range(8)])
        assert torch.equal(singles, whole)
        if name in RANDOM_FAMILIES:  # the draws follow the seed and the image id, not the position
            assert not torch.equal(p(pixels, names, level, SEED + 1), whole)
            assert not torch.equal(p(pixels, ids(8, "other"), level, SEED), whole)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_grey_films_do_not_depend_on_their_batch_mates(name: str, image_sets: dict[str, torch.Tensor]) -> None:
    """Grey batches are computed on channel 0 only; a colour image in the batch switches to every channel.
    Either way a grey film's pixels are the same, and a 1-channel film gives the same grey."""
    p = FAMILIES[name]
    grey = image_sets["phantom"][:, :, :80, :80].contiguous()
    colour = image_sets["random"][:1]
    alone = p(grey, ids(4), 3, SEED)
    mixed = p(torch.cat([grey, colour]), ids(4) + ["colour"], 3, SEED)
    assert torch.equal(mixed[:4], alone)
    assert torch.equal(p(grey[:, :1], ids(4), 3, SEED).expand_as(grey), alone)


@pytest.mark.parametrize("name", ["shot_noise", "gaussian_blur", "motion_blur", "pixelate"])
def test_independent_of_the_thread_count(name: str, image_sets: dict[str, torch.Tensor]) -> None:
    p = FAMILIES[name]
    pixels = image_sets["phantom"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = p(pixels, ids(4), 4, SEED)
        torch.set_num_threads(max(2, threads))
        assert torch.equal(p(pixels, ids(4), 4, SEED), one)
    finally:
        torch.set_num_threads(threads)


# ----- the severity axis -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_rejects_severities_that_are_not_levels(name: str) -> None:
    p = FAMILIES[name]
    pixels = constant(100, n=1, size=64)
    for bad in (6, -1, 2.5):
        with pytest.raises(ValueError, match=name):
            p(pixels, ["x"], bad, SEED)
        with pytest.raises(ValueError, match=name):
            p.check_severity(bad)
    clean = p(pixels, ["x"], 0, SEED)
    assert torch.equal(clean, pixels) and clean.data_ptr() != pixels.data_ptr()
