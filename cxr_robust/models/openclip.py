"""A retrieval adapter around an open_clip ``CLIP`` model (used by the demo model, CLIP and CXR-RePaiR).

The adapter owns the split the benchmark needs: geometric preprocessing to ``uint8`` pixels (where the
occluder acts), then intensity normalisation and encoding. Family-specific loaders build the open_clip model,
load the weights and pick the preprocessing; this module knows nothing about any particular checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from cxr_robust.data.text_policy import TextPolicy
from cxr_robust.models.base import RetrievalModel, l2_normalise

if TYPE_CHECKING:
    import torch
    from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Normalisation:
    """Intensity normalisation applied to ``uint8`` pixels: ``(x * scale - mean) / std`` per channel.

    ``scale`` is 1/255 for the usual [0, 1] convention and 1.0 for models normalised in 0-255 terms
    (CXR-RePaiR).
    """

    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    scale: float = 1.0 / 255.0

    def apply(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """``uint8 (B, C, S, S)`` -> float32 ``(x * scale - mean) / std`` per channel, on the pixels' device."""
        import torch

        # (x * scale - mean) / std == x * (scale / std) - mean / std: one conversion and two in-place passes
        gain = torch.tensor([self.scale / s for s in self.std], dtype=torch.float32, device=pixels.device)
        bias = torch.tensor([m / s for m, s in zip(self.mean, self.std)], dtype=torch.float32, device=pixels.device)
        return pixels.float().mul_(gain.view(1, -1, 1, 1)).sub_(bias.view(1, -1, 1, 1))


def resize_center_crop(image: "Image.Image", size: int, resample: str = "bicubic") -> np.ndarray:
    """Resize the shorter side to ``size`` (PIL, antialiased) and crop the centre square: ``uint8 (S, S)``.

    This is the geometry of OpenAI CLIP's ``Resize(size, BICUBIC) + CenterCrop(size)``.
    """
    from PIL import Image

    filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ValueError(f"image has no pixels ({w}x{h})")
    scale = size / min(w, h)
    # torchvision's Resize truncates the long side (int()), so match it rather than rounding
    new_w, new_h = (size, int(h * scale)) if w <= h else (int(w * scale), size)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), filters[resample])
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


class OpenClipAdapter(RetrievalModel):
    """Any open_clip ``CLIP`` model behind the :class:`RetrievalModel` interface.

    ``geometry`` maps a mode-``L`` PIL image to ``uint8 (S, S)``; the single channel is repeated to the three
    the ViT expects. ``fingerprint_extra`` carries what identifies the weights (e.g. their SHA-256).
    """

    input_channels = 3

    def __init__(self, model: Any, tokenizer: Callable[..., "torch.Tensor"], *, name: str, input_size: int,
                 normalisation: Normalisation = Normalisation(),
                 geometry: Callable[["Image.Image", int], np.ndarray] = resize_center_crop,
                 context_length: int = 77, default_text_policy: TextPolicy = TextPolicy.FINDINGS_IMPRESSION,
                 baseline_row: str | None = None, fingerprint_extra: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.input_size = input_size
        self.normalisation = normalisation
        self.geometry = geometry
        self.context_length = context_length
        self.default_text_policy = default_text_policy
        self.baseline_row = baseline_row
        self.embed_dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else 512
        self._fingerprint_extra = dict(fingerprint_extra or {})

    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """Resize/crop (or the family's geometry) to ``uint8 (3, S, S)``."""
        plane = self.geometry(image, self.input_size)
        if plane.shape != (self.input_size, self.input_size):
            raise ValueError(f"{self.name}: preprocessing gave shape {plane.shape}, "
                             f"expected {(self.input_size, self.input_size)}")
        return np.repeat(plane[None], 3, axis=0)

    def normalise(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """``uint8 (B, 3, S, S)`` -> normalised float32 on the model's device."""
        return self.normalisation.apply(pixels)

    def encode_images(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """L2-normalised image embeddings of a ``uint8`` batch."""
        import torch

        with torch.inference_mode():  # never build autograd graphs, whoever calls
            x = self.normalise(pixels.to(self.device))
            return l2_normalise(self.model.encode_image(x))

    def tokenize(self, texts: list[str]) -> "torch.Tensor":
        """CLIP BPE token ids, truncated to the context length (the end-of-text token is kept)."""
        return self.tokenizer(texts, context_length=self.context_length)

    def encode_texts(self, texts: list[str]) -> "torch.Tensor":
        """L2-normalised text embeddings."""
        import torch

        with torch.inference_mode():
            tokens = self.tokenize(texts).to(self.device)
            return l2_normalise(self.model.encode_text(tokens))

    def weights_digest(self) -> str:
        """SHA-256 over the model's parameters and buffers (for models built in memory, with no weights file)."""
        import hashlib

        if getattr(self, "_weights_digest", None) is None:
            h = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(name.encode() + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
                h.update(tensor.detach().cpu().contiguous().view(-1).view(torch_uint8()).numpy().tobytes())
            self._weights_digest = h.hexdigest()
        return self._weights_digest

    def fingerprint(self) -> dict[str, Any]:
        """Weights identity, preprocessing and tokenizer settings."""
        extra = dict(self._fingerprint_extra)
        if "weights_sha256" not in extra:  # in-memory weights: identify them by content
            extra["weights_state_sha256"] = self.weights_digest()
        return {
            "adapter": type(self).__name__, "name": self.name, "input_size": self.input_size,
            "geometry": getattr(self.geometry, "__name__", repr(self.geometry)),
            "normalisation": asdict(self.normalisation), "context_length": self.context_length,
            "tokenizer": type(self.tokenizer).__name__, **extra,
        }

    def preprocess_key(self) -> str:
        """Models with the same geometry and input size share decoded pixels."""
        return f"{getattr(self.geometry, '__name__', 'geometry')}:3x{self.input_size}"

    def torch_modules(self) -> list["torch.nn.Module"]:
        """The wrapped open_clip model."""
        return [self.model]


def torch_uint8() -> Any:
    """``torch.uint8`` (imported lazily)."""
    import torch

    return torch.uint8


def clip_tokenizer() -> Callable[..., "torch.Tensor"]:
    """open_clip's CLIP BPE tokenizer (its vocabulary ships inside open_clip: no download)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()
