"""A worked example: a new perturbation in one file (anti-scatter grid lines, a real radiography artefact).

An anti-scatter grid that is misaligned or stationary leaves fine parallel lines across the film. This file
is all a new corruption needs: a :class:`~cxr_robust.perturbations.Perturbation` subclass (name, id token,
severity levels and their parameter, pure seeded ``sample_params``, batched ``apply``) and one
``register`` call. Register it from your own package's entry point instead to make it available everywhere::

    [project.entry-points."cxr_robust.perturbations"]
    grid_lines = "examples.custom_perturbation.grid_lines:GridLines"

then ``pytest -m robustness --cxr-perturbations=occlusion,grid_lines``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from cxr_robust.perturbations import Params, Perturbation, image_rngs, params_to, register, to_uint8


class GridLines(Perturbation):
    """Horizontal dark lines every ``period`` pixels, with a random phase per image; depth grows with level."""

    name = "grid_lines"
    short = "grid"
    group = "overlay"
    description = "anti-scatter grid lines: dark horizontal lines every 4 px with a random phase"
    parameter_name = "line depth (share of the grey level removed)"
    levels = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5}
    source = "examples/custom_perturbation: illustrative values"
    period = 4

    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        rngs = image_rngs(image_ids, run_seed, self.name, severity)
        return {"phase": np.array([int(r.integers(0, self.period)) for r in rngs], dtype=np.int64)}

    def apply(self, pixels: torch.Tensor, params: Params, severity: float) -> torch.Tensor:
        phase = params_to(params, pixels.device)["phase"]  # (B,)
        rows = torch.arange(pixels.shape[-2], device=pixels.device)
        on_line = ((rows[None, :] + phase[:, None]) % self.period == 0)  # (B, H)
        factor = 1.0 - self.parameter(severity) * on_line.to(torch.float32)
        return to_uint8(pixels.to(torch.float32) * factor[:, None, :, None])


def register_example() -> Perturbation:
    """Register :class:`GridLines` (idempotent), as an entry point would."""
    return register(GridLines, replace=True)
