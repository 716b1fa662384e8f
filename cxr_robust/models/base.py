"""The interface every retrieval model adapter implements."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_robust.data.text_policy import TextPolicy

if TYPE_CHECKING:
    import torch
    from PIL import Image


class RetrievalModel(abc.ABC):
    """An image->report retrieval model as the benchmark sees it.

    The image path is split in two so that occlusion happens where the paper puts it, on the image as the
    model sees it geometrically:

    1. :meth:`preprocess` turns a grayscale PIL image into ``uint8`` pixels of shape
       ``(input_channels, input_size, input_size)``: every resize, pad and crop, but no intensity
       normalisation (so a black occluder is raw pixel value 0);
    2. :meth:`encode_images` takes a ``uint8`` batch ``(B, C, H, W)`` (possibly occluded), normalises it
       and returns L2-normalised float embeddings ``(B, embed_dim)``.

    :meth:`encode_texts` returns L2-normalised embeddings of report texts. Both encoders must be
    batch-independent: an item's embedding does not depend on what else is in its batch.
    """

    name: str = ""
    embed_dim: int = 512
    input_size: int = 224
    input_channels: int = 3
    default_text_policy: TextPolicy = TextPolicy.FINDINGS_IMPRESSION
    baseline_row: str | None = None
    device: str = "cpu"

    @abc.abstractmethod
    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """Geometric preprocessing of one mode-``L`` image to ``uint8 (C, S, S)``."""

    @abc.abstractmethod
    def encode_images(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """Embed a ``uint8 (B, C, S, S)`` batch; returns L2-normalised ``(B, D)`` float32."""

    @abc.abstractmethod
    def encode_texts(self, texts: list[str]) -> "torch.Tensor":
        """Embed report texts; returns L2-normalised ``(B, D)`` float32."""

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes an embedding (weights hash, preprocessing, tokenizer settings).

        It becomes part of the embedding cache key and of the report metadata; it must be JSON-serialisable.
        """

    decode_size_hint: int | None = None
    """Set by adapters whose geometry first resizes to a side larger than the input (CXR-CLIP's 512)."""

    @property
    def decode_size(self) -> int:
        """Smallest image side worth decoding (JPEG draft mode never decodes below it)."""
        return max(self.input_size, self.decode_size_hint or 0)

    def preprocess_key(self) -> str:
        """Identifies the geometric preprocessing, so decoded pixels can be shared between models."""
        return f"{type(self).__name__}:{self.input_channels}x{self.input_size}"

    def to(self, device: str) -> "RetrievalModel":
        """Move the model to ``device`` (``cpu``, ``cuda``, ``cuda:1``...)."""
        self.device = device
        for module in self.torch_modules():
            module.to(device)
        return self

    def torch_modules(self) -> list["torch.nn.Module"]:
        """The torch modules of this model (moved by :meth:`to`, put in eval mode by the engine)."""
        return []


def l2_normalise(x: "torch.Tensor") -> "torch.Tensor":
    """Row-wise L2 normalisation in float32 (zero rows stay zero rather than becoming NaN)."""
    import torch

    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
