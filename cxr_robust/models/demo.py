"""``phantom-clip``: the small open_clip CLIP trained on the phantom train split, shipped with the package.

It is built from open_clip's own classes and loaded through the same strict state-dict path as the paper's
CLIP-family adapters, so the embedded default exercises the real code path end to end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_robust.models.checkpoints import CheckpointError, load_state_strict, read_safetensors, sha256_file
from cxr_robust.models.openclip import Normalisation, OpenClipAdapter, clip_tokenizer, resize_center_crop

if TYPE_CHECKING:
    from open_clip.model import CLIP

WEIGHTS_FILE = Path(__file__).resolve().parent.parent / "weights" / "phantom_clip.safetensors"
"""The shipped weights (fp16 safetensors; training metadata in its header)."""

INPUT_SIZE = 128
ARCHITECTURE: dict[str, Any] = {
    "embed_dim": 128,
    "vision": {"image_size": INPUT_SIZE, "patch_size": 16, "width": 128, "layers": 4, "head_width": 64},
    "text": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 3},
}
# Phantom films are grayscale with a mid-grey mean; a symmetric normalisation keeps inputs near [-2, 2].
NORMALISATION = Normalisation(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def build_phantom_clip(init_logit_scale: float | None = None) -> "CLIP":
    """A randomly initialised phantom-clip network (open_clip ``CLIP`` with the small config above)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    kwargs: dict[str, Any] = {}
    if init_logit_scale is not None:
        kwargs["init_logit_scale"] = init_logit_scale
    return CLIP(embed_dim=ARCHITECTURE["embed_dim"], vision_cfg=CLIPVisionCfg(**ARCHITECTURE["vision"]),
                text_cfg=CLIPTextCfg(**ARCHITECTURE["text"]), **kwargs)


def wrap_phantom_clip(model: "CLIP", fingerprint_extra: dict[str, Any] | None = None,
                      name: str = "phantom-clip") -> OpenClipAdapter:
    """The retrieval adapter for a phantom-clip network (in training or loaded)."""
    return OpenClipAdapter(model, clip_tokenizer(), name=name, input_size=INPUT_SIZE,
                           normalisation=NORMALISATION, geometry=resize_center_crop,
                           baseline_row="phantom-clip", fingerprint_extra=fingerprint_extra)


def weights_metadata(path: str | Path = WEIGHTS_FILE) -> dict[str, Any]:
    """The training metadata stored in the weights file's header (recipe, seed, steps, loss)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return json.loads(meta.get("cxr_robust", "{}"))


def load_phantom_clip(weights: str | Path | None = None, **_: Any) -> OpenClipAdapter:
    """Load phantom-clip from ``weights`` (default: the file shipped in the package)."""
    path = Path(weights) if weights else WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"phantom-clip: weights file {path} is missing; reinstall cxr-robust or retrain "
                              "with `python -m cxr_robust.train_demo`")
    model = build_phantom_clip()
    state = read_safetensors(path, model_name="phantom-clip")
    load_state_strict(model, state, model_name="phantom-clip", source=path)
    return wrap_phantom_clip(model.float().eval(), {"weights_sha256": sha256_file(path)})
