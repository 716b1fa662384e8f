"""CLIP ViT-B/32 (OpenAI) and CXR-RePaiR: official-format files, registry loading, preprocessing, tokens."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxr_robust.data.text_policy import TextPolicy
from cxr_robust.models import get_spec, load_model
from cxr_robust.models.checkpoints import CheckpointError, sha256_file
from cxr_robust.models.clip_family import build_vit_b32_quickgelu, chexzero_letterbox
from cxr_robust.models.openclip import OPENAI_MEAN, OPENAI_STD

from tests import model_fixtures as mf
from tests.fidelity import gate_vs_exact

TEXTS = ["No acute cardiopulmonary process.", "Heart size is normal. Small left pleural effusion.", ""]


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    """A random ViT-B/32 whose weights are fp16-representable (OpenAI's archive is fp16)."""
    model = mf.randomise_(build_vit_b32_quickgelu(), seed=11)
    return mf.round_to_half_(model).eval()


@pytest.fixture(scope="module")
def files(reference: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("clip")
    state = reference.state_dict()
    out = {"torchscript": mf.write_openai_torchscript(state, tmp / "ViT-B-32.pt")}
    # CXR-RePaiR: torch.save(model.state_dict()) of a CUDA fp16 model -> some fp16 tensors, no prefix
    out["repair"] = tmp / "clip-imp-pretrained_128_6_after_4.pt"
    torch.save({k: (v.half() if v.ndim == 2 else v) for k, v in state.items()}, out["repair"])
    out["wrapped"] = tmp / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 4}, out["wrapped"])
    return out


@pytest.fixture(scope="module")
def clip(files: dict[str, Path]) -> Any:
    return load_model("clip", weights=files["torchscript"])


@pytest.fixture(scope="module")
def repair(files: dict[str, Path]) -> Any:
    return load_model("cxr-repair", weights=files["repair"])


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
            for w, h in [(300, 240), (240, 330), (224, 224)]]


def _clip_ref_pixels(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def _repair_ref_pixels(pixels: torch.Tensor) -> torch.Tensor:
    x = (pixels.float() - 101.48761) / 83.43944
    return F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=False)


def _ref_text(model: torch.nn.Module, texts: list[str]) -> torch.Tensor:
    import open_clip

    with torch.no_grad():
        return F.normalize(model.encode_text(open_clip.tokenize(texts)), dim=-1)


# --------------------------------------------------------------------------------------------------
# Formats

def test_in_memory_keys_equal_the_published_manifest(reference: torch.nn.Module, files: dict[str, Path]) -> None:
    expected = mf.manifest("clip_vit_b32_openai_state_dict")
    assert mf.shapes(reference.state_dict()) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; OpenAI's file is TorchScript
        archive = torch.jit.load(str(files["torchscript"]), map_location="cpu").state_dict()
    extras = set(mf.OPENAI_JIT_EXTRAS)  # benign: OpenAI's clip.build_model deletes these three
    assert mf.shapes({k: v for k, v in archive.items() if k not in extras}) == expected
    assert archive["visual.proj"].dtype == torch.float16


def test_file_kinds_are_what_they_claim(files: dict[str, Path]) -> None:
    with pytest.raises(RuntimeError, match="TorchScript"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that it would dispatch to torch.jit.load
        torch.load(files["torchscript"], weights_only=True)  # so the TorchScript path really is exercised
    assert set(torch.load(files["repair"], weights_only=True)) == set(mf.manifest("clip_vit_b32_openai_state_dict"))


# --------------------------------------------------------------------------------------------------
# Loading through the registry reproduces the in-memory model

@pytest.mark.parametrize("which", ["clip", "repair"])
def test_embeddings_equal_the_in_memory_model(which: str, clip: Any, repair: Any, reference: torch.nn.Module) -> None:
    adapter = clip if which == "clip" else repair
    ref_pixels = _clip_ref_pixels if which == "clip" else _repair_ref_pixels
    pixels = torch.from_numpy(np.stack([adapter.preprocess(im) for im in _images()]))
    with torch.no_grad():
        got = adapter.encode_images(pixels)
        want = F.normalize(reference.encode_image(ref_pixels(pixels)), dim=-1)
        texts = adapter.encode_texts(TEXTS)
    assert got.shape == (3, 512) and got.dtype == torch.float32
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(texts, _ref_text(reference, TEXTS), atol=1e-5, rtol=0)


def test_clip_also_loads_a_wrapped_plain_state_dict(files: dict[str, Path], clip: Any) -> None:
    other = load_model("clip", weights=files["wrapped"])
    pixels = torch.from_numpy(np.stack([clip.preprocess(im) for im in _images()]))
    with torch.no_grad():
        torch.testing.assert_close(other.encode_images(pixels), clip.encode_images(pixels), atol=1e-6, rtol=0)
    assert other.fingerprint()["weights_sha256"] != clip.fingerprint()["weights_sha256"]


def test_adapter_metadata(clip: Any, repair: Any, files: dict[str, Path]) -> None:
    assert (clip.baseline_row, clip.default_text_policy) == (get_spec("clip").baseline_row, TextPolicy.FINDINGS_IMPRESSION)
    assert (repair.baseline_row, repair.default_text_policy) == ("CXR-RePaiR", TextPolicy.IMPRESSION)
    assert clip.embed_dim == repair.embed_dim == 512
    fp_clip, fp_repair = clip.fingerprint(), repair.fingerprint()
    json.dumps([fp_clip, fp_repair])  # fingerprints go into cache keys: JSON-serialisable
    assert fp_clip["weights_sha256"] == sha256_file(files["torchscript"])
    assert fp_repair["weights_sha256"] == sha256_file(files["repair"])
    assert fp_clip["normalisation"]["mean"] == OPENAI_MEAN and fp_clip["context_length"] == 77
    assert fp_repair["normalisation"] == {"mean": (101.48761,) * 3, "std": (83.43944,) * 3, "scale": 1.0}
    assert fp_repair["model_input_size"] == 224 and repair.input_size == 320
    assert clip.preprocess_key() != repair.preprocess_key()


def test_wrong_jit_metadata_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ViT-L-14-336px.pt"
    mf.write_openai_torchscript({"visual.proj": torch.zeros(8, 4), "input_resolution": torch.tensor(336)}, path,
                                with_extras=False)
    with pytest.raises(CheckpointError, match="input_resolution=336"):
        load_model("clip", weights=path)


# --------------------------------------------------------------------------------------------------
# Preprocessing, against hand-computed expectations

def _half_black_half_white(w: int, h: int, split: int) -> Image.Image:
    arr = np.zeros((h, w), dtype=np.uint8)
    arr[:, split:] = 255
    return Image.fromarray(arr, mode="L")


def test_clip_geometry_resize_shorter_then_centre_crop(clip: Any) -> None:
    # 400x200: shorter side 200 -> 224, width 448; crop starts at (448 - 224) / 2 = 112, so the edge at
    # x = 200 (-> 224 after resizing) lands at column 112 of the crop
    out = clip.preprocess(_half_black_half_white(400, 200, 200))
    assert out.shape == (3, 224, 224) and out.dtype == np.uint8
    assert (out[0] == out[1]).all() and (out[0] == out[2]).all()
    assert (out[0, :, :110] == 0).all() and (out[0, :, 115:] == 255).all()
    # portrait 200x400: crop rows 112..335 of the 224x448 resize; a uniform image stays uniform
    out = clip.preprocess(Image.new("L", (200, 400), 77))
    assert (out == 77).all()


def test_clip_normalisation_constants(clip: Any) -> None:
    pixels = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    got = clip.normalise(pixels)
    for c in range(3):
        expected = [(v / 255 - OPENAI_MEAN[c]) / OPENAI_STD[c] for v in (0, 128, 255)]
        torch.testing.assert_close(got[0, c, 0], torch.tensor(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("size", "resized", "offset"), [
    ((640, 480), (320, 240), (0, 40)),       # landscape: ratio 0.5
    ((300, 600), (160, 320), (80, 0)),       # portrait
    ((333, 500), (213, 320), (53, 0)),       # int() truncation of 213.12, offset floor(107 / 2)
    ((320, 320), (320, 320), (0, 0)),        # already the canvas size: untouched
])
def test_repair_letterbox_geometry(size: tuple[int, int], resized: tuple[int, int], offset: tuple[int, int]) -> None:
    out = chexzero_letterbox(Image.new("L", size, 200))
    assert out.shape == (320, 320) and out.dtype == np.uint8
    (x0, y0), (w, h) = offset, resized
    expected = np.zeros((320, 320), dtype=np.uint8)
    expected[y0:y0 + h, x0:x0 + w] = 200
    assert (out == expected).all()


def test_repair_preprocess_is_the_h5_image(repair: Any) -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (480, 640), dtype=np.uint8), mode="L")
    out = repair.preprocess(img)
    assert out.shape == (3, 320, 320)
    assert (out[0] == chexzero_letterbox(img)).all() and (out[0] == out[2]).all()


def test_repair_normalise_then_resize_without_antialias(repair: Any) -> None:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    # a fine stripe pattern: antialiasing matters for it
    plane = np.zeros((320, 320), dtype=np.uint8)
    plane[:, ::2] = 255
    pixels = torch.from_numpy(np.repeat(plane[None, None], 3, axis=1))
    got = repair.normalise(pixels)
    assert got.shape == (1, 3, 224, 224)
    scaled = (pixels.float() - 101.48761) / 83.43944
    oracle = TF.resize(scaled, [224, 224], interpolation=InterpolationMode.BICUBIC, antialias=False)
    torch.testing.assert_close(got, oracle, atol=1e-5, rtol=0)
    smooth = TF.resize(scaled, [224, 224], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert (got - smooth).abs().max() > 0.5
    # uniform input: exactly the normalisation constants
    flat = repair.normalise(torch.full((1, 3, 320, 320), 200, dtype=torch.uint8))
    torch.testing.assert_close(flat, torch.full((1, 3, 224, 224), (200 - 101.48761) / 83.43944), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# Tokens

def test_clip_tokens_lower_case_and_truncate_with_eot(clip: Any) -> None:
    tokens = clip.tokenize(["HEART Size", "heart size", "word " * 200])
    assert tokens.shape == (3, 77)
    assert torch.equal(tokens[0], tokens[1])
    assert tokens[0, 0] == 49406 and tokens[0, 3] == 49407 and tokens[0, 4:].eq(0).all()
    assert tokens[2, 0] == 49406 and tokens[2, -1] == 49407 and tokens[2].ne(0).all()


def test_text_embeddings_are_batch_independent(clip: Any) -> None:
    with torch.no_grad():
        alone = clip.encode_texts([TEXTS[1]])
        batched = clip.encode_texts(["word " * 100, TEXTS[1]])
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["clip", "cxr-repair"])
def test_the_gate_default_path_embeds_exactly_what_the_adapter_does(which: str, clip: Any, repair: Any,
                                                                    tmp_path: Path) -> None:
    """The gate's default options decode JPEGs in full, so its embeddings are the exact path's (issue 19)."""
    adapter = clip if which == "clip" else repair
    assert gate_vs_exact(adapter, tmp_path / "default") <= 1e-6
    # The speed option is not exact; this is also what the old default (draft decoding) would have failed.
    assert gate_vs_exact(adapter, tmp_path / "draft", draft_decode=True) > 1e-4
