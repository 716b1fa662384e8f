"""The MIMIC-CXR-JPG evaluation set: official split + metadata + reports -> a :class:`RetrievalSet`.

The default filter is the most plausible route to the paper's 994 studies / 1,770 images (see
``reference/DATA.md`` 1e): split ``validate``, studies whose last FINDINGS and last IMPRESSION sections are
both non-empty after the official sectioning rules (:mod:`cxr_robust.data.sections`), and every image of
those studies. Every exclusion is counted by reason in ``RetrievalSet.meta``.

Exclusions are exclusive, first failing reason wins: ``not_in_split``, ``missing_report``,
``unreadable_report`` (only with ``on_bad_report="skip"``), ``missing_<section>`` in ``require_sections``
order (a study with neither findings nor impression counts as ``missing_findings``), then per image
``view_filter`` and ``missing_image`` (an absent or zero-byte file, only with ``on_bad_image="skip"``;
``meta["empty_image_files"]`` says how many of them were zero-byte), and ``no_images_left`` for a study
whose images were all removed. The official ``mimic_cxr_sectioned.csv`` omits the 54 studies its custom
rules handle; with that source they count as ``missing_report``.

Labels: the root's ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` (or ``-negbio``) is read when present and attached
as ``RetrievalSet.labels`` (:mod:`cxr_robust.data.labels`); kept studies without a row are unlabelled, not
excluded. ``meta["labels"]`` holds its counts, or says which file was looked for.

MIMIC-CXR is credentialed: nothing here logs or raises report text. Errors name files, ids that have been
checked to be ids (digits, hex DICOM ids, MIMIC paths built from them), line numbers and column names; never
a header cell (a table without its header row would show its first row) nor any other cell. A
``ViewPosition`` outside the official :data:`VIEW_MAP` becomes ``UNKNOWN`` (counted in
``meta["unrecognised_view_positions"]``) rather than reaching the results as a view name.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cxr_robust.data.labels import LABELERS, LabelFileError, StudyLabels, find_label_file, read_label_file
from cxr_robust.data.manifest import RowNamer, describe_found_columns, reader_error_detail
from cxr_robust.data.retrieval_set import RetrievalSet, check_on_bad
from cxr_robust.data.sections import SectionedReport, extract_report

__all__ = ["MimicLayoutError", "MimicLabelFileError", "ReportSource", "ReportsRead", "PAPER_REFERENCE", "VIEW_MAP",
           "VIEW_FILTERS", "detect_version", "find_table", "load_image_table", "find_report_source", "read_reports",
           "existing_images", "load_mimic"]

log = logging.getLogger(__name__)

PAPER_REFERENCE = {"studies": 994, "images": 1770}
"""The paper's evaluation set size, recorded beside the counts a filter actually yields."""

SPLIT_STEM = "mimic-cxr-2.0.0-split"
METADATA_STEM = "mimic-cxr-2.0.0-metadata"
REPORTS_ZIP = "mimic-cxr-reports.zip"
SECTIONED_STEM = "mimic_cxr_sectioned"
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
METADATA_COLUMNS = ("dicom_id", "ViewPosition")  # the only metadata the set needs
SECTIONED_COLUMNS = ("study", "findings", "impression")  # last_paragraph and comparison are optional
SPLITS = ("train", "validate", "test")

# Official VIEW_MAP (notebooks/generate-stats-from-paper.ipynb); anything unlisted or empty is "unknown".
VIEW_MAP: dict[str, str] = {
    "AP": "frontal", "PA": "frontal", "LATERAL": "lateral", "LL": "lateral",
    **{v: "other" for v in ("LPO", "RAO", "RPO", "LAO", "AP AXIAL", "XTABLE LATERAL", "AP LLD", "PA LLD",
                            "SWIMMERS", "AP RLD", "PA RLD", "L5 S1")},
}
# views= value -> the ViewPosition values kept (None keeps every image, whatever its view).
VIEW_FILTERS: dict[str, frozenset[str] | None] = {
    "all": None,
    "frontal": frozenset(v for v, g in VIEW_MAP.items() if g == "frontal"),
    "lateral": frozenset(v for v, g in VIEW_MAP.items() if g == "lateral"),
    "pa": frozenset({"PA"}),
    "ap": frozenset({"AP"}),
}
_REPORT_MEMBER = re.compile(r"(?:^|/)files/p\d+/p(\d+)/(s\d+)\.txt$")
# MIMIC-CXR DICOM ids are dash-separated hex groups (02aa804e-bde0afdd-112c0b34-7bc16630-4e384014).
_DICOM_ID = re.compile(r"[0-9A-Fa-f]{1,32}(?:-[0-9A-Fa-f]{1,32}){0,15}")
# Column names of the official tables: the only header cells an error may quote.
_OFFICIAL_COLUMNS = frozenset({
    *SPLIT_COLUMNS, *SECTIONED_COLUMNS, "last_paragraph", "comparison", "subject_id",
    "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
    "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning"})


class MimicLayoutError(ValueError):
    """The MIMIC-CXR-JPG directory, a table or a report is not what the loader expects (message says which)."""


class MimicLabelFileError(MimicLayoutError, LabelFileError):
    """The root's CheXpert/NegBio label file is unusable (caught as either parent)."""


# ----------------------------------------------------------------------------------------------- tables --

def find_table(root: Path, stem: str, what: str) -> Path:
    """``root/<stem>.csv.gz`` or ``root/<stem>.csv`` (gzipped or not), or a clear error."""
    for suffix in (".csv.gz", ".csv"):
        if (root / (stem + suffix)).is_file():
            return root / (stem + suffix)
    raise MimicLayoutError(f"{root} has no {what}: expected {stem}.csv.gz or {stem}.csv there "
                           "(MIMIC-CXR-JPG 2.0.0/2.1.0 ships it at the top level)")


def detect_version(root: Path) -> str:
    """``"2.1.0"`` when a 2.1.0-only file or a folder named 2.1.0 says so, else ``"2.0.0"`` (its CSV names)."""
    names = {p.name for p in root.iterdir()}
    if root.name == "2.1.0" or any(n.startswith("mimic-cxr-2.1.0-") for n in names):
        return "2.1.0"
    return "2.0.0"


def _read_csv(path: Path, columns: Sequence[str], what: str, optional: Sequence[str] = ()) -> pd.DataFrame:
    """``columns`` (and those of ``optional`` present) of a CSV(.gz) as strings, empty fields as ``""``."""
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
        missing = [c for c in columns if c not in header]
        if missing:
            # The header is never quoted: without a header row it is the first row, e.g. a report.
            raise MimicLayoutError(f"{path}: the {what} lacks column(s) {missing}; expected at least "
                                   f"{list(columns)}, "
                                   f"{describe_found_columns(header, _OFFICIAL_COLUMNS, list(columns))}")
        use = list(columns) + [c for c in optional if c in header]
        # na_filter=False: empty fields stay "" (ViewPosition is often empty) and parsing is faster.
        return pd.read_csv(path, usecols=use, dtype=str, na_filter=False)
    except MimicLayoutError:
        raise
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        # Only the type and position: some reader messages quote bytes of the file. `from None` keeps the
        # original off the exception chain too.
        raise MimicLayoutError(f"{path}: cannot read the {what} ({reader_error_detail(exc)}); "
                               "re-download it from PhysioNet") from None


def _rows(path: Path, index: pd.Index | pd.Series, n_rows: int) -> str:
    """Where rows of a freshly read table (index = position in the file) are: line numbers of the CSV."""
    return RowNamer(path, n_rows)(np.asarray(index))


def _digits(col: pd.Series, prefix: str, path: Path, name: str, n_rows: int) -> pd.Series:
    """The id column without its optional letter prefix; non-numeric ids raise, naming their lines."""
    out = col.str.strip().str.removeprefix(prefix)
    bad = ~out.str.fullmatch(r"\d+")
    if bad.any():
        # The cells are not quoted: a non-numeric id is what a shifted or header-less table holds (text).
        raise MimicLayoutError(f"{path}: {int(bad.sum())} row(s) have a non-numeric {name} "
                               f"({_rows(path, col.index[bad], n_rows)}, column {name}); expected digits, "
                               f"optionally after '{prefix}': is the header row missing or are the columns "
                               "shifted? re-download the file from PhysioNet")
    return out


def load_image_table(root: str | Path, split: str = "validate") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Images of ``split`` with their view: one row per dicom, sorted by study then dicom.

    Columns: ``dicom_id, subject_id`` (digits), ``study_id`` (``s…``), ``view`` (ViewPosition, ``"UNKNOWN"``
    when empty), ``view_group`` (official map), ``path`` (relative to root). Vectorised: reading the full
    377k-row metadata takes seconds. Also returns counts of what the split left out.
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    split_path = find_table(root, SPLIT_STEM, "official split file")
    meta_path = find_table(root, METADATA_STEM, "image metadata file")
    sp = _read_csv(split_path, SPLIT_COLUMNS, "split file")
    n_split = len(sp)
    sp["split"] = sp["split"].str.strip()
    unknown = ~sp["split"].isin(SPLITS)
    if unknown.any():
        raise MimicLayoutError(f"{split_path}: unexpected split values on "
                               f"{_rows(split_path, sp.index[unknown], n_split)} (column split; values not "
                               f"shown); expected one of {list(SPLITS)}")
    sp["study_id"] = "s" + _digits(sp["study_id"], "s", split_path, "study_id", n_split)
    chosen = sp["split"] == split
    other = sp[~chosen]
    sp = sp[chosen].drop(columns="split")
    if sp.empty:
        raise MimicLayoutError(f"{split_path}: no image is in split {split!r} ({len(other)} rows in other splits)")
    sp["subject_id"] = _digits(sp["subject_id"], "p", split_path, "subject_id", n_split)
    sp["dicom_id"] = sp["dicom_id"].str.strip()
    # A dicom id becomes an image file name and an image id in the results: it must be one.
    not_dicom = ~sp["dicom_id"].str.fullmatch(_DICOM_ID)
    if not_dicom.any():
        raise MimicLayoutError(f"{split_path}: {int(not_dicom.sum())} row(s) have a dicom_id that is not a DICOM id "
                               f"({_rows(split_path, sp.index[not_dicom], n_split)}, column dicom_id; expected "
                               "dash-separated hex groups); is the header row missing or are the columns shifted?")
    dup = sp["dicom_id"].duplicated()
    if dup.any():
        raise MimicLayoutError(f"{split_path}: dicom ids listed twice, e.g. {sp['dicom_id'][dup].head(3).tolist()} "
                               f"({_rows(split_path, sp.index[sp['dicom_id'].duplicated(keep=False)], n_split)})")

    md = _read_csv(meta_path, METADATA_COLUMNS, "metadata file")
    md["dicom_id"] = md["dicom_id"].str.strip()
    md = md.drop_duplicates("dicom_id")
    t = sp.merge(md, on="dicom_id", how="left", validate="one_to_one", indicator=True)
    no_meta = int((t.pop("_merge") == "left_only").sum())
    if no_meta:
        log.warning("%d images of split %r have no row in %s; their view is UNKNOWN", no_meta, split,
                    meta_path.name)
    view = t["ViewPosition"].fillna("").astype(str).str.strip().str.upper()
    # Only official view codes reach the results: any other cell (a shifted column, free text) is UNKNOWN.
    unrecognised = (view != "") & ~view.isin(VIEW_MAP)
    if unrecognised.any():
        log.warning("%d images of split %r have a ViewPosition outside the official list in %s; they count as "
                    "view UNKNOWN (values not shown)", int(unrecognised.sum()), split, meta_path.name)
    t["view"] = view.where((view != "") & ~unrecognised, "UNKNOWN")
    t["view_group"] = t["view"].map(VIEW_MAP).fillna("unknown")
    subj = t["subject_id"]
    t["path"] = "files/p" + subj.str[:2] + "/p" + subj + "/" + t["study_id"] + "/" + t["dicom_id"] + ".jpg"
    t = t.drop(columns="ViewPosition").sort_values(["study_id", "dicom_id"], ignore_index=True)
    info = {"split_file": str(split_path), "metadata_file": str(meta_path),
            "images_without_metadata": no_meta, "unrecognised_view_positions": int(unrecognised.sum()),
            "not_in_split": {"studies": int(other["study_id"].nunique()), "images": len(other)}}
    return t, info


# ---------------------------------------------------------------------------------------------- reports --

@dataclass(frozen=True)
class ReportSource:
    """Where the reports are: ``zip`` (mimic-cxr-reports.zip), ``tree`` (``<path>/files/pXX/pN/sN.txt``)
    or ``sectioned_csv`` (the official ``mimic_cxr_sectioned.csv(.gz)``)."""

    kind: str
    path: Path


@dataclass
class ReportsRead:
    """Sectioned reports by study id, and the study ids whose report is absent or unreadable."""

    reports: dict[str, SectionedReport] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def find_report_source(root: str | Path, reports: str | Path | None = None) -> ReportSource:
    """Classify ``reports`` (a zip, a sectioned CSV or a folder), or find one inside ``root`` when None.

    Auto-detection order: ``mimic-cxr-reports.zip``, then ``mimic_cxr_sectioned.csv(.gz)``, then ``.txt``
    reports in root's own ``files/`` tree (checked when read: none found there is an error).
    """
    root = Path(root)
    if reports is None:
        if (root / REPORTS_ZIP).is_file():
            return ReportSource("zip", root / REPORTS_ZIP)
        for suffix in (".csv.gz", ".csv"):
            if (root / (SECTIONED_STEM + suffix)).is_file():
                return ReportSource("sectioned_csv", root / (SECTIONED_STEM + suffix))
        return ReportSource("tree", root)
    p = Path(reports)
    if p.is_file() and p.name.lower().endswith(".zip"):
        return ReportSource("zip", p)
    if p.is_file() and p.name.lower().endswith((".csv", ".csv.gz")):
        return ReportSource("sectioned_csv", p)
    if p.is_dir():
        if (p / "files").is_dir():
            return ReportSource("tree", p)
        if p.name == "files":
            return ReportSource("tree", p.parent)
        if (p / REPORTS_ZIP).is_file():
            return ReportSource("zip", p / REPORTS_ZIP)
    raise MimicLayoutError(f"reports={str(p)!r} is not a MIMIC-CXR report source: expected {REPORTS_ZIP}, "
                           f"{SECTIONED_STEM}.csv(.gz), or a folder holding files/pXX/pXXXXXXXX/sXXXXXXXX.txt")


def _decode(raw: bytes, where: str, sid: str, out: ReportsRead, on_bad_report: str) -> None:
    """Section one report's bytes into ``out``; text that cannot be decoded or sectioned is an error or an
    ``unreadable`` count."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _unreadable(where, sid, exc, out, on_bad_report)
        return
    try:
        out.reports[sid] = extract_report(text)
    except Exception as exc:  # noqa: BLE001 - a sectioner failure must not carry the report out in its message
        _unreadable(where, sid, exc, out, on_bad_report)


def _unreadable(where: str, sid: str, exc: Exception, out: ReportsRead, on_bad_report: str) -> None:
    """Count the study as unreadable (``skip``) or raise, naming the study and file but no text."""
    if on_bad_report == "skip":
        out.unreadable.append(sid)
        return
    # Exception texts are not shown: a decode error quotes bytes of the report, and a sectioning error could
    # quote its text. I/O errors show their errno text; archive errors name members, i.e. ids.
    if isinstance(exc, UnicodeDecodeError):
        detail = f"{type(exc).__name__} at byte {exc.start}"
    elif isinstance(exc, OSError) and exc.strerror:
        detail = f"{type(exc).__name__}: {exc.strerror}"
    elif isinstance(exc, (OSError, zipfile.BadZipFile, zlib.error, EOFError)):
        detail = f"{type(exc).__name__}: the file or archive member is damaged"
    else:
        detail = f"{type(exc).__name__} while sectioning the text; please report this with the study id"
    raise MimicLayoutError(f"report of study {sid} ({where}) cannot be read ({detail}); replace the file or "
                           "pass on_bad_report='skip' to exclude such studies") from None


def read_reports(source: ReportSource, studies: pd.DataFrame, on_bad_report: str = "error") -> ReportsRead:
    """Read and section the reports of ``studies`` (columns ``subject_id`` digits, ``study_id`` ``s…``)."""
    check_on_bad("on_bad_report", on_bad_report)
    out = ReportsRead()
    pairs = list(zip(studies["subject_id"], studies["study_id"]))
    if source.kind == "sectioned_csv":
        table = _read_csv(source.path, SECTIONED_COLUMNS, "sectioned report file",
                          optional=("last_paragraph", "comparison"))
        table["study"] = "s" + _digits(table["study"], "s", source.path, "study", len(table))
        dup = table["study"].duplicated()
        if dup.any():
            raise MimicLayoutError(f"{source.path}: studies listed twice, e.g. {table['study'][dup].head(3).tolist()}")
        rows = table.set_index("study").to_dict("index")
        for _, sid in pairs:
            if sid in rows:
                out.reports[sid] = SectionedReport.from_sections(rows[sid])
            else:
                out.missing.append(sid)
    elif source.kind == "zip":
        try:
            with zipfile.ZipFile(source.path) as zf:
                members = {}
                for name in zf.namelist():
                    m = _REPORT_MEMBER.search(name)
                    if m:
                        members[m.group(2)] = name
                for _, sid in pairs:
                    if sid not in members:
                        out.missing.append(sid)
                        continue
                    try:
                        raw = zf.read(members[sid])
                    except (OSError, zipfile.BadZipFile, zlib.error) as exc:
                        _unreadable(f"{source.path}:{members[sid]}", sid, exc, out, on_bad_report)
                        continue
                    _decode(raw, f"{source.path}:{members[sid]}", sid, out, on_bad_report)
        except (zipfile.BadZipFile, OSError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a zip file, or damaged"
            raise MimicLayoutError(f"{source.path}: not a readable zip archive ({type(exc).__name__}: {detail}); "
                                   "re-download mimic-cxr-reports.zip") from None
    elif source.kind == "tree":
        base = source.path / "files"
        for subj, sid in pairs:
            path = base / f"p{subj[:2]}" / f"p{subj}" / f"{sid}.txt"
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                out.missing.append(sid)
                continue
            except OSError as exc:
                _unreadable(str(path), sid, exc, out, on_bad_report)
                continue
            _decode(raw, str(path), sid, out, on_bad_report)
    else:
        raise ValueError(f"unknown report source kind {source.kind!r}")
    return out


# ----------------------------------------------------------------------------------------------- images --

def existing_images(root: Path, rel_paths: pd.Series) -> np.ndarray:
    """Which of ``rel_paths`` exist, by one ``os.scandir`` per study folder."""
    return _scan_images(root, rel_paths)[0]


def _scan_images(root: Path, rel_paths: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(exists, zero_byte) for ``rel_paths``: one ``os.scandir`` per study folder, and a stat of the wanted
    entries only (a zero-byte image is refused by the decoder, so a data check must find it too)."""
    wanted = set(rel_paths)
    found: set[str] = set()
    empty: set[str] = set()
    for d in rel_paths.str.rsplit("/", n=1).str[0].unique():
        try:
            with os.scandir(root / d) as it:
                for e in it:
                    rel = f"{d}/{e.name}"
                    if rel in wanted:
                        found.add(rel)
                        try:
                            if e.stat().st_size == 0:
                                empty.add(rel)
                        except OSError:
                            pass  # a dangling link or a race: left to the decoder, which names it
        except (FileNotFoundError, NotADirectoryError):
            pass
    return rel_paths.isin(found).to_numpy(), rel_paths.isin(empty).to_numpy()


# ------------------------------------------------------------------------------------------------- load --

def _check_root(root: Path) -> None:
    """A MIMIC-CXR-JPG root is a directory with a files/ folder (the CSVs are checked when read)."""
    if not root.is_dir():
        raise MimicLayoutError(f"MIMIC-CXR-JPG root {root} is not a directory")
    if not (root / "files").is_dir():
        raise MimicLayoutError(f"{root} is not a MIMIC-CXR-JPG directory: it has no files/ folder "
                               "(expected files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg and the split/metadata CSVs)")


def _section_text(report: SectionedReport, name: str) -> str:
    """The text of section ``name`` (findings, impression or any other canonical name)."""
    return report.findings if name == "findings" else report.impression if name == "impression" \
        else report.other.get(name, "")


def load_mimic(root: str | Path, reports: str | Path | None = None, split: str = "validate",
               views: str = "all", require_sections: Sequence[str] = ("findings", "impression"),
               on_bad_image: str = "error", on_bad_report: str = "error",
               labels: str | None = "chexpert") -> RetrievalSet:
    """The MIMIC-CXR-JPG evaluation set of ``split`` (see module doc); images are checked to exist and not
    be empty (zero bytes), but not opened: :func:`cxr_robust.data.images.find_unusable_images` reads headers.

    ``views``: ``all`` | ``frontal`` (AP, PA) | ``lateral`` (LATERAL, LL) | ``PA`` | ``AP``.
    ``require_sections``: sections that must be non-empty for a study to be kept.
    ``on_bad_image``/``on_bad_report``: ``error`` (default) or ``skip`` (drop and count the image/study).
    ``labels``: labeler whose file to attach (``chexpert``, ``negbio``; :data:`~cxr_robust.data.labels.LABELERS`)
    when the root has it, or None to skip labels. A malformed label file is an error.
    """
    root = Path(root)
    if labels is not None and labels not in LABELERS:
        raise ValueError(f"unknown labels={labels!r}; choose one of {', '.join(LABELERS)}, or None for no labels")
    view_key = str(views).strip().lower()
    if view_key not in VIEW_FILTERS:
        raise ValueError(f"unknown views={views!r}; choose one of all, frontal, lateral, PA, AP")
    check_on_bad("on_bad_image", on_bad_image)
    required = (require_sections,) if isinstance(require_sections, str) else tuple(require_sections)
    _check_root(root)
    table, info = load_image_table(root, split)
    source = find_report_source(root, reports)
    studies = table.drop_duplicates("study_id")[["subject_id", "study_id"]]
    read = read_reports(source, studies, on_bad_report)
    if not read.reports and not read.unreadable:
        raise MimicLayoutError(f"no report found for any of the {len(studies)} {split} studies in {source.kind} "
                               f"source {source.path} (e.g. {studies['study_id'].head(3).tolist()}); expected "
                               f"{REPORTS_ZIP}, {SECTIONED_STEM}.csv(.gz) or files/pXX/pXXXXXXXX/sXXXXXXXX.txt; "
                               "pass reports=<path>")

    # Study-level exclusions, first failing reason wins, so the reasons add up to the split's studies.
    reason = pd.Series("", index=studies["study_id"].to_numpy(), dtype=object)
    reason.loc[read.missing] = "missing_report"
    reason.loc[read.unreadable] = "unreadable_report"
    for sid, rep in read.reports.items():
        for name in required:
            if not _section_text(rep, name):
                reason.loc[sid] = f"missing_{name}"
                break
    img_reason = table["study_id"].map(reason).to_numpy(dtype=object)

    allowed = VIEW_FILTERS[view_key]
    live = img_reason == ""
    if allowed is not None:
        img_reason[live & ~table["view"].isin(allowed).to_numpy()] = "view_filter"
    live = img_reason == ""
    exists = np.ones(len(table), dtype=bool)
    empty = np.zeros(len(table), dtype=bool)
    exists[live], empty[live] = _scan_images(root, table["path"][live])
    absent, zero = np.flatnonzero(~exists), np.flatnonzero(empty)
    if on_bad_image == "error" and (len(absent) or len(zero)):
        first = [str(root / table["path"].iat[i]) for i in (absent if len(absent) else zero)[:3]]
        if len(absent):
            also = f" (and {len(zero)} more are empty zero-byte files)" if len(zero) else ""
            raise MimicLayoutError(f"{len(absent)} of {int(live.sum())} images of the {split} evaluation set are "
                                   f"missing, e.g. {first}{also}; re-download them or pass on_bad_image='skip'")
        raise MimicLayoutError(f"{len(zero)} of {int(live.sum())} images of the {split} evaluation set are empty "
                               f"(zero-byte) files, e.g. {first}; re-download them or pass on_bad_image='skip'")
    # A zero-byte file is as unusable as an absent one: counted under the same reason (see module doc).
    img_reason[absent] = "missing_image"
    img_reason[zero] = "missing_image"

    keep = table[img_reason == ""]
    kept_ids = set(keep["study_id"])
    emptied = [s for s in reason.index[reason == ""] if s not in kept_ids]
    reason.loc[emptied] = "no_images_left"

    # Study reasons remove a study with all its images; image reasons remove images, and a study left
    # without any is counted once under no_images_left. Kept + excluded = the whole split, both ways.
    study_level = ["missing_report", "unreadable_report", *(f"missing_{n}" for n in required)]
    ex_studies = {"not_in_split": info["not_in_split"]["studies"],
                  **{r: int((reason == r).sum()) for r in study_level + ["no_images_left"]}}
    ex_images = {"not_in_split": info["not_in_split"]["images"],
                 **{r: int((img_reason == r).sum()) for r in study_level + ["view_filter", "missing_image"]}}
    study_ids = sorted(kept_ids)
    index = {s: i for i, s in enumerate(study_ids)}
    reps = [read.reports[s] for s in study_ids]
    study_labels, labels_meta = _read_labels(root, labels, study_ids)
    name = f"mimic-cxr-{split}" + ("" if view_key == "all" else f"-{view_key}")
    rs = RetrievalSet(
        name=name, study_ids=study_ids, findings=[r.findings for r in reps],
        impressions=[r.impression for r in reps], image_ids=keep["dicom_id"].tolist(),
        image_study=keep["study_id"].map(index).to_numpy(dtype=np.int64), views=keep["view"].tolist(),
        image_paths=[root / p for p in keep["path"]], credentialed=True, labels=study_labels)
    counts = rs.counts()
    counts["view_groups"] = dict(sorted(keep["view_group"].value_counts().to_dict().items()))
    rs.meta.update({
        "source": "mimic-cxr-jpg", "root": str(root), "dataset_version": detect_version(root),
        "split": split, "views": view_key, "require_sections": list(required),
        "reports_source": {"kind": source.kind, "path": str(source.path)},
        "counts": counts, "paper_reference": dict(PAPER_REFERENCE),
        "split_counts": {"studies": len(studies), "images": len(table)},
        "excluded_studies": ex_studies, "excluded_images": ex_images,
        "fallback_used": sum(r.fallback_used for r in read.reports.values()),
        "images_without_metadata": info["images_without_metadata"],
        "unrecognised_view_positions": info["unrecognised_view_positions"],
        "empty_image_files": len(zero),
        "labels": labels_meta,
    })
    log.info("MIMIC-CXR-JPG %s (%s, reports: %s): %d studies / %d images kept (paper: %d / %d); views %s",
             split, rs.meta["dataset_version"], source.kind, rs.num_studies, rs.num_images,
             PAPER_REFERENCE["studies"], PAPER_REFERENCE["images"], counts["views"])
    log.info("excluded studies by reason: %s; excluded images by reason: %s", ex_studies, ex_images)
    if study_labels is not None:
        log.info("labels (%s): %d of %d studies labelled, %d with an uncertain label", study_labels.source,
                 labels_meta["labelled_studies"], rs.num_studies, labels_meta["uncertain_studies"])
    elif labels is not None:
        log.info("no %s label file in %s: the set has no labels", labels, root)
    return rs


def _read_labels(root: Path, labeler: str | None,
                 study_ids: Sequence[str]) -> tuple[StudyLabels | None, dict[str, Any] | None]:
    """The kept studies' labels from the root's ``labeler`` file, and what ``meta["labels"]`` records."""
    if labeler is None:
        return None, {"source": None, "skipped": True}
    path = find_label_file(root, labeler)
    if path is None:
        return None, {"source": None, "looked_for": f"{root / LABELERS[labeler]}.csv(.gz)"}
    try:
        got = read_label_file(path, study_ids)
    except LabelFileError as exc:
        raise MimicLabelFileError(f"{exc} (or pass labels=None to load the set without labels)") from None
    return got, {**got.summary(), "labeler": labeler, "path": str(path)}
