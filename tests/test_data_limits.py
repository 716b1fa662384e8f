"""Limits a data check must enforce exactly as the sweep does: decoded size, and zero-byte files.

* An image is refused before decoding when its decoded pixels would exceed ``MAX_DECODED_BYTES`` (pixel
  count times Pillow's bytes per pixel for its mode), not only when it has too many pixels: a
  deflate-compressed float TIFF of 8190 x 8190 px is 265 kB on disk, under ``MAX_PIXELS``, and used to
  decode to 268 MB and peak at 1.9 GB while being converted.
* A zero-byte image of a MIMIC-CXR tree is found when the set is loaded (``cxr-robust check-data``), not
  only when the sweep decodes it.

The large TIFF is written without ever holding its pixels: its single strip is a deflate stream of one
compressed megabyte of zeros repeated (each block self-contained after a full flush).
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cxr_robust.data import images as images_module
from cxr_robust.data.images import (MAX_DECODED_BYTES, MAX_PIXELS, BadImageError, bytes_per_pixel, check_image,
                                    decoded_bytes, find_unusable_images, load_grayscale)
from cxr_robust.data.mimic import MimicLayoutError, load_mimic
from tests.fake_mimic import build_fake_mimic
from tests.test_bad_inputs import png_claiming

SIDE = 8190  # under the pixel limit (8192 x 8192), four bytes per pixel once decoded


# --------------------------------------------------------------------------------------------------
# Writing float TIFFs


def deflate_zeros(n: int, chunk: int = 1 << 20) -> bytes:
    """A zlib stream of ``n`` zero bytes, built from one compressed chunk (no ``n``-byte buffer)."""
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(bytes(chunk)) + raw.flush(zlib.Z_FULL_FLUSH)  # self-contained: repeatable
    full, rest = divmod(n, chunk)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = tail.compress(bytes(rest)) + tail.flush()
    adler, zeros = 1, bytes(chunk)
    for _ in range(full):
        adler = zlib.adler32(zeros, adler)
    adler = zlib.adler32(bytes(rest), adler)
    return b"\x78\xda" + block * full + last + struct.pack(">I", adler)


def float_tiff(width: int, height: int, strip: bytes, compression: int = 8) -> bytes:
    """A little-endian, single-strip, 32-bit float grayscale TIFF (Adobe deflate by default)."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 32), (259, 3, compression), (262, 3, 1),
               (273, 4, 8), (277, 3, 1), (278, 4, height), (279, 4, len(strip)), (339, 3, 3)]  # 339: IEEE float
    ifd_at = 8 + len(strip) + len(strip) % 2
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3
                                                   else struct.pack("<I", value))
    return (b"II*\x00" + struct.pack("<I", ifd_at) + strip + b"\x00" * (len(strip) % 2) + ifd
            + struct.pack("<I", 0))


@pytest.fixture(scope="module")
def big_float_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiff") / "film.tif"
    path.write_bytes(float_tiff(SIDE, SIDE, deflate_zeros(SIDE * SIDE * 4)))
    return path


def test_the_tiff_writer_makes_files_pillow_decodes(tmp_path: Path) -> None:
    ramp = (np.arange(48 * 64, dtype=np.float32).reshape(48, 64) - 1000.0) / 7.0
    path = tmp_path / "small.tif"
    path.write_bytes(float_tiff(64, 48, zlib.compress(ramp.tobytes())))
    with Image.open(path) as im:
        assert (im.mode, im.size) == ("F", (64, 48))
        assert np.array_equal(np.asarray(im), ramp)
    zeros = tmp_path / "zeros.tif"
    zeros.write_bytes(float_tiff(300, 200, deflate_zeros(300 * 200 * 4, chunk=4096)))
    with Image.open(zeros) as im:
        assert (im.mode, im.size) == ("F", (300, 200)) and not np.asarray(im).any()
    # Converted to 8 bits by the image's own range, exactly as the whole-array float64 formula does.
    want = np.round((ramp.astype(np.float64) - ramp.min()) * (255.0 / (ramp.max() - ramp.min()))).astype(np.uint8)
    assert np.array_equal(np.asarray(load_grayscale(path)), want)


# --------------------------------------------------------------------------------------------------
# The decoded-bytes limit


def test_small_file_big_float_image_is_refused_before_decoding(big_float_tiff: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert big_float_tiff.stat().st_size < 1_000_000 and SIDE * SIDE <= MAX_PIXELS  # passes the pixel guard

    def no_decoding(self: object) -> None:
        raise AssertionError("the image was decoded before its size was checked")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    tracemalloc.start()
    try:
        with pytest.raises(BadImageError) as info:
            load_grayscale(big_float_tiff, image_id="film-1", draft_size=224)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000  # header only: no pixel buffer was allocated
    err, text = info.value, str(info.value)
    assert err.reason == "too_large" and err.image_id == "film-1" and err.path == str(big_float_tiff)
    for words in ("'film-1'", str(big_float_tiff), "8190x8190 pixels of mode F", "4 bytes per pixel",
                  "268 MB once decoded", f"above the {MAX_DECODED_BYTES / 1e6:,.0f} MB limit", "downscale it",
                  "on_bad_image='skip'"):
        assert words in text, text
    with pytest.raises(BadImageError, match="memory guard"):
        check_image(big_float_tiff, "film-1")  # the header-only check used by data checks says the same


@pytest.mark.parametrize("mode, per_pixel", [("1", 1), ("L", 1), ("P", 1), ("I;16", 2), ("I;16B", 2), ("I", 4),
                                             ("F", 4), ("LA", 4), ("RGB", 4), ("RGBA", 4), ("CMYK", 4),
                                             ("YCbCr", 4), ("some future mode", 8)])
def test_bytes_per_pixel_follow_pillows_memory_layout(mode: str, per_pixel: int) -> None:
    assert bytes_per_pixel(mode) == per_pixel
    assert decoded_bytes(mode, (300, 200)) == 300 * 200 * per_pixel


def test_every_8_and_16_bit_grayscale_image_within_the_pixel_limit_fits() -> None:
    assert decoded_bytes("I;16", (8192, 8192)) <= MAX_DECODED_BYTES
    assert decoded_bytes("F", (SIDE, SIDE)) > MAX_DECODED_BYTES
    assert decoded_bytes("RGB", (5790, 5790)) <= MAX_DECODED_BYTES < decoded_bytes("RGB", (5800, 5800))


def rgb_png_claiming(width: int, height: int) -> bytes:
    """An RGB PNG whose header claims ``width x height`` while holding 8x8 pixels of data."""
    return png_claiming(width, height, "RGB")


def test_colour_image_under_the_pixel_limit_but_over_the_byte_limit(tmp_path: Path) -> None:
    path = tmp_path / "colour.png"
    path.write_bytes(rgb_png_claiming(6000, 6000))  # 36 M pixels < 67 M, but 144 MB as Pillow holds RGB
    with pytest.raises(BadImageError, match=r"6000x6000 pixels of mode RGB \(4 bytes per pixel\): 144 MB") as info:
        load_grayscale(path, image_id="c")
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_chunked_rescale_equals_the_whole_array_formula(dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    arr = (rng.normal(0, 1, (37, 29)) * 3000 + (30000 if dtype is np.uint16 else 0)).astype(dtype)
    want = np.round((arr.astype(np.float64) - arr.min()) * (255.0 / (float(arr.max()) - float(arr.min()))))
    monkeypatch.setattr(images_module, "_CHUNK_PIXELS", 100)  # several chunks of 3 rows
    assert np.array_equal(images_module._rescale_to_u8(arr), want.astype(np.uint8))
    assert not images_module._rescale_to_u8(np.full((4, 5), 7, dtype=dtype)).any()


def test_converting_an_accepted_float_image_stays_near_its_decoded_size(tmp_path: Path) -> None:
    side = 2048
    arr = np.random.default_rng(0).random((side, side), dtype=np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(arr, mode="F").save(path, compression="tiff_deflate")
    del arr
    tracemalloc.start()
    try:
        out = load_grayscale(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.mode == "L" and out.size == (side, side)
    # One copy of the float pixels (16.8 MB), the 8-bit result (4.2 MB) and chunk temporaries; the whole-array
    # float64 conversion this replaces held about six times the decoded size.
    assert peak < 4 * decoded_bytes("F", (side, side)), peak


# --------------------------------------------------------------------------------------------------
# Zero-byte and other unusable images are found by a data check


def test_zero_byte_mimic_image_is_found_when_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cxr_robust.cli import main

    fake = build_fake_mimic(tmp_path / "mimic")
    empty = fake.root / fake.study("s50000002").image_path(0)
    empty.write_bytes(b"")
    with pytest.raises(MimicLayoutError, match=r"1 of 9 images of the validate evaluation set are empty "
                                               r"\(zero-byte\) files, e\.g\. \[.*s50000002.*\]; re-download them "
                                               "or pass on_bad_image='skip'"):
        load_mimic(fake.root)
    rs = load_mimic(fake.root, on_bad_image="skip")
    assert (rs.num_studies, rs.num_images) == (4, 8) and "s50000002" not in rs.study_ids
    assert rs.meta["excluded_images"]["missing_image"] == 1 and rs.meta["empty_image_files"] == 1
    assert rs.meta["excluded_studies"]["no_images_left"] == 1

    assert main(["check-data", "--no-pyproject", "--mimic-root", str(fake.root)]) == 2
    assert "are empty (zero-byte) files" in capsys.readouterr().err
    assert main(["check-data", "--no-pyproject", "--mimic-root", str(fake.root), "--skip-bad"]) == 0
    assert "missing_image 1" in capsys.readouterr().out


def test_missing_and_zero_byte_images_together(tmp_path: Path) -> None:
    fake = build_fake_mimic(tmp_path / "mimic")
    (fake.root / fake.study("s50000002").image_path(0)).write_bytes(b"")
    (fake.root / fake.study("s50000001").image_path(0)).unlink()
    with pytest.raises(MimicLayoutError, match=r"1 of 9 images .* are missing, .*\(and 1 more are empty zero-byte "
                                               r"files\)"):
        load_mimic(fake.root)
    assert load_mimic(fake.root, on_bad_image="skip").meta["excluded_images"]["missing_image"] == 2


def test_find_unusable_images_reads_headers_only(tmp_path: Path, big_float_tiff: Path) -> None:
    fake = build_fake_mimic(tmp_path / "mimic")
    rs = load_mimic(fake.root)
    assert rs.image_paths is not None
    bad = {0: b"", 1: b"<html>404</html>", 2: big_float_tiff.read_bytes(), 3: None}
    for i, content in bad.items():
        if content is None:
            rs.image_paths[i].unlink()
        else:
            rs.image_paths[i].write_bytes(content)
    found = find_unusable_images(rs, workers=2)
    assert {i: e.reason for i, e in found.items()} == {0: "empty_file", 1: "undecodable", 2: "too_large",
                                                      3: "missing"}
    assert all(e.image_id == rs.image_ids[i] for i, e in found.items())


def test_check_data_finds_a_corrupt_image_header_the_sweep_would_refuse(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Loading sees only missing and empty files; check-data also reads every header, as the sweep will."""
    from cxr_robust.cli import main

    fake = build_fake_mimic(tmp_path / "mimic")
    (fake.root / fake.study("s50000002").image_path(0)).write_bytes(b"<html>not a jpeg</html>")
    assert main(["check-data", "--no-pyproject", "--mimic-root", str(fake.root)]) == 2
    err = capsys.readouterr().err
    assert "1 of 9 images would be refused by the sweep; first: image" in err and "s50000002" in err
    assert "Traceback" not in err
    assert main(["check-data", "--no-pyproject", "--mimic-root", str(fake.root), "--skip-bad"]) == 0
    assert "images the sweep will skip (--skip-bad; on_bad_image='skip'): undecodable 1" in capsys.readouterr().out
