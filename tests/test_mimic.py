"""load_mimic on fake MIMIC-CXR-JPG trees (tests/fake_mimic.py): exact filter counts, every bad input."""

from __future__ import annotations

import logging
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_robust.data.mimic import MimicLayoutError, find_report_source, load_image_table, load_mimic
from tests.fake_mimic import FakeMimicExpectation, build_fake_mimic

KEPT = ["s50000001", "s50000002", "s50000003", "s50000009", "s50000010"]


@pytest.fixture
def fake(tmp_path: Path) -> FakeMimicExpectation:
    """A fake MIMIC-CXR-JPG 2.0.0 root with gzipped CSVs and all three report forms (the zip is found first)."""
    return build_fake_mimic(tmp_path / "mimic-cxr-jpg")


def nonzero(d: dict) -> dict:
    return {k: v for k, v in d.items() if v}


def assert_matches(rs, exp: FakeMimicExpectation, split: str = "validate", views: str = "all") -> None:
    want = exp.expected(split, views)
    assert (rs.num_studies, rs.num_images) == (want["studies"], want["images"])
    assert rs.study_ids == want["study_ids"]
    assert rs.meta["counts"]["views"] == want["views"]
    assert nonzero(rs.meta["excluded_studies"]) == want["excluded_studies"]
    assert nonzero(rs.meta["excluded_images"]) == {k: v for k, v in want["excluded_images"].items() if v}
    for sid, f, i in zip(rs.study_ids, rs.findings, rs.impressions):
        assert (f, i) == (exp.study(sid).findings, exp.study(sid).impression)
    for j, iid in enumerate(rs.image_ids):
        study = exp.study(rs.study_ids[rs.image_study[j]])
        k = study.dicoms.index(iid)
        assert rs.image_paths[j] == exp.root / study.image_path(k)
        assert rs.views[j] == (study.views[k] or "UNKNOWN")
    # Kept + excluded = the whole split, for studies and for images.
    split_counts = rs.meta["split_counts"]
    ex_s = {k: v for k, v in rs.meta["excluded_studies"].items() if k != "not_in_split"}
    ex_i = {k: v for k, v in rs.meta["excluded_images"].items() if k != "not_in_split"}
    assert rs.num_studies + sum(ex_s.values()) == split_counts["studies"]
    assert rs.num_images + sum(ex_i.values()) == split_counts["images"]


# --- the evaluation set -----------------------------------------------------------------------------------

def test_default_filter_counts_exactly(fake: FakeMimicExpectation) -> None:
    rs = load_mimic(fake.root)
    assert rs.name == "mimic-cxr-validate" and rs.credentialed and rs.image_arrays is None
    assert (rs.num_studies, rs.num_images) == (5, 9)
    assert rs.study_ids == KEPT
    assert rs.meta["counts"] == {"studies": 5, "images": 9,
                                 "views": {"AP": 2, "LATERAL": 2, "LL": 1, "PA": 2, "SWIMMERS": 1, "UNKNOWN": 1},
                                 "view_groups": {"frontal": 4, "lateral": 3, "other": 1, "unknown": 1}}
    assert rs.meta["split_counts"] == {"studies": 11, "images": 18}
    assert rs.meta["excluded_studies"] == {"not_in_split": 5, "missing_report": 1, "unreadable_report": 0,
                                           "missing_findings": 3, "missing_impression": 2, "no_images_left": 0}
    assert rs.meta["excluded_images"] == {"not_in_split": 8, "missing_report": 2, "unreadable_report": 0,
                                          "missing_findings": 4, "missing_impression": 3, "view_filter": 0,
                                          "missing_image": 0}
    assert rs.meta["paper_reference"] == {"studies": 994, "images": 1770}
    assert rs.meta["dataset_version"] == "2.0.0"
    assert rs.meta["reports_source"] == {"kind": "zip", "path": str(fake.root / "mimic-cxr-reports.zip")}
    assert rs.meta["fallback_used"] == 1
    assert rs.texts("impression")[KEPT.index("s50000010")] == "No acute process."
    assert_matches(rs, fake)


def test_images_are_checked_but_not_opened(fake: FakeMimicExpectation) -> None:
    # A corrupt image is the decoder's business later (BadImageError), not the loader's.
    (fake.root / fake.study("s50000001").image_path(0)).write_bytes(b"not a jpeg")
    assert load_mimic(fake.root).num_images == 9


@pytest.mark.parametrize("views, studies, images, view_filter, emptied", [
    ("all", 5, 9, 0, 0), ("frontal", 4, 4, 5, 1), ("lateral", 3, 3, 6, 2), ("PA", 2, 2, 7, 3),
    ("AP", 2, 2, 7, 3)])
def test_view_filters(fake: FakeMimicExpectation, views: str, studies: int, images: int, view_filter: int,
                      emptied: int) -> None:
    rs = load_mimic(fake.root, views=views)
    assert (rs.num_studies, rs.num_images) == (studies, images)
    assert rs.meta["excluded_images"]["view_filter"] == view_filter
    assert rs.meta["excluded_studies"]["no_images_left"] == emptied
    assert_matches(rs, fake, views=views)


@pytest.mark.parametrize("split, studies, images", [("train", 2, 3), ("test", 1, 3)])
def test_other_splits(fake: FakeMimicExpectation, split: str, studies: int, images: int) -> None:
    rs = load_mimic(fake.root, split=split)
    assert (rs.num_studies, rs.num_images) == (studies, images)
    assert_matches(rs, fake, split=split)


@pytest.mark.parametrize("required, studies, images", [(("impression",), 7, 12), ((), 10, 16),
                                                       ("findings", 7, 12)])
def test_required_sections(fake: FakeMimicExpectation, required, studies: int, images: int) -> None:
    rs = load_mimic(fake.root, require_sections=required)
    assert (rs.num_studies, rs.num_images) == (studies, images)


@pytest.mark.parametrize("kind", ["zip", "tree", "sectioned"])
def test_every_report_source_gives_the_same_set(tmp_path: Path, kind: str) -> None:
    exp = build_fake_mimic(tmp_path / "root", reports=(kind,), zip_prefix="mimic-cxr-reports/" if kind == "zip" else "")
    rs = load_mimic(exp.root)
    assert rs.meta["reports_source"]["kind"] == {"sectioned": "sectioned_csv"}.get(kind, kind)
    assert_matches(rs, exp)


def test_explicit_report_paths(fake: FakeMimicExpectation, tmp_path: Path) -> None:
    for reports, kind in [(fake.zip_path, "zip"), (fake.sectioned_path, "sectioned_csv"), (fake.root, "tree"),
                          (fake.root / "files", "tree")]:
        rs = load_mimic(fake.root, reports=reports)
        assert rs.meta["reports_source"]["kind"] == kind
        assert rs.study_ids == KEPT
    # Reports kept outside the image root (the usual PhysioNet download: two projects).
    elsewhere = tmp_path / "reports"
    elsewhere.mkdir()
    (elsewhere / "mimic-cxr-reports.zip").write_bytes(fake.zip_path.read_bytes())
    assert load_mimic(fake.root, reports=elsewhere).meta["reports_source"]["kind"] == "zip"


def test_plain_csvs_and_version_210(tmp_path: Path) -> None:
    exp = build_fake_mimic(tmp_path / "root", gz=False, version="2.1.0")
    rs = load_mimic(exp.root)
    assert rs.meta["dataset_version"] == "2.1.0"
    assert_matches(rs, exp)


def test_no_report_text_reaches_logs_or_errors(fake: FakeMimicExpectation, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    load_mimic(fake.root)
    path = fake.root / fake.study("s50000001").report_path
    path.write_bytes(fake.study("s50000001").text.encode() + b"\xff\xfe")
    with pytest.raises(MimicLayoutError) as err:
        load_mimic(fake.root, reports=fake.root)
    shown = caplog.text + str(err.value)
    assert "5 studies / 9 images" in caplog.text
    for s in fake.studies:
        for text in (s.findings, s.impression, s.last_paragraph):
            assert not text or text not in shown


# --- bad input --------------------------------------------------------------------------------------------

def test_root_that_is_not_mimic(tmp_path: Path) -> None:
    with pytest.raises(MimicLayoutError, match="not a directory"):
        load_mimic(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MimicLayoutError, match="no files/ folder"):
        load_mimic(tmp_path / "empty")


@pytest.mark.parametrize("name, what", [("mimic-cxr-2.0.0-split.csv.gz", "split"),
                                        ("mimic-cxr-2.0.0-metadata.csv.gz", "metadata")])
def test_missing_csv(fake: FakeMimicExpectation, name: str, what: str) -> None:
    (fake.root / name).unlink()
    with pytest.raises(MimicLayoutError, match=f"no .*{what}.*{name.removesuffix('.gz')}"):
        load_mimic(fake.root)


def test_csv_with_wrong_columns(fake: FakeMimicExpectation) -> None:
    path = fake.root / "mimic-cxr-2.0.0-metadata.csv.gz"
    df = pd.read_csv(path, dtype=str).rename(columns={"ViewPosition": "View"})
    df.to_csv(path, index=False)
    with pytest.raises(MimicLayoutError,
                       match=r"metadata.csv.gz: the metadata file lacks column\(s\) \['ViewPosition'\]"):
        load_mimic(fake.root)


def test_corrupt_gzip(fake: FakeMimicExpectation) -> None:
    path = fake.root / "mimic-cxr-2.0.0-split.csv.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(MimicLayoutError, match="split.csv.gz: cannot read the split file"):
        load_mimic(fake.root)


@pytest.mark.parametrize("column, value, message", [("split", "val", "unexpected split values"),
                                                     ("study_id", "abc", "non-numeric study_id")])
def test_bad_split_values(fake: FakeMimicExpectation, column: str, value: str, message: str) -> None:
    path = fake.root / "mimic-cxr-2.0.0-split.csv.gz"
    df = pd.read_csv(path, dtype=str)
    df.loc[0, column] = value
    df.to_csv(path, index=False)
    with pytest.raises(MimicLayoutError, match=message):
        load_mimic(fake.root)


def test_missing_images_error_names_paths_and_count(fake: FakeMimicExpectation) -> None:
    gone = [fake.study("s50000002").image_path(0), fake.study("s50000001").image_path(1)]
    for p in gone:
        (fake.root / p).unlink()
    with pytest.raises(MimicLayoutError, match="2 of 9 images") as err:
        load_mimic(fake.root)
    assert str(fake.root / gone[1]) in str(err.value)
    rs = load_mimic(fake.root, on_bad_image="skip")
    assert (rs.num_studies, rs.num_images) == (4, 7)
    assert rs.meta["excluded_images"]["missing_image"] == 2
    assert rs.meta["excluded_studies"]["no_images_left"] == 1


def test_missing_study_folder_and_excluded_images_are_not_checked(fake: FakeMimicExpectation) -> None:
    import shutil

    shutil.rmtree(fake.root / Path(fake.study("s50000004").image_path(0)).parent)  # an excluded study
    assert load_mimic(fake.root).num_images == 9
    shutil.rmtree(fake.root / Path(fake.study("s50000003").image_path(0)).parent)
    rs = load_mimic(fake.root, on_bad_image="skip")
    assert "s50000003" not in rs.study_ids and rs.meta["excluded_images"]["missing_image"] == 3


def test_no_reports_at_all(tmp_path: Path) -> None:
    exp = build_fake_mimic(tmp_path / "root", reports=())
    with pytest.raises(MimicLayoutError, match="no report found for any of the 11 validate studies"):
        load_mimic(exp.root)
    with pytest.raises(MimicLayoutError, match="not a MIMIC-CXR report source"):
        load_mimic(exp.root, reports=tmp_path / "missing.zip")


def test_undecodable_report_in_tree(tmp_path: Path) -> None:
    exp = build_fake_mimic(tmp_path / "root", reports=("tree",))
    path = exp.root / exp.study("s50000001").report_path
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(MimicLayoutError, match=r"s50000001 \(.*s50000001.txt\) cannot be read"):
        load_mimic(exp.root)
    rs = load_mimic(exp.root, on_bad_report="skip")
    assert rs.meta["excluded_studies"]["unreadable_report"] == 1
    assert rs.meta["excluded_images"]["unreadable_report"] == 2
    assert rs.num_studies == 4


def test_undecodable_report_in_zip_and_a_broken_zip(tmp_path: Path) -> None:
    exp = build_fake_mimic(tmp_path / "root", reports=("zip",))
    with zipfile.ZipFile(exp.zip_path, "w") as zf:
        for s in exp.studies:
            if s.text is not None:
                zf.writestr(s.report_path, b"\x80\x81" if s.study == "s50000002" else s.text.encode())
    with pytest.raises(MimicLayoutError, match="s50000002.txt\\) cannot be read"):
        load_mimic(exp.root)
    assert load_mimic(exp.root, on_bad_report="skip").meta["excluded_studies"]["unreadable_report"] == 1
    exp.zip_path.write_bytes(b"PK-not-really")
    with pytest.raises(MimicLayoutError, match="not a readable zip archive"):
        load_mimic(exp.root)


def test_sectioned_csv_with_wrong_columns(tmp_path: Path) -> None:
    exp = build_fake_mimic(tmp_path / "root", reports=("sectioned",))
    pd.DataFrame({"study": ["s50000001"], "text": ["x"]}).to_csv(exp.sectioned_path, index=False)
    with pytest.raises(MimicLayoutError, match=r"lacks column\(s\) \['findings', 'impression'\]"):
        load_mimic(exp.root)


def test_bad_arguments(fake: FakeMimicExpectation) -> None:
    with pytest.raises(ValueError, match="unknown views"):
        load_mimic(fake.root, views="oblique")
    with pytest.raises(ValueError, match="unknown split"):
        load_mimic(fake.root, split="val")
    with pytest.raises(ValueError, match="on_bad_image"):
        load_mimic(fake.root, on_bad_image="ignore")
    assert find_report_source(fake.root).kind == "zip"


# --- scale ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_full_size_metadata_join(tmp_path: Path) -> None:
    """377,110 metadata rows (the real count), shuffled against the split: the join must be exact."""
    n = 377_110
    i = np.arange(n)
    dicom = pd.Series(np.char.mod("%08x", i)) + "-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd"
    subject = pd.Series((10_000_000 + i // 6).astype(str))
    study = pd.Series((50_000_000 + i // 2).astype(str))
    bucket = (i // 2) % 100
    split = np.where(bucket == 7, "validate", np.where(bucket == 8, "test", "train"))
    views = np.array(["PA", "LATERAL", "AP", "LL", "", "SWIMMERS"])[i % 6]
    pd.DataFrame({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split}).to_csv(
        tmp_path / "mimic-cxr-2.0.0-split.csv.gz", index=False, compression={"method": "gzip", "compresslevel": 1})
    meta = pd.DataFrame({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                         "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": views,
                         "Rows": "3056", "Columns": "2544", "StudyDate": "21800506", "StudyTime": "1234.5",
                         "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                         "ViewCodeSequence_CodeMeaning": "postero-anterior",
                         "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
    dropped = np.flatnonzero(bucket == 7)[:3]  # three validate images without a metadata row
    meta = meta.drop(index=dropped).iloc[::-1]  # reversed: a positional join would be wrong
    meta.to_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", index=False,
                compression={"method": "gzip", "compresslevel": 1})

    start = time.perf_counter()
    table, info = load_image_table(tmp_path, "validate")
    print(f"\nload_image_table on {n:,} metadata rows: {time.perf_counter() - start:.2f} s")

    want = np.flatnonzero(bucket == 7)
    assert len(table) == len(want) == 3772
    assert info["not_in_split"] == {"images": n - 3772, "studies": n // 2 - 1886}
    assert info["images_without_metadata"] == 3
    idx = table["dicom_id"].str[:8].map(lambda h: int(h, 16)).to_numpy()
    assert sorted(idx.tolist()) == want.tolist()
    expect_view = np.where(np.isin(idx, dropped), "UNKNOWN", np.where(views[idx] == "", "UNKNOWN", views[idx]))
    assert (table["view"].to_numpy() == expect_view).all()
    assert (table["study_id"].to_numpy() == ("s" + study[idx]).to_numpy()).all()
    first = table.iloc[0]
    assert first["path"] == (f"files/p{first['subject_id'][:2]}/p{first['subject_id']}/{first['study_id']}/"
                             f"{first['dicom_id']}.jpg")
    assert set(table["view_group"]) == {"frontal", "lateral", "other", "unknown"}
