"""MedCLIP (Swin-T and ResNet-50): official pytorch_model.bin / zip, registry loading, preprocessing, text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxr_robust.data.text_policy import TextPolicy
from cxr_robust.models import load_model
from cxr_robust.models.checkpoints import sha256_file
from cxr_robust.models.medclip import MEDCLIP_MEAN, MEDCLIP_STD, MedClipModel, medclip_pad_resize

from tests import model_fixtures as mf
from tests.fidelity import gate_vs_exact

pytestmark = pytest.mark.filterwarnings("ignore:.*entries, not Bio_ClinicalBERT:UserWarning")

TEXTS = ["No pneumothorax. Lungs clear.", "Mild cardiomegaly, left pleural effusion; chest tube stable.", ""]
MANIFEST = {"vit": "medclip_vit_pytorch_model_bin", "resnet": "medclip_resnet_pytorch_model_bin"}
SWIN = {"vit": "vision_model.model.", "resnet": None}
HALF = ("vision_model.projection_head.", "text_model.projection_head.")  # stored fp16 in the test files


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mf.write_vocab(tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="module", params=["vit", "resnet"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, vocab_dir: Path) -> dict[str, Any]:
    """In-memory random model, its official files, and the adapter loaded from them through the registry."""
    variant = request.param
    ref = mf.round_to_half_(mf.randomise_(MedClipModel(variant), seed=21), HALF).eval()
    tmp = tmp_path_factory.mktemp(f"medclip-{variant}")
    official = mf.official_hf_state(ref, swin_prefix=SWIN[variant], bert_prefix="text_model.model.", half=HALF)
    bin_path = tmp / "pytorch_model.bin"
    torch.save(official, bin_path)
    if variant == "vit":  # as downloaded: the zip itself
        weights = mf.write_zip(tmp / "medclip-vit-pretrained.zip", {"medclip-vit/pytorch_model.bin": bin_path})
    else:
        weights = bin_path
    adapter = load_model(f"medclip-{variant}", weights=weights, bert_vocab=vocab_dir)
    yield {"variant": variant, "ref": ref, "official": official, "weights": weights, "adapter": adapter}


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
            for w, h in [(300, 240), (240, 330), (150, 100)]]


def _ref_texts(ref: torch.nn.Module, vocab_dir: Path, texts: list[str], padding: Any = "max_length") -> torch.Tensor:
    """Oracle: transformers' BertTokenizer (as MedCLIPProcessor) into the in-memory model."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(vocab_dir), do_lower_case=True)
    enc = tok(texts, truncation=True, max_length=77, padding=padding, return_tensors="pt")
    with torch.no_grad():
        return F.normalize(ref.encode_text(enc["input_ids"], enc["attention_mask"]), dim=-1)


# --------------------------------------------------------------------------------------------------
# Formats and loading

def test_official_keys_equal_the_published_manifest(case: dict[str, Any]) -> None:
    assert mf.shapes(case["official"]) == mf.manifest(MANIFEST[case["variant"]])
    # The in-memory (transformers 5) state dict differs only by the documented benign extras: BERT's
    # position_ids and Swin's relative_position_index are not persisted, and Swin blocks use 5.x names.
    live = set(case["ref"].state_dict())
    extra_official = {k for k in case["official"] if not k.endswith(("position_ids", "relative_position_index"))}
    assert len(live) == len(extra_official)
    if case["variant"] == "resnet":
        assert live == extra_official


def test_embeddings_equal_the_in_memory_model(case: dict[str, Any], vocab_dir: Path) -> None:
    adapter, ref = case["adapter"], case["ref"]
    pixels = torch.from_numpy(np.stack([adapter.preprocess(im) for im in _images()]))
    assert pixels.shape == (3, 1, 224, 224) and pixels.dtype == torch.uint8
    got = adapter.encode_images(pixels)
    with torch.no_grad():
        want = F.normalize(ref.encode_image((pixels.float() / 255.0 - MEDCLIP_MEAN) / MEDCLIP_STD), dim=-1)
    assert got.shape == (3, 512)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    texts = adapter.encode_texts(TEXTS)
    assert texts.shape == (3, 512)
    torch.testing.assert_close(texts, _ref_texts(ref, vocab_dir, TEXTS), atol=1e-5, rtol=0)


def test_plain_load_state_dict_would_leave_swin_random(case: dict[str, Any]) -> None:
    """Why the rename exists: the 4.x-named file against a transformers-5 model, loaded non-strictly."""
    result = case["ref"].load_state_dict(case["official"], strict=False)  # same values: harmless
    if case["variant"] == "vit":
        assert any(".attention.q_proj." in k for k in result.missing_keys)
        assert any(".mlp.fc2." in k for k in result.missing_keys)
    else:  # no Swin: only BERT's position_ids buffer is extra
        assert result.missing_keys == [] and result.unexpected_keys == ["text_model.model.embeddings.position_ids"]


def test_adapter_metadata(case: dict[str, Any]) -> None:
    adapter = case["adapter"]
    assert adapter.baseline_row == ("MedCLIP" if case["variant"] == "vit" else None)
    assert adapter.default_text_policy is TextPolicy.FINDINGS_IMPRESSION
    assert (adapter.embed_dim, adapter.input_size, adapter.input_channels) == (512, 224, 1)
    fp = adapter.fingerprint()
    json.dumps(fp)  # fingerprints go into cache keys: JSON-serialisable
    assert fp["weights_sha256"] == sha256_file(case["weights"])
    assert fp["normalisation"] == {"mean": (MEDCLIP_MEAN,), "std": (MEDCLIP_STD,), "scale": 1.0 / 255.0}
    assert fp["tokenizer"]["max_length"] == 77 and fp["tokenizer"]["padding"] == "max_length"
    assert fp["tokenizer"]["lowercase"] is True


# --------------------------------------------------------------------------------------------------
# Text: padding enters the average, so it is fixed at 77

def test_text_embedding_is_batch_independent(case: dict[str, Any], vocab_dir: Path) -> None:
    adapter = case["adapter"]
    alone = adapter.encode_texts([TEXTS[0]])
    with_long = adapter.encode_texts(["mild cardiomegaly " * 40, TEXTS[0]])
    torch.testing.assert_close(with_long[1:], alone, atol=1e-5, rtol=0)
    ids, mask = adapter.tokenizer([TEXTS[0], "word " * 300])
    assert ids.shape == (2, 77) and mask[1].all()
    # padding to the batch's longest (the README's call) would give another embedding for the same text
    shorter = _ref_texts(case["ref"], vocab_dir, [TEXTS[0]], padding="longest")
    assert (shorter - alone).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------
# Preprocessing, against hand-computed expectations

def test_pad_to_square_then_bicubic() -> None:
    # 448x224 landscape: black canvas 448x448, image at rows 112..335; halved -> rows 56..167
    out = medclip_pad_resize(Image.new("L", (448, 224), 200))
    assert out.shape == (224, 224) and out.dtype == np.uint8
    assert (out[:54] == 0).all() and (out[170:] == 0).all() and (out[58:166] == 200).all()
    assert (out[:, :] == out[:, :1]).all()  # no horizontal structure


@pytest.mark.parametrize(("size", "offset"), [((100, 50), (62, 87)), ((101, 50), (61, 87)), ((224, 10), (0, 107))])
def test_small_images_are_padded_not_enlarged(size: tuple[int, int], offset: tuple[int, int]) -> None:
    """side = max(224, w, h): a small image sits unscaled on a 224 canvas at int((224 - w) / 2)."""
    out = medclip_pad_resize(Image.new("L", size, 200))
    expected = np.zeros((224, 224), dtype=np.uint8)
    (x0, y0), (w, h) = offset, size
    expected[y0:y0 + h, x0:x0 + w] = 200
    assert (out == expected).all()


def test_single_channel_normalisation(case: dict[str, Any]) -> None:
    adapter = case["adapter"]
    img = Image.fromarray(np.full((300, 300), 255, dtype=np.uint8), mode="L")
    assert adapter.preprocess(img).shape == (1, 224, 224)
    pixels = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    expected = torch.tensor([(v / 255 - 0.5862785803043838) / 0.27950088968644304 for v in (0, 128, 255)])
    torch.testing.assert_close(adapter.normalise(pixels)[0, 0, 0], expected, atol=1e-6, rtol=0)


def test_the_gate_default_path_embeds_exactly_what_the_adapter_does(case: dict[str, Any], tmp_path: Path) -> None:
    """The gate's default options decode JPEGs in full, so its embeddings are the exact path's (issue 19)."""
    assert gate_vs_exact(case["adapter"], tmp_path) <= 1e-6
