"""A custom retrieval model for the cxr-robust gate, written against the ``RetrievalModel`` protocol.

It reuses the network *architecture and weights* of the shipped demo model (so its numbers are meaningful
on the phantom films) but implements every method of the protocol itself, the way you would for your own
checkpoint: its own weights loading, geometry (letterbox to a square, then resize), intensity
normalisation, tokenizer call and fingerprint. Replace the bodies with your model's.

Two ways to put it in front of the gate (README.md):

* ad hoc, no packaging: ``pytest -m robustness --cxr-models examples.custom_model.model:build``
* registered by name through the ``cxr_robust.models`` entry point group, pointing at :func:`spec`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_robust.data.text_policy import TextPolicy
from cxr_robust.models import ModelSpec
from cxr_robust.models.base import RetrievalModel, l2_normalise

if TYPE_CHECKING:
    import torch
    from PIL import Image

NAME = "custom-phantom"
INPUT_SIZE = 128
# Must match what the weights were trained with (the demo model's symmetric normalisation).
MEAN, STD = 0.5, 0.25
# Bump when preprocessing or text handling changes: it is part of the fingerprint, so cached
# embeddings computed by an older version are never reused.
VERSION = 1


class CustomPhantomModel(RetrievalModel):
    """An open_clip CLIP network behind the gate's protocol, with its own preprocessing."""

    input_size = INPUT_SIZE
    input_channels = 3
    default_text_policy = TextPolicy.FINDINGS_IMPRESSION
    # None: the gate looks the baseline row up under the model's name (the registered name, or the
    # "module:factory" string when used ad hoc), so --update-baselines and the check agree on the row.
    baseline_row = None

    def __init__(self, network: Any, weights_sha256: str, name: str = NAME) -> None:
        from open_clip.tokenizer import SimpleTokenizer  # open_clip ships the BPE vocabulary: no download

        self.network = network.eval()
        self.tokenizer = SimpleTokenizer()
        self.name = name
        self.embed_dim = int(network.text_projection.shape[1])
        self.weights_sha256 = weights_sha256

    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """Letterbox to a black square, resize to 128 px: ``uint8 (3, 128, 128)``; no normalisation here,
        so the gate's black occluder is raw pixel value 0."""
        from PIL import Image

        w, h = image.size
        side = max(w, h)
        square = Image.new("L", (side, side), 0)
        square.paste(image, ((side - w) // 2, (side - h) // 2))
        plane = np.asarray(square.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC), dtype=np.uint8)
        return np.repeat(plane[None], 3, axis=0)

    def encode_images(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """Normalise a ``uint8`` batch and embed it (L2-normalised)."""
        x = (pixels.to(self.device).float() / 255.0 - MEAN) / STD
        return l2_normalise(self.network.encode_image(x))

    def encode_texts(self, texts: list[str]) -> "torch.Tensor":
        """Tokenize (truncating to 77 tokens) and embed (L2-normalised)."""
        tokens = self.tokenizer(texts, context_length=77).to(self.device)
        return l2_normalise(self.network.encode_text(tokens))

    def fingerprint(self) -> dict[str, Any]:
        """What changes an embedding: weights, preprocessing, normalisation, tokenizer, code version."""
        return {"adapter": f"{__name__}.{type(self).__name__}", "version": VERSION, "name": self.name,
                "weights_sha256": self.weights_sha256, "input_size": INPUT_SIZE, "geometry": "letterbox-bicubic",
                "mean": MEAN, "std": STD, "context_length": 77}

    def preprocess_key(self) -> str:
        """Decoded pixels are shared only between models with this exact geometry."""
        return f"letterbox-bicubic:3x{INPUT_SIZE}"

    def torch_modules(self) -> list["torch.nn.Module"]:
        """The network (moved to the device and put in eval mode by the engine)."""
        return [self.network]


def build(weights: str | Path | None = None, **_: Any) -> CustomPhantomModel:
    """Factory the gate calls as ``build(weights=<Path or None>, **options)``.

    ``weights`` defaults to the demo weights shipped in the cxr-robust package; pass
    ``--weights examples.custom_model.model:build=PATH`` (ad hoc) or ``--weights custom-phantom=PATH``
    (registered) to use another file.
    """
    import torch
    from safetensors.torch import load_file

    from cxr_robust.models.checkpoints import sha256_file
    from cxr_robust.models.demo import WEIGHTS_FILE, build_phantom_clip

    path = Path(weights) if weights else WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{NAME}: weights file {path} does not exist; pass --weights MODEL=PATH")
    network = build_phantom_clip()
    state = {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
    # strict: a renamed or missing tensor must fail here, not give a silently random model
    network.load_state_dict(state, strict=True)
    return CustomPhantomModel(network.float(), sha256_file(path))


def spec() -> ModelSpec:
    """Entry point target (group ``cxr_robust.models``): registers the model as ``custom-phantom``."""
    return ModelSpec(name=NAME, factory=f"{__name__}:build", baseline_row=NAME, builtin_weights=True,
                     description="example custom model (demo weights, letterbox preprocessing)")
