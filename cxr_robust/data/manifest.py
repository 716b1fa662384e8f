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

Optional columns: ``image_id`` (default: ``image_path`` as written) and ``view`` (default ``"UNKNOWN"``),
and findings labels: a column whose header is one of the 14 CheXpert label names (case and surrounding
spaces ignored) holds ``1.0`` / ``0.0`` / ``-1.0`` / empty (or ``1`` / ``0`` / ``-1``) as in MIMIC-CXR-JPG's
label files. Any subset may be present (an absent label is not mentioned); the rows of a study must agree.
With at least one such column the set gets ``labels`` (:mod:`cxr_robust.data.labels`), every study labelled.
Relative image paths are resolved against the manifest's folder. An unknown dataset is treated as
credentialed (``credentialed=True``) unless the caller says otherwise, so no text reaches logs or reports.

Errors never quote a cell of a credentialed manifest unless the cell has the shape of what its column must
hold (an id without spaces, a path ending in an image extension): they name the file, the line (CSV: the
physical line where the row starts, so a multi-line report counts as its lines) or the 1-based row
(Parquet), and the column. Header cells are never quoted: a file without a header row would show its first
row, i.e. a report. Cells that cannot be what their column says (an id with a line break or more than three
words, a view label of a sentence, a path of several lines) are refused, since they would otherwise reach
the results as ids or views.

The table helpers (:func:`describe_found_columns`, :func:`reader_error_detail`, :class:`RowNamer`) are
shared with :mod:`cxr_robust.data.mimic`.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import importlib.util
import io
import logging
import os
import re
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

import numpy as np
import pandas as pd

from cxr_robust.data.labels import (CHEXPERT_LABELS, EXPECTED_VALUES, NOT_MENTIONED, StudyLabels,
                                    parse_label_cells)
from cxr_robust.data.retrieval_set import RetrievalSet, check_on_bad

__all__ = ["ManifestError", "read_manifest_table", "load_manifest", "RowNamer", "describe_found_columns",
           "reader_error_detail"]

log = logging.getLogger(__name__)

REQUIRED = ("image_path", "study_id")
SECTION_COLUMNS = ("findings", "impression")
KNOWN_COLUMNS = (*REQUIRED, "report", *SECTION_COLUMNS, "image_id", "view")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pgm",
                  ".ppm", ".pbm", ".pnm", ".jp2", ".j2k", ".jpx", ".dcm", ".dicom")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # line breaks, tabs, NULs: never in an id, a view or a path
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:/\\+=#@-]{1,64}")  # an id this shape is shown in errors as is
MAX_ID_CHARS, MAX_ID_WORDS = 128, 3
MAX_VIEW_CHARS, MAX_VIEW_WORDS = 32, 3
MAX_PATH_CHARS = 1024
MAX_PATH_WORDS_SHOWN = 4  # a path with more spaces than this is not quoted (it may be text), only its line


class ManifestError(ValueError):
    """The manifest file or its content is not usable; the message names the file and the rows/ids."""


# ----------------------------------------------------------------------------------- shared table helpers --

def reader_error_detail(exc: BaseException) -> str:
    """What a table reader's exception may show: its type and where it stopped, never the file's text.

    Reader messages are not quoted whole: some quote bytes of the file (``gzip`` its first two, a decode
    error the bad byte), and nothing promises that pandas' or pyarrow's never quote a field.
    """
    name = type(exc).__name__
    if isinstance(exc, UnicodeDecodeError):
        return f"{name} at byte {exc.start}: not UTF-8 text"
    if isinstance(exc, gzip.BadGzipFile):
        return f"{name}: not a valid gzip file"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{name}: {exc.strerror}"  # errno text ("Permission denied"), not file content
    if isinstance(exc, (EOFError, zlib.error)):
        return f"{name}: the compressed data is truncated or damaged"
    if type(exc).__name__ == "EmptyDataError":
        return f"{name}: the file is empty"
    m = re.search(r"\b(?:line|row) \d+", str(exc))
    return f"{name} at {m.group(0)} (as pandas counts)" if m else name


def describe_found_columns(found: Sequence[Any], known: Collection[str], expected: Sequence[str],
                           show_all: bool = False) -> str:
    """What the header holds, quoting only names of ``known`` (never a cell that may be data).

    With no known name at all the first row is most likely data (a file without its header row); names
    that differ from a missing ``expected`` one only in case, spaces or underscores, or by a typo, are
    pointed at by position.
    """
    names = [str(c) for c in found]
    if show_all:
        return f"found {names}"
    seen = [c for c in names if c in known]
    if not seen:
        return (f"found {len(names)} column(s), none with an expected name: the first row looks like data, not a "
                f"header; add a header row naming at least {','.join(expected)}")
    out = f"found {seen}" + (f" and {len(names) - len(seen)} other column(s) (names not shown)"
                             if len(names) > len(seen) else "")

    def norm(s: str) -> str:
        return re.sub(r"[\s_\-]+", "", s.lower())

    hints = []
    for want in expected:
        if want in names:
            continue
        for pos, c in enumerate(names, 1):
            if c not in known and (norm(c) == norm(want)
                                   or difflib.SequenceMatcher(None, norm(c), norm(want)).ratio() >= 0.8):
                hints.append(f"column {pos}'s name resembles '{want}' (check its spelling, case and spaces)")
                break
    return out + ("; " + "; ".join(hints) if hints else "")


def _csv_record_lines(path: Path) -> list[int] | None:
    """The physical line where each data record of a CSV starts (as pandas reads it), or None if unsure."""
    try:
        raw = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            raw = gzip.decompress(raw)
        reader = csv.reader(io.StringIO(raw.decode("utf-8", errors="replace"), newline=""))
        starts, line = [], 1
        for record in reader:
            if record:  # pandas skips blank lines
                starts.append(line)
            line = reader.line_num + 1
        return starts[1:]  # the first record is the header
    except (OSError, EOFError, zlib.error, csv.Error):
        return None


class RowNamer:
    """Names rows of a table read from ``path`` for error messages: CSV line numbers, else 1-based rows.

    ``positions`` are 0-based positions among the data rows (the index of a freshly read table). The CSV
    is re-read, only when an error needs it, to find where each record starts (a report cell with line
    breaks spans several lines); if that count does not match the table, rows are named instead.
    """

    def __init__(self, path: Path, n_rows: int) -> None:
        self.path, self.n_rows = path, n_rows
        self._lines: list[int] | None | bool = False  # False: not computed yet

    def __call__(self, positions: Iterable[int], n: int = 5) -> str:
        pos = [int(p) for p in positions]
        if self._lines is False:
            is_csv = self.path.name.lower().endswith((".csv", ".csv.gz"))
            lines = _csv_record_lines(self.path) if is_csv else None
            self._lines = lines if lines is not None and len(lines) == self.n_rows else None
        if self._lines:
            return f"line(s) {_few([self._lines[p] for p in pos], n)}"
        where = "1 = the first row after the header" if self.path.name.lower().endswith((".csv", ".csv.gz")) \
            else "1-based"
        return f"row(s) {_few([p + 1 for p in pos], n)} ({where})"


def _few(ids: list[Any], n: int = 5) -> str:
    return f"{ids[:n]}" + (f" and {len(ids) - n} more" if len(ids) > n else "")


# ------------------------------------------------------------------------------------------------ manifest --

def read_manifest_table(path: str | Path) -> pd.DataFrame:
    """The manifest as a table of strings (missing values as ``""``), from ``.csv``/``.csv.gz``/``.parquet``.

    The index is 0..n-1 in file order (:class:`RowNamer` positions).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist or is not a file")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            if importlib.util.find_spec("pyarrow") is None:
                raise ManifestError(f"reading the Parquet manifest {path} needs pyarrow: `pip install pyarrow`, "
                                    "or save the manifest as CSV")
            df = pd.read_parquet(path, engine="pyarrow").astype(object)  # object: "" can fill a float column
            return df.where(df.notna(), "").astype(str).reset_index(drop=True)
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path, dtype=str, na_filter=False)
    except ManifestError:
        raise
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        # `from None`: the reader's own message (kept off the chain too) may quote the file's bytes.
        raise ManifestError(f"manifest {path} cannot be read ({reader_error_detail(exc)}); check that it is a "
                            "valid UTF-8 CSV (a report with commas or line breaks must be in double quotes) or "
                            "Parquet file") from None
    raise ManifestError(f"manifest {path}: unsupported file type; use .csv, .csv.gz or .parquet")


def _text_columns(df: pd.DataFrame, path: Path, credentialed: bool) -> tuple[pd.Series, pd.Series, str]:
    """(findings, impression, mode) from the ``report`` column or the ``findings``/``impression`` columns."""
    cols = set(df.columns)
    missing = [c for c in REQUIRED if c not in cols]
    has_sections = [c for c in SECTION_COLUMNS if c in cols]
    if "report" not in cols and not has_sections:
        missing.append("report (or findings/impression)")
    if missing:
        found = describe_found_columns(list(df.columns), (*KNOWN_COLUMNS, *CHEXPERT_LABELS),
                                       ["image_path", "study_id", "report"], show_all=not credentialed)
        raise ManifestError(f"manifest {path} lacks column(s) {missing}; {found}")
    if "report" in cols and has_sections:
        raise ManifestError(f"manifest {path} has both `report` and {has_sections}: keep one text form")
    empty = pd.Series("", index=df.index, dtype=object)
    if "report" in cols:
        return empty, df["report"], "report"
    return (df["findings"] if "findings" in cols else empty,
            df["impression"] if "impression" in cols else empty, "findings/impression")


def _label_columns(df: pd.DataFrame, path: Path) -> dict[str, str]:
    """CheXpert label name -> the manifest column holding it (header matched ignoring case and spaces)."""
    canon = {name.lower(): name for name in CHEXPERT_LABELS}
    found: dict[str, list[int]] = {}
    for pos, col in enumerate(df.columns):
        name = canon.get(str(col).strip().lower())
        if name is not None:
            found.setdefault(name, []).append(pos)
    twice = {name: pos for name, pos in found.items() if len(pos) > 1}
    if twice:
        name, pos = next(iter(twice.items()))
        raise ManifestError(f"manifest {path}: columns {[p + 1 for p in pos]} all name label '{name}' (case and "
                            "spaces are ignored); keep one column per label")
    return {name: df.columns[pos[0]] for name, pos in found.items()}


def _label_codes(df: pd.DataFrame, columns: dict[str, str], path: Path, rows: "RowNamer") -> np.ndarray:
    """int8 (rows, 14) codes of the label columns (absent labels NOT_MENTIONED); bad cells raise."""
    codes = np.full((len(df), len(CHEXPERT_LABELS)), NOT_MENTIONED, dtype=np.int8)
    for j, name in enumerate(CHEXPERT_LABELS):
        if name not in columns:
            continue
        codes[:, j], bad = parse_label_cells(df[columns[name]])
        if bad.any():
            # Only the column's label name is shown (the header may differ in case); never the cells.
            raise ManifestError(f"manifest {path}: label column '{name}' on {rows(np.flatnonzero(bad))} holds "
                                f"something other than a label value (the cells are not shown); {EXPECTED_VALUES}")
    return codes


def _existing(paths: list[Path]) -> np.ndarray:
    """Which paths exist, by one ``os.scandir`` per folder."""
    listing: dict[Path, set[str]] = {}
    for d in {p.parent for p in paths}:
        try:
            with os.scandir(d) as it:
                listing[d] = {e.name for e in it}
        except (FileNotFoundError, NotADirectoryError, OSError):  # OSError: e.g. a name too long for the OS
            listing[d] = set()
    return np.array([p.name in listing[p.parent] for p in paths], dtype=bool)


def _words(s: pd.Series) -> pd.Series:
    return s.str.split().str.len().fillna(0)


def _not_text(s: pd.Series, max_chars: int, max_words: int | None) -> pd.Series:
    """Cells that cannot be an id/label: a control character (line break), too long, or too many words."""
    bad = s.str.contains(_CONTROL) | (s.str.len() > max_chars)
    return bad | (_words(s) > max_words) if max_words is not None else bad


def _image_path_shaped(p: str) -> bool:
    """A path cell that is safe to show: one line, a few words at most, ending in an image file extension."""
    return (len(p) <= MAX_PATH_CHARS and not _CONTROL.search(p) and len(p.split()) <= MAX_PATH_WORDS_SHOWN
            and p.lower().endswith(IMAGE_SUFFIXES))


def load_manifest(path: str | Path, *, name: str | None = None, credentialed: bool = True,
                  on_empty_report: str = "error", on_bad_image: str = "error") -> RetrievalSet:
    """A :class:`RetrievalSet` from a manifest (module doc); images are checked to exist, not opened.

    ``on_empty_report``/``on_bad_image``: ``error`` (default) or ``skip`` (drop, and count in ``meta``).
    ``credentialed`` (default True): errors quote no cell unless it has the shape of an id or image path.
    """
    check_on_bad("on_empty_report", on_empty_report)
    check_on_bad("on_bad_image", on_bad_image)
    path = Path(path)
    df = read_manifest_table(path)
    findings, impression, mode = _text_columns(df, path, credentialed)
    if df.empty:
        raise ManifestError(f"manifest {path} has no rows")
    rows = RowNamer(path, len(df))
    swapped = "is the header row missing, or are the columns swapped?"

    def ids(values: Iterable[str]) -> str | None:
        """``values`` quoted, when every one is safe to show (id-shaped, or the data is not credentialed)."""
        vals = list(values)
        return _few(vals) if not credentialed or all(_SAFE_ID.fullmatch(v) for v in vals[:5]) else None

    sid = df["study_id"].str.strip()
    rel = df["image_path"].str.strip()
    iid = df["image_id"].str.strip() if "image_id" in df.columns else rel
    for col, s in (("study_id", sid), ("image_path", rel), ("image_id", iid)):
        if (s == "").any():
            raise ManifestError(f"manifest {path}: empty {col} on {rows(np.flatnonzero((s == '').to_numpy()))}; "
                                "fill it in or drop the row")
    # Cells that cannot be ids, views or paths would reach the results (and errors) as such: refuse them.
    view = df["view"].str.strip() if "view" in df.columns else None
    checks = [("study_id", sid, MAX_ID_CHARS, MAX_ID_WORDS, "an id"),
              ("image_path", rel, MAX_PATH_CHARS, None, "a file path")]
    if "image_id" in df.columns:
        checks.append(("image_id", iid, MAX_ID_CHARS, MAX_ID_WORDS, "an id"))
    if view is not None:
        checks.append(("view", view, MAX_VIEW_CHARS, MAX_VIEW_WORDS, "a view label"))
    for col, s, chars, words, what in checks:
        bad = _not_text(s, chars, words).to_numpy()
        if bad.any():
            limit = f"over {chars} characters, a line break" + (f" or more than {words} words" if words else "")
            limit = limit if words else limit.replace(", a line break", " or a line break")
            raise ManifestError(f"manifest {path}: column {col} on {rows(np.flatnonzero(bad))} does not hold "
                                f"{what} ({limit}; the cells are not shown); {swapped}")
    t = pd.DataFrame({"study_id": sid, "rel": rel,
                      "findings": findings.map(lambda x: " ".join(str(x).split())),
                      "impression": impression.map(lambda x: " ".join(str(x).split()))})
    t["image_id"] = iid
    t["view"] = view.replace("", "UNKNOWN") if view is not None else "UNKNOWN"
    t["pos"] = np.arange(len(t))  # file position of each row, for error messages after filtering

    # One report per study: rows of a study must agree (compared after whitespace normalisation).
    disagree = t.groupby("study_id", sort=False)[["findings", "impression"]].nunique().gt(1).any(axis=1)
    if disagree.any():
        studies = disagree.index[disagree].tolist()
        where = rows(t["pos"][t["study_id"].isin(studies)])
        which = f"study {ids(studies)}" if ids(studies) else f"{len(studies)} study(ies)"
        raise ManifestError(f"manifest {path}: rows of {which} carry different report text ({where}); give every "
                            "row of a study the same report")
    label_cols = _label_columns(df, path)
    codes = _label_codes(df, label_cols, path, rows) if label_cols else None
    if codes is not None:
        # One label vector per study, like one report: rows of a study must carry the same codes.
        per_study = pd.DataFrame(codes, columns=list(CHEXPERT_LABELS)).groupby(t["study_id"].to_numpy(), sort=False)
        split = per_study.nunique().gt(1)
        if split.any(axis=None):
            sid_bad = split.index[split.any(axis=1)].tolist()
            col = split.columns[split.loc[sid_bad[0]].to_numpy()][0]
            which = f"study {ids(sid_bad)}" if ids(sid_bad) else f"{len(sid_bad)} study(ies)"
            raise ManifestError(f"manifest {path}: rows of {which} carry different values in label column "
                                f"'{col}' ({rows(t['pos'][t['study_id'] == sid_bad[0]])}; values not shown); give "
                                "every row of a study the same labels")
    dup = t["image_id"].duplicated(keep=False)
    if dup.any():
        shown = ids(t["image_id"][t["image_id"].duplicated()].tolist())
        raise ManifestError(f"manifest {path}: image ids listed twice" + (f": {shown}" if shown else "")
                            + f" ({rows(t['pos'][dup])}, column {'image_id' if 'image_id' in df else 'image_path'})"
                            "; every image must appear once")

    ex_studies: dict[str, int] = {"empty_report": 0, "no_images_left": 0}
    ex_images: dict[str, int] = {"empty_report": 0, "missing_image": 0}
    blank = (t["findings"] == "") & (t["impression"] == "")
    if blank.any():
        studies = list(dict.fromkeys(t["study_id"][blank]))
        if on_empty_report == "error":
            which = f"study {ids(studies)} has" if ids(studies) else f"{len(studies)} study(ies) have"
            raise ManifestError(f"manifest {path}: {which} an empty or whitespace-only report "
                                f"({rows(t['pos'][blank])}); fill it in or pass on_empty_report='skip'")
        ex_studies["empty_report"], ex_images["empty_report"] = len(studies), int(blank.sum())
        t = t[~blank]

    base = path.resolve().parent
    t["path"] = [Path(p) if Path(p).is_absolute() else base / p for p in t["rel"]]
    ok = _existing(t["path"].tolist())
    if not ok.all():
        gone = t[~ok]
        shaped = [str(p) for p, r in zip(gone["path"], gone["rel"]) if not credentialed or _image_path_shaped(r)]
        hidden = len(gone) - len(shaped)
        if on_bad_image == "error":
            eg = f", e.g. {shaped[:3]}" if shaped else ""
            why = (f" ({hidden} of them not shown: they do not look like image file names; {swapped})"
                   if hidden else "")
            raise ManifestError(f"manifest {path}: {len(gone)} of {len(t)} image files are missing{eg} "
                                f"({rows(gone['pos'])}, column image_path){why}; fix the paths (relative ones "
                                f"are resolved against {base}) or pass on_bad_image='skip'")
        before = set(t["study_id"])
        ex_images["missing_image"] = len(gone)
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
        views=t["view"].tolist(), image_paths=t["path"].tolist(), credentialed=credentialed,
        labels=(StudyLabels.from_codes(codes[first.loc[study_ids, "pos"].to_numpy()], source="manifest columns")
                if codes is not None else None))
    no_impression = int((first["impression"] == "").sum())
    meta: dict[str, Any] = {
        "source": "manifest", "path": str(path), "text_columns": mode,
        "report_column_maps_to": "impression" if mode == "report" else None,
        "counts": rs.counts(), "excluded_studies": ex_studies, "excluded_images": ex_images,
        "studies_without_impression": no_impression,
        "studies_without_findings": int((first["findings"] == "").sum()) if mode != "report" else None,
        "labels": ({**rs.labels.summary(), "columns": [n for n in CHEXPERT_LABELS if n in label_cols]}
                   if rs.labels is not None else {"source": None, "looked_for": "columns named after the "
                                                  f"{len(CHEXPERT_LABELS)} CheXpert labels"}),
    }
    rs.meta.update(meta)
    if no_impression and mode != "report":
        log.warning("%s: %d studies have no impression; the `impression` text policy gives them empty text",
                    path.name, no_impression)
    log.info("manifest %s: %d studies / %d images (%s); excluded studies %s, images %s", path.name,
             rs.num_studies, rs.num_images, dict(Counter(rs.views)), ex_studies, ex_images)
    return rs
