"""Draw docs/perturbation_contact_sheet.png: one phantom film under every perturbation x severity.

Run from the repository root: ``python docs/make_perturbation_sheet.py``. Each row is a registered
perturbation (suite order), each column a severity (clean, then levels 1-5; occlusion: 1, 4, 9, 25, 49 %),
all drawn by the suite's own code at the demo model's 128 px input, scaled up without smoothing so the
pixels shown are the pixels a model is given (run seed 0, keyed by the film's id).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from cxr_robust.data.phantom import make_study
from cxr_robust.perturbations import available, get_perturbation

STUDY, SIDE, TILE, GAP, LABEL_W, HEADER = 3, 128, 128, 4, 150, 22
OCCLUSION_SHOWN = (0.01, 0.04, 0.09, 0.25, 0.49)
OUT = Path(__file__).resolve().parent / "perturbation_contact_sheet.png"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def film(side: int = SIDE) -> tuple[torch.Tensor, str]:
    """The phantom film of the sheet as a ``uint8 (1, 1, side, side)`` batch, and its id."""
    study = make_study("eval", 0, STUDY, 256)
    image = Image.fromarray(study.images[0]).resize((side, side), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy())[None, None], f"{study.study_id}-0"


def main(out: Path = OUT) -> Path:
    """Render the sheet to ``out`` and return its path."""
    x, image_id = film()
    names = [n for n in available() if get_perturbation(n).side == "image"]  # report-side ones have no pixels
    cols = 6
    sheet = Image.new("L", (LABEL_W + cols * (TILE + GAP), HEADER + len(names) * (TILE + GAP)), 255)
    draw = ImageDraw.Draw(sheet)
    font = _font(13)
    for j, head in enumerate(["clean", "s1", "s2", "s3", "s4", "s5"]):
        draw.text((LABEL_W + j * (TILE + GAP) + TILE // 2 - 12, 4), head, fill=0, font=font)
    for i, name in enumerate(names):
        p = get_perturbation(name)
        sevs = [0.0, *(OCCLUSION_SHOWN if name == "occlusion" else (1, 2, 3, 4, 5))]
        top = HEADER + i * (TILE + GAP)
        draw.text((6, top + TILE // 2 - 16), name, fill=0, font=font)
        draw.text((6, top + TILE // 2 + 2), p.group, fill=90, font=_font(11))
        for j, sev in enumerate(sevs):
            pixels = p(x, [image_id], sev, 0)[0, 0].numpy()
            tile = Image.fromarray(pixels).resize((TILE, TILE), Image.Resampling.NEAREST)
            sheet.paste(tile, (LABEL_W + j * (TILE + GAP), top))
            if name == "occlusion" and sev:
                draw.text((LABEL_W + j * (TILE + GAP) + 3, top + 2), p.format_severity(sev), fill=255, font=font)
    sheet.save(out, optimize=True)
    return out


if __name__ == "__main__":
    print(main())
