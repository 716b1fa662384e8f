"""Invariants every registered perturbation must keep (hypothesis), and the registry's behaviour.

These run over :func:`cxr_robust.perturbations.available`, so a perturbation added to the suite (or installed
through the entry-point group) is held to them without a new test.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr_robust.data.phantom import make_study
from cxr_robust.perturbations import (LEVELS, Condition, Perturbation, UnknownPerturbationError, available,
                                      conditions_for, get_perturbation, parse_perturbations, parse_severities,
                                      register)
from cxr_robust.perturbations import registry as registry_module

NAMES = available()
IMAGE_NAMES = [n for n in NAMES if get_perturbation(n).side == "image"]
"""The pixel invariants hold for image-side perturbations; report-side ones: tests/test_report_perturbations.py."""
LEVELLED = [n for n in IMAGE_NAMES if n != "occlusion"]
seeds = st.integers(min_value=0, max_value=2**31 - 1)
ids = st.lists(st.text(alphabet="abcdefghij0123456789-_/", min_size=1, max_size=12), min_size=1, max_size=5,
               unique=True)


def severities(name: str) -> list[float]:
    """The non-zero default severities of ``name`` (occlusion: its ratios, else levels 1-5)."""
    return [s for s in get_perturbation(name).default_severities if s]


def _batch(rng: np.random.Generator, n: int, channels: int, side: int) -> torch.Tensor:
    grey = rng.integers(0, 256, size=(n, 1, side, side), dtype=np.uint8)
    return torch.from_numpy(np.repeat(grey, channels, axis=1))


@lru_cache(maxsize=1)
def phantom_films(side: int = 128, count: int = 6) -> torch.Tensor:
    """A few phantom chest films at a model input size (``uint8 (count, 1, side, side)``)."""
    from PIL import Image

    films = [np.asarray(Image.fromarray(make_study("eval", 0, i, 256).images[0]).resize((side, side),
                                                                                        Image.BILINEAR))
             for i in range(count)]
    return torch.from_numpy(np.stack(films)[:, None].copy())


def test_the_suite_has_at_least_twelve_families_with_five_levels_and_documented_parameters() -> None:
    assert len(LEVELLED) >= 12, NAMES
    shorts = [get_perturbation(n).short or n for n in NAMES]
    assert len(set(shorts)) == len(shorts)
    for name in LEVELLED:
        p = get_perturbation(name)
        assert tuple(p.default_severities) == LEVELS
        assert sorted(p.levels) == list(LEVELS), f"{name}: a parameter for every level 1-5"
        assert p.description and p.parameter_name and p.source and p.group != "other", name
        assert p.parameter(0) is None and p.parameter(3) == p.levels[3]


@pytest.mark.parametrize("name", IMAGE_NAMES)
@settings(max_examples=6, deadline=None)
@given(seed=seeds, image_ids=ids, channels=st.sampled_from([1, 3]), side=st.sampled_from([32, 64]),
       data=st.data())
def test_output_keeps_dtype_shape_range_and_identity_at_severity_zero(name: str, seed: int, image_ids: list[str],
                                                                      channels: int, side: int,
                                                                      data: st.DataObject) -> None:
    p = get_perturbation(name)
    x = _batch(np.random.default_rng(seed), len(image_ids), channels, side)
    assert torch.equal(p(x, image_ids, 0, seed), x)
    sev = data.draw(st.sampled_from(severities(name)))
    out = p(x, image_ids, sev, seed)
    assert out.dtype == torch.uint8 and out.shape == x.shape and out.device == x.device
    assert out.data_ptr() != x.data_ptr(), "apply must return a new tensor, never modify the input"
    if channels == 3:  # a replicated greyscale film stays greyscale: draws are made once per image
        assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


@pytest.mark.parametrize("name", IMAGE_NAMES)
@settings(max_examples=5, deadline=None)
@given(seed=seeds, image_ids=ids, data=st.data())
def test_same_seed_id_and_severity_give_the_same_pixels_whatever_the_batch(name: str, seed: int,
                                                                           image_ids: list[str],
                                                                           data: st.DataObject) -> None:
    """Batch size, order and the other images of the batch never change an image's result."""
    p = get_perturbation(name)
    sev = data.draw(st.sampled_from(severities(name)))
    x = _batch(np.random.default_rng(seed + 1), len(image_ids), 1, 48)
    whole = p(x, image_ids, sev, seed)
    for i, iid in enumerate(image_ids):  # one at a time: the batch of one
        assert torch.equal(p(x[i:i + 1], [iid], sev, seed)[0], whole[i]), f"{name}: image {iid!r} alone differs"
    order = data.draw(st.permutations(range(len(image_ids))))
    shuffled = p(x[list(order)], [image_ids[i] for i in order], sev, seed)
    assert torch.equal(shuffled, whole[list(order)]), f"{name}: the order of the batch changed the pixels"
    # Replacing every other image must not change image 0's result (no batch statistics, no cross-talk).
    other = x.clone()
    other[1:] = 255 - other[1:]
    assert torch.equal(p(other, image_ids, sev, seed)[0], whole[0]), f"{name}: image 0 read another image"


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_distance_to_the_clean_film_grows_with_severity(name: str) -> None:
    """Mean squared difference to the clean film over a few phantom films, non-decreasing in severity."""
    films = phantom_films().repeat(4, 1, 1, 1)  # 24 draws: a share-of-films level (lateral_flip) hits some
    film_ids = [f"film-{i}" for i in range(films.shape[0])]
    p = get_perturbation(name)
    mse = [float(((p(films, film_ids, s, 0).float() - films.float()) ** 2).mean()) for s in severities(name)]
    assert mse[0] > 0, f"{name}: the mildest severity changes nothing on phantom films"
    assert all(b >= a for a, b in zip(mse, mse[1:])), f"{name}: distance to the clean film {mse}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: run `pytest -m gpu` on a "
                                                          "machine with a GPU")
@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_cuda_gives_the_cpu_pixels(name: str) -> None:
    """Draws are made on the CPU, so a device changes at most float rounding in the apply step (<= 1 grey
    level, on few pixels); exact families (masks, flips, integer maps) are equal bit for bit."""
    p = get_perturbation(name)
    x = phantom_films()
    film_ids = [f"film-{i}" for i in range(x.shape[0])]
    for sev in severities(name):
        cpu, gpu = p(x, film_ids, sev, 0), p(x.cuda(), film_ids, sev, 0).cpu()
        diff = (cpu.int() - gpu.int()).abs()
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01, (name, sev)


# ----- the registry ----------------------------------------------------------------------------------------------
def test_unknown_names_say_what_is_close_and_all_expands_in_suite_order() -> None:
    with pytest.raises(UnknownPerturbationError, match="did you mean 'gaussian_noise'"):
        get_perturbation("gausian_noise")
    assert get_perturbation("occ").name == "occlusion"  # a short id names its perturbation too
    assert parse_perturbations("all") == tuple(NAMES)
    assert parse_perturbations("gaussian_noise, occlusion,gaussian_noise") == ("gaussian_noise", "occlusion")
    with pytest.raises(ValueError, match="no perturbation"):
        parse_perturbations(" , ")


def test_severities_parse_per_perturbation_and_every_run_measures_the_clean_images() -> None:
    sev = parse_severities("gaussian_noise=1,s3;occlusion=0,25", ["occlusion", "gaussian_noise", "pixelate"])
    assert sev == {"occlusion": (0.0, 0.25), "gaussian_noise": (1.0, 3.0), "pixelate": LEVELS}
    conds = conditions_for(parse_severities(None, ["gaussian_noise"]))
    assert conds[0] == Condition("gaussian_noise", 0) and conds[0].is_clean and len(conds) == 6
    assert [c.token for c in conds[1:3]] == ["gauss_noise-s1", "gauss_noise-s2"]
    for bad, match in (("gaussian_noise=6", "not a level"), ("pixelate=1", "not among the measured"),
                       ("=1", "perturbation>=<levels>"), ("gaussian_noise=1,1", "without repeats"),
                       ("occlusion=100", "percentage")):
        with pytest.raises(ValueError, match=match):
            parse_severities(bad, ["occlusion", "gaussian_noise"])


def test_condition_keys_round_trip_and_equal_severities_are_one_key() -> None:
    c = Condition("occlusion", 0.25 / 100)
    assert c == Condition("occlusion", 0.0025) and hash(c) == hash(Condition("occlusion", 0.0025))
    assert Condition.from_key(c.key) == c and Condition.from_key("gaussian_noise@3.0") == Condition("gaussian_noise", 3)
    assert c.token == "occ0.25" and Condition("gaussian_noise", 3).label == "gaussian_noise s3"
    with pytest.raises(ValueError):
        Condition.from_key("nonsense")


class _Invert(Perturbation):
    name = "test_invert"
    short = "tinv"
    group = "intensity"

    def apply(self, pixels: torch.Tensor, params: dict, severity: float) -> torch.Tensor:
        return 255 - pixels


def test_registration_rules_and_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(get_perturbation("occlusion"))

    class Clash(_Invert):
        name = "test_clash"
        short = "occ"

    with pytest.raises(ValueError, match="short id 'occ' is already used"):
        register(Clash)

    class _EntryPoint:
        name = "invert"

        def load(self) -> type:
            return _Invert

    # Installed packages add perturbations through the entry-point group, like models.
    monkeypatch.setattr(registry_module, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group=None: [_EntryPoint()] if group == registry_module.ENTRY_POINT_GROUP else [])
    try:
        assert "test_invert" in available()
        assert get_perturbation("tinv")(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), ["a"], 2, 0).eq(255).all()
    finally:
        registry_module._REGISTRY.pop("test_invert", None)


def test_the_documented_parameter_table_is_the_registry() -> None:
    """docs/perturbations.md's table is generated from the classes (regenerate with
    ``python -c "from cxr_robust.perturbations.table import ...``" as the doc says) and must not drift."""
    from pathlib import Path

    from cxr_robust.perturbations.table import replace_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "perturbations.md").read_text(encoding="utf-8")
    assert replace_table(doc) == doc, "docs/perturbations.md's parameter table differs from the registry"


def test_an_occlusion_only_grid_is_measured_as_given() -> None:
    """The paper's grid never gained a column: ``--cxr-ratios 25`` measures 25 % only, as it always did."""
    assert conditions_for({"occlusion": (0.25,)}) == (Condition("occlusion", 0.25),)
    assert conditions_for({"occlusion": (0.25,), "jpeg": (1.0,)})[0] == Condition("occlusion", 0)
