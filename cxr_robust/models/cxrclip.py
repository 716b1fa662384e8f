"""CXR-CLIP (Soombit-ai/cxr-clip, formerly kakaobrain/cxr-clip): Swin-T or ResNet-50 + Bio_ClinicalBERT.

The evaluation path of ``CXRClip`` (MODELS.md section 4):

- image: the dataset images were pre-resized so the shorter side is 512 px; then ``Resize(224)`` (PIL
  bilinear, shorter side), ``CenterCrop(224)``, ``ToTensor`` and per-backbone normalisation: ImageNet
  mean/std for ResNet-50, 0.5/0.5 for Swin-T. Swin-T's feature is the **first** output token
  (``last_hidden_state[:, 0]``, not the pooled one); ResNet-50's is the 2048-d average pool. Both go through
  ``Linear(d, 512)`` with bias.
- text: lower-cased wordpieces, truncated to 256 (``base.text_max_length``), padded to the batch's longest;
  the feature is BERT's last hidden state at the ``[SEP]`` token (index ``attention_mask.sum() - 1``), which
  attention masking makes independent of padding, then ``Linear(768, 512)`` with bias.

Checkpoints ``{swint,r50}_{m,mc,mcc}.tar`` are ``torch.save`` dicts with ``model`` and an OmegaConf
``config``; they are read without executing code (see :mod:`cxr_robust.models.checkpoints`). The official
evaluator loads with ``strict=False``, so under transformers 5.x its renamed Swin keys would silently stay
random; here Swin keys are renamed to the installed transformers' names and every key must load.

The 512 px pre-resize step is not in the released code (the datasets README only says it was done; its
DICOM snippet calls ``cv2.resize`` with the interpolation in the ``dst`` position, i.e. bilinear). Here it
uses PIL Lanczos with the snippet's ``int()`` sizes; pass ``pre_resize=None`` to skip it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from cxr_robust.models import CXRCLIP_PRE_RESIZE
from cxr_robust.models.bert import (
    BIO_CLINICAL_BERT_REPO,
    BertTowerAdapter,
    bio_clinical_bert_tokenizer,
    build_bert,
    build_swin_tiny,
)
from cxr_robust.models.checkpoints import (
    CheckpointError,
    check_checkpoint_family,
    load_state_strict,
    read_training_checkpoint,
    reconcile_derived_buffers,
    remap_swin_keys,
    swin_key_style,
    weights_sha256,
)
from cxr_robust.models.openclip import Normalisation
from cxr_robust.models.registry import MissingWeightsError, get_spec

if TYPE_CHECKING:
    from PIL import Image

CXRCLIP_SIZE = 224
CXRCLIP_MAX_LENGTH = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUGGINGFACE_MEAN = (0.5, 0.5, 0.5)
HUGGINGFACE_STD = (0.5, 0.5, 0.5)


class CxrClipResNet(nn.Module):
    """torchvision ResNet-50 without ``fc`` (the original deletes it): 2048-d average-pooled features."""

    out_dim = 2048

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.resnet = resnet50(weights=None)
        self.resnet.fc = nn.Identity()  # no parameters, so the state dict matches the deleted-fc original

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.resnet(pixel_values)


class CxrClipSwin(nn.Module):
    """Swin-T whose feature is its first output token (what the original calls "[CLS]")."""

    out_dim = 768

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = build_swin_tiny()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(pixel_values=pixel_values).last_hidden_state[:, 0]


class CxrClipText(nn.Module):
    """Bio_ClinicalBERT; the feature is the last hidden state at the ``[SEP]`` (last unmasked) token."""

    def __init__(self) -> None:
        super().__init__()
        self.text_encoder = build_bert(add_pooling_layer=True)  # pooler unused, but in the checkpoint

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        eos = attention_mask.sum(dim=-1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), eos]


class LinearProjection(nn.Module):
    """CXR-CLIP's ``LinearProjectionHead``: one ``Linear(d, 512)`` with bias (its dropout is unused)."""

    def __init__(self, in_dim: int, out_dim: int = 512) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


class CxrClipModel(nn.Module):
    """CXR-CLIP's towers with the official attribute names (so state-dict keys match ``ckpt['model']``)."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        if variant not in ("swint", "r50"):
            raise ValueError(f"CXR-CLIP variant must be 'swint' or 'r50', not {variant!r}")
        self.variant = variant
        self.image_encoder: nn.Module = CxrClipSwin() if variant == "swint" else CxrClipResNet()
        self.text_encoder = CxrClipText()
        self.image_projection = LinearProjection(self.image_encoder.out_dim)  # type: ignore[arg-type]
        self.text_projection = LinearProjection(768)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unnormalised 512-d image features of normalised ``(B, 3, 224, 224)`` pixels."""
        return self.image_projection(self.image_encoder(pixel_values))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised 512-d text features."""
        return self.text_projection(self.text_encoder(input_ids, attention_mask))


def cxrclip_resize_crop(image: "Image.Image", size: int = CXRCLIP_SIZE,
                        pre_resize: int | None = CXRCLIP_PRE_RESIZE) -> np.ndarray:
    """CXR-CLIP's test geometry: [shorter side to ``pre_resize``], ``Resize(size)`` bilinear, ``CenterCrop(size)``.

    Sizes follow torchvision exactly (``int(size * long / short)``; crop offset ``int(round(d / 2))``).
    """
    from PIL import Image

    img = image if image.mode == "L" else image.convert("L")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError(f"image has no pixels ({w}x{h})")
    if pre_resize:
        ratio = pre_resize / min(w, h)
        target = (int(w * ratio), int(h * ratio))
        if target != (w, h):
            img = img.resize(target, Image.Resampling.LANCZOS)
        w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _geometry(pre_resize: int | None) -> Callable[["Image.Image", int], np.ndarray]:
    def cxrclip_resize_crop_(image: "Image.Image", size: int) -> np.ndarray:
        return cxrclip_resize_crop(image, size, pre_resize)

    cxrclip_resize_crop_.__name__ = "cxrclip_resize_crop"
    return cxrclip_resize_crop_


def _check_config(config: dict[str, Any] | None, variant: str, *, model_name: str, source: Path, advice: str) -> int:
    """Validate what the checkpoint's own config says against this adapter; returns the text max length."""
    if not config:
        return CXRCLIP_MAX_LENGTH
    model_cfg = config.get("model") if isinstance(config.get("model"), dict) else {}
    image_cfg = model_cfg.get("image_encoder") if isinstance(model_cfg.get("image_encoder"), dict) else {}
    text_cfg = model_cfg.get("text_encoder") if isinstance(model_cfg.get("text_encoder"), dict) else {}
    proj_cfg = model_cfg.get("projection_head") if isinstance(model_cfg.get("projection_head"), dict) else {}
    problems = []
    if image_cfg:
        is_resnet = str(image_cfg.get("name", "")) == "resnet"
        if is_resnet != (variant == "r50"):
            other = "cxr-clip-r50" if is_resnet else "cxr-clip-swint"
            problems.append(f"its config has image encoder {image_cfg.get('name')!r}: use model {other!r}")
    if text_cfg.get("pooling", "eos") != "eos":
        problems.append(f"text pooling {text_cfg.get('pooling')!r} (only 'eos' is implemented)")
    if proj_cfg and (str(proj_cfg.get("name", "linear")).lower() != "linear" or proj_cfg.get("proj_dim", 512) != 512):
        problems.append(f"projection head {proj_cfg} (only linear to 512 is implemented)")
    tok_cfg = config.get("tokenizer") if isinstance(config.get("tokenizer"), dict) else {}
    tok_name = tok_cfg.get("pretrained_model_name_or_path", BIO_CLINICAL_BERT_REPO)
    if tok_name != BIO_CLINICAL_BERT_REPO:
        problems.append(f"tokenizer {tok_name!r} (only {BIO_CLINICAL_BERT_REPO} is supported)")
    if problems:
        raise CheckpointError(f"{model_name}: {source} is not a checkpoint this adapter can run: "
                              f"{'; '.join(problems)}. {advice[0].upper() + advice[1:]}.")
    base = config.get("base") if isinstance(config.get("base"), dict) else {}
    length = base.get("text_max_length", CXRCLIP_MAX_LENGTH)
    return int(length) if isinstance(length, int) and 2 < length <= 512 else CXRCLIP_MAX_LENGTH


def _load_cxrclip(variant: str, weights: str | Path | None, bert_vocab: str | Path | None, device: str,
                  pre_resize: int | None) -> BertTowerAdapter:
    name = f"cxr-clip-{variant}"
    spec = get_spec(name)
    advice = f"download one of {', '.join(spec.weight_files)} from {spec.source_url}"
    if weights is None:
        raise MissingWeightsError(f"{name}: no weights file given ({advice})")
    path = Path(weights).expanduser()
    state, config = read_training_checkpoint(path, model_name=name, advice=advice)
    check_checkpoint_family(state, model_name=name, source=path, advice=advice)
    max_length = _check_config(config, variant, model_name=name, source=path, advice=advice)
    tokenizer = bio_clinical_bert_tokenizer(bert_vocab, model_name=name, max_length=max_length,
                                            pad_to_max_length=False)
    model = CxrClipModel(variant)
    if variant == "swint":
        state = remap_swin_keys(state, prefix="image_encoder.image_encoder.", style=swin_key_style(model))
    state, ignore_missing = reconcile_derived_buffers(model, state, model_name=name, source=path)
    load_state_strict(model, state, model_name=name, source=path, ignore_missing=ignore_missing)
    swin = variant == "swint"
    adapter = BertTowerAdapter(
        model.float().eval(), tokenizer, name=name, geometry=_geometry(pre_resize),
        geometry_params={"pre_resize": pre_resize, "pre_resample": "PIL Lanczos" if pre_resize else None,
                         "resample": "PIL bilinear, shorter side -> 224, centre crop"},
        input_size=CXRCLIP_SIZE, input_channels=3,
        normalisation=Normalisation(mean=HUGGINGFACE_MEAN if swin else IMAGENET_MEAN,
                                    std=HUGGINGFACE_STD if swin else IMAGENET_STD, scale=1.0 / 255.0),
        default_text_policy=spec.default_text_policy, baseline_row=spec.baseline_row,
        fingerprint_extra={
            "weights_sha256": weights_sha256(path),
            "architecture": ("CXR-CLIP Swin-T (first token) " if swin else "CXR-CLIP ResNet-50 (avg pool) ")
            + "+ Bio_ClinicalBERT",
            "text_pooling": "[SEP] token of the last hidden state",
        },
    )
    adapter.decode_size_hint = pre_resize  # decode at least at the 512 pre-resize, not at 224
    return adapter.to(device)  # type: ignore[return-value]


def load_cxrclip_swint(weights: str | Path | None = None, *, bert_vocab: str | Path | None = None,
                       device: str = "cpu", pre_resize: int | None = CXRCLIP_PRE_RESIZE) -> BertTowerAdapter:
    """CXR-CLIP with the Swin-T image tower, from ``swint_{m,mc,mcc}.tar``."""
    return _load_cxrclip("swint", weights, bert_vocab, device, pre_resize)


def load_cxrclip_r50(weights: str | Path | None = None, *, bert_vocab: str | Path | None = None,
                     device: str = "cpu", pre_resize: int | None = CXRCLIP_PRE_RESIZE) -> BertTowerAdapter:
    """CXR-CLIP with the ResNet-50 image tower, from ``r50_{m,mc,mcc}.tar``."""
    return _load_cxrclip("r50", weights, bert_vocab, device, pre_resize)


__all__ = ["CxrClipModel", "cxrclip_resize_crop", "load_cxrclip_r50", "load_cxrclip_swint"]
