"""Findings labels per study (CheXpert's 14), where they come from, and when two studies' labels match.

A :class:`StudyLabels` holds one row of label codes per study of a :class:`~cxr_robust.data.RetrievalSet`
and whether the study has a row in its label source at all. :class:`LabelMatch` turns it into a relevance
judgement for retrieval metrics: a candidate report is relevant to a query image when the two studies'
labels match under a :class:`MatchRule`, so a report of another study with the same findings counts too.

Sources: MIMIC-CXR-JPG's ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` / ``-negbio`` files (:func:`read_label_file`),
label columns of a manifest (:mod:`cxr_robust.data.manifest`), or codes given directly
(:meth:`StudyLabels.from_codes`, e.g. by a phantom generator).

Uncertain mentions (``-1.0``) follow a policy (:data:`UNCERTAIN_POLICIES`); the default, ``positive``, is
CheXpert's "U-Ones": an uncertain mention such as "possible effusion" still puts the finding in the report a
radiologist reads, so a report that raises it matches an image that has it. An empty cell (not mentioned)
and ``0.0`` (negative) both count as absent, as in CheXpert's own evaluation.

MIMIC-CXR is credentialed: errors name the file, line numbers, the column and what was expected, never a
cell (a shifted or header-less file puts report text where labels belong). Study ids are shown only after
they have been checked to be digits.
"""

from __future__ import annotations

import csv
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["CHEXPERT_LABELS", "POSITIVE", "NEGATIVE", "UNCERTAIN", "NOT_MENTIONED", "CODES",
           "UNCERTAIN_POLICIES", "DEFAULT_UNCERTAIN", "LABELERS", "LabelFileError", "StudyLabels", "MatchRule",
           "parse_match_rule", "LabelMatch", "find_label_file", "read_label_file", "parse_label_cells"]

CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices")
"""The 14 labels of MIMIC-CXR-JPG's CheXpert and NegBio files, in their column order."""

POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED = 1, 0, -1, -9
"""Label codes (int8): the files' ``1.0`` / ``0.0`` / ``-1.0`` / empty cell."""

CODES: frozenset[int] = frozenset({POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED})

UNCERTAIN_POLICIES: tuple[str, ...] = ("positive", "negative")
"""How an uncertain (``-1``) label counts in :meth:`StudyLabels.binary`: as present or as absent."""

DEFAULT_UNCERTAIN = "positive"
"""CheXpert's "U-Ones": an uncertain mention ("possible effusion") raises the finding in the report a
radiologist reads, so it counts as present. Not mentioned (empty) and negative count as absent, as in
CheXpert's own evaluation."""

LABELERS: dict[str, str] = {"chexpert": "mimic-cxr-2.0.0-chexpert", "negbio": "mimic-cxr-2.0.0-negbio"}
"""Labeler name -> file stem of its MIMIC-CXR-JPG label file (``.csv.gz`` or ``.csv`` in the root)."""

ID_COLUMNS = ("subject_id", "study_id")
EXPECTED_VALUES = "expected 1.0, 0.0, -1.0 or empty (1, 0 and -1 are accepted too)"

# The official spellings, then the integer ones; anything else of the shape 1 / 1.0 / 1.00 is matched by
# _CODE_SHAPE (a re-saved file may write more zeros).
_CODE_OF: dict[str, int] = {"1.0": POSITIVE, "0.0": NEGATIVE, "-1.0": UNCERTAIN, "": NOT_MENTIONED,
                            "1": POSITIVE, "0": NEGATIVE, "-1": UNCERTAIN}
_CODE_SHAPE = re.compile(r"(-?)([01])(?:\.0*)?")


class LabelFileError(ValueError):
    """A label file or label column is unusable; the message names the file, lines and column, never a cell."""


# ---------------------------------------------------------------------------------------------- labels --

def _check_policy(uncertain: str) -> str:
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain={uncertain!r} is not a policy for uncertain labels; choose one of "
                         f"{', '.join(UNCERTAIN_POLICIES)} (default {DEFAULT_UNCERTAIN}: an uncertain mention "
                         "counts as present)")
    return uncertain


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)  # a copy: the caller's array stays writable and cannot change ours
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class StudyLabels:
    """Label codes of N studies: ``codes`` int8 (N, L) in :data:`CODES`, ``labelled`` bool (N,).

    ``labelled[i]`` is False when study i has no row in its label source; its codes are then all
    :data:`NOT_MENTIONED` and it is relevant to nothing under :class:`LabelMatch`. ``source`` says where the
    labels come from (a file name, ``manifest columns``, ``phantom generator``).
    """

    names: tuple[str, ...]
    codes: np.ndarray
    labelled: np.ndarray
    source: str

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"label names must be non-empty and unique, got {len(names)} names "
                             f"({len(set(names))} distinct)")
        codes = np.asarray(self.codes)
        if codes.ndim != 2 or codes.shape[1] != len(names):
            raise ValueError(f"codes must have shape (studies, {len(names)}) for {len(names)} label names, "
                             f"got {codes.shape}")
        if codes.size and not np.issubdtype(codes.dtype, np.integer):
            # Floats (a file's 1.0 / NaN) are converted by the readers, which know what NaN means there.
            raise ValueError(f"codes must be integers ({sorted(CODES)}), got dtype {codes.dtype}")
        bad = ~np.isin(codes, list(CODES))
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(f"code {int(codes[i, j])} at study {i}, label {names[j]!r} is not a label code; "
                             f"expected {POSITIVE} (positive), {NEGATIVE} (negative), {UNCERTAIN} (uncertain) or "
                             f"{NOT_MENTIONED} (not mentioned)")
        labelled = np.asarray(self.labelled)
        if labelled.shape != (codes.shape[0],) or labelled.dtype != bool:
            raise ValueError(f"labelled must be a bool array of shape ({codes.shape[0]},), got "
                             f"{labelled.dtype} {labelled.shape}")
        stray = ~labelled & (codes != NOT_MENTIONED).any(axis=1)
        if stray.any():
            # An unlabelled study with codes means the two arrays are out of step: refuse rather than guess.
            raise ValueError(f"study {int(np.flatnonzero(stray)[0])} is marked unlabelled but has label codes; "
                             f"an unlabelled study's codes must all be NOT_MENTIONED ({NOT_MENTIONED})")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "codes", _frozen(codes.astype(np.int8)))
        object.__setattr__(self, "labelled", _frozen(labelled))
        object.__setattr__(self, "source", str(self.source))

    @classmethod
    def from_codes(cls, codes: Any, labelled: Any = None, names: Sequence[str] = CHEXPERT_LABELS,
                   source: str = "codes") -> "StudyLabels":
        """Labels from a code matrix; ``labelled`` defaults to every study."""
        codes = np.asarray(codes)
        if labelled is None:
            labelled = np.ones(codes.shape[0] if codes.ndim else 0, dtype=bool)
        return cls(names=tuple(names), codes=codes, labelled=np.asarray(labelled, dtype=bool), source=source)

    @property
    def num_studies(self) -> int:
        """N."""
        return int(self.codes.shape[0])

    def __len__(self) -> int:
        return self.num_studies

    def binary(self, uncertain: str = DEFAULT_UNCERTAIN) -> np.ndarray:
        """Present findings, bool (N, L): positive, and uncertain when ``uncertain="positive"``."""
        _check_policy(uncertain)
        present = self.codes == POSITIVE
        return present | (self.codes == UNCERTAIN) if uncertain == "positive" else present

    def subset(self, indices: Sequence[int] | np.ndarray) -> "StudyLabels":
        """The labels of some studies, in the given order (as :meth:`RetrievalSet.subset`)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return StudyLabels(self.names, self.codes[idx], self.labelled[idx], self.source)

    def summary(self) -> dict[str, Any]:
        """Counts only (safe for reports and logs of credentialed data): labelled, unlabelled, uncertain."""
        n_labelled = int(self.labelled.sum())
        return {"source": self.source, "studies": self.num_studies, "labels": len(self.names),
                "labelled_studies": n_labelled, "unlabelled_studies": self.num_studies - n_labelled,
                "uncertain_studies": int((self.codes == UNCERTAIN).any(axis=1).sum()),
                "uncertain_policies": list(UNCERTAIN_POLICIES), "default_uncertain": DEFAULT_UNCERTAIN}


# ----------------------------------------------------------------------------------------- match rules --

@dataclass(frozen=True)
class MatchRule:
    """When two studies' labels match (on their present findings, :meth:`StudyLabels.binary`).

    ``exact``: the binary vectors over all labels are identical, i.e. the same set of present findings
    ("No Finding" is one of the 14, so a normal study matches only other normal studies). ``jaccard``:
    |A & B| / |A | B| >= ``threshold``; two studies with no present finding count as identical (1.0).
    Either way a labelled study matches itself.
    """

    kind: str = "exact"
    threshold: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "jaccard"):
            raise ValueError(f"match rule kind must be exact or jaccard, not {self.kind!r}")
        t = float(self.threshold)
        if not (math.isfinite(t) and 0 < t <= 1):
            raise ValueError(f"a Jaccard threshold must be in (0, 1], got {self.threshold!r}")
        object.__setattr__(self, "threshold", t)

    def __str__(self) -> str:
        return "exact" if self.kind == "exact" else f"jaccard>={self.threshold:g}"


_RULE_FORMS = ("exact (default: the same set of present findings over all labels)",
               "jaccard>=T or jaccard:T with 0 < T <= 1 (Jaccard similarity of the present findings >= T)")
_JACCARD = re.compile(r"jaccard\s*(?:>=|:)\s*(.*)")


def parse_match_rule(text: "str | MatchRule") -> MatchRule:
    """``exact`` | ``jaccard>=T`` | ``jaccard:T`` -> a :class:`MatchRule`, or a ValueError listing the forms."""
    if isinstance(text, MatchRule):
        return text
    s = str(text).strip().lower()
    if s == "exact":
        return MatchRule("exact")
    m = _JACCARD.fullmatch(s)
    if m:
        try:
            t = float(m.group(1))
        except ValueError:
            t = math.nan
        if math.isfinite(t) and 0 < t <= 1:
            return MatchRule("jaccard", t)
        raise ValueError(f"match rule {str(text)[:60]!r}: the Jaccard threshold must be a number in (0, 1]; "
                         f"accepted rules: {'; '.join(_RULE_FORMS)}")
    raise ValueError(f"unknown label match rule {str(text)[:60]!r}; accepted rules: {'; '.join(_RULE_FORMS)}")


class LabelMatch:
    """Relevance by labels: candidate j is relevant to a query of true study i iff both studies are
    labelled and their present findings match under ``rule`` (the ``Relevance`` protocol of
    :mod:`cxr_robust.metrics`: ``labelled`` and ``rows``)."""

    def __init__(self, labels: StudyLabels, rule: "MatchRule | str" = "exact",
                 uncertain: str = DEFAULT_UNCERTAIN) -> None:
        if not isinstance(labels, StudyLabels):
            raise TypeError(f"labels must be StudyLabels, not {type(labels).__name__}")
        self.labels = labels
        self.rule = parse_match_rule(rule)
        self.uncertain = _check_policy(uncertain)
        self.labelled: np.ndarray = labels.labelled
        present = labels.binary(uncertain)
        if self.rule.kind == "exact":
            # One class id per distinct label vector: "identical vectors" becomes one integer comparison.
            _, inverse = np.unique(present, axis=0, return_inverse=True)
            cls = np.asarray(inverse, dtype=np.int64).reshape(-1)
            cls[~self.labelled] = -1  # never equal to a labelled study's class (and masked out anyway)
            self._class = cls
        else:
            # int32: intersections by a matrix product stay exact (a float product could round).
            self._present = present.astype(np.int32)
            self._size = self._present.sum(axis=1)

    @property
    def num_studies(self) -> int:
        """N, the number of candidate studies."""
        return self.labels.num_studies

    def rows(self, study_indices: np.ndarray) -> np.ndarray:
        """Relevance, bool (len(study_indices), N): row k for a query whose true study is study_indices[k]."""
        idx = np.asarray(study_indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"study_indices must be a 1-D array of integers, got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64)
        n = self.num_studies
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"study index out of range for {n} studies")
        if self.rule.kind == "exact":
            match = self._class[idx][:, None] == self._class[None, :]
        else:
            inter = self._present[idx] @ self._present.T
            union = self._size[idx][:, None] + self._size[None, :] - inter
            # inter / union >= T without dividing; two empty sets (union 0) are identical. The tolerance
            # keeps a threshold written in decimal (1/3 ~ 0.333...) from missing an exact ratio by rounding.
            match = (union == 0) | (inter >= self.rule.threshold * union - 1e-9)
        return match & self.labelled[idx][:, None] & self.labelled[None, :]

    def describe(self) -> str:
        """One line for reports, e.g. ``identical CheXpert label vectors (uncertain counted as positive)``."""
        what = ("CheXpert" if self.labels.names == CHEXPERT_LABELS else f"{len(self.labels.names)}-label")
        how = (f"identical {what} label vectors" if self.rule.kind == "exact"
               else f"{what} label sets with Jaccard similarity >= {self.rule.threshold:g}")
        return f"{how} (uncertain counted as {self.uncertain}; studies without labels match nothing)"

    def __repr__(self) -> str:
        return f"LabelMatch({self.rule}, uncertain={self.uncertain!r}, source={self.labels.source!r})"


# --------------------------------------------------------------------------------------------- readers --

def _code_of_cell(cell: str) -> int | None:
    """The code of one cell (surrounding spaces ignored), or None when it is not a label value."""
    c = cell.strip()
    if c in _CODE_OF:
        return _CODE_OF[c]
    m = _CODE_SHAPE.fullmatch(c)  # other spellings of the same numbers: 1.00, -1.
    return None if m is None else int(m.group(2)) * (-1 if m.group(1) else 1)


def parse_label_cells(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8, bad bool) for the string cells of one label column; ``bad`` cells get NOT_MENTIONED.

    A missing value (NaN) is an empty cell.
    """
    # By distinct value: a column of 200k cells holds a handful of them, and mapping each cell is slow.
    cat = pd.Categorical(values)
    per_value = [_code_of_cell(str(c)) for c in cat.categories]
    bad_value = np.array([c is None for c in per_value] + [False], dtype=bool)  # last: NaN (code -1)
    code_value = np.array([NOT_MENTIONED if c is None else c for c in per_value] + [NOT_MENTIONED], dtype=np.int8)
    idx = np.asarray(cat.codes)
    return code_value[idx], bad_value[idx]


def find_label_file(root: str | Path, labeler: str = "chexpert") -> Path | None:
    """``root/<stem>.csv.gz`` or ``root/<stem>.csv`` of ``labeler`` (:data:`LABELERS`), or None."""
    if labeler not in LABELERS:
        raise ValueError(f"unknown labeler {labeler!r}; choose one of {', '.join(LABELERS)}")
    for suffix in (".csv.gz", ".csv"):
        p = Path(root) / (LABELERS[labeler] + suffix)
        if p.is_file():
            return p
    return None


def read_label_file(path: str | Path, study_ids: Sequence[str]) -> StudyLabels:
    """Labels of ``study_ids`` (``s`` + digits, or digits) from a MIMIC-CXR-JPG CheXpert/NegBio file.

    Studies absent from the file are unlabelled; rows of other studies are ignored. Every row of the file
    is checked (a bad cell anywhere means a damaged or altered file).
    """
    # Imported here: manifest imports this module for its label columns.
    from cxr_robust.data.manifest import RowNamer, describe_found_columns, reader_error_detail

    path = Path(path)
    fix = "re-download it from PhysioNet (MIMIC-CXR-JPG)"
    if not path.is_file():
        raise LabelFileError(f"label file {path} does not exist or is not a file")
    wanted = ["study_id", *CHEXPERT_LABELS]
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
        missing = [c for c in wanted if c not in header]
        if missing:
            # Header cells are quoted only when they are known names: a header-less file shows a data row.
            found = describe_found_columns(header, {*ID_COLUMNS, *CHEXPERT_LABELS}, wanted)
            raise LabelFileError(f"{path}: the label file lacks column(s) {missing}; expected study_id and the "
                                 f"{len(CHEXPERT_LABELS)} CheXpert labels, {found}; {fix}")
        table = pd.read_csv(path, usecols=wanted, dtype=str, na_filter=False)
    except LabelFileError:
        raise
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        # Only the type and where it stopped (some reader messages quote bytes); `from None` keeps the
        # original off the exception chain too.
        raise LabelFileError(f"{path}: cannot read the label file ({reader_error_detail(exc)}); {fix}") from None
    n = len(table)
    if n == 0:
        raise LabelFileError(f"{path}: the label file has a header but no rows; {fix}")
    rows = RowNamer(path, n)
    if _last_record_short(path, len(header)):
        # pandas fills a short row with empty cells, i.e. "not mentioned": a cut-off plain CSV would pass.
        raise LabelFileError(f"{path}: the last row ({rows([n - 1])}) has fewer fields than the header: the file "
                             f"looks cut off; {fix}")

    sid = table["study_id"].str.strip().str.removeprefix("s")
    not_id = ~sid.str.fullmatch(r"\d+")
    if not_id.any():
        raise LabelFileError(f"{path}: {int(not_id.sum())} row(s) have a study_id that is not digits "
                             f"({rows(np.flatnonzero(not_id.to_numpy()))}, column study_id; the cells are not "
                             f"shown); is the header row missing or are the columns shifted? {fix}")
    sid = sid.str.lstrip("0").replace("", "0")  # 0123 and 123 are one study (a spreadsheet may pad)
    dup = sid.duplicated(keep=False).to_numpy()
    if dup.any():
        first = sid[dup].iloc[0]
        where = rows(np.flatnonzero((sid == first).to_numpy()))
        more = int(sid[dup].nunique()) - 1
        raise LabelFileError(f"{path}: study s{first} is listed twice ({where})"
                             + (f" and {more} more studies too" if more else "")
                             + f"; the file must have one row per study: {fix}")

    codes = np.full((n, len(CHEXPERT_LABELS)), NOT_MENTIONED, dtype=np.int8)
    bad_cols: list[tuple[str, np.ndarray]] = []
    for j, name in enumerate(CHEXPERT_LABELS):
        codes[:, j], bad = parse_label_cells(table[name])
        if bad.any():
            bad_cols.append((name, np.flatnonzero(bad)))
    if bad_cols:
        name, where = bad_cols[0]
        also = (f"; columns {[c for c, _ in bad_cols[1:]]} have such cells too" if len(bad_cols) > 1 else "")
        raise LabelFileError(f"{path}: {len(where)} cell(s) of column {name!r} are not a label value "
                             f"({rows(where)}; the cells are not shown); {EXPECTED_VALUES}{also}; {fix}")

    row_of = pd.Series(np.arange(n), index=sid.to_numpy())
    keys = [_study_key(s) for s in study_ids]
    pos = row_of.reindex(keys).to_numpy()
    labelled = ~np.isnan(pos)
    out = np.full((len(keys), len(CHEXPERT_LABELS)), NOT_MENTIONED, dtype=np.int8)
    out[labelled] = codes[pos[labelled].astype(np.int64)]
    return StudyLabels(CHEXPERT_LABELS, out, labelled, source=path.name)


def _last_record_short(path: Path, n_fields: int) -> bool:
    """Whether a plain CSV's last line has fewer than ``n_fields`` fields (a truncated download).

    A gzipped file is not read here: its own end-of-stream check finds truncation (EOFError).
    """
    if path.name.lower().endswith(".gz"):
        return False
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 65536))
        tail = f.read().rstrip(b"\r\n")
    last = tail.rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace")
    fields = next(csv.reader([last]), [])
    return len(fields) < n_fields


def _study_key(study_id: str) -> str:
    """``s0123`` / ``123`` -> ``123``: how the file's study ids are keyed; other ids match nothing."""
    s = str(study_id).strip().removeprefix("s")
    return (s.lstrip("0") or "0") if s.isdigit() else f"\0{study_id}"
