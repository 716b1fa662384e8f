"""OpenAI CLIP ViT-B/32 and CXR-RePaiR: the same open_clip architecture, different weights and preprocessing.

Both are ``ViT-B-32`` with **QuickGELU** (the activation OpenAI trained with; open_clip's plain ``ViT-B-32``
uses nn.GELU and silently gives different features, open_clip issue #771). The architecture is written
out here and built with open_clip's own ``CLIP`` class; the checkpoint is then loaded strictly (its 302
OpenAI-format keys are exactly open_clip's).

Preprocessing differs (MODELS.md sections 1 and 2):

- CLIP: shorter side to 224 (PIL bicubic), centre crop 224, OpenAI mean/std on [0, 1].
- CXR-RePaiR reproduces its offline h5 step plus its dataset transform: longest side to 320 (PIL Lanczos,
  ``int()`` sizes), pasted centred on a black 320x320 canvas (that uint8 image is exactly what the h5 stores,
  so it is what :meth:`preprocess` returns and where the occluder acts); then, on float tensors,
  ``(x - 101.48761) / 83.43944`` on the 0-255 scale and a bicubic resize 320 -> 224 **without antialiasing**
  (torchvision 0.11's tensor ``Resize``). Doing that resize on floats, not on uint8, avoids a rounding step
  the original never had.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_robust.models.checkpoints import (
    CheckpointError,
    check_checkpoint_family,
    load_state_strict,
    load_torch_file,
    unwrap_state_dict,
    weights_sha256,
)
from cxr_robust.models.openclip import (
    OPENAI_MEAN,
    OPENAI_STD,
    Normalisation,
    OpenClipAdapter,
    clip_tokenizer,
    resize_center_crop,
)
from cxr_robust.models.registry import MissingWeightsError, get_spec

if TYPE_CHECKING:
    import torch
    from PIL import Image

# open_clip's model_configs/ViT-B-32-quickgelu.json, written out so a change there cannot change the model.
VIT_B32_QUICKGELU: dict[str, Any] = dict(
    embed_dim=512,
    vision_cfg=dict(image_size=224, layers=12, width=768, patch_size=32),
    text_cfg=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
    quick_gelu=True,
)

# Attributes OpenAI's TorchScript model carries as tensors; clip.build_model deletes them before loading.
OPENAI_JIT_EXTRAS: dict[str, int] = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}

CXR_REPAIR_CANVAS = 320
CXR_REPAIR_MEAN = 101.48761
CXR_REPAIR_STD = 83.43944


def build_vit_b32_quickgelu() -> "torch.nn.Module":
    """A randomly initialised open_clip ``CLIP`` with OpenAI ViT-B/32's architecture (QuickGELU)."""
    from open_clip.model import CLIP

    cfg = dict(VIT_B32_QUICKGELU)
    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=dict(cfg["vision_cfg"]), text_cfg=dict(cfg["text_cfg"]),
                quick_gelu=cfg["quick_gelu"])


def _advice(model_name: str) -> str:
    spec = get_spec(model_name)
    return f"re-download {' / '.join(spec.weight_files)} from {spec.source_url}"


def read_openai_format_state(path: str | Path, *, model_name: str) -> dict[str, "torch.Tensor"]:
    """OpenAI-format CLIP weights from a TorchScript archive or a (possibly wrapped) state-dict file.

    Either is read as data (:func:`~cxr_robust.models.checkpoints.load_torch_file`): nothing in the file runs.
    """
    advice = _advice(model_name)
    obj = load_torch_file(path, model_name=model_name, advice=advice)
    state = unwrap_state_dict(obj, model_name=model_name, source=path)
    for key, expected in OPENAI_JIT_EXTRAS.items():
        if key in state:
            value = state.pop(key)
            if value.numel() != 1 or int(value.reshape(-1)[0]) != expected:
                raise CheckpointError(f"{model_name}: {path} has {key}={value.tolist()}, expected {expected}: "
                                      f"it is not a ViT-B/32 checkpoint; {advice}")
    return state


def _require_file(weights: str | Path | None, model_name: str) -> Path:
    if weights is None:
        spec = get_spec(model_name)
        raise MissingWeightsError(f"{model_name}: no weights file given (expected {' or '.join(spec.weight_files)}, "
                                  f"published at {spec.source_url})")
    return Path(weights).expanduser()


def _load_vit_b32(path: Path, model_name: str) -> "torch.nn.Module":
    # read (and recognise a wrong file) before spending seconds building the model
    state = read_openai_format_state(path, model_name=model_name)
    check_checkpoint_family(state, model_name=model_name, source=path, advice=_advice(model_name))
    model = build_vit_b32_quickgelu()
    load_state_strict(model, state, model_name=model_name, source=path)
    return model.float().eval()  # OpenAI's fp16 weights run in fp32, as clip.load does on CPU


def load_openai_clip(weights: str | Path | None = None, *, device: str = "cpu", bert_vocab: Any = None) -> OpenClipAdapter:
    """OpenAI CLIP ViT-B/32 from ``ViT-B-32.pt`` (TorchScript archive) or an OpenAI-format state-dict file.

    ``bert_vocab`` is accepted and ignored (callers pass shared options to every model).
    """
    name = "clip"
    path = _require_file(weights, name)
    model = _load_vit_b32(path, name)
    spec = get_spec(name)
    adapter = OpenClipAdapter(
        model, clip_tokenizer(), name=name, input_size=224,
        normalisation=Normalisation(mean=OPENAI_MEAN, std=OPENAI_STD, scale=1.0 / 255.0),
        geometry=resize_center_crop, context_length=77, default_text_policy=spec.default_text_policy,
        baseline_row=spec.baseline_row,
        fingerprint_extra={"weights_sha256": weights_sha256(path), "architecture": "ViT-B-32-quickgelu",
                           "resample": "PIL bicubic, shorter side -> 224, centre crop",
                           "text": "CLIP BPE, lower-cased, 77 tokens, truncated with EOT last"},
    )
    return adapter.to(device)


# --------------------------------------------------------------------------------------------------
# CXR-RePaiR

def chexzero_letterbox(image: "Image.Image", size: int = CXR_REPAIR_CANVAS) -> np.ndarray:
    """CheXzero/CXR-RePaiR's h5 step: longest side to ``size`` (Lanczos), centred on black: ``uint8 (size, size)``.

    Sizes use ``int()`` truncation and the paste offset floor division, as the original does.
    """
    from PIL import Image

    img = image if image.mode == "L" else image.convert("L")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError(f"image has no pixels ({w}x{h})")
    ratio = float(size) / max(w, h)
    new_w, new_h = int(w * ratio), int(h * ratio)
    if new_w < 1 or new_h < 1:
        raise ValueError(f"image {w}x{h} is too elongated to fit a {size}x{size} canvas")
    if (new_w, new_h) != (w, h):
        # Image.ANTIALIAS in the original, which is Lanczos (the alias is gone from Pillow >= 10)
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(img, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas, dtype=np.uint8)


class CxrRepairAdapter(OpenClipAdapter):
    """OpenClipAdapter whose normalisation ends with CXR-RePaiR's non-antialiased tensor resize to 224.

    :meth:`preprocess` gives the 320x320 letterboxed image (``input_size`` 320); :meth:`normalise` applies
    the 0-255 normalisation and then the bicubic resize, in the original's order.
    """

    model_input_size = 224

    def normalise(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """``uint8 (B, 3, 320, 320)`` -> normalised ``float32 (B, 3, 224, 224)``."""
        import torch.nn.functional as F

        x = super().normalise(pixels)
        # torchvision 0.11 tensor Resize: interpolate(bicubic, align_corners=False), no antialias, no clamp
        return F.interpolate(x, size=(self.model_input_size, self.model_input_size), mode="bicubic",
                             align_corners=False, antialias=False)


def load_cxr_repair(weights: str | Path | None = None, *, device: str = "cpu", bert_vocab: Any = None) -> CxrRepairAdapter:
    """CXR-RePaiR from ``clip-imp-pretrained_128_6_after_4.pt`` (a state dict, possibly wrapped / ``module.``-prefixed)."""
    name = "cxr-repair"
    path = _require_file(weights, name)
    model = _load_vit_b32(path, name)
    spec = get_spec(name)
    adapter = CxrRepairAdapter(
        model, clip_tokenizer(), name=name, input_size=CXR_REPAIR_CANVAS,
        normalisation=Normalisation(mean=(CXR_REPAIR_MEAN,) * 3, std=(CXR_REPAIR_STD,) * 3, scale=1.0),
        geometry=chexzero_letterbox, context_length=77, default_text_policy=spec.default_text_policy,
        baseline_row=spec.baseline_row,
        fingerprint_extra={"weights_sha256": weights_sha256(path), "architecture": "ViT-B-32-quickgelu",
                           "resample": "PIL Lanczos longest side -> 320, black pad; tensor bicubic 320 -> 224 "
                                       "without antialias after normalisation",
                           "model_input_size": CxrRepairAdapter.model_input_size,
                           "text": "CLIP BPE, lower-cased, 77 tokens, truncated with EOT last"},
    )
    return adapter.to(device)
