"""MedCLIP (RyanWangZf/MedCLIP): a Swin-T or ResNet-50 image tower and a Bio_ClinicalBERT text tower.

The inference path of ``MedCLIPModel`` and ``MedCLIPFeatureExtractor`` (MODELS.md section 3), rebuilt
because the package itself no longer imports under transformers >= 4.25:

- image: pad onto a black square of side ``max(224, w, h)`` (offset ``int((side - w) / 2)``), PIL bicubic
  resize to 224x224, ``(x / 255 - 0.5863) / 0.2795``, **one channel** (the tower repeats it to three);
  Swin-T ``pooler_output`` -> ``Linear(768, 512, bias=False)``, or ResNet-50 whose ``fc`` is
  ``Linear(2048, 512, bias=False)``;
- text: lower-cased wordpieces, truncated to 77; the feature is the mean over **all** positions (padding
  included: the official pooling ignores the attention mask) of BERT layers 1, 2 and 12, averaged, then
  ``Linear(768, 512, bias=False)``.

Because padding enters the average, a report's embedding depends on how far it is padded. The official
README pads to the longest text of the batch, which makes an embedding depend on its batch-mates; here
every text is padded to exactly 77 tokens (the training maximum), so a report always has one embedding.

Weights: ``pytorch_model.bin`` (a plain state dict of the whole model), read directly or from inside the
downloaded ``medclip[-vit]-pretrained.zip``; Swin key names of transformers 4.x and 5.x both load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cxr_robust.models.bert import BertTowerAdapter, bio_clinical_bert_tokenizer, build_bert, build_swin_tiny
from cxr_robust.models.checkpoints import (
    check_checkpoint_family,
    load_state_strict,
    load_torch_file,
    reconcile_derived_buffers,
    remap_swin_keys,
    swin_key_style,
    unwrap_state_dict,
    weights_sha256,
)
from cxr_robust.models.openclip import Normalisation
from cxr_robust.models.registry import MissingWeightsError, get_spec

if TYPE_CHECKING:
    from PIL import Image

MEDCLIP_MEAN = 0.5862785803043838
MEDCLIP_STD = 0.27950088968644304
MEDCLIP_SIZE = 224
MEDCLIP_MAX_LENGTH = 77
MEDCLIP_TEXT_LAYERS = (1, 2, 12)
"""Indices into BERT's ``hidden_states`` (0 is the embedding output), i.e. encoder layers 1, 2 and 12."""


class MedClipTextModel(nn.Module):
    """Bio_ClinicalBERT + mean of layers 1, 2, 12 over all positions + bias-free projection to 512."""

    def __init__(self) -> None:
        super().__init__()
        self.model = build_bert(add_pooling_layer=True)  # the pooler is unused but is in the checkpoint
        self.projection_head = nn.Linear(768, 512, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        layers = torch.stack([out.hidden_states[i] for i in MEDCLIP_TEXT_LAYERS])  # (3, B, L, 768)
        # mean over positions (padding included, no mask), then over the three layers: the official order
        pooled = layers.permute(1, 0, 2, 3).mean(2).mean(1)
        return self.projection_head(pooled)


class MedClipVisionResNet(nn.Module):
    """torchvision ResNet-50 whose ``fc`` is the 2048 -> 512 projection (no bias)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.model = resnet50(weights=None)
        self.model.fc = nn.Linear(2048, 512, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] == 1:
            pixel_values = pixel_values.repeat(1, 3, 1, 1)
        return self.model(pixel_values)


class MedClipVisionSwin(nn.Module):
    """Swin-T ``pooler_output`` (mean of the 49 final tokens) -> 768 -> 512 projection (no bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = build_swin_tiny()
        self.projection_head = nn.Linear(768, 512, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] == 1:
            pixel_values = pixel_values.repeat(1, 3, 1, 1)
        return self.projection_head(self.model(pixel_values=pixel_values).pooler_output)


class MedClipModel(nn.Module):
    """MedCLIP's two towers with the official attribute names (so state-dict keys match ``pytorch_model.bin``)."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        if variant not in ("vit", "resnet"):
            raise ValueError(f"MedCLIP variant must be 'vit' or 'resnet', not {variant!r}")
        self.variant = variant
        self.vision_model = MedClipVisionSwin() if variant == "vit" else MedClipVisionResNet()
        self.text_model = MedClipTextModel()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unnormalised 512-d image features of normalised ``(B, 1 or 3, 224, 224)`` pixels."""
        return self.vision_model(pixel_values)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised 512-d text features."""
        return self.text_model(input_ids, attention_mask)


def medclip_pad_resize(image: "Image.Image", size: int = MEDCLIP_SIZE) -> np.ndarray:
    """MedCLIP's feature extractor geometry: black square pad (side >= ``size``), PIL bicubic to ``size``."""
    from PIL import Image

    img = image if image.mode == "L" else image.convert("L")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError(f"image has no pixels ({w}x{h})")
    side = max(size, w, h)
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(img, (int((side - w) / 2), int((side - h) / 2)))
    if side != size:
        canvas = canvas.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(canvas, dtype=np.uint8)


MEDCLIP_GEOMETRY = {"pad": "black square, side max(224, w, h), offset int((side - w) / 2)",
                    "resample": "PIL bicubic to 224x224"}


def _load_medclip(variant: str, weights: str | Path | None, bert_vocab: str | Path | None, device: str) -> BertTowerAdapter:
    name = "medclip-vit" if variant == "vit" else "medclip-resnet"
    spec = get_spec(name)
    advice = f"re-download {spec.weight_files[0]} from {spec.source_url}"
    if weights is None:
        raise MissingWeightsError(f"{name}: no weights file given (expected {' or '.join(spec.weight_files)}, "
                                  f"published at {spec.source_url})")
    path = Path(weights).expanduser()
    # the vocabulary first: it is cheap to check and the most likely thing to be missing
    tokenizer = bio_clinical_bert_tokenizer(bert_vocab, model_name=name, max_length=MEDCLIP_MAX_LENGTH,
                                            pad_to_max_length=True)
    state = unwrap_state_dict(load_torch_file(path, model_name=name, advice=advice, member_suffix="pytorch_model.bin"),
                              model_name=name, source=path)
    check_checkpoint_family(state, model_name=name, source=path, advice=advice)
    model = MedClipModel(variant)
    if variant == "vit":
        state = remap_swin_keys(state, prefix="vision_model.model.", style=swin_key_style(model))
    state, ignore_missing = reconcile_derived_buffers(model, state, model_name=name, source=path)
    load_state_strict(model, state, model_name=name, source=path, ignore_missing=ignore_missing)
    adapter = BertTowerAdapter(
        model.float().eval(), tokenizer, name=name, geometry=medclip_pad_resize, geometry_params=MEDCLIP_GEOMETRY,
        input_size=MEDCLIP_SIZE, input_channels=1,
        normalisation=Normalisation(mean=(MEDCLIP_MEAN,), std=(MEDCLIP_STD,), scale=1.0 / 255.0),
        default_text_policy=spec.default_text_policy, baseline_row=spec.baseline_row,
        fingerprint_extra={
            "weights_sha256": weights_sha256(path),
            "architecture": ("MedCLIP Swin-T (pooler) " if variant == "vit" else "MedCLIP ResNet-50 ")
            + "+ Bio_ClinicalBERT",
            "text_pooling": "mean over all 77 positions (padding included) of BERT layers 1, 2, 12",
        },
    )
    return adapter.to(device)  # type: ignore[return-value]


def load_medclip_vit(weights: str | Path | None = None, *, bert_vocab: str | Path | None = None,
                     device: str = "cpu") -> BertTowerAdapter:
    """MedCLIP with the Swin-T image tower, from ``pytorch_model.bin`` or ``medclip-vit-pretrained.zip``."""
    return _load_medclip("vit", weights, bert_vocab, device)


def load_medclip_resnet(weights: str | Path | None = None, *, bert_vocab: str | Path | None = None,
                        device: str = "cpu") -> BertTowerAdapter:
    """MedCLIP with the ResNet-50 image tower, from ``pytorch_model.bin`` or ``medclip-pretrained.zip``."""
    return _load_medclip("resnet", weights, bert_vocab, device)


__all__ = ["MedClipModel", "load_medclip_resnet", "load_medclip_vit", "medclip_pad_resize"]
