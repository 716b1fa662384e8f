"""A fake MIMIC-CXR-JPG tree with the real layout and known filter counts (no real MIMIC data, ever).

``build_fake_mimic(tmp_path)`` writes ``files/pXX/pN/sN/<dicom>.jpg`` (tiny JPEGs), the split and metadata
CSVs (real column layout, gzipped or not), and the reports as ``mimic-cxr-reports.zip``, an extracted
``files/…/sN.txt`` tree and the official ``mimic_cxr_sectioned.csv.gz``. Every report text is invented.
The returned :class:`FakeMimicExpectation` knows what each filter must yield. ``write_label_file`` adds a
CheXpert/NegBio label file (invented labels, optionally malformed).
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

METADATA_HEADER = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                   "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                   "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
SPLIT_HEADER = ["dicom_id", "study_id", "subject_id", "split"]
FRONTAL, LATERAL = {"AP", "PA"}, {"LATERAL", "LL"}

F1 = "Heart size is normal. The lungs are clear. No pleural effusion."
I1 = "No acute cardiopulmonary process."


def mimic_text(*sections: tuple[str, str], addendum: str | None = None, title: bool = True) -> str:
    """A report in MIMIC-CXR's shape: every line starts with a space, blank lines are ' '."""
    lines = []
    if addendum is not None:
        lines += ["                                 FINAL ADDENDUM", f" ADDENDUM:  {addendum}", " ",
                  " " + "_" * 78]
    if title:
        lines += ["                                 FINAL REPORT"]
    for header, body in sections:
        lines.append(f" {header}:")
        lines += [f" {ln}" for ln in body.split("\n")]
        lines += [" "]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class FakeStudy:
    """One fake study: ids, split, ViewPosition of each image, report text and its expected sections."""

    subject: str
    study: str
    split: str
    views: tuple[str, ...]
    text: str | None  # None: the study has no report file
    findings: str = ""
    impression: str = ""
    last_paragraph: str = ""
    comparison: str = ""

    @property
    def dicoms(self) -> list[str]:
        return [f"{self.study[1:]}-{j:08x}-0000aaaa-bbbbcccc-dddd{j:04d}" for j in range(len(self.views))]

    def image_path(self, j: int) -> str:
        return f"files/p{self.subject[:2]}/p{self.subject}/{self.study}/{self.dicoms[j]}.jpg"

    @property
    def report_path(self) -> str:
        return f"files/p{self.subject[:2]}/p{self.subject}/{self.study}.txt"


def default_studies() -> list[FakeStudy]:
    """11 validate studies (5 kept, 9 images), 3 train, 2 test; every exclusion reason appears."""
    S = FakeStudy
    return [
        S("10000001", "s50000001", "validate", ("PA", "LATERAL"),
          mimic_text(("EXAMINATION", "CHEST (PA AND LAT)"), ("INDICATION", "___ with cough."),
                     ("COMPARISON", "None."), ("FINDINGS", "\n" + F1), ("IMPRESSION", "\n" + I1)),
          F1, I1, comparison="None."),
        S("10000001", "s50000002", "validate", ("AP",),
          mimic_text(("FINDINGS", "Lines and tubes are unchanged.\nMild edema."), ("IMPRESSION", "Mild edema.")),
          "Lines and tubes are unchanged. Mild edema.", "Mild edema."),
        # Frequency-map names: clinical history, comparisons, conclusion -> impression.
        S("11000003", "s50000003", "validate", ("PA", "LL", ""),
          mimic_text(("CLINICAL HISTORY", "Fever."), ("COMPARISONS", "___"), ("FINDINGS", "Small left effusion."),
                     ("CONCLUSION", "Small left pleural effusion.")),
          "Small left effusion.", "Small left pleural effusion.", comparison="___"),
        # Combined header -> impression only (official): excluded for missing findings.
        S("12000004", "s50000004", "validate", ("PA", "LATERAL"),
          mimic_text(("INDICATION", "Chest pain."), ("FINDINGS AND IMPRESSION", "No pneumothorax.")),
          "", "No pneumothorax."),
        S("13000005", "s50000005", "validate", ("AP",),
          mimic_text(("INDICATION", "Line placement."), ("IMPRESSION", "Tip in the low SVC.")),
          "", "Tip in the low SVC."),
        S("14000006", "s50000006", "validate", ("PA",),
          mimic_text(("FINDINGS", "Hyperinflated lungs."),), "Hyperinflated lungs.", ""),
        # No header at all: the last paragraph is split off, no findings/impression.
        S("15000007", "s50000007", "validate", ("PA",),
          " CHEST RADIOGRAPH\n \n Stable cardiomegaly.\n No edema.\n", "", "",
          last_paragraph="Stable cardiomegaly. No edema."),
        S("16000008", "s50000008", "validate", ("PA", "LATERAL"), None),
        # Addendum at the top, separated by underscores.
        S("17000009", "s50000009", "validate", ("AP", "SWIMMERS"),
          mimic_text(("FINDINGS", "Right basilar opacity."), ("IMPRESSION", "Possible pneumonia."),
                     addendum="Findings were called to Dr. ___."),
          "Right basilar opacity.", "Possible pneumonia."),
        # View-phrase header -> findings, a later empty FINDINGS is dropped, the last IMPRESSION wins.
        S("18000010", "s50000010", "validate", ("LATERAL",),
          mimic_text(("PA AND LATERAL VIEWS OF THE CHEST", "Clips in the right upper quadrant."),
                     ("IMPRESSION", "Draft wording."), ("FINDINGS", ""), ("IMPRESSION", "No acute process.")),
          "Clips in the right upper quadrant.", "No acute process."),
        # An empty IMPRESSION section: excluded for missing impression.
        S("19000011", "s50000011", "validate", ("AP", "PA"),
          mimic_text(("FINDINGS", "Low lung volumes."), ("IMPRESSION", "")), "Low lung volumes.", ""),
        S("10000001", "s51000001", "train", ("PA", "LATERAL"),
          mimic_text(("FINDINGS", "Clear lungs."), ("IMPRESSION", "Normal.")), "Clear lungs.", "Normal."),
        S("10000021", "s51000002", "train", ("AP",),
          mimic_text(("FINDINGS", "Small effusions."), ("IMPRESSION", "Effusions.")), "Small effusions.",
          "Effusions."),
        S("10000022", "s51000003", "train", ("PA",),
          mimic_text(("IMPRESSION", "Unremarkable."),), "", "Unremarkable."),
        S("12000031", "s52000001", "test", ("PA", "LATERAL", "LL"),
          mimic_text(("FINDINGS", "Emphysema."), ("IMPRESSION", "COPD.")), "Emphysema.", "COPD."),
        S("12000032", "s52000002", "test", ("AP",), None),
    ]


@dataclass(frozen=True)
class FakeMimicExpectation:
    """The fake tree's root, its studies, and the counts every filter must give (computed plainly)."""

    root: Path
    studies: tuple[FakeStudy, ...]
    zip_path: Path | None
    sectioned_path: Path | None

    def study(self, study_id: str) -> FakeStudy:
        return next(s for s in self.studies if s.study == study_id)

    def expected(self, split: str = "validate", views: str = "all") -> dict:
        """Kept studies/images, images per view, and exclusions by reason (studies and images)."""
        allowed = {"all": None, "frontal": FRONTAL, "lateral": LATERAL, "pa": {"PA"}, "ap": {"AP"}}[views.lower()]
        ex_s: Counter[str] = Counter()
        ex_i: Counter[str] = Counter()
        kept: dict[str, list[str]] = {}
        for s in self.studies:
            vs = [v or "UNKNOWN" for v in s.views]
            reason = ("not_in_split" if s.split != split else "missing_report" if s.text is None
                      else "missing_findings" if not s.findings else "missing_impression" if not s.impression
                      else "")
            if reason:
                ex_s[reason] += 1
                ex_i[reason] += len(vs)
                continue
            ok = [v for v in vs if allowed is None or v in allowed]
            ex_i["view_filter"] += len(vs) - len(ok)
            if ok:
                kept[s.study] = ok
            else:
                ex_s["no_images_left"] += 1
        views_kept = Counter(v for vs in kept.values() for v in vs)
        return {"studies": len(kept), "images": sum(views_kept.values()), "views": dict(sorted(views_kept.items())),
                "study_ids": sorted(kept), "excluded_studies": dict(ex_s), "excluded_images": dict(ex_i)}


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def _tiny_jpeg(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 12), color=seed % 256).save(buf, format="JPEG")
    return buf.getvalue()


def build_fake_mimic(root: Path, studies: list[FakeStudy] | None = None, *, gz: bool = True,
                     reports: tuple[str, ...] = ("zip", "tree", "sectioned"), zip_prefix: str = "",
                     version: str = "2.0.0", labels: str | None = None) -> FakeMimicExpectation:
    """Write a fake MIMIC-CXR-JPG tree under ``root`` and return what loading it must yield.

    ``reports`` picks the report forms written (``zip``, ``tree`` = ``.txt`` beside the study folders,
    ``sectioned`` = the official sectioned CSV); ``zip_prefix`` puts the zip's ``files/`` under a folder;
    ``version="2.1.0"`` adds the 2.1.0-only labelled test-set file; ``labels`` (``chexpert``/``negbio``)
    writes that label file with :func:`fake_label_cells` for every study (default: no label file).
    """
    studies = default_studies() if studies is None else studies
    root.mkdir(parents=True, exist_ok=True)
    (root / "files").mkdir(exist_ok=True)
    ext = ".csv.gz" if gz else ".csv"
    split_rows, meta_rows = [], []
    n = 0
    for s in studies:
        for j, (dicom, view) in enumerate(zip(s.dicoms, s.views)):
            p = root / s.image_path(j)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(_tiny_jpeg(n))
            n += 1
            split_rows.append([dicom, s.study[1:], s.subject, s.split])
            meta_rows.append([dicom, s.subject, s.study[1:], "CHEST (PA AND LAT)", view, "12", "16", "21800506",
                              "123456.789", "Chest 2 Views", view.lower(), "Erect" if j % 2 else ""])
    _write_csv(root / f"mimic-cxr-2.0.0-split{ext}", SPLIT_HEADER, split_rows)
    _write_csv(root / f"mimic-cxr-2.0.0-metadata{ext}", METADATA_HEADER, meta_rows)
    if version == "2.1.0":
        _write_csv(root / "mimic-cxr-2.1.0-test-set-labeled.csv", ["study_id", "No Finding"], [["52000001", "1.0"]])
    with_text = [s for s in studies if s.text is not None]
    zip_path = sectioned = None
    if "zip" in reports:
        zip_path = root / "mimic-cxr-reports.zip"
        with zipfile.ZipFile(zip_path, "w") as zf:
            for s in with_text:
                zf.writestr(zip_prefix + s.report_path, s.text)
    if "tree" in reports:
        for s in with_text:
            (root / s.report_path).write_text(s.text)
    if "sectioned" in reports:
        sectioned = root / "mimic_cxr_sectioned.csv.gz"
        _write_csv(sectioned, ["study", "impression", "findings", "last_paragraph", "comparison"],
                   [[s.study, s.impression, s.findings, s.last_paragraph, s.comparison] for s in with_text])
    if labels is not None:
        write_label_file(root, studies, labeler=labels, gz=gz)
    return FakeMimicExpectation(root=root, studies=tuple(studies), zip_path=zip_path, sectioned_path=sectioned)


# ------------------------------------------------------------------------------------------ label files --

LABEL_NAMES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
               "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
               "Pneumothorax", "Support Devices")
"""The 14 label columns of MIMIC-CXR-JPG's label files, written out here (not imported) so a reordering in
the package is caught by the tests."""
LABEL_HEADER = ["subject_id", "study_id", *LABEL_NAMES]

# Invented label patterns, cycled over the studies: "No Finding" alone, uncertain and negative mentions,
# two positives, nothing mentioned at all (a row of empty cells), and the same set as the third.
_LABEL_PATTERNS: list[dict[str, str]] = [
    {"No Finding": "1.0"},
    {"Edema": "1.0", "Pleural Effusion": "-1.0", "Pneumonia": "0.0"},
    {"Edema": "1.0", "Pleural Effusion": "1.0"},
    {},
    {"Edema": "1.0", "Pleural Effusion": "1.0", "Cardiomegaly": "0.0", "Support Devices": ""},
    {"Cardiomegaly": "1.0", "Support Devices": "1.0", "Lung Opacity": "-1.0"},
]


def fake_label_cells(studies: Iterable[FakeStudy]) -> dict[str, dict[str, str]]:
    """Study id -> {label: cell} for ``studies`` (cells as the files write them; unlisted labels empty)."""
    return {s.study: dict(_LABEL_PATTERNS[j % len(_LABEL_PATTERNS)]) for j, s in enumerate(studies)}


def write_label_file(root: Path, studies: Iterable[FakeStudy], *, labeler: str = "chexpert", gz: bool = True,
                     cells: Mapping[str, Mapping[str, str]] | None = None, omit: Iterable[str] = (),
                     drop_columns: Iterable[str] = (), duplicate: str | None = None, header: bool = True,
                     shuffle_columns: bool = False, truncate: int | None = None) -> Path:
    """Write ``root/mimic-cxr-2.0.0-<labeler>.csv(.gz)`` for ``studies`` and return its path.

    ``cells`` (default :func:`fake_label_cells`) gives each study's non-empty cells; a study of ``omit`` gets
    no row. Knobs that break the file: ``drop_columns`` leaves columns out, ``duplicate`` lists that study a
    second time, ``header=False`` drops the header row, ``truncate`` keeps only that many bytes of the
    written file (a cut-off download). ``shuffle_columns`` reverses the label columns' order (still valid).
    The study_id column holds digits, as in the real file.
    """
    studies = list(studies)
    cells = fake_label_cells(studies) if cells is None else cells
    names = list(reversed(LABEL_NAMES)) if shuffle_columns else list(LABEL_NAMES)
    cols = [c for c in ["subject_id", "study_id", *names] if c not in set(drop_columns)]
    skip = set(omit)
    rows = []
    for s in studies:
        if s.study in skip:
            continue
        full = {"subject_id": s.subject, "study_id": s.study[1:], **{n: "" for n in LABEL_NAMES},
                **cells.get(s.study, {})}
        rows.append([full[c] for c in cols])
        if s.study == duplicate:
            rows.append(list(rows[-1]))
    path = root / f"mimic-cxr-2.0.0-{labeler}.csv{'.gz' if gz else ''}"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(cols)
    w.writerows(rows)
    data = buf.getvalue().encode()
    data = gzip.compress(data) if gz else data
    path.write_bytes(data if truncate is None else data[:truncate])
    return path


def read_rows(path: Path) -> list[list[str]]:
    """Every record of a (gzipped or plain) CSV, header included, as lists of strings."""
    data = path.read_bytes()
    text = (gzip.decompress(data) if path.name.endswith(".gz") else data).decode()
    return [r for r in csv.reader(io.StringIO(text, newline=""))]


def rewrite_csv(path: Path, records: list[list[str]]) -> None:
    """Write ``records`` (the header is simply the first one, or absent) to ``path``, gzipped if ``.gz``."""
    _write_csv(path, records[0], records[1:])


def set_cell(path: Path, row: int, column: str, value: str) -> None:
    """Set data row ``row`` (0-based, after the header) of ``column`` in the CSV at ``path``."""
    records = read_rows(path)
    records[1 + row][records[0].index(column)] = value
    rewrite_csv(path, records)


_RETRIEVAL_FINDINGS = ["Heart size is normal.", "Mild cardiomegaly.", "Small left pleural effusion.",
                       "Right basilar atelectasis.", "Lines and tubes are unchanged.", "Hyperinflated lungs."]
_RETRIEVAL_IMPRESSIONS = ["No acute process.", "Stable appearance.", "Possible early pneumonia.",
                          "Interval improvement.", "Mild pulmonary edema."]


def retrieval_studies(n: int) -> list[FakeStudy]:
    """``n`` validate studies (at most 30) that all pass the evaluation filter, one PA image each.

    Every report has a one-line FINDINGS and IMPRESSION and no two reports are equal, so the set is a small
    retrieval benchmark (N = M = ``n``) for gate runs on a fake MIMIC-CXR tree.
    """
    combos = [(f, i) for i in _RETRIEVAL_IMPRESSIONS for f in _RETRIEVAL_FINDINGS]
    if not 1 <= n <= len(combos):
        raise ValueError(f"n must be in 1..{len(combos)}, got {n}")
    return [FakeStudy(f"{10000200 + j}", f"s{53000000 + j}", "validate", ("PA",),
                      mimic_text(("FINDINGS", f), ("IMPRESSION", i)), f, i)
            for j, (f, i) in enumerate(combos[:n])]


def write_pattern_images(exp: FakeMimicExpectation, size: int = 64, seed: int = 0) -> list[Path]:
    """Overwrite every image of ``exp`` with a distinct blocky gray pattern (8x8 random cells upscaled to
    ``size``), so images differ in content and not only in gray level; returns the paths in study order."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for s in exp.studies:
        for j in range(len(s.views)):
            cells = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L")
            path = exp.root / s.image_path(j)
            cells.resize((size, size), Image.BILINEAR).save(path, format="JPEG", quality=95)
            paths.append(path)
    return paths
