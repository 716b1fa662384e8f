"""Report text never reaches an error, a log line or a warning, whatever is wrong with the data.

Every data-error path of the manifest loader (CSV and Parquet) and the MIMIC-CXR loader (split, metadata,
sectioned CSV, reports zip and tree) is driven with a canary string in the report cells, or in the cell that
goes wrong. The canary must be absent from the exception (message, ``repr`` and every chained exception, as
a traceback prints them), from every log record and every warning -- compared case-insensitively, since a
view code is upper-cased. Cases where the loader accepts the data check its ids, views and ``meta`` instead.
Each error must still say where the problem is (a line or row, a column).
"""

from __future__ import annotations

import json
import logging
import traceback
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest

from cxr_robust.data import mimic as mimic_module
from cxr_robust.data.manifest import ManifestError, load_manifest
from cxr_robust.data.mimic import MimicLayoutError, load_mimic
from cxr_robust.data.retrieval_set import RetrievalSet
from tests.fake_mimic import build_fake_mimic, read_rows, rewrite_csv, set_cell

CANARY = "CANARY_REPORT_TEXT_7f3a"
REPORT = f"Findings: heart size is normal, {CANARY} lungs are clear. Impression: no acute process."
LINES = f"FINDINGS:\n {CANARY} lungs are clear.\nIMPRESSION:\n No acute process."  # a multi-line report


# --------------------------------------------------------------------------------------------------
# Checking


def shown_by(exc: BaseException) -> str:
    """Everything an exception can print: the traceback with every chained exception, and its repr."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) + repr(exc) + repr(exc.args)


def shown_by_set(rs: RetrievalSet) -> str:
    """What a loaded set carries into results and reports besides the report texts: ids, views, meta."""
    return json.dumps({"studies": rs.study_ids, "images": rs.image_ids, "views": rs.views, "name": rs.name,
                       "paths": [str(p) for p in rs.image_paths or []], "meta": rs.meta}, default=str)


def run_case(load: Callable[[], Any], caplog: pytest.LogCaptureFixture) -> tuple[BaseException | None, str]:
    """Run ``load``; returns the data error (or None) and all the text it and the logs/warnings showed."""
    caplog.set_level(logging.DEBUG)
    err: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = load()
        except ValueError as exc:  # ManifestError, MimicLayoutError
            err, text = exc, shown_by(exc)
        else:
            text = shown_by_set(out)
    text += caplog.text + "".join(str(w.message) for w in caught)
    return err, text


def assert_no_canary(text: str) -> None:
    assert CANARY.lower() not in text.lower(), text[:3000]


# --------------------------------------------------------------------------------------------------
# Manifests (CSV and Parquet)


def _images(folder: Path, n: int) -> list[str]:
    """``n`` small non-empty image files; their paths relative to ``folder``."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    names = [f"img/{i}.png" for i in range(n)]
    for name in names:
        (folder / name).write_bytes(b"\x89PNG not decoded by the loader")
    return names


def _good_rows(folder: Path) -> pd.DataFrame:
    imgs = _images(folder, 3)
    return pd.DataFrame({"image_path": imgs, "image_id": ["i1", "i2", "i3"], "study_id": ["S1", "S1", "S2"],
                         "report": [REPORT, REPORT, f"Second study. {CANARY} small effusion."],
                         "view": ["PA", "LATERAL", "AP"]})


def _save(df: pd.DataFrame, folder: Path, fmt: str, header: bool = True) -> Path:
    path = folder / f"m.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False, header=header)
    else:
        if not header:  # what a header-less CSV becomes when read and saved: the first row names the columns
            df = pd.DataFrame(df.iloc[1:].to_numpy(), columns=[str(v) for v in df.iloc[0]])
        df.to_parquet(path, index=False)
    return path


def _no_header(folder: Path, fmt: str) -> Path:
    return _save(_good_rows(folder), folder, fmt, header=False)


def _missing_column(folder: Path, fmt: str) -> Path:
    return _save(_good_rows(folder).drop(columns="study_id"), folder, fmt)


def _report_as_column_name(folder: Path, fmt: str) -> Path:
    return _save(_good_rows(folder).rename(columns={"report": REPORT}), folder, fmt)


def _misspelled_column(folder: Path, fmt: str) -> Path:
    return _save(_good_rows(folder).rename(columns={"image_path": "Image Path", "view": REPORT}), folder, fmt)


def _swap(a: str, b: str) -> Callable[[Path, str], Path]:
    def make(folder: Path, fmt: str) -> Path:
        df = _good_rows(folder)
        df[[a, b]] = df[[b, a]].to_numpy()
        return _save(df, folder, fmt)
    return make


def _report_in(column: str, value: str = REPORT) -> Callable[[Path, str], Path]:
    def make(folder: Path, fmt: str) -> Path:
        df = _good_rows(folder)
        df[column] = df[column].astype(object)
        df.loc[1, column] = value
        return _save(df, folder, fmt)
    return make


def _missing_study_id(folder: Path, fmt: str) -> Path:
    df = _good_rows(folder).astype(object)
    df.loc[1, "study_id"] = None  # NaN in Parquet, an empty field in CSV
    return _save(df, folder, fmt)


def _empty_report(folder: Path, fmt: str) -> Path:
    df = _good_rows(folder)
    df.loc[2, "report"] = "   "
    return _save(df, folder, fmt)


def _disagreeing_reports(folder: Path, fmt: str) -> Path:
    df = _good_rows(folder)
    df.loc[1, "report"] = f"Another text. {CANARY}."
    return _save(df, folder, fmt)


def _duplicate_image(folder: Path, fmt: str) -> Path:
    df = _good_rows(folder)
    df.loc[1, "image_id"] = df.loc[0, "image_id"]
    return _save(df, folder, fmt)


def _missing_image_file(folder: Path, fmt: str) -> Path:
    path = _save(_good_rows(folder), folder, fmt)
    (folder / "img" / "2.png").unlink()
    return path


def _unparseable_csv(folder: Path, fmt: str) -> Path:
    path = _save(_good_rows(folder), folder, fmt)
    path.write_text(path.read_text() + f'img/9.png,S9,"{CANARY} unterminated quote\n')
    return path


def _not_utf8_csv(folder: Path, fmt: str) -> Path:
    path = _save(_good_rows(folder), folder, fmt)
    path.write_bytes(path.read_bytes().replace(CANARY.encode(), CANARY.encode() + b" \xff\xfe", 1))
    return path


# case: (builder, formats, words every error must hold; None: the manifest must load)
MANIFEST_CASES: dict[str, tuple[Callable[[Path, str], Path], tuple[str, ...], tuple[str, ...] | None]] = {
    "no_header_row": (_no_header, ("csv", "parquet"), ("lacks column(s)", "the first row looks like data")),
    "missing_column": (_missing_column, ("csv", "parquet"), ("lacks column(s) ['study_id']",)),
    "report_text_as_column_name": (_report_as_column_name, ("csv", "parquet"), ("lacks column(s)",)),
    "misspelled_column": (_misspelled_column, ("csv", "parquet"), ("resembles 'image_path'",)),
    # The paths now in the report column differ within study S1: refused as disagreeing reports.
    "report_in_image_path": (_swap("image_path", "report"), ("csv", "parquet"), ("carry different report text",)),
    "report_in_study_id": (_swap("study_id", "report"), ("csv", "parquet"), ("column study_id", "not hold an id")),
    "report_in_image_id": (_report_in("image_id"), ("csv", "parquet"), ("column image_id", "not hold an id")),
    "report_ending_like_a_file_name": (_report_in("image_path", REPORT + ".png"), ("csv", "parquet"),
                                       ("1 of 3 image files are missing", "column image_path")),
    "report_in_view": (_report_in("view"), ("csv", "parquet"), ("column view", "not hold a view label")),
    "multiline_report_in_image_path": (_report_in("image_path", LINES), ("csv", "parquet"),
                                       ("column image_path", "line break")),
    "empty_study_id": (_missing_study_id, ("csv", "parquet"), ("empty study_id on",)),
    "empty_report": (_empty_report, ("csv", "parquet"), ("empty or whitespace-only report",)),
    "disagreeing_reports": (_disagreeing_reports, ("csv", "parquet"), ("carry different report text",)),
    "duplicate_image": (_duplicate_image, ("csv", "parquet"), ("listed twice",)),
    "missing_image_file": (_missing_image_file, ("csv", "parquet"), ("1 of 3 image files are missing",)),
    "unparseable_csv": (_unparseable_csv, ("csv",), ("cannot be read",)),
    "not_utf8_csv": (_not_utf8_csv, ("csv",), ("cannot be read", "UnicodeDecodeError")),
}
MANIFEST_PARAMS = [pytest.param(case, fmt, id=f"{case}-{fmt}") for case, (_, fmts, _) in MANIFEST_CASES.items()
                   for fmt in fmts]


@pytest.mark.parametrize("case, fmt", MANIFEST_PARAMS)
def test_manifest_errors_carry_no_report_text(case: str, fmt: str, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    build, _, words = MANIFEST_CASES[case]
    path = build(tmp_path, fmt)
    assert CANARY.encode() in path.read_bytes() or fmt == "parquet"  # the canary is really in the file
    err, text = run_case(lambda: load_manifest(path), caplog)
    assert_no_canary(text)
    assert words is not None and isinstance(err, ManifestError), f"{case} should be refused: {text[:500]}"
    msg = str(err)
    assert str(path) in msg and "\n" not in msg  # one line, naming the file
    for w in words:
        assert w in msg, msg
    if case not in ("missing_column", "report_text_as_column_name", "misspelled_column", "unparseable_csv",
                    "not_utf8_csv", "no_header_row"):
        assert "line(s) [" in msg if fmt == "csv" else "row(s) [" in msg  # where, as a line or row number


def test_errors_still_quote_cells_that_are_plainly_ids(tmp_path: Path) -> None:
    # Id-shaped cells are shown (they are what the user must look for); only text-like cells are hidden.
    path = _duplicate_image(tmp_path, "csv")
    want = r"image ids listed twice: \['i1'\] \(line\(s\) \[2, 3\], column image_id\)"
    with pytest.raises(ManifestError, match=want):
        load_manifest(path)


def test_line_numbers_count_the_lines_of_multi_line_reports(tmp_path: Path) -> None:
    df = _good_rows(tmp_path)
    df["report"] = [LINES, LINES, LINES]  # every record spans four lines
    df.loc[2, "study_id"] = " "
    df.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError, match=r"empty study_id on line\(s\) \[10\]"):
        load_manifest(tmp_path / "m.csv")


def test_an_uncredentialed_manifest_may_show_its_header(tmp_path: Path) -> None:
    path = _missing_column(tmp_path, "csv")
    with pytest.raises(ManifestError, match=r"found \['image_path', 'image_id', 'report', 'view'\]"):
        load_manifest(path, credentialed=False)


def test_check_data_on_a_header_less_manifest_prints_no_report_text(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from cxr_robust.cli import main

    path = _no_header(tmp_path, "csv")
    code = main(["check-data", "--no-pyproject", "--project", str(tmp_path), "--manifest", str(path)])
    out = capsys.readouterr()
    assert code == 2
    assert_no_canary(out.out + out.err)
    assert "the first row looks like data, not a header" in out.err


# --------------------------------------------------------------------------------------------------
# MIMIC-CXR tables and reports


SPLIT = "mimic-cxr-2.0.0-split.csv"
METADATA = "mimic-cxr-2.0.0-metadata.csv"
SECTIONED = "mimic_cxr_sectioned.csv.gz"


def _drop_header(path: Path, first_row: int = 0, column: str | None = None) -> None:
    records = read_rows(path)
    if column is not None:  # the canary in the row that will be read as the header
        records[1 + first_row][records[0].index(column)] = REPORT
    rewrite_csv(path, records[1:])


def _sectioned_no_header(root: Path) -> None:
    _drop_header(root / SECTIONED, column="impression")


def _sectioned_swapped(root: Path) -> None:
    records = read_rows(root / SECTIONED)
    h = records[0]
    s, i = h.index("study"), h.index("impression")
    for r in records[1:]:
        r[s], r[i] = f"{r[i]} {CANARY}", r[s]
    rewrite_csv(root / SECTIONED, records)


def _sectioned_report_as_column_name(root: Path) -> None:
    records = read_rows(root / SECTIONED)
    records[0][records[0].index("findings")] = REPORT
    rewrite_csv(root / SECTIONED, records)


def _sectioned_canary_report(root: Path) -> None:  # a study with text but no findings: counted, not shown
    set_cell(root / SECTIONED, 0, "findings", "")
    set_cell(root / SECTIONED, 0, "impression", REPORT)


def _cell(name: str, column: str, row: int = 0) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        set_cell(root / name, row, column, REPORT if column != "dicom_id" else CANARY)
    return make


def _table_no_header(name: str, column: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        _drop_header(root / name, column=column)
    return make


def _zip(root: Path, member_bytes: Callable[[str, bytes], bytes], stored: bool = False) -> None:
    """Rewrite the reports zip, passing every member through ``member_bytes(name, data)``."""
    path = root / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(path) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as zf:
        for n, data in members:
            zf.writestr(n, member_bytes(n, data))


def _zip_not_utf8(root: Path) -> None:
    _zip(root, lambda n, d: f" FINDINGS: {CANARY} clear.\n".encode() + b"\xff\xfe" if "s50000002" in n else d)


def _zip_damaged_member(root: Path) -> None:
    marker = f"IMPRESSION: {CANARY} marker"
    _zip(root, lambda n, d: marker.encode() if "s50000002" in n else d, stored=True)
    path = root / "mimic-cxr-reports.zip"
    data = path.read_bytes()
    at = data.index(b"marker")  # damage the stored text: its CRC no longer matches
    path.write_bytes(data[:at] + b"MARKER" + data[at + 6:])


def _zip_not_a_zip(root: Path) -> None:
    (root / "mimic-cxr-reports.zip").write_text(REPORT * 20)


def _sectioner_fails(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = mimic_module.extract_report

    def broken(text: str) -> Any:
        if CANARY in text:
            raise ValueError(f"cannot section {text!r}")  # a sectioner bug whose message quotes the report
        return real(text)
    _zip(root, lambda n, d: REPORT.encode() if "s50000002" in n else d)
    monkeypatch.setattr(mimic_module, "extract_report", broken)


def _tree_not_utf8(root: Path) -> None:
    path = next((root / "files").rglob("s50000002.txt"))
    path.write_bytes(REPORT.encode() + b"\xff")


def _tree_report_is_a_folder(root: Path) -> None:
    path = next((root / "files").rglob("s50000002.txt"))
    path.unlink()
    path.mkdir()
    (path / "note.txt").write_text(REPORT)


# case: (reports written, builder, words every error must hold; None: the set must load)
MIMIC_CASES: dict[str, tuple[str, Callable[..., None], tuple[str, ...] | None]] = {
    "sectioned_no_header_row": ("sectioned", _sectioned_no_header, ("lacks column(s)", "looks like data")),
    "sectioned_report_in_study": ("sectioned", _sectioned_swapped, ("non-numeric study", "line(s) [")),
    "sectioned_report_as_column_name": ("sectioned", _sectioned_report_as_column_name,
                                        ("lacks column(s) ['findings']",)),
    "sectioned_report_without_findings": ("sectioned", _sectioned_canary_report, None),
    "split_no_header_row": ("zip", _table_no_header(SPLIT, "split"), ("lacks column(s)", "looks like data")),
    "split_text_in_split": ("zip", _cell(SPLIT, "split"), ("unexpected split values on line(s) [2]",)),
    "split_text_in_study_id": ("zip", _cell(SPLIT, "study_id"), ("non-numeric study_id", "line(s) [2]")),
    "split_text_in_subject_id": ("zip", _cell(SPLIT, "subject_id"), ("non-numeric subject_id", "line(s) [2]")),
    "split_text_in_dicom_id": ("zip", _cell(SPLIT, "dicom_id"), ("not a DICOM id", "line(s) [2]")),
    "metadata_no_header_row": ("zip", _table_no_header(METADATA, "ViewPosition"), ("lacks column(s)",)),
    "metadata_text_in_view": ("zip", _cell(METADATA, "ViewPosition"), None),
    "zip_member_not_utf8": ("zip", _zip_not_utf8, ("s50000002", "UnicodeDecodeError at byte")),
    "zip_member_damaged": ("zip", _zip_damaged_member, ("s50000002", "cannot be read")),
    "zip_not_a_zip": ("zip", _zip_not_a_zip, ("not a readable zip archive",)),
    "report_cannot_be_sectioned": ("zip", _sectioner_fails, ("s50000002", "while sectioning")),
    "tree_report_not_utf8": ("tree", _tree_not_utf8, ("s50000002", "UnicodeDecodeError at byte")),
    "tree_report_is_a_folder": ("tree", _tree_report_is_a_folder, ("s50000002", "cannot be read")),
}


@pytest.mark.parametrize("case", list(MIMIC_CASES))
def test_mimic_errors_carry_no_report_text(case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    reports, build, words = MIMIC_CASES[case]
    fake = build_fake_mimic(tmp_path / "mimic", gz=False, reports=(reports,))
    if build is _sectioner_fails:
        build(fake.root, monkeypatch)
    else:
        build(fake.root)
    err, text = run_case(lambda: load_mimic(fake.root), caplog)
    assert_no_canary(text)
    if words is None:
        assert err is None, text[:500]
        return
    assert isinstance(err, MimicLayoutError), f"{case} should be refused: {text[:500]}"
    assert "\n" not in str(err)
    for w in words:
        assert w in str(err), str(err)


def test_an_unknown_view_position_counts_as_unknown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = build_fake_mimic(tmp_path / "mimic", gz=False, reports=("zip",))
    set_cell(fake.root / METADATA, 0, "ViewPosition", REPORT)  # the first image of s50000001 (validate, kept)
    rs = load_mimic(fake.root)
    assert rs.meta["unrecognised_view_positions"] == 1
    assert rs.views[rs.image_ids.index(fake.study("s50000001").dicoms[0])] == "UNKNOWN"
    assert "1 images of split 'validate' have a ViewPosition outside the official list" in caplog.text


def test_on_bad_report_skip_counts_a_report_that_cannot_be_sectioned(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fake = build_fake_mimic(tmp_path / "mimic", gz=False, reports=("zip",))
    _sectioner_fails(fake.root, monkeypatch)
    rs = load_mimic(fake.root, on_bad_report="skip")
    assert rs.meta["excluded_studies"]["unreadable_report"] == 1 and "s50000002" not in rs.study_ids
