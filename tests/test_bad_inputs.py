"""The bad-input matrix: every unusable input gives an error naming it and what to do, or a counted skip.

Cases already covered elsewhere (manifest/MIMIC loaders, checkpoints, occlusion and metric validation) are
listed with their tests in ``docs/bad_inputs.md``; this module holds the rest. Models are the demo
architecture with seeded random weights (``tests/privacy_model.py``), data the phantom generator.
"""

from __future__ import annotations

import errno
import io
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cxr_robust.cache import CacheError, EmbeddingCache
from cxr_robust.data.images import BAD_IMAGE_REASONS, MAX_PIXELS, BadImageError, load_grayscale
from cxr_robust.data.phantom import phantom
from cxr_robust.data.retrieval_set import RetrievalSet
from cxr_robust.engine import NonFiniteEmbeddingError, SweepConfig, run_sweep
from cxr_robust.models import get_spec, load_model
from cxr_robust.models.registry import UnknownModelError
from tests.privacy_model import build

CFG = SweepConfig(ratios=(0.0, 0.25), ks=(1, 5), device="cpu", progress=False)


@pytest.fixture(scope="module")
def model() -> Any:
    return build(seed=11)


@pytest.fixture(scope="module")
def small() -> RetrievalSet:
    """12 phantom studies (some with two images), images in memory."""
    return phantom("tiny").subset(range(12), name="small")


def on_disk(data: RetrievalSet, folder: Path) -> RetrievalSet:
    """``data`` with its images written as PNG files under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for iid, arr in zip(data.image_ids, data.image_arrays):
        paths.append(folder / f"{iid}.png")
        Image.fromarray(np.asarray(arr)).save(paths[-1])
    return RetrievalSet(name=data.name, study_ids=list(data.study_ids), findings=list(data.findings),
                        impressions=list(data.impressions), image_ids=list(data.image_ids),
                        image_study=data.image_study.copy(), views=list(data.views), image_paths=paths)


def jpeg_bytes(side: int = 64, seed: int = 0) -> bytes:
    """A noisy grayscale JPEG (noise keeps the entropy-coded part long, so truncation bites)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def png_claiming(width: int, height: int, mode: str = "L") -> bytes:
    """A PNG of ``mode`` whose header claims ``width x height`` (valid CRC) while holding 8x8 pixels of data."""
    buf = io.BytesIO()
    Image.new(mode, (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:20], data[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


# --------------------------------------------------------------------------------------------------
# Image files

BAD_FILES: dict[str, tuple[Any, str, str]] = {
    # case: (file content or None for "absent", expected reason, words the message must hold)
    "missing": (None, "missing", "does not exist"),
    "zero_byte": (b"", "empty_file", "zero-byte"),
    "truncated_jpeg": (lambda: jpeg_bytes()[: len(jpeg_bytes()) * 6 // 10], "undecodable", "truncated"),
    "corrupt_jpeg_header": (lambda: jpeg_bytes()[:2] + b"\x00" * 40 + jpeg_bytes()[42:], "undecodable", "corrupt"),
    "html_named_jpg": (b"<html><body>404 Not Found</body></html>\n" * 10, "undecodable", "not an image"),
    "huge_header": (lambda: png_claiming(9000, 9000), "too_large", "decompression-bomb"),
    "pillow_bomb": (lambda: png_claiming(20000, 20000), "too_large", "decompression-bomb"),
}


def write_bad(path: Path, case: str) -> None:
    content = BAD_FILES[case][0]
    if content is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(content() if callable(content) else content)


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_unusable_image_file_names_file_id_reason_and_remedy(case: str, tmp_path: Path) -> None:
    path = tmp_path / ("x.png" if case in ("huge_header", "pillow_bomb") else "x.jpg")
    write_bad(path, case)
    with pytest.raises(BadImageError) as info:
        load_grayscale(path, image_id="dicom-123", draft_size=128)
    err, text = info.value, str(info.value)
    assert err.reason == BAD_FILES[case][1] and err.reason in BAD_IMAGE_REASONS
    assert err.image_id == "dicom-123" and err.path == str(path)
    assert "'dicom-123'" in text and str(path) in text and BAD_FILES[case][2] in text
    assert "on_bad_image='skip'" in text  # says what to do


def test_size_limit_sits_below_pillows_warning_threshold() -> None:
    # So Pillow never warns about an accepted image; "huge_header" (9000 x 9000) is refused by our own check,
    # from the header alone, and "pillow_bomb" (20000 x 20000) by Pillow's, reported the same way.
    assert 9000 * 9000 > MAX_PIXELS and MAX_PIXELS < Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("mode", ["I;16", "RGB", "RGBA", "LA", "P", "1"])
def test_other_modes_are_converted_to_8_bit_gray(mode: str, tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 1, 32), (16, 1))
    if mode == "I;16":  # 16-bit PNG: rescaled by its own full range, not truncated to the high byte
        im = Image.fromarray((1000 + ramp * 60000).astype(np.uint16))
        assert im.mode == "I;16"
    else:
        im = Image.fromarray((ramp * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / "im.png"
    im.save(path)
    out = load_grayscale(path, image_id="m")
    arr = np.asarray(out)
    assert out.mode == "L" and out.size == (32, 16)
    if mode in ("I;16", "RGB", "RGBA", "LA"):
        assert arr.min() == 0 and arr.max() == 255 and (np.diff(arr[0].astype(int)) >= 0).all()


def test_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    path = tmp_path / "transparent.png"
    Image.new("RGBA", (4, 4), (200, 100, 50, 0)).save(path)
    assert np.asarray(load_grayscale(path)).tolist() == [[124] * 4] * 4  # ITU-R 601 luma of the colour


# --------------------------------------------------------------------------------------------------
# Bad images inside a sweep: error by default, counted skip on request


def _break(data: RetrievalSet, cases: dict[int, str]) -> None:
    for j, case in cases.items():
        write_bad(data.image_paths[j], case)


def two_image_study_images(data: RetrievalSet) -> list[int]:
    """Indices of second images of studies that have two (dropping them leaves every study an image)."""
    seen: set[int] = set()
    out = []
    for j, s in enumerate(data.image_study.tolist()):
        if s in seen:
            out.append(j)
        seen.add(s)
    return out


def test_sweep_stops_at_a_bad_image_by_default_naming_it_and_the_count(model: Any, small: RetrievalSet,
                                                                         tmp_path: Path) -> None:
    data = on_disk(small, tmp_path / "img")
    bad = two_image_study_images(data)[:2]
    _break(data, {bad[0]: "truncated_jpeg", bad[1]: "missing"})
    with pytest.raises(BadImageError) as info:
        run_sweep(model, data, CFG, EmbeddingCache(tmp_path / "cache"))
    text = str(info.value)
    assert text.startswith(f"2 of {data.num_images} images of small are unusable; first: image "
                           f"{data.image_ids[bad[0]]!r}")
    assert "on_bad_image='skip'" in text
    assert not list((tmp_path / "cache").rglob("image/*.npz"))  # nothing cached for the failed sweep


def test_skip_counts_by_reason_and_equals_a_set_without_those_images(model: Any, small: RetrievalSet,
                                                                       tmp_path: Path, caplog) -> None:
    data = on_disk(small, tmp_path / "img")
    bad = two_image_study_images(data)[:3]
    cases = dict(zip(bad, ["zero_byte", "html_named_jpg", "pillow_bomb"]))
    _break(data, cases)
    config = SweepConfig(**{**CFG.__dict__, "on_bad_image": "skip"})
    res = run_sweep(model, data, config, EmbeddingCache(tmp_path / "cache"))

    assert res.meta["on_bad_image"] == "skip"
    assert res.meta["skipped_images"] == {"missing": 0, "empty_file": 1, "too_large": 1, "undecodable": 1}
    assert res.meta["skipped_image_ids"] == [data.image_ids[j] for j in sorted(bad)]
    assert res.meta["studies_without_queries"] == 0
    assert "skipped 3 unusable image(s)" in caplog.text
    kept = [j for j in range(data.num_images) if j not in cases]
    assert res.image_ids == [data.image_ids[j] for j in kept]
    for ratio in CFG.ratios:  # the same queries at every ratio
        assert res.counts[ratio].n_queries == len(kept) and res.counts[ratio].n_candidates == data.num_studies

    # Skipping is exactly "those images were never in the set": same ranks as a set built without them.
    clean = on_disk(small, tmp_path / "clean")
    clean = RetrievalSet(name="small", study_ids=clean.study_ids, findings=clean.findings,
                         impressions=clean.impressions, image_ids=[clean.image_ids[j] for j in kept],
                         image_study=clean.image_study[kept], views=[clean.views[j] for j in kept],
                         image_paths=[clean.image_paths[j] for j in kept])
    ref = run_sweep(model, clean, CFG, EmbeddingCache(tmp_path / "cache2"))
    assert ref.image_ids == res.image_ids
    for ratio in CFG.ratios:
        assert np.array_equal(ref.counts[ratio].above, res.counts[ratio].above)
        assert np.array_equal(ref.counts[ratio].ties, res.counts[ratio].ties)


def test_skip_status_is_cached_so_a_rerun_decodes_nothing(model: Any, small: RetrievalSet, tmp_path: Path) -> None:
    data = on_disk(small, tmp_path / "img")
    _break(data, {two_image_study_images(data)[0]: "zero_byte"})
    config = SweepConfig(**{**CFG.__dict__, "on_bad_image": "skip"})
    first = run_sweep(model, data, config, EmbeddingCache(tmp_path / "cache"))
    cache = EmbeddingCache(tmp_path / "cache")
    again = run_sweep(model, data, config, cache)
    assert "decode_s" not in again.meta["timings"] and again.meta["image_encodings"] == 0
    assert cache.stats.by_kind["image_status"] == {"hits": 1}
    assert again.image_ids == first.image_ids and again.meta["skipped_images"] == first.meta["skipped_images"]


def test_a_study_left_without_images_stays_a_candidate_and_is_counted(model: Any, small: RetrievalSet,
                                                                        tmp_path: Path) -> None:
    data = on_disk(small, tmp_path / "img")
    only = [j for j in range(data.num_images) if (data.image_study == data.image_study[j]).sum() == 1][0]
    _break(data, {only: "missing"})
    res = run_sweep(model, data, SweepConfig(**{**CFG.__dict__, "on_bad_image": "skip"}),
                    EmbeddingCache(tmp_path / "cache"))
    assert res.meta["studies_without_queries"] == 1 and res.n_candidates == data.num_studies
    assert res.meta["skipped_images"]["missing"] == 1


def test_every_image_unusable_is_an_error(model: Any, small: RetrievalSet, tmp_path: Path) -> None:
    data = on_disk(small.subset(range(2)), tmp_path / "img")
    _break(data, {j: "zero_byte" for j in range(data.num_images)})
    n = data.num_images
    with pytest.raises(BadImageError, match=rf"none of its {n} images is usable \(\{{'empty_file': {n}\}}\)"):
        run_sweep(model, data, SweepConfig(ratios=(0.0,), ks=(1,), device="cpu", on_bad_image="skip"),
                  EmbeddingCache(tmp_path / "cache"))


def test_on_bad_image_value_is_checked() -> None:
    with pytest.raises(ValueError, match="on_bad_image must be one of error, skip, not 'ignore'"):
        SweepConfig(on_bad_image="ignore")


# --------------------------------------------------------------------------------------------------
# Reports and studies


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_or_whitespace_report_stops_the_sweep_naming_the_study(model: Any, small: RetrievalSet,
                                                                      text: str, tmp_path: Path) -> None:
    data = small.subset(range(6))
    data.findings[2], data.impressions[2] = text, text
    with pytest.raises(ValueError, match=rf"1 report\(s\) are empty under text policy 'findings\+impression', "
                                         rf"e.g. study {data.study_ids[2]}; fix the reports"):
        run_sweep(model, data, CFG, EmbeddingCache(tmp_path))
    assert not list(tmp_path.rglob("*.npz"))


def test_study_without_images_and_duplicate_ids_are_refused(small: RetrievalSet) -> None:
    base = small.subset(range(3))
    kwargs = dict(name="s", study_ids=list(base.study_ids), findings=list(base.findings),
                  impressions=list(base.impressions), image_ids=list(base.image_ids),
                  image_study=base.image_study, views=list(base.views), image_arrays=list(base.image_arrays))
    last = base.image_study == 2
    with pytest.raises(ValueError, match=rf"study {base.study_ids[2]!r} \(and 0 more\) has no image"):
        RetrievalSet(**{**kwargs, "image_ids": [i for i, b in zip(base.image_ids, last) if not b],
                        "image_study": base.image_study[~last], "views": [v for v, b in zip(base.views, last) if not b],
                        "image_arrays": [a for a, b in zip(base.image_arrays, last) if not b]})
    with pytest.raises(ValueError, match=rf"duplicate study ids, e.g. \[{base.study_ids[0]!r}\]"):
        RetrievalSet(**{**kwargs, "study_ids": [base.study_ids[0]] * 2 + [base.study_ids[2]]})
    with pytest.raises(ValueError, match="duplicate image ids"):
        RetrievalSet(**{**kwargs, "image_ids": [base.image_ids[0]] * len(base.image_ids)})


def test_mimic_duplicate_ids_are_refused_naming_them(tmp_path: Path) -> None:
    import gzip

    from cxr_robust.data.mimic import MimicLayoutError, load_mimic
    from tests.fake_mimic import build_fake_mimic

    fake = build_fake_mimic(tmp_path / "a", reports=("sectioned",))
    split = fake.root / "mimic-cxr-2.0.0-split.csv.gz"
    lines = gzip.decompress(split.read_bytes()).decode().splitlines(keepends=True)
    split.write_bytes(gzip.compress("".join(lines + [lines[1]]).encode()))
    dicom = lines[1].split(",")[0]
    with pytest.raises(MimicLayoutError, match=rf"split.csv.gz: dicom ids listed twice, e.g. \['{dicom}'\]"):
        load_mimic(fake.root)

    fake = build_fake_mimic(tmp_path / "b", reports=("sectioned",))
    assert fake.sectioned_path is not None
    lines = gzip.decompress(fake.sectioned_path.read_bytes()).decode().splitlines(keepends=True)
    fake.sectioned_path.write_bytes(gzip.compress("".join(lines + [lines[2]]).encode()))
    with pytest.raises(MimicLayoutError, match=rf"studies listed twice, e.g. \['{lines[2].split(',')[0]}'\]"):
        load_mimic(fake.root)


# --------------------------------------------------------------------------------------------------
# Sweep parameters and model names


@pytest.mark.parametrize("ratio", [1.0, -0.1, 25, float("nan")])
def test_ratio_outside_unit_interval_is_refused_by_the_config(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"occlusion ratio .* is outside \[0, 1\); use the occluded area fraction"):
        SweepConfig(ratios=(0.0, ratio))


def test_k_below_one_or_above_n(model: Any, small: RetrievalSet, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ks must be positive integers, got \(0, 5\)"):
        SweepConfig(ks=(0, 5))
    with pytest.raises(ValueError, match=r"k=13 is outside 1..N=12: Recall@k needs at least k candidates"):
        run_sweep(model, small, SweepConfig(ratios=(0.0,), ks=(5, 13), device="cpu"), EmbeddingCache(tmp_path))
    assert not list(tmp_path.rglob("*.npz"))  # refused before encoding anything


def test_unknown_model_name_suggests_the_closest(tmp_path: Path) -> None:
    for call in (lambda: get_spec("phantom-clp"), lambda: load_model("phantom-clp")):
        with pytest.raises(UnknownModelError) as info:
            call()
        assert str(info.value).startswith("unknown model 'phantom-clp'; did you mean 'phantom-clip'?")
    with pytest.raises(ImportError, match="no attribute 'nope'"):
        load_model("tests.privacy_model:nope")


# --------------------------------------------------------------------------------------------------
# Non-finite embeddings


def test_non_unit_embeddings_are_normalised_and_reported(small: RetrievalSet, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A model whose report embeddings come back scaled by 1..101 must rank exactly as by cosine similarity
    (before: the long rows won, Recall fell far below the unit-norm model's, silently)."""
    import torch

    demo = load_model("phantom-clip")
    plain = run_sweep(demo, small, CFG, EmbeddingCache(tmp_path / "plain"))
    scaled_model = load_model("phantom-clip")
    real = scaled_model.encode_texts

    def scaled(texts: list[str]) -> torch.Tensor:
        emb = real(texts)
        return emb * torch.linspace(1.0, 101.0, emb.shape[0])[:, None]

    scaled_model.encode_texts = scaled  # type: ignore[method-assign]
    with caplog.at_level("WARNING"):
        got = run_sweep(scaled_model, small, CFG, EmbeddingCache(tmp_path / "scaled"))
    assert got.grid() == plain.grid()
    for ratio in CFG.ratios:
        assert np.array_equal(got.counts[ratio].above, plain.counts[ratio].above)
    assert got.meta["contract_violations"] == {"not_unit_norm": {"text": small.num_studies - 1}}  # row 1 is x1
    assert "not unit-norm" in caplog.text and "phantom-clip" in caplog.text
    assert plain.meta["contract_violations"] == {}


def test_nan_image_embeddings_name_the_model_and_first_ids(small: RetrievalSet, tmp_path: Path) -> None:
    import torch

    model = build(seed=12)
    real = model.encode_images

    def nan_for_black(pixels: torch.Tensor) -> torch.Tensor:
        out = real(pixels).clone()
        out[pixels.flatten(1).amax(1) == 0] = float("nan")
        return out

    model.encode_images = nan_for_black  # type: ignore[method-assign]
    arrays = list(small.image_arrays)
    for j in (3, 7):
        arrays[j] = np.zeros_like(arrays[j])
    data = RetrievalSet(name="nan", study_ids=small.study_ids, findings=small.findings,
                        impressions=small.impressions, image_ids=small.image_ids, image_study=small.image_study,
                        views=small.views, image_arrays=arrays)
    with pytest.raises(NonFiniteEmbeddingError) as info:
        run_sweep(model, data, CFG, EmbeddingCache(tmp_path))
    assert str(info.value).startswith(
        f"model 'random-phantom-clip-s12' produced NaN/Inf image (0% occlusion) embeddings for 2 item(s), "
        f"first: {small.image_ids[3]}, {small.image_ids[7]}; check the weights file and the input data")
    assert not list(tmp_path.rglob("image/*.npz"))  # a non-finite result is never cached


def test_inf_text_embeddings_name_the_model_and_study(small: RetrievalSet, tmp_path: Path) -> None:
    import torch

    model = build(seed=13)
    real = model.encode_texts

    def inf_for_marked(texts: list[str]) -> torch.Tensor:
        out = real(texts).clone()
        out[[i for i, t in enumerate(texts) if "poisoned" in t]] = float("inf")
        return out

    model.encode_texts = inf_for_marked  # type: ignore[method-assign]
    data = small.subset(range(6))
    data.findings[4] = "poisoned " + data.findings[4]
    with pytest.raises(NonFiniteEmbeddingError, match=rf"model 'random-phantom-clip-s13' produced NaN/Inf report "
                                                      rf"embeddings for 1 item\(s\), first: {data.study_ids[4]};"):
        run_sweep(model, data, CFG, EmbeddingCache(tmp_path))
    assert not list(tmp_path.rglob("*.npz"))


# --------------------------------------------------------------------------------------------------
# Cache directory unusable, disk full


def test_cache_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    calls = []
    cache = EmbeddingCache(tmp_path / "file" / "cache")
    with pytest.raises(CacheError, match=r"cannot create the embedding cache directory .*file/cache/text .*"
                                         r"point --cache-dir or \$CXR_ROBUST_CACHE_DIR at a writable directory"):
        cache.get_or_compute("text", {"a": 1}, lambda: calls.append(1) or np.zeros(2))
    assert calls == []  # refused before computing anything


def test_cache_directory_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ro"
    (root / "text").mkdir(parents=True)
    monkeypatch.setattr(os, "access", lambda p, mode: not (Path(p) == root / "text" and mode == os.W_OK))
    with pytest.raises(CacheError, match=r"ro/text is not writable; point --cache-dir"):
        EmbeddingCache(root).get_or_compute("text", {"a": 1}, lambda: np.zeros(2))


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root, which ignores directory permissions: run the "
                    "suite as a non-root user to exercise it (the test above covers the same error via os.access)")
def test_cache_directory_read_only_by_permissions(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    (root / "text").mkdir(parents=True)
    (root / "text").chmod(0o555)
    try:
        with pytest.raises(CacheError, match="not writable"):
            EmbeddingCache(root).get_or_compute("text", {"a": 1}, lambda: np.zeros(2))
    finally:
        (root / "text").chmod(0o755)


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cache write fails with ENOSPC after writing part of the file."""
    import cxr_robust.cache as cache_mod

    def savez(fh: Any, **_: Any) -> None:
        fh.write(b"PK\x03\x04 half an entry")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.np, "savez", savez)


def test_disk_full_raises_naming_the_entry_and_leaves_nothing_half_written(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _disk_full(monkeypatch)
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(CacheError) as info:
        cache.get_or_compute("text", {"a": 1}, lambda: np.ones(3, dtype=np.float32))
    text = str(info.value)
    assert text.startswith(f"cannot write cache entry {tmp_path / 'text'}") and "No space left on device" in text
    assert "free disk space or point --cache-dir" in text
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.npz"))
    monkeypatch.undo()  # space again: the entry is computed and written normally
    array, hit = cache.get_or_compute("text", {"a": 1}, lambda: np.ones(3, dtype=np.float32))
    assert not hit and array.tolist() == [1, 1, 1] and len(list(tmp_path.rglob("*.npz"))) == 1


def test_disk_full_during_a_sweep_stops_it_clearly(model: Any, small: RetrievalSet, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _disk_full(monkeypatch)
    with pytest.raises(CacheError, match="No space left on device"):
        run_sweep(model, small.subset(range(6)), CFG, EmbeddingCache(tmp_path))
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.npz"))
