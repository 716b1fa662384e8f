"""Burned-in annotations: a white side marker and text strips (dates, times, accession numbers) on the film.

The glyphs come from a 3 x 5 pixel font defined here (no font files, no ImageMagick), scaled by whole
factors, so the stamped pixels are exact on every device and image size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from cxr_robust.perturbations.base import Params, Perturbation, image_rngs, params_to

if TYPE_CHECKING:
    import torch

_FONT_ROWS: dict[str, tuple[str, str, str, str, str]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"), "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"), "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "###"),
    "A": (".#.", "#.#", "###", "#.#", "#.#"), "B": ("##.", "#.#", "##.", "#.#", "##."),
    "C": (".##", "#..", "#..", "#..", ".##"), "E": ("###", "#..", "##.", "#..", "###"),
    "I": ("###", ".#.", ".#.", ".#.", "###"), "L": ("#..", "#..", "#..", "#..", "###"),
    "N": ("##.", "#.#", "#.#", "#.#", "#.#"), "O": (".#.", "#.#", "#.#", "#.#", ".#."),
    "P": ("##.", "#.#", "##.", "#..", "#.."), "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "S": (".##", "#..", ".#.", "..#", "##."), "T": ("###", ".#.", ".#.", ".#.", ".#."),
    "U": ("#.#", "#.#", "#.#", "#.#", "###"), "/": ("..#", "..#", ".#.", "#..", "#.."),
    ":": ("...", ".#.", "...", ".#.", "..."), "-": ("...", "...", "###", "...", "..."),
    " ": ("...", "...", "...", "...", "..."),
}
FONT: dict[str, np.ndarray] = {ch: np.array([[px == "#" for px in row] for row in rows])
                               for ch, rows in _FONT_ROWS.items()}
"""The 3 x 5 pixel font: ``bool (5, 3)`` per character (digits, the capitals used below, '/', ':', '-', ' ')."""
GLYPH_HEIGHT = 5
LABELS = ("PA ERECT", "AP SUPINE", "AP PORTABLE", "PORTABLE")
"""Technique labels of the fourth text strip."""


def render_text(text: str, scale: int) -> np.ndarray:
    """``text`` as a ``bool (5 * scale, (4 * len - 1) * scale)`` bitmap: 3-pixel glyphs, 1-pixel gaps."""
    gap = np.zeros((GLYPH_HEIGHT, 1), dtype=bool)
    parts = [part for ch in text for part in (FONT[ch], gap)][:-1]
    return np.hstack(parts).repeat(scale, axis=0).repeat(scale, axis=1)


def text_strips(rng: np.random.Generator, count: int) -> list[str]:
    """The first ``count`` text strips of a film, in stacking order: date, time, accession number, label."""
    year, month, day = int(rng.integers(2005, 2025)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    date = f"{day:02d}/{month:02d}/{year}" if rng.random() < 0.5 else f"{year}-{month:02d}-{day:02d}"
    time = f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}:{int(rng.integers(0, 60)):02d}"
    accession = "ACC:" + "".join(str(d) for d in rng.integers(0, 10, 7))
    label = LABELS[int(rng.integers(len(LABELS)))]
    return [date, time, accession, label][:count]


def _stamp(mask: np.ndarray, bitmap: np.ndarray, top: int, left: int) -> None:
    """OR ``bitmap`` into ``mask`` at (top, left), dropping what falls outside the image."""
    h, w = mask.shape
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + bitmap.shape[0], h), min(left + bitmap.shape[1], w)
    if t0 < t1 and l0 < l1:
        mask[t0:t1, l0:l1] |= bitmap[t0 - top:t1 - top, l0 - left:l1 - left]


class BurnIn(Perturbation):
    """Burned-in annotations: level n stamps a white side marker ("L" or "R") plus n - 1 text strips (date,
    time, accession number, technique label), with the character height growing from 4 % to 8 % of the side.

    Glyphs are a 3 x 5 pixel font scaled by ``max(1, round(character height * side / 5))``. Per image, ``sample_params``
    draws the marker's letter and corner, the strings, and margins of 2-6 % of the side; the text block sits in
    the diagonally opposite corner, its lines stacked from that corner and aligned to its side edge, so on images
    of 64 px or more (checked up to 512) nothing overlaps or leaves the image and the stamped area grows with
    the level (glyphs past the border of a smaller image are dropped). It returns ``mask``,
    ``bool (B, 1, H, W)``; ``apply`` sets the masked pixels of every channel to 255, as annotations are burned
    in white. Exact on every device.
    """

    name = "burn_in"
    short = "burn_in"
    group = "overlay"
    description = "burned-in white side marker and 0-4 text strips (dates, accession numbers), 4-8 % high"
    unit = "level"
    parameter_name = "(text strips besides the L/R marker, character height as a share of the image side)"
    levels = {1: (0, 0.04), 2: (1, 0.05), 3: (2, 0.06), 4: (3, 0.07), 5: (4, 0.08)}
    source = ("this project: portable and outside films carry a side marker and burned-in dates, times and "
              "accession numbers; 4-8 % character height spans small print to large annotations")

    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        strips, char_height = self.levels[int(severity)]
        side = min(height, width)
        scale = max(1, round(char_height * side / GLYPH_HEIGHT))
        line = GLYPH_HEIGHT * scale
        masks = np.zeros((len(image_ids), 1, height, width), dtype=bool)
        for mask, rng in zip(masks[:, 0], image_rngs(image_ids, run_seed, self.name, severity)):
            corner = int(rng.integers(4))  # bit 0: right side, bit 1: bottom; the text goes to corner 3 - corner
            marker = render_text("L" if rng.random() < 0.5 else "R", scale)
            my, mx, ty, tx = (round(m * side) for m in rng.uniform(0.02, 0.06, 4))
            _stamp(mask, marker, height - my - line if corner & 2 else my,
                   width - mx - marker.shape[1] if corner & 1 else mx)
            bottom, right = not corner & 2, not corner & 1  # the text block's corner
            for i, text in enumerate(text_strips(rng, strips)):
                bitmap = render_text(text, scale)
                offset = ty + i * (line + 2 * scale)  # a 2-pixel (scaled) leading between lines
                _stamp(mask, bitmap, height - offset - line if bottom else offset,
                       width - tx - bitmap.shape[1] if right else tx)
        return {"mask": masks}

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        import torch

        white = params_to(params, pixels.device)["mask"].to(torch.uint8) * 255
        return torch.maximum(pixels, white)  # 255 where masked, unchanged elsewhere (faster than masked_fill)
