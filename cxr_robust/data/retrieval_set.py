"""The evaluation set of an image->report retrieval benchmark, whatever its source."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cxr_robust.data.text_policy import TextPolicy, report_text

if TYPE_CHECKING:
    from PIL import Image

    from cxr_robust.data.labels import StudyLabels

ON_BAD = ("error", "skip")
"""What to do with an unusable item (image, report): stop naming it, or leave it out and count it."""


def check_on_bad(option: str, value: str) -> str:
    """``value`` if it is one of :data:`ON_BAD`, else a ValueError naming ``option`` and the choices."""
    if value not in ON_BAD:
        raise ValueError(f"{option} must be one of {', '.join(ON_BAD)}, not {value!r}")
    return value


def texts_fingerprint(ids: Sequence[str], texts: Sequence[str]) -> str:
    """Hash of (id, text) pairs, for cache keys (reveals no text)."""
    h = hashlib.sha256()
    for sid, text in zip(ids, texts):
        h.update(sid.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


@dataclass
class RetrievalSet:
    """M query images, N candidate reports (one per study), and which report belongs to which image.

    Images are either held in memory (``image_arrays``: one 2-D uint8 array per image, as the phantom
    generator makes them) or on disk (``image_paths``, opened lazily). Exactly one of the two is set.

    ``credentialed`` marks data that must never reach a report, a log or a cache name (MIMIC-CXR):
    outputs then carry only ids and numbers.

    ``labels`` (optional): findings labels of the N studies, in study order (:mod:`cxr_robust.data.labels`).
    """

    name: str
    study_ids: list[str]
    findings: list[str]
    impressions: list[str]
    image_ids: list[str]
    image_study: np.ndarray
    views: list[str]
    image_arrays: Sequence[np.ndarray] | None = None
    image_paths: list[Path] | None = None
    credentialed: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    labels: "StudyLabels | None" = None

    def __post_init__(self) -> None:
        self.image_study = np.asarray(self.image_study, dtype=np.int64)
        n, m = len(self.study_ids), len(self.image_ids)
        if not (len(self.findings) == len(self.impressions) == n):
            raise ValueError(f"{self.name}: {n} study ids but {len(self.findings)} findings and "
                             f"{len(self.impressions)} impressions; every study needs one report")
        if self.image_study.shape != (m,) or len(self.views) != m:
            raise ValueError(f"{self.name}: {m} image ids but image_study has shape {self.image_study.shape} "
                             f"and {len(self.views)} views")
        if (self.image_arrays is None) == (self.image_paths is None):
            raise ValueError(f"{self.name}: give exactly one of image_arrays and image_paths")
        pixels = self.image_arrays if self.image_arrays is not None else self.image_paths
        if len(pixels) != m:
            raise ValueError(f"{self.name}: {m} image ids but {len(pixels)} images")
        if m and (self.image_study.min() < 0 or self.image_study.max() >= n):
            bad = int(np.flatnonzero((self.image_study < 0) | (self.image_study >= n))[0])
            raise ValueError(f"{self.name}: image {self.image_ids[bad]!r} points at study index "
                             f"{int(self.image_study[bad])}, outside 0..{n - 1}")
        for kind, ids in (("study", self.study_ids), ("image", self.image_ids)):
            dupes = [i for i, c in Counter(ids).items() if c > 1]
            if dupes:
                raise ValueError(f"{self.name}: duplicate {kind} ids, e.g. {dupes[:3]}; ids must be unique")
        without = sorted(set(range(n)) - set(self.image_study.tolist()))
        if without:
            raise ValueError(f"{self.name}: study {self.study_ids[without[0]]!r} (and {len(without) - 1} more) "
                             "has no image; drop such studies when building the set")
        if self.labels is not None:
            # Imported here: labels.py brings pandas, which a set without labels does not need.
            from cxr_robust.data.labels import StudyLabels

            if not isinstance(self.labels, StudyLabels):
                raise TypeError(f"{self.name}: labels must be StudyLabels or None, not {type(self.labels).__name__}")
            if self.labels.num_studies != n:
                raise ValueError(f"{self.name}: {n} studies but labels for {self.labels.num_studies}; labels need "
                                 "one row per study, in study order")

    @property
    def num_images(self) -> int:
        """M, the number of queries."""
        return len(self.image_ids)

    @property
    def num_studies(self) -> int:
        """N, the number of candidate reports."""
        return len(self.study_ids)

    def texts(self, policy: "str | TextPolicy") -> list[str]:
        """Candidate report texts, one per study, under ``policy``."""
        return [report_text(f, i, policy) for f, i in zip(self.findings, self.impressions)]

    def open_image(self, index: int, draft_size: int | None = None) -> "Image.Image":
        """Image ``index`` as a PIL image in mode ``L`` (8-bit grayscale).

        ``draft_size`` lets the JPEG decoder skip detail that a model input of that side cannot use
        (PIL draft mode decodes at 1/2, 1/4 or 1/8 scale but never below the requested size).
        """
        from cxr_robust.data.images import load_grayscale

        if self.image_arrays is not None:
            from PIL import Image

            return Image.fromarray(np.asarray(self.image_arrays[index], dtype=np.uint8), mode="L")
        assert self.image_paths is not None
        return load_grayscale(self.image_paths[index], image_id=self.image_ids[index], draft_size=draft_size)

    def counts(self) -> dict[str, Any]:
        """Studies, images and images per view: printed and recorded beside the paper's 994 / 1,770."""
        return {"studies": self.num_studies, "images": self.num_images,
                "views": dict(sorted(Counter(self.views).items()))}

    def text_fingerprint(self, policy: "str | TextPolicy") -> str:
        """Hash of the candidate texts under ``policy`` (for cache keys; reveals no text)."""
        return texts_fingerprint(self.study_ids, self.texts(policy))

    def image_fingerprint(self) -> str:
        """Hash identifying the query images (pixels in memory, or path + size + mtime on disk)."""
        h = hashlib.sha256()
        for i, iid in enumerate(self.image_ids):
            h.update(iid.encode() + b"\0")
            if self.image_arrays is not None:
                arr = np.ascontiguousarray(self.image_arrays[i])
                h.update(str(arr.shape).encode() + arr.tobytes())
            else:
                assert self.image_paths is not None
                p = Path(self.image_paths[i])
                st = p.stat() if p.exists() else None
                h.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}".encode())
        return h.hexdigest()

    def subset(self, study_indices: Sequence[int], name: str | None = None) -> "RetrievalSet":
        """The set restricted to some studies (all of their images), in the given order."""
        keep = list(study_indices)
        remap = {old: new for new, old in enumerate(keep)}
        imgs = [j for j in range(self.num_images) if int(self.image_study[j]) in remap]
        return RetrievalSet(
            name=name or f"{self.name}[{len(keep)}]",
            study_ids=[self.study_ids[s] for s in keep],
            findings=[self.findings[s] for s in keep],
            impressions=[self.impressions[s] for s in keep],
            image_ids=[self.image_ids[j] for j in imgs],
            image_study=np.array([remap[int(self.image_study[j])] for j in imgs], dtype=np.int64),
            views=[self.views[j] for j in imgs],
            image_arrays=[self.image_arrays[j] for j in imgs] if self.image_arrays is not None else None,
            image_paths=[self.image_paths[j] for j in imgs] if self.image_paths is not None else None,
            credentialed=self.credentialed,
            meta=dict(self.meta),
            labels=self.labels.subset(keep) if self.labels is not None else None,
        )
