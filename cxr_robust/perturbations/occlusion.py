"""The paper's square occlusion as a perturbation: severity = occluded fraction of the image area.

Boxes, seeds, test ids (``<model>-occ25-k10``), baseline rows and cache entries are the ones the gate used
before perturbations existed, so every recorded baseline, ranks file and cache entry stays valid. The box
geometry lives in :mod:`cxr_robust.occlusion`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from cxr_robust import PAPER_RATIOS
from cxr_robust.occlusion import check_ratio, occlude_batch, sample_boxes
from cxr_robust.perturbations.base import Params, Perturbation, canonical_severity, params_to

if TYPE_CHECKING:
    import torch


class Occlusion(Perturbation):
    """A black square box, uniformly placed, covering a fraction of the model input (the paper's corruption)."""

    name = "occlusion"
    short = "occ"
    group = "occlusion"
    description = "a black square covering a fraction of the image, placed uniformly (the paper's corruption)"
    unit = "fraction of the image area"
    parameter_name = "occluded area (%)"
    source = "the paper (Table 1: 0-81 % of the area)"
    default_severities = PAPER_RATIOS
    fill = 0

    def check_severity(self, severity: float) -> float:
        return canonical_severity(check_ratio(severity))

    def parameter(self, severity: float) -> Any:
        return self.check_severity(severity)

    def parse_severity(self, text: str) -> float:
        """Occlusion severities are written in percent, like the paper's columns: ``25`` is 25 %."""
        try:
            value = float(str(text).strip().rstrip("%"))
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 <= value < 100):
            raise ValueError(f"occlusion: {text!r} is not a percentage in [0, 100); write e.g. 25 for 25 % of the "
                             "image area")
        return self.check_severity(value / 100.0)

    def format_severity(self, severity: float) -> str:
        return f"{severity * 100:.4f}".rstrip("0").rstrip(".") + "%"

    def label(self, severity: float) -> str:
        return f"{self.format_severity(severity)} occlusion"

    def id_token(self, severity: float) -> str:
        return "occ" + self.format_severity(severity).rstrip("%")

    def cache_key(self) -> dict[str, Any]:
        return {"perturbation": self.name, "version": self.version, "fill": self.fill}

    def cache_entry(self, severity: float) -> dict[str, Any]:
        """The image-cache fields of this severity, exactly as before perturbations existed."""
        return {"ratio": self.check_severity(severity), "fill": self.fill}

    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        # The seed derivation of the original occluder (without the perturbation name) keeps boxes identical.
        return {"boxes": sample_boxes(image_ids, severity, run_seed, height, width)}

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        return occlude_batch(pixels, params_to(params, pixels.device)["boxes"], fill=self.fill)
