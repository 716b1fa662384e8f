"""load_manifest: CSV/Parquet manifests for non-MIMIC data, text columns, policies and bad input."""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from cxr_robust.data.manifest import ManifestError, load_manifest
from cxr_robust.data.text_policy import TextPolicy


def write(tmp_path: Path, rows: list[dict], name: str = "manifest.csv", images: bool = True) -> Path:
    """A manifest CSV in ``tmp_path`` and (by default) an empty file for every image it lists."""
    df = pd.DataFrame(rows)
    if images:
        for p in df["image_path"]:
            full = Path(p) if Path(p).is_absolute() else tmp_path / p
            full.parent.mkdir(parents=True, exist_ok=True)
            full.write_bytes(b"")
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


REPORT_ROWS = [
    {"image_path": "img/a1.png", "study_id": "A", "report": "Heart normal.  Lungs clear.", "view": "PA"},
    {"image_path": "img/a2.png", "study_id": "A", "report": "Heart normal. Lungs clear.", "view": "LATERAL"},
    {"image_path": "img/b1.png", "study_id": "B", "report": "Small effusion.", "view": ""},
]


def test_report_column_goes_to_impression_and_every_policy_gives_the_report(tmp_path: Path) -> None:
    rs = load_manifest(write(tmp_path, REPORT_ROWS))
    assert rs.study_ids == ["A", "B"] and rs.image_ids == ["img/a1.png", "img/a2.png", "img/b1.png"]
    assert rs.image_study.tolist() == [0, 0, 1]
    assert rs.views == ["PA", "LATERAL", "UNKNOWN"]
    assert rs.findings == ["", ""] and rs.impressions == ["Heart normal. Lungs clear.", "Small effusion."]
    for policy in TextPolicy:
        assert rs.texts(policy) == ["Heart normal. Lungs clear.", "Small effusion."], policy
    assert rs.credentialed  # unknown data is sensitive by default
    assert rs.image_paths[0] == tmp_path / "img" / "a1.png"
    assert rs.meta["text_columns"] == "report" and rs.meta["report_column_maps_to"] == "impression"
    assert rs.name == "manifest"


def test_findings_impression_columns_ids_and_absolute_paths(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    abs_img = tmp_path / "elsewhere" / "x.jpg"
    rows = [{"image_path": str(abs_img), "study_id": "s1", "findings": "f1", "impression": "i1", "image_id": "x"},
            {"image_path": "y.jpg", "study_id": "s2", "findings": "f2", "impression": "", "image_id": "y"}]
    caplog.set_level(logging.INFO)
    rs = load_manifest(write(tmp_path, rows, name="m.csv"), credentialed=False, name="toy")
    assert (rs.name, rs.credentialed, rs.image_ids) == ("toy", False, ["x", "y"])
    assert rs.image_paths == [abs_img, tmp_path / "y.jpg"]
    assert rs.texts("findings+impression") == ["f1 i1", "f2"]
    assert rs.texts("impression") == ["i1", ""]
    assert rs.meta["studies_without_impression"] == 1
    assert "1 studies have no impression" in caplog.text


def test_only_one_section_column(tmp_path: Path) -> None:
    rs = load_manifest(write(tmp_path, [{"image_path": "a.png", "study_id": "s", "findings": "f"}]))
    assert (rs.findings, rs.impressions) == (["f"], [""])


@pytest.mark.parametrize("drop, missing", [("image_path", "image_path"), ("study_id", "study_id"),
                                           ("report", "report (or findings/impression)")])
def test_missing_columns_are_named(tmp_path: Path, drop: str, missing: str) -> None:
    rows = [{k: v for k, v in r.items() if k != drop} for r in REPORT_ROWS]
    path = write(tmp_path, rows, images=False)
    with pytest.raises(ManifestError, match=re.escape(f"manifest {path} lacks column(s) ['{missing}']")):
        load_manifest(path)


def test_report_and_sections_together_are_ambiguous(tmp_path: Path) -> None:
    rows = [{**REPORT_ROWS[0], "findings": "f"}]
    with pytest.raises(ManifestError, match="both `report` and"):
        load_manifest(write(tmp_path, rows))


def test_empty_reports_error_or_skip(tmp_path: Path) -> None:
    rows = REPORT_ROWS + [{"image_path": "img/c1.png", "study_id": "C", "report": "   "},
                          {"image_path": "img/d1.png", "study_id": "D", "report": ""}]
    path = write(tmp_path, rows)
    with pytest.raises(ManifestError, match=r"study \['C', 'D'\] has an empty or whitespace-only report"):
        load_manifest(path)
    rs = load_manifest(path, on_empty_report="skip")
    assert rs.study_ids == ["A", "B"]
    assert rs.meta["excluded_studies"]["empty_report"] == 2 and rs.meta["excluded_images"]["empty_report"] == 2


def test_rows_of_a_study_must_agree(tmp_path: Path) -> None:
    rows = [dict(REPORT_ROWS[0]), {**REPORT_ROWS[1], "report": "Something else."}, REPORT_ROWS[2]]
    with pytest.raises(ManifestError, match=r"rows of study \['A'\] carry different report text"):
        load_manifest(write(tmp_path, rows))


def test_missing_images_error_or_skip(tmp_path: Path) -> None:
    path = write(tmp_path, REPORT_ROWS)
    (tmp_path / "img" / "b1.png").unlink()
    with pytest.raises(ManifestError, match="1 of 3 image files are missing") as err:
        load_manifest(path)
    assert str(tmp_path / "img" / "b1.png") in str(err.value)
    rs = load_manifest(path, on_bad_image="skip")
    assert rs.study_ids == ["A"] and rs.num_images == 2
    assert rs.meta["excluded_images"]["missing_image"] == 1 and rs.meta["excluded_studies"]["no_images_left"] == 1


def test_duplicate_and_empty_ids(tmp_path: Path) -> None:
    rows = [REPORT_ROWS[0], dict(REPORT_ROWS[0])]
    with pytest.raises(ManifestError, match="image ids listed twice"):
        load_manifest(write(tmp_path, rows))
    rows = [{**REPORT_ROWS[0], "study_id": " "}]
    with pytest.raises(ManifestError, match=r"empty study_id on line\(s\) \[2\]"):
        load_manifest(write(tmp_path, rows))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope.csv")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(ManifestError, match="unsupported file type"):
        load_manifest(tmp_path / "m.json")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match="cannot be read"):
        load_manifest(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("image_path,study_id,report\n")
    with pytest.raises(ManifestError, match="has no rows"):
        load_manifest(tmp_path / "header.csv")


def test_parquet_needs_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.parquet").write_bytes(b"PAR1")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    with pytest.raises(ManifestError, match="needs pyarrow"):
        load_manifest(tmp_path / "m.parquet")


def test_parquet_manifest(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    write(tmp_path, REPORT_ROWS)
    pd.DataFrame(REPORT_ROWS).to_parquet(tmp_path / "m.parquet")
    assert load_manifest(tmp_path / "m.parquet").study_ids == ["A", "B"]


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_empty_report"):
        load_manifest(tmp_path / "m.csv", on_empty_report="drop")
