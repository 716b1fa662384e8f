"""A retrieval set from a manifest table (CSV or Parquet): the way in for data that is not MIMIC-CXR.

One row per image. Required columns: ``image_path``, ``study_id``, and the report text as either

* ``report`` (one free-text report per study): it becomes the study's **impression**, with empty findings.
  That choice makes every text policy give the whole report: ``impression`` -> the report,
  ``findings+impression`` -> ``"" + " " + report`` stripped = the report, ``longest`` -> the report (the
  empty findings is shorter). Putting it in findings instead would leave the impression-only policy with
  empty candidates, i.e. a silent chance-level run. Reports are not sectioned: a manifest says what its
  text is, and guessing headers in an unknown format could drop text.
* ``findings`` and/or ``impression`` (a missing one of the two is empty). Studies with an empty impression
  give empty text under the ``impression`` policy; they are counted in ``meta`` and logged.

Optional columns: ``image_id`` (default: ``image_path`` as written) and ``view`` (default ``"UNKNOWN"``).
Relative image paths are resolved against the manifest's folder. An unknown dataset is treated as
credentialed (``credentialed=True``) unless the caller says otherwise, so no text reaches logs or reports.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_robust.data.retrieval_set import RetrievalSet, check_on_bad

__all__ = ["ManifestError", "read_manifest_table", "load_manifest"]

log = logging.getLogger(__name__)

REQUIRED = ("image_path", "study_id")
SECTION_COLUMNS = ("findings", "impression")


class ManifestError(ValueError):
    """The manifest file or its content is not usable; the message names the file and the rows/ids."""


def read_manifest_table(path: str | Path) -> pd.DataFrame:
    """The manifest as a table of strings (missing values as ``""``), from ``.csv``/``.csv.gz``/``.parquet``."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist or is not a file")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            if importlib.util.find_spec("pyarrow") is None:
                raise ManifestError(f"reading the Parquet manifest {path} needs pyarrow: `pip install pyarrow`, "
                                    "or save the manifest as CSV")
            df = pd.read_parquet(path, engine="pyarrow")
            return df.fillna("").astype(str)
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path, dtype=str, na_filter=False)
    except ManifestError:
        raise
    except (OSError, EOFError, ValueError) as exc:
        raise ManifestError(f"manifest {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    raise ManifestError(f"manifest {path}: unsupported file type; use .csv, .csv.gz or .parquet")


def _text_columns(df: pd.DataFrame, path: Path) -> tuple[pd.Series, pd.Series, str]:
    """(findings, impression, mode) from the ``report`` column or the ``findings``/``impression`` columns."""
    cols = set(df.columns)
    missing = [c for c in REQUIRED if c not in cols]
    has_sections = [c for c in SECTION_COLUMNS if c in cols]
    if "report" not in cols and not has_sections:
        missing.append("report (or findings/impression)")
    if missing:
        raise ManifestError(f"manifest {path} lacks column(s) {missing}; found {sorted(cols)}")
    if "report" in cols and has_sections:
        raise ManifestError(f"manifest {path} has both `report` and {has_sections}: keep one text form")
    empty = pd.Series("", index=df.index, dtype=object)
    if "report" in cols:
        return empty, df["report"], "report"
    return (df["findings"] if "findings" in cols else empty,
            df["impression"] if "impression" in cols else empty, "findings/impression")


def _existing(paths: list[Path]) -> np.ndarray:
    """Which paths exist, by one ``os.scandir`` per folder."""
    listing: dict[Path, set[str]] = {}
    for d in {p.parent for p in paths}:
        try:
            with os.scandir(d) as it:
                listing[d] = {e.name for e in it}
        except (FileNotFoundError, NotADirectoryError):
            listing[d] = set()
    return np.array([p.name in listing[p.parent] for p in paths], dtype=bool)


def _few(ids: list[str], n: int = 5) -> str:
    return f"{ids[:n]}" + (f" and {len(ids) - n} more" if len(ids) > n else "")


def load_manifest(path: str | Path, *, name: str | None = None, credentialed: bool = True,
                  on_empty_report: str = "error", on_bad_image: str = "error") -> RetrievalSet:
    """A :class:`RetrievalSet` from a manifest (module doc); images are checked to exist, not opened.

    ``on_empty_report``/``on_bad_image``: ``error`` (default) or ``skip`` (drop, and count in ``meta``).
    """
    check_on_bad("on_empty_report", on_empty_report)
    check_on_bad("on_bad_image", on_bad_image)
    path = Path(path)
    df = read_manifest_table(path)
    findings, impression, mode = _text_columns(df, path)
    if df.empty:
        raise ManifestError(f"manifest {path} has no rows")
    sid = df["study_id"].str.strip()
    rel = df["image_path"].str.strip()
    iid = df["image_id"].str.strip() if "image_id" in df.columns else rel
    for col, s in (("study_id", sid), ("image_path", rel), ("image_id", iid)):
        if (s == "").any():
            rows = (np.flatnonzero((s == "").to_numpy()) + 2).tolist()  # +2: header line, 1-based
            raise ManifestError(f"manifest {path}: empty {col} on line(s) {_few(rows)}")
    t = pd.DataFrame({"study_id": sid, "rel": rel,
                      "findings": findings.map(lambda x: " ".join(str(x).split())),
                      "impression": impression.map(lambda x: " ".join(str(x).split()))})
    t["image_id"] = iid
    t["view"] = df["view"].str.strip().replace("", "UNKNOWN") if "view" in df.columns else "UNKNOWN"

    # One report per study: rows of a study must agree (compared after whitespace normalisation).
    disagree = t.groupby("study_id", sort=False)[["findings", "impression"]].nunique().gt(1).any(axis=1)
    if disagree.any():
        raise ManifestError(f"manifest {path}: rows of study {_few(disagree.index[disagree].tolist())} carry "
                            "different report text; give every row of a study the same report")
    dup = t["image_id"].duplicated()
    if dup.any():
        raise ManifestError(f"manifest {path}: image ids listed twice: {_few(t['image_id'][dup].tolist())}")

    ex_studies: dict[str, int] = {"empty_report": 0, "no_images_left": 0}
    ex_images: dict[str, int] = {"empty_report": 0, "missing_image": 0}
    blank = (t["findings"] == "") & (t["impression"] == "")
    if blank.any():
        ids = list(dict.fromkeys(t["study_id"][blank]))
        if on_empty_report == "error":
            raise ManifestError(f"manifest {path}: study {_few(ids)} has an empty or whitespace-only report; "
                                "fill it in or pass on_empty_report='skip'")
        ex_studies["empty_report"], ex_images["empty_report"] = len(ids), int(blank.sum())
        t = t[~blank]

    base = path.resolve().parent
    t["path"] = [Path(p) if Path(p).is_absolute() else base / p for p in t["rel"]]
    ok = _existing(t["path"].tolist())
    if not ok.all():
        bad = [str(p) for p in t["path"][~ok]]
        if on_bad_image == "error":
            raise ManifestError(f"manifest {path}: {len(bad)} of {len(t)} image files are missing, e.g. "
                                f"{bad[:3]}; fix the paths or pass on_bad_image='skip'")
        before = set(t["study_id"])
        ex_images["missing_image"] = len(bad)
        t = t[ok]
        ex_studies["no_images_left"] = len(before - set(t["study_id"]))
    if t.empty:
        raise ManifestError(f"manifest {path}: no usable image is left after skipping bad rows")

    study_ids = list(dict.fromkeys(t["study_id"]))
    first = t.drop_duplicates("study_id").set_index("study_id")
    index = {s: i for i, s in enumerate(study_ids)}
    rs = RetrievalSet(
        name=name or path.stem.removesuffix(".csv"), study_ids=study_ids,
        findings=first.loc[study_ids, "findings"].tolist(), impressions=first.loc[study_ids, "impression"].tolist(),
        image_ids=t["image_id"].tolist(), image_study=t["study_id"].map(index).to_numpy(dtype=np.int64),
        views=t["view"].tolist(), image_paths=t["path"].tolist(), credentialed=credentialed)
    no_impression = int((first["impression"] == "").sum())
    meta: dict[str, Any] = {
        "source": "manifest", "path": str(path), "text_columns": mode,
        "report_column_maps_to": "impression" if mode == "report" else None,
        "counts": rs.counts(), "excluded_studies": ex_studies, "excluded_images": ex_images,
        "studies_without_impression": no_impression,
        "studies_without_findings": int((first["findings"] == "").sum()) if mode != "report" else None,
    }
    rs.meta.update(meta)
    if no_impression and mode != "report":
        log.warning("%s: %d studies have no impression; the `impression` text policy gives them empty text",
                    path.name, no_impression)
    log.info("manifest %s: %d studies / %d images (%s); excluded studies %s, images %s", path.name,
             rs.num_studies, rs.num_images, dict(Counter(rs.views)), ex_studies, ex_images)
    return rs
