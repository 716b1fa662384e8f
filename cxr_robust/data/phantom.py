"""Deterministic synthetic chest films with matching reports ("phantom"): the embedded default data set.

Each study is a seeded :class:`StudyDescription` (heart size grade, pleural effusion, pneumothorax, focal
opacity, nodules, support devices, plus the patient's anatomy). One or two frontal films are rendered from
it with vectorised NumPy, and a compact FINDINGS / IMPRESSION report is written from the same description.

Every random stream is derived from (split, seed, study index, purpose), so a study never depends on how
many studies are generated, in which order, or by how many worker processes. Images use patient-left on
the image right, as chest films are displayed: a *right* effusion appears on the image's *left*.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cxr_robust.data.retrieval_set import RetrievalSet

GENERATOR_VERSION = 1
"""Bump whenever any image byte or report character for a given (split, seed, index) changes."""

SPLITS: dict[str, int] = {"eval": 994, "train": 16_000, "tiny": 64}
"""Split name -> default number of studies (eval matches the paper's 994 MIMIC-CXR studies)."""

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 64, 2048
SECOND_IMAGE_P = 0.78  # gives about 1,770 images for 994 studies, like the paper's evaluation set

HEART_GRADES = ("normal", "borderline", "mild", "moderate-severe")
CTR = (0.42, 0.50, 0.57, 0.66)  # cardiothoracic ratio drawn for each grade
EFFUSION_SIDES = ("none", "left", "right", "bilateral")
EFFUSION_SIZES = ("small", "moderate", "large")
PNEUMOTHORAX_SIDES = ("none", "left", "right")
ZONES = ("right upper zone", "right mid zone", "right lower zone",
         "left upper zone", "left mid zone", "left lower zone")
NODULE_MM = (5, 25)  # inclusive range of nodule diameters
DEVICE_NAMES = ("ET tube", "central line", "pacemaker")  # as written in reports

_DOMAIN = 0x7068616E  # "phan": keeps these streams apart from any other user of SeedSequence
_PURPOSES = {"description": 0, "report": 1, "views": 2, "image": 3, "twin": 4}


# ----------------------------------------------------------------------------------------------------------
# Description


@dataclass(frozen=True)
class Nodule:
    """A nodule: diameter in mm, lung zone, and position inside the zone (``u`` medial->lateral, ``v`` down)."""

    size_mm: int
    zone: str
    u: float
    v: float


@dataclass(frozen=True)
class Anatomy:
    """Per-patient geometry and densities, in image-fraction units (x, y in [0, 1])."""

    center_x: float
    half_width: float  # half the internal thoracic width
    lung_top: float
    diaphragm: float
    lung_density: float
    tissue_density: float
    rib_offset: float
    texture_seed: int  # lung markings: shared by every exposure of the patient


@dataclass(frozen=True)
class StudyDescription:
    """Everything a study's images and report are rendered from."""

    heart_grade: int
    effusion_side: str
    effusion_size: str | None
    pneumothorax: str
    opacity_zone: str | None
    opacity_offset: tuple[float, float]
    nodules: tuple[Nodule, ...]
    et_tube: bool
    central_line: bool
    pacemaker: bool
    anatomy: Anatomy

    @property
    def devices(self) -> list[str]:
        """Names of the support devices present, in report order."""
        flags = (self.et_tube, self.central_line, self.pacemaker)
        return [n for n, f in zip(DEVICE_NAMES, flags) if f]

    @property
    def is_normal(self) -> bool:
        """True when no disease finding is present (devices do not count)."""
        return (self.heart_grade == 0 and self.effusion_side == "none" and self.pneumothorax == "none"
                and self.opacity_zone is None and not self.nodules)


def study_seed(split: str, seed: int, index: int, purpose: str, sub: int = 0) -> np.random.SeedSequence:
    """The seed sequence of one random stream of one study; train and eval streams never coincide."""
    code = int.from_bytes(hashlib.blake2b(split.encode(), digest_size=4).digest(), "little")
    return np.random.SeedSequence([_DOMAIN, code, int(seed), int(index), _PURPOSES[purpose], int(sub)])


def describe_study(rng: np.random.Generator) -> StudyDescription:
    """Sample findings fairly independently (not mostly normal) so that reports are nearly unique.

    Every field draws a fixed number of values, so changing one prior does not reshuffle the others.
    """
    heart = int(rng.choice(4, p=[0.4, 0.2, 0.2, 0.2]))
    eff_side = EFFUSION_SIDES[int(rng.choice(4, p=[0.4, 0.2, 0.2, 0.2]))]
    eff_size = EFFUSION_SIZES[int(rng.integers(3))]
    ptx = PNEUMOTHORAX_SIDES[int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
    opacity = int(rng.integers(-4, 6))  # negative: none (40 %)
    opacity_zone = ZONES[opacity] if opacity >= 0 else None
    opacity_offset = tuple(float(x) for x in rng.uniform(0.3, 0.7, 2))
    n_nodules = int(rng.choice(4, p=[0.4, 0.28, 0.2, 0.12]))
    free_zones = [ZONES[z] for z in rng.permutation(6) if ZONES[z] != opacity_zone]
    sizes = rng.integers(NODULE_MM[0], NODULE_MM[1] + 1, 3)
    uv = rng.uniform(0.15, 0.85, (3, 2))
    nodules = tuple(Nodule(int(sizes[i]), free_zones[i], float(uv[i, 0]), float(uv[i, 1]))
                    for i in range(n_nodules))
    devices = rng.random(3) < 0.3
    a = [float(v) for v in rng.uniform(0, 1, 7)]  # Python floats: NumPy scalars would promote float32 grids
    anatomy = Anatomy(center_x=0.5 + 0.03 * (a[0] - 0.5), half_width=0.36 + 0.05 * a[1],
                      lung_top=0.12 + 0.05 * a[2], diaphragm=0.72 + 0.06 * a[3],
                      lung_density=0.16 + 0.08 * a[4], tissue_density=0.50 + 0.08 * a[5],
                      rib_offset=a[6], texture_seed=int(rng.integers(2**62)))
    return StudyDescription(heart, eff_side, eff_size if eff_side != "none" else None, ptx, opacity_zone,
                            opacity_offset, nodules, bool(devices[0]), bool(devices[1]), bool(devices[2]),
                            anatomy)


# ----------------------------------------------------------------------------------------------------------
# Reports: a fixed core phrase per finding (what finding_phrases returns), with varied framing around it.
# Kept compact: CLIP reads 77 tokens, and a truncated report would lose findings. The focal opacity is
# reported as "consolidation" (one CLIP token where "focal opacity" takes three).


def _heart_core(grade: int) -> str:
    return ("heart size is normal", "borderline heart size", "mild cardiomegaly",
            "moderate to severe cardiomegaly")[grade]


def _effusion_core(d: StudyDescription) -> str:
    side = d.effusion_side
    return f"{d.effusion_size} {side} pleural effusion" + ("s" if side == "bilateral" else "")


def _nodule_core(n: Nodule) -> str:
    return f"{n.size_mm} mm {n.zone.replace(' zone', '')}"  # "8 mm right upper": in every nodule template


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def finding_phrases(desc: StudyDescription) -> list[str]:
    """Lower-case phrases that the findings section of ``desc``'s report always contains, one or more per finding."""
    out = [_heart_core(desc.heart_grade)]
    out.append(_effusion_core(desc) if desc.effusion_side != "none" else "effusion")
    out.append(f"{desc.pneumothorax} pneumothorax" if desc.pneumothorax != "none" else "pneumothorax")
    if desc.opacity_zone or desc.nodules:
        out.append(f"{desc.opacity_zone} consolidation" if desc.opacity_zone else "no consolidation")
        out.extend([_nodule_core(n) for n in desc.nodules] or ["no nodule"])
    else:
        out.append("clear")
    out.extend(d.lower() for d in desc.devices)
    return out


class _Picks:
    """The random picks of one report rendering, each under a slot name, replayable by a second rendering.

    A fresh rendering draws every pick from ``rng`` in call order (exactly the draws ``render_report`` always
    made). A replaying rendering reuses ``replay``'s pick for every slot it holds (with the same number of
    options) and draws only the slots that are new to it from ``rng``.
    """

    def __init__(self, rng: np.random.Generator, replay: dict[str, tuple[int, float]] | None = None) -> None:
        self.rng = rng
        self.replay = replay or {}
        self.made: dict[str, tuple[int, float]] = {}  # slot -> (number of options, or 0 for a uniform; value)

    def _value(self, slot: str, kind: int, draw) -> float:
        old = self.replay.get(slot)
        value = old[1] if old is not None and old[0] == kind else draw()
        self.made[slot] = (kind, value)
        return value

    def pick(self, slot: str, options: Sequence[str]) -> str:
        n = len(options)
        return options[int(self._value(slot, n, lambda: int(self.rng.integers(n))))]

    def uniform(self, slot: str) -> float:
        return float(self._value(slot, 0, lambda: float(self.rng.random())))


def render_report(desc: StudyDescription, rng: np.random.Generator) -> tuple[str, str]:
    """(findings, impression) of ``desc``: compact (about 50 CLIP tokens) with paraphrase variety."""
    return _render_report(desc, _Picks(rng))


def _render_report(desc: StudyDescription, picks: _Picks) -> tuple[str, str]:
    """The report of ``desc`` with every random pick made through ``picks`` (slot names are stable)."""
    pick = picks.pick
    heart = _heart_core(desc.heart_grade)
    heart_s = pick("heart", [f"{_cap(heart)}.", f"The {heart}."] if desc.heart_grade == 0
                   else [f"{_cap(heart)}.", f"There is {heart}."])
    lung: list[str] = []
    if desc.effusion_side != "none":
        lung.append(_cap(_effusion_core(desc)) + ".")
    if desc.pneumothorax != "none":
        lung.append(f"{_cap(desc.pneumothorax)} pneumothorax" + pick("pneumothorax", [".", " noted."]))
    absent = [pick("no effusion", ["effusion", "pleural effusion"])] if desc.effusion_side == "none" else []
    absent += ["pneumothorax"] if desc.pneumothorax == "none" else []
    if absent:
        lung.append(f"No {' or '.join(absent)}.")
    if desc.opacity_zone:
        lung.append(f"{pick('consolidation', ['Focal', 'Patchy', 'Airspace'])} {desc.opacity_zone} consolidation.")
    if len(desc.nodules) == 1:
        lung.append(pick("nodule", ["{} zone nodule.", "Nodule: {}."]).format(_nodule_core(desc.nodules[0])))
    elif desc.nodules:
        lst = _join([_nodule_core(n) for n in desc.nodules])
        lung.append(pick("nodules", [f"Nodules: {lst}.", f"{_cap(lst)} nodules."]))
    if not desc.opacity_zone and not desc.nodules:
        lung.append(pick("clear", ["Lungs are clear.", "Clear lungs."]))
    elif not desc.opacity_zone or not desc.nodules:
        lung.append("No consolidation." if not desc.opacity_zone else "No nodule.")
    devices = [_cap(_join(desc.devices)) + pick("devices", [" in place.", " noted."])] if desc.devices else []
    body = [heart_s] + lung if picks.uniform("heart first") < 0.6 else lung + [heart_s]
    findings = " ".join(devices + body)

    positives: list[str] = []
    if desc.heart_grade:
        positives.append("borderline heart size" if desc.heart_grade == 1 else "cardiomegaly")
    if desc.effusion_side != "none":
        positives.append(f"{desc.effusion_side} effusion" + ("s" if desc.effusion_side == "bilateral" else ""))
    if desc.pneumothorax != "none":
        positives.append(f"{desc.pneumothorax} pneumothorax")
    if desc.opacity_zone:
        positives.append(desc.opacity_zone.replace(" zone", "") + " consolidation")
    if desc.nodules:
        positives.append("nodule" if len(desc.nodules) == 1 else "nodules")
    if positives:
        impression = _cap(", ".join(positives)) + "."
    else:
        impression = pick("normal impression", ["No acute cardiopulmonary process.", "No acute disease."])
        impression += " Devices in place." if desc.devices else ""
    return findings, impression


# ----------------------------------------------------------------------------------------------------------
# Images. Shapes are drawn on a grid of patient coordinates, so the shift/rotation/scale of an exposure costs
# nothing extra and needs no resampling. Densities are in [0, 1], bright = dense, as on a film. Each shape
# is painted only inside its window (bounding box), which keeps a 256 px film near 10 ms.


def _soft(signed: np.ndarray, width: float) -> np.ndarray:
    """0 -> 1 ramp of ``signed`` (positive = inside) over ``width``: anti-aliased masks."""
    out = signed * np.float32(1.0 / width)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Normalised radius: < 1 inside the ellipse."""
    return np.sqrt(((x - cx) * (1.0 / ax)) ** 2 + ((y - cy) * (1.0 / ay)) ** 2)


def _lung_box(a: Anatomy, side: int) -> tuple[float, float, float, float]:
    """(cx, cy, ax, ay) of a lung ellipse; side -1 = image left = patient right."""
    bottom = a.diaphragm + 0.07
    return (a.center_x + side * 0.53 * a.half_width, (a.lung_top + bottom) / 2,
            0.50 * a.half_width, (bottom - a.lung_top) / 2)


def _zone_point(a: Anatomy, zone: str, u: float, v: float) -> tuple[float, float]:
    """A point inside a lung zone; ``u`` runs medial -> lateral, ``v`` top -> bottom of the zone."""
    side = -1 if zone.startswith("right") else 1
    level = ("upper", "mid", "lower").index(zone.split()[1])
    cx, cy, ax, ay = _lung_box(a, side)
    y = a.lung_top + 0.02 + (a.diaphragm - 0.08 - a.lung_top) * (level + 0.2 + 0.6 * v) / 3
    half = ax * np.sqrt(max(1 - ((y - cy) / ay) ** 2, 0.05))
    return float(cx + side * half * (1.1 * u - 0.4)), float(y)


class _Film:
    """One exposure being painted: patient coordinates of every pixel, and the density image."""

    def __init__(self, size: int, angle: float, scale: float, dx: float, dy: float) -> None:
        t = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        c, s = np.float32(np.cos(angle) / scale), np.float32(np.sin(angle) / scale)
        self.x = (c * t[None, :] + s * t[:, None] + np.float32(0.5 - dx)).astype(np.float32)
        self.y = (c * t[:, None] - s * t[None, :] + np.float32(0.5 - dy)).astype(np.float32)
        self.img = np.zeros((size, size), np.float32)
        self.size = size
        # x grows along every row and y down every column; the rotation moves them by at most this much.
        self._xs, self._ys = self.x[size // 2], self.y[:, size // 2]
        self._margin = abs(float(s)) * 0.5 + 2.0 / size

    def window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """Pixel slices that hold every pixel whose patient coordinates lie in the box."""
        m = self._margin
        c0, c1 = np.searchsorted(self._xs, [x0 - m, x1 + m])
        r0, r1 = np.searchsorted(self._ys, [y0 - m, y1 + m])
        return slice(int(r0), int(r1)), slice(int(c0), int(c1))

    def texture(self, seed: int, cells: int, sl: tuple[slice, slice]) -> np.ndarray:
        """Smooth value noise (about N(0, 1)) fixed to the patient; rotation ignored (a few degrees at most)."""
        g = np.random.default_rng(seed).standard_normal((cells + 1, cells + 1)).astype(np.float32)
        fy = np.clip(self._ys[sl[0]], 0, 1) * cells
        fx = np.clip(self._xs[sl[1]], 0, 1) * cells
        iy, ix = np.minimum(fy.astype(np.intp), cells - 1), np.minimum(fx.astype(np.intp), cells - 1)
        wy, wx = (fy - iy)[:, None], fx - ix
        rows = g[iy] * (1 - wy) + g[iy + 1] * wy  # separable: interpolate rows, then columns
        return rows[:, ix] * (1 - wx) + rows[:, ix + 1] * wx

    def polyline(self, pts: Sequence[tuple[float, float]], width: float, value: float) -> None:
        """Add a thin radiopaque line (tube, catheter, lead) of ``width`` along ``pts``."""
        p = np.asarray(pts, dtype=np.float32)
        sl = self.window(p[:, 0].min() - width, p[:, 0].max() + width, p[:, 1].min() - width, p[:, 1].max() + width)
        xs, ys = self.x[sl], self.y[sl]
        if not xs.size:
            return
        dist = np.full(xs.shape, np.inf, dtype=np.float32)
        for (x0, y0), (x1, y1) in zip(p[:-1], p[1:]):  # a handful of segments, each vectorised over pixels
            dx, dy = x1 - x0, y1 - y0
            t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
            ex, ey = xs - x0 - t * dx, ys - y0 - t * dy
            dist = np.minimum(dist, np.sqrt(ex * ex + ey * ey))
        self.img[sl] += value * _soft(width / 2 - dist, 1.2 / self.size)


def _polar_noise(seed: int, ang: np.ndarray, rad: np.ndarray) -> np.ndarray:
    """Value noise with fine cells in angle and coarse cells in radius: streaks radiating from the origin.

    ``ang`` is a pseudo-angle in [-1, 1] (cheaper than arctan2 and as good for texture).
    """
    na, nr = 36, 6
    g = np.random.default_rng(seed).standard_normal((nr + 1, na + 1)).astype(np.float32)
    fa = (ang + 1) * (0.5 * na)
    fr = np.clip(rad * (1 / 0.5), 0, 1) * nr
    ia, ir = np.minimum(fa.astype(np.intp), na - 1), np.minimum(fr.astype(np.intp), nr - 1)
    wa, wr = fa - ia, fr - ir
    return ((g[ir, ia] * (1 - wa) + g[ir, ia + 1] * wa) * (1 - wr)
            + (g[ir + 1, ia] * (1 - wa) + g[ir + 1, ia + 1] * wa) * wr)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur by shifted sums (no BLAS, so the bytes do not depend on the BLAS build)."""
    r = max(1, int(np.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    h, w = img.shape
    p = np.pad(img, r, mode="edge")
    tmp = k[0] * p[0:h, :]
    for i in range(1, 2 * r + 1):
        tmp += k[i] * p[i:i + h, :]
    out = k[0] * tmp[:, 0:w]
    for i in range(1, 2 * r + 1):
        out += k[i] * tmp[:, i:i + w]
    return out


def _paint_chest(f: _Film, a: Anatomy, dia: float) -> None:
    """Body outline, abdomen, lungs with markings, mediastinum and spine: the normal film."""
    x, y, cx, hw = f.x, f.y, a.center_x, a.half_width
    adx = np.abs(x - cx)
    body_w = 0.10 + (hw * 1.32 - 0.10) * np.sqrt(np.clip(y * (1 / 0.2), 0, 1))  # neck into the shoulders
    body = _soft(body_w - adx, 0.02)
    thick = np.sqrt(np.clip(1 - (adx * (1 / (hw * 1.32))) ** 2, 0, 1))
    f.img[:] = 0.03 + body * a.tissue_density * (0.78 + 0.25 * thick)
    # Abdomen under the domes is as dense as the heart, so the two merge as on a real film.
    dome_y = np.where(x < cx, dia - 0.015, dia) - 0.08 * np.clip(1 - ((adx - 0.53 * hw) / (0.5 * hw)) ** 2, 0, 1)
    belly = body * _soft(y - dome_y, 0.012) * _soft(hw * 0.9 - adx, 0.25)
    f.img += belly * (a.tissue_density + 0.2 - f.img)


def _paint_lung(f: _Film, a: Anatomy, desc: StudyDescription, side: int, dia: float) -> None:
    """One lung with markings, and the pneumothorax / effusion of that side."""
    lx, ly, ax, ay = _lung_box(a, side)
    sl = f.window(lx - ax, lx + ax, ly - ay, ly + ay)
    x, y = f.x[sl], f.y[sl]
    lr = _ellipse(x, y, lx, ly, ax, ay)
    dome = dia - 0.08 * np.clip(1 - ((x - lx) * (1 / ax)) ** 2, 0, 1) - (0.015 if side < 0 else 0.0)
    lung = _soft(1 - lr, 0.08) * _soft(dome - y, 0.012)
    # Vessel-like markings: ridged noise in polar coordinates about the hilum, so they radiate and taper.
    hx, hy = a.center_x + side * 0.08, 0.44
    dx, dy = side * (x - hx), y - hy
    rad = np.sqrt(dx * dx + dy * dy)
    n = _polar_noise(a.texture_seed + (side > 0), dy / (np.abs(dx) + np.abs(dy) + 1e-6), rad)
    dens = a.lung_density + np.clip(1 - np.abs(n) * 1.6, 0, 1) ** 2 * (0.16 / (1 + 12 * rad) + 0.015)
    if {"right": -1, "left": 1}.get(desc.pneumothorax) == side:
        # Collapsed lung pulled towards the hilum; the rim around it is air without markings.
        cr = _ellipse(x, y, lx - side * 0.17 * ax, ly + 0.16 * ay, 0.64 * ax, 0.72 * ay)
        rim = _soft(cr - 1, 0.02)
        dens = dens * (1 - rim) + rim * (a.lung_density * 0.35)
        dens += 0.35 * _soft(0.014 - np.abs(cr - 1), 0.012) * _soft(0.97 - lr, 0.04)  # visceral pleural line
    f.img[sl] = f.img[sl] * (1 - lung) + lung * dens
    if desc.effusion_side == "bilateral" or {"right": -1, "left": 1}.get(desc.effusion_side) == side:
        # Height above the dome apex; the meniscus climbs laterally and blunts the costophrenic angle.
        frac = {"small": 0.1, "moderate": 0.25, "large": 0.45}[desc.effusion_size or "small"]
        lateral = np.clip(side * (x - lx) * (1 / ax), 0, 1)
        level = dia - 0.07 - frac * (dia - a.lung_top) - 0.1 * lateral * lateral
        fluid = _soft(1.02 - lr, 0.06) * _soft(y - level, 0.04)
        target = a.tissue_density + 0.12 + 0.08 * np.clip((y - level) * 6, 0, 1)
        f.img[sl] += fluid * (target - f.img[sl])


def _paint_lesions(f: _Film, a: Anatomy, desc: StudyDescription) -> None:
    """Focal opacity (cloudy blob) and nodules (round spots sized by mm)."""
    scale = a.half_width / 0.38
    if desc.opacity_zone:
        ox, oy = _zone_point(a, desc.opacity_zone, *desc.opacity_offset)
        r = 0.085 * scale
        sl = f.window(ox - 2.2 * r, ox + 2.2 * r, oy - 2.2 * r, oy + 2.2 * r)
        r2 = ((f.x[sl] - ox) ** 2 + (f.y[sl] - oy) ** 2) * (1 / (r * r))
        cloud = np.exp(-1.6 * r2) * np.clip(0.75 + 0.5 * f.texture(a.texture_seed + 3, 40, sl), 0.2, 1.4)
        f.img[sl] += 0.36 * cloud
    for nod in desc.nodules:
        nx, ny = _zone_point(a, nod.zone, nod.u, nod.v)
        rad = 0.5 * nod.size_mm * 0.0034 * scale + 0.004
        sl = f.window(nx - rad, nx + rad, ny - rad, ny + rad)
        dx, dy = f.x[sl] - nx, f.y[sl] - ny
        f.img[sl] += 0.36 * _soft(rad - np.sqrt(dx * dx + dy * dy), 2.0 / f.size)


def _paint_centre(f: _Film, a: Anatomy, grade: int, dia: float) -> np.ndarray:
    """Heart (width = CTR x thoracic width, two thirds to the patient's left), mediastinum, trachea, spine.

    Returns the heart/mediastinum mask, which hides the ribs behind it.
    """
    cx, hw = a.center_x, a.half_width
    hwid, hh = CTR[grade] * hw, 0.12 + 0.012 * grade
    sl = f.window(cx - 0.1 - hwid, cx + hwid * 1.4, 0.0, dia + 0.1)
    x, y = f.x[sl], f.y[sl]
    heart = _soft(1 - _ellipse(x, y, cx + hwid / 3, dia - 0.065, hwid, hh), 0.05)
    medi_w = 0.05 + 0.025 * np.clip((y - 0.12) * (1 / 0.3), 0, 1)
    medi = _soft(medi_w - np.abs(x - cx - 0.005), 0.025) * _soft(dia - y, 0.02)
    dense = np.maximum(heart, medi)
    f.img[sl] += dense * (a.tissue_density + 0.2 - f.img[sl])
    adx = np.abs(x - cx)
    f.img[sl] -= 0.2 * _soft(0.017 - adx, 0.008) * _soft(0.36 - y, 0.03)  # air column of the trachea
    f.img[sl] += 0.035 * _soft(0.032 - adx, 0.01) * np.cos(y * (2 * np.pi * 13)) ** 2  # vertebrae
    out = np.zeros_like(f.img)
    out[sl] = dense
    return out


def _paint_bones(f: _Film, a: Anatomy, dense: np.ndarray, dia: float) -> None:
    """Posterior ribs (one phase field for all ribs of a side, arching up then down laterally), clavicles."""
    cx, hw = a.center_x, a.half_width
    sl = f.window(cx - hw * 1.15, cx + hw * 1.15, a.lung_top - 0.08, dia + 0.03)
    x, y = f.x[sl], f.y[sl]
    d = np.abs(x - cx) - 0.03
    phase = (y + 0.4 * d - 2.2 * d * d - a.lung_top) * (1 / 0.078) + a.rib_offset
    band = _soft(0.17 - np.abs(phase - np.floor(phase) - 0.35), 0.1)
    cage = _soft(1.04 - _ellipse(x, y, cx, (a.lung_top + dia) / 2 + 0.03, hw * 1.08,
                                 (dia - a.lung_top) / 2 + 0.07), 0.06) * _soft(dia + 0.01 - y, 0.03)
    # Bone adds less contrast over dense tissue (the film's response is logarithmic).
    f.img[sl] += 0.11 * band * cage * _soft(d, 0.02) * (1 - f.img[sl]) * (1 - 0.5 * dense[sl])
    clav_y = a.lung_top + 0.035 - 0.22 * d + 0.35 * d * d
    clav = _soft(0.015 - np.abs(y - clav_y), 0.01) * _soft(d - 0.01, 0.02) * _soft(0.32 - d, 0.04)
    f.img[sl] += 0.22 * clav
    sg = f.window(cx + 0.14, cx + 0.26, dia, dia + 0.1)
    f.img[sg] -= 0.22 * _soft(1 - _ellipse(f.x[sg], f.y[sg], cx + 0.2, dia + 0.05, 0.05, 0.028), 0.25)  # stomach gas


def _paint_devices(f: _Film, a: Anatomy, desc: StudyDescription, dia: float) -> None:
    """ET tube down the trachea, central line from the clavicle region to the heart, pacemaker and lead."""
    cx, lw = a.center_x, 0.007
    if desc.et_tube:
        f.polyline([(cx, -0.05), (cx, 0.31)], 1.5 * lw, 0.5)
    if desc.central_line:
        f.polyline([(cx - 0.30, 0.17), (cx - 0.17, 0.2), (cx - 0.07, 0.25), (cx - 0.035, 0.33), (cx - 0.03, 0.45)],
                   lw, 0.5)
    if desc.pacemaker:
        gx, gy = cx + 0.25, 0.2
        sl = f.window(gx - 0.05, gx + 0.05, gy - 0.035, gy + 0.035)
        f.img[sl] += 0.75 * _soft(0.045 - np.abs(f.x[sl] - gx), 0.01) * _soft(0.03 - np.abs(f.y[sl] - gy), 0.01)
        f.polyline([(gx - 0.04, gy + 0.01), (cx + 0.12, 0.24), (cx + 0.03, 0.31), (cx - 0.02, 0.44),
                    (cx + 0.02, dia - 0.12), (cx + 0.09, dia - 0.06)], lw, 0.5)


def render_image(desc: StudyDescription, rng: np.random.Generator, size: int = 256, view: str = "PA") -> np.ndarray:
    """One exposure of ``desc`` as a ``size x size`` uint8 film; ``rng`` sets position, contrast and noise.

    ``rng`` is consumed by a fixed number of draws whatever the findings, so two descriptions that differ in
    one finding render the same background from the same ``rng`` seed.
    """
    e = [float(v) for v in rng.uniform(-1, 1, 8)]
    noise_seed = int(rng.integers(2**62))
    f = _Film(size, angle=0.05 * e[0], scale=1.0 + 0.03 * e[1], dx=0.025 * e[2], dy=0.025 * e[3])
    a = desc.anatomy
    dia = a.diaphragm + (0.02 if view == "AP" else 0.0)  # AP films: supine, shallower inspiration
    _paint_chest(f, a, dia)
    for side in (-1, 1):
        _paint_lung(f, a, desc, side, dia)
    _paint_lesions(f, a, desc)
    dense = _paint_centre(f, a, desc.heart_grade, dia)
    _paint_bones(f, a, dense, dia)
    _paint_devices(f, a, desc, dia)
    # Exposure: gamma/contrast, detector blur, quantum noise.
    img = np.clip(f.img, 0, 1)
    img = (img - np.float32(0.25 * e[4]) * img * (1 - img)) * np.float32(0.95 + 0.05 * e[5])  # gamma-like
    img = _blur(img, (0.8 + 0.3 * e[6]) * size / 256)
    img += np.random.default_rng(noise_seed).standard_normal((size, size), dtype=np.float32) * np.float32(
        0.022 + 0.008 * e[7])
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Studies and sets


@dataclass(frozen=True)
class PhantomStudy:
    """One generated study: its description, report and images."""

    study_id: str
    description: StudyDescription
    findings: str
    impression: str
    views: tuple[str, ...]
    images: tuple[np.ndarray, ...]


def study_text(split: str, seed: int, index: int) -> tuple[StudyDescription, str, str]:
    """(description, findings, impression) of study ``index``, without rendering its images (cheap)."""
    desc = describe_study(np.random.default_rng(study_seed(split, seed, index, "description")))
    findings, impression = render_report(desc, np.random.default_rng(study_seed(split, seed, index, "report")))
    return desc, findings, impression


# ----------------------------------------------------------------------------------------------------------
# Negated twins: the same study with exactly one finding's presence flipped, reported with the same wording.

TWIN_FINDINGS = ("Cardiomegaly", "Consolidation", "Lung Lesion", "Pleural Effusion", "Pneumothorax")
"""CheXpert labels a phantom twin can flip (devices and borderline heart size never flip)."""


@dataclass(frozen=True)
class TwinReport:
    """A study's report with one finding's presence flipped (a negation hard negative).

    ``finding`` is the CheXpert label flipped and ``present`` whether the twin reports it present; ``exact`` is
    True when the twin comes from the generator (its description is known) and False for a text rewrite.
    """

    findings: str
    impression: str
    finding: str
    present: bool
    exact: bool = True


def twin_description(desc: StudyDescription, rng: np.random.Generator) -> tuple[StudyDescription, str, bool]:
    """(twin, CheXpert label flipped, present in the twin): ``desc`` with one seeded finding flipped.

    The finding is drawn uniformly among those that can flip in this study: Pleural Effusion (none <-> a drawn
    side and size), Pneumothorax (none <-> a drawn side), Consolidation (none <-> a drawn zone holding no
    nodule), Lung Lesion (any nodules <-> none / one drawn nodule) and Cardiomegaly (normal heart -> "mild",
    mild or moderate-severe -> normal; a borderline heart never flips). Nothing else changes. ``rng`` is
    consumed by a fixed number of draws whatever is flipped.
    """
    which, side, size, ptx, zone, mm = (int(v) for v in rng.integers(0, 2**31, 6))
    uv = [float(v) for v in rng.uniform(0.15, 0.85, 2)]
    eligible = [f for f in TWIN_FINDINGS if f != "Cardiomegaly" or desc.heart_grade != 1]
    finding = eligible[which % len(eligible)]
    if finding == "Cardiomegaly":
        twin = dataclasses.replace(desc, heart_grade=2 if desc.heart_grade == 0 else 0)
        return twin, finding, twin.heart_grade > 0
    if finding == "Pleural Effusion":
        if desc.effusion_side == "none":
            twin = dataclasses.replace(desc, effusion_side=EFFUSION_SIDES[1 + side % 3],
                                       effusion_size=EFFUSION_SIZES[size % 3])
        else:
            twin = dataclasses.replace(desc, effusion_side="none", effusion_size=None)
        return twin, finding, twin.effusion_side != "none"
    if finding == "Pneumothorax":
        twin = dataclasses.replace(desc, pneumothorax=PNEUMOTHORAX_SIDES[1 + ptx % 2]
                                   if desc.pneumothorax == "none" else "none")
        return twin, finding, twin.pneumothorax != "none"
    if finding == "Consolidation":
        free = [z for z in ZONES if z not in {n.zone for n in desc.nodules}]
        twin = dataclasses.replace(desc, opacity_zone=free[zone % len(free)] if desc.opacity_zone is None else None)
        return twin, finding, twin.opacity_zone is not None
    free = [z for z in ZONES if z != desc.opacity_zone]
    nodules = () if desc.nodules else (Nodule(NODULE_MM[0] + mm % (NODULE_MM[1] - NODULE_MM[0] + 1),
                                              free[zone % len(free)], uv[0], uv[1]),)
    return dataclasses.replace(desc, nodules=nodules), finding, bool(nodules)


def study_twin(split: str, seed: int, index: int) -> tuple[StudyDescription, StudyDescription, TwinReport]:
    """(description, twin description, twin report) of study ``index``; the original report is unchanged.

    The twin's report replays every paraphrase pick of the original report that it shares (same framing,
    same sentence order) and draws the picks only it has from the study's "twin" stream.
    """
    desc = describe_study(np.random.default_rng(study_seed(split, seed, index, "description")))
    original = _Picks(np.random.default_rng(study_seed(split, seed, index, "report")))
    _render_report(desc, original)
    twin, finding, present = twin_description(desc, np.random.default_rng(study_seed(split, seed, index, "twin")))
    replay = _Picks(np.random.default_rng(study_seed(split, seed, index, "twin", 1)), replay=original.made)
    findings, impression = _render_report(twin, replay)
    return desc, twin, TwinReport(findings, impression, finding, present)


def twin_report(split: str, seed: int, index: int) -> TwinReport:
    """The negated twin of study ``index`` of (``split``, ``seed``): exactly one finding's presence flipped."""
    return study_twin(split, seed, index)[2]


def make_study(split: str, seed: int, index: int, image_size: int = 256) -> PhantomStudy:
    """Study ``index`` of (``split``, ``seed``), independent of every other study."""
    desc, findings, impression = study_text(split, seed, index)
    v = np.random.default_rng(study_seed(split, seed, index, "views")).random(3)
    first = "PA" if v[0] < 0.6 else "AP"
    views = (first,) if v[1] >= SECOND_IMAGE_P else (first, "AP" if v[2] < 0.5 else "PA")
    images = tuple(render_image(desc, np.random.default_rng(study_seed(split, seed, index, "image", j)),
                                image_size, view) for j, view in enumerate(views))
    return PhantomStudy(f"ph-{split}-s{seed}-{index:06d}", desc, findings, impression, views, images)


def _make_range(split: str, seed: int, start: int, stop: int, image_size: int) -> list[PhantomStudy]:
    return [make_study(split, seed, i, image_size) for i in range(start, stop)]


def _check_args(split: str, seed: int, num_studies: int | None, image_size: int) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown phantom split {split!r}; choose one of: {', '.join(SPLITS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"phantom seed {seed!r} must be a non-negative integer")
    n = SPLITS[split] if num_studies is None else num_studies
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"num_studies={num_studies!r} must be a positive integer")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size!r} must be an integer in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}")
    return int(n)


def phantom(split: str = "eval", seed: int = 0, num_studies: int | None = None, image_size: int = 256,
            cache_dir: str | Path | None = None, workers: int = 1) -> RetrievalSet:
    """The phantom retrieval set of ``split`` ("eval": 994 studies, "train": 16,000, "tiny": 64).

    ``cache_dir`` stores the set as one compressed ``.npz`` and reloads it; ``workers`` > 1 generates in a
    (spawned) process pool with byte-identical results. Images are held in memory: the train split takes
    about 1.9 GB at 256 px and 0.5 GB at 128 px.
    """
    n = _check_args(split, seed, num_studies, image_size)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers={workers!r} must be a positive integer")
    key = {"generator_version": GENERATOR_VERSION, "split": split, "seed": int(seed), "num_studies": n,
           "image_size": int(image_size)}
    path = None
    if cache_dir is not None:
        path = Path(cache_dir).expanduser() / (f"phantom-{split}-s{seed}-n{n}-px{image_size}"
                                               f"-v{GENERATOR_VERSION}.npz")
        cached = _load(path, key)
        if cached is not None:
            return cached
    if workers > 1 and n > 1:
        bounds = np.linspace(0, n, min(n, 4 * workers) + 1).astype(int)
        # spawn, not fork: the caller (a training script) may hold torch's thread pools, unsafe to fork.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = pool.map(_make_range, *zip(*[(split, seed, b0, b1, image_size)
                                                 for b0, b1 in zip(bounds[:-1], bounds[1:])]))
            studies = [s for part in parts for s in part]
    else:
        studies = _make_range(split, seed, 0, n, image_size)
    rs = _assemble(studies, key)
    if path is not None:
        _save(path, key, rs)
    return rs


def _assemble(studies: list[PhantomStudy], key: dict) -> RetrievalSet:
    image_ids, image_study, views, arrays = [], [], [], []
    for i, st in enumerate(studies):
        for j, (view, arr) in enumerate(zip(st.views, st.images)):
            image_ids.append(f"{st.study_id}-{j}")
            image_study.append(i)
            views.append(view)
            arrays.append(arr)
    return _build(key, [s.study_id for s in studies], [s.findings for s in studies],
                  [s.impression for s in studies], image_ids, image_study, views, arrays)


def _build(key: dict, study_ids: list[str], findings: list[str], impressions: list[str], image_ids: list[str],
           image_study: Sequence[int], views: list[str], arrays: Sequence[np.ndarray]) -> RetrievalSet:
    from cxr_robust.data.labels import StudyLabels
    from cxr_robust.data.phantom_labels import phantom_labels  # it imports this module: imported here

    suffix = "" if key["num_studies"] == SPLITS[key["split"]] else f"-n{key['num_studies']}"
    meta = {"generator": "cxr_robust.data.phantom", **key, "num_images": len(image_ids)}
    # The generator knows every study's findings: its labels are exact (no labeler in between).
    labels = StudyLabels.from_codes(phantom_labels(key["split"], key["seed"], key["num_studies"]),
                                    source="phantom generator")
    return RetrievalSet(name=f"phantom-{key['split']}-s{key['seed']}{suffix}", study_ids=study_ids,
                        findings=findings, impressions=impressions, image_ids=image_ids,
                        image_study=np.asarray(image_study, dtype=np.int64), views=views,
                        image_arrays=list(arrays), credentialed=False, meta=meta, labels=labels)


def _save(path: Path, key: dict, rs: RetrievalSet) -> None:
    """Write atomically (temporary file in the same folder, then rename): readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"key": key, "study_ids": rs.study_ids, "findings": rs.findings, "impressions": rs.impressions,
              "image_ids": rs.image_ids, "image_study": rs.image_study.tolist(), "views": rs.views}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, images=np.stack(list(rs.image_arrays or [])),
                                header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a shared cache must stay readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, key: dict) -> RetrievalSet | None:
    """The cached set, or None when absent, unreadable or made for another key (it is then rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            h = json.loads(z["header"].tobytes().decode())
            if h["key"] != key:
                return None
            images = z["images"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return None
    return _build(key, h["study_ids"], h["findings"], h["impressions"], h["image_ids"], h["image_study"],
                  h["views"], list(images))
