"""Draw docs/phantom_contact_sheet.png: four phantom eval films, clean and under 4 % / 25 % / 81 % occlusion.

Run from the repository root: ``python docs/make_contact_sheet.py``. Boxes come from the benchmark's own
occluder (run seed 0, keyed by image id), so the picture shows exactly what a model is given.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxr_robust.data.phantom import make_study
from cxr_robust.occlusion import apply_box, derive_seed, sample_box

STUDIES = (3, 6, 8, 1)  # eval studies that between them show every kind of finding and device
RATIOS = (0.04, 0.25, 0.81)
TILE, GAP, TEXT_W, HEADER = 192, 8, 380, 26  # tiles are downscaled from 256 px to keep the PNG small
OUT = Path(__file__).resolve().parent / "phantom_contact_sheet.png"


def _font(size: int) -> ImageFont.ImageFont:
    """PIL's default font, scalable where this Pillow has FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _tile(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image, mode="L").resize((TILE, TILE), Image.Resampling.LANCZOS)


def main(out: Path = OUT) -> Path:
    """Render the contact sheet to ``out`` and return its path."""
    width = GAP + (1 + len(RATIOS)) * (TILE + GAP) + TEXT_W
    height = HEADER + len(STUDIES) * (TILE + GAP) + GAP
    sheet = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(sheet)
    small, big = _font(12), _font(14)
    labels = ["clean"] + [f"{r:.0%} occluded" for r in RATIOS] + ["report (findings + impression)"]
    for col, label in enumerate(labels):
        draw.text((GAP + col * (TILE + GAP), 6), label, fill=0, font=big)
    for row, index in enumerate(STUDIES):
        study = make_study("eval", 0, index)
        image, image_id = study.images[0], f"{study.study_id}-0"
        top = HEADER + row * (TILE + GAP)
        variants = [image] + [apply_box(image, sample_box(*image.shape, r, derive_seed(0, image_id, r)))
                              for r in RATIOS]
        for col, arr in enumerate(variants):
            sheet.paste(_tile(arr), (GAP + col * (TILE + GAP), top))
        x = GAP + len(variants) * (TILE + GAP)
        draw.text((x, top), f"{image_id} ({study.views[0]})", fill=0, font=big)
        lines = textwrap.wrap(f"FINDINGS: {study.findings}", 58) + textwrap.wrap(
            f"IMPRESSION: {study.impression}", 58)
        draw.multiline_text((x, top + 20), "\n".join(lines), fill=40, font=small, spacing=3)
    sheet.save(out, optimize=True)
    return out


if __name__ == "__main__":
    path = main()
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
