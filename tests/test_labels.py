"""Findings labels (cxr_robust.data.labels): codes and policies, match rules against hand-computed oracles,
the MIMIC-CXR-JPG label file reader and every malformed file, load_mimic and manifest label columns.

No error may carry a cell of a credentialed file: the bad cells below hold a sentinel that must never be in
the message.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_robust.data.labels import (CHEXPERT_LABELS, DEFAULT_UNCERTAIN, LABELERS, NEGATIVE, NOT_MENTIONED,
                                    POSITIVE, UNCERTAIN, UNCERTAIN_POLICIES, LabelFileError, LabelMatch, MatchRule,
                                    StudyLabels, find_label_file, parse_match_rule, read_label_file)
from cxr_robust.data.manifest import ManifestError, load_manifest
from cxr_robust.data.mimic import MimicLabelFileError, MimicLayoutError, load_mimic
from cxr_robust.data.retrieval_set import RetrievalSet
from tests.fake_mimic import (LABEL_NAMES, FakeStudy, build_fake_mimic, default_studies, fake_label_cells,
                              write_label_file)

SENTINEL = "Zq7LabelSentinel"
P, N, U, X = POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED
KEPT = ["s50000001", "s50000002", "s50000003", "s50000009", "s50000010"]


def col(name: str) -> int:
    return CHEXPERT_LABELS.index(name)


def row(**cells: int) -> list[int]:
    """A 14-code row: the named labels (spaces as underscores) set, the rest not mentioned."""
    out = [X] * len(CHEXPERT_LABELS)
    for k, v in cells.items():
        out[col(k.replace("_", " "))] = v
    return out


def study(n: int) -> FakeStudy:
    return FakeStudy(f"1{n:07d}", f"s5{n:07d}", "validate", ("PA",), None)


# --- constants ----------------------------------------------------------------------------------------

def test_names_codes_and_policies() -> None:
    assert CHEXPERT_LABELS == LABEL_NAMES and len(CHEXPERT_LABELS) == 14  # the files' column order
    assert (POSITIVE, NEGATIVE, UNCERTAIN, NOT_MENTIONED) == (1, 0, -1, -9)
    assert UNCERTAIN_POLICIES == ("positive", "negative") and DEFAULT_UNCERTAIN == "positive"
    assert LABELERS == {"chexpert": "mimic-cxr-2.0.0-chexpert", "negbio": "mimic-cxr-2.0.0-negbio"}


# --- StudyLabels -----------------------------------------------------------------------------------------

CODES = np.array([row(Edema=P, Pneumonia=U), row(No_Finding=P), row(Edema=N, Pneumonia=N), [X] * 14,
                  row(Edema=U)], dtype=np.int8)


def test_binary_follows_the_uncertain_policy() -> None:
    labels = StudyLabels.from_codes(CODES, source="test")
    e, p, nf = col("Edema"), col("Pneumonia"), col("No Finding")
    want_pos = np.zeros((5, 14), dtype=bool)
    want_pos[0, [e, p]] = want_pos[1, nf] = want_pos[4, e] = True
    want_neg = want_pos.copy()
    want_neg[0, p] = want_neg[4, e] = False
    assert labels.binary().dtype == bool
    assert np.array_equal(labels.binary(), want_pos) and np.array_equal(labels.binary("positive"), want_pos)
    assert np.array_equal(labels.binary("negative"), want_neg)
    with pytest.raises(ValueError, match="choose one of positive, negative"):
        labels.binary("ignore")


def test_summary_subset_and_validation() -> None:
    labelled = np.array([True, True, True, False, True])
    labels = StudyLabels.from_codes(CODES, labelled=labelled, source="phantom generator")
    assert labels.codes.dtype == np.int8 and not labels.codes.flags.writeable
    assert labels.summary() == {"source": "phantom generator", "studies": 5, "labels": 14,
                                "labelled_studies": 4, "unlabelled_studies": 1, "uncertain_studies": 2,
                                "uncertain_policies": ["positive", "negative"], "default_uncertain": "positive"}
    sub = labels.subset([4, 3, 0])
    assert np.array_equal(sub.codes, CODES[[4, 3, 0]]) and sub.labelled.tolist() == [True, False, True]
    assert sub.names == CHEXPERT_LABELS and sub.source == "phantom generator"
    with pytest.raises(ValueError, match=r"shape \(studies, 14\)"):
        StudyLabels.from_codes(CODES[:, :13])
    with pytest.raises(ValueError, match="code 2 at study 1"):
        StudyLabels.from_codes(np.where(CODES == P, 2, CODES)[[3, 0]])
    with pytest.raises(ValueError, match="integers"):
        StudyLabels.from_codes(CODES.astype(float))
    with pytest.raises(ValueError, match=r"labelled must be a bool array of shape \(5,\)"):
        StudyLabels(CHEXPERT_LABELS, CODES, np.ones(4, dtype=bool), "x")
    with pytest.raises(ValueError, match="study 0 is marked unlabelled but has label codes"):
        StudyLabels.from_codes(CODES, labelled=~labelled)


def test_retrieval_set_carries_labels_through_subset() -> None:
    def rset(labels: StudyLabels | None) -> RetrievalSet:
        return RetrievalSet(name="t", study_ids=["a", "b", "c"], findings=["f"] * 3, impressions=["i"] * 3,
                            image_ids=["x", "y", "z", "w"], image_study=np.array([0, 1, 2, 2]), views=["PA"] * 4,
                            image_arrays=[np.zeros((2, 2), np.uint8)] * 4, labels=labels)

    assert rset(None).labels is None and rset(None).subset([1]).labels is None
    rs = rset(StudyLabels.from_codes(CODES[:3]))
    sub = rs.subset([2, 0])
    assert sub.labels is not None and np.array_equal(sub.labels.codes, CODES[[2, 0]])
    with pytest.raises(ValueError, match="3 studies but labels for 5"):
        rset(StudyLabels.from_codes(CODES))
    with pytest.raises(TypeError, match="StudyLabels or None"):
        rset(CODES[:3])  # type: ignore[arg-type]


# --- match rules ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("exact", MatchRule("exact")), (" EXACT ", MatchRule("exact")), ("jaccard>=0.5", MatchRule("jaccard", 0.5)),
    ("jaccard:0.25", MatchRule("jaccard", 0.25)), ("Jaccard >= 1", MatchRule("jaccard", 1.0)),
    ("jaccard: .75", MatchRule("jaccard", 0.75)), (MatchRule("jaccard", 0.5), MatchRule("jaccard", 0.5))])
def test_parse_match_rule(text: str, want: MatchRule) -> None:
    assert parse_match_rule(text) == want


@pytest.mark.parametrize("text, words", [
    ("jaccard>=0", "must be a number in (0, 1]"), ("jaccard>=1.5", "(0, 1]"), ("jaccard:-0.1", "(0, 1]"),
    ("jaccard>=nan", "(0, 1]"), ("jaccard>=0.5.1", "(0, 1]"), ("jaccard", "unknown label match rule"),
    ("jaccard>0.5", "unknown"), ("cosine>=0.5", "unknown"), ("", "unknown"), ("exact;", "unknown")])
def test_parse_match_rule_refuses_anything_else_listing_the_forms(text: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_match_rule(text)
    msg = str(info.value)
    assert words in msg and "exact" in msg and "jaccard>=T or jaccard:T" in msg


def test_match_rule_str() -> None:
    assert str(parse_match_rule("exact")) == "exact" and str(parse_match_rule("jaccard:0.5")) == "jaccard>=0.5"


# Six studies, by hand. Present findings under "positive" (uncertain counts) / "negative" (it does not):
#   0: {Edema, Pleural Effusion}     / {Edema}            (effusion uncertain)
#   1: {Edema, Pleural Effusion}     / same
#   2: {Edema}                       / same
#   3: {} (nothing mentioned)        / {}
#   4: {} (all negative)             / {}
#   5: unlabelled (no row)           -> relevant to nothing, nothing relevant to it
#   6: {Edema, Pleural Effusion, Pneumonia} / same
MATCH_CODES = np.array([row(Edema=P, Pleural_Effusion=U), row(Edema=P, Pleural_Effusion=P, Cardiomegaly=N),
                        row(Edema=P), [X] * 14, [N] * 14, [X] * 14,
                        row(Edema=P, Pleural_Effusion=P, Pneumonia=P)], dtype=np.int8)
MATCH_LABELLED = np.array([True, True, True, True, True, False, True])
T, F = True, False
ORACLE = {
    ("exact", "positive"): [[T, T, F, F, F, F, F], [T, T, F, F, F, F, F], [F, F, T, F, F, F, F],
                            [F, F, F, T, T, F, F], [F, F, F, T, T, F, F], [F] * 7, [F, F, F, F, F, F, T]],
    ("exact", "negative"): [[T, F, T, F, F, F, F], [F, T, F, F, F, F, F], [T, F, T, F, F, F, F],
                            [F, F, F, T, T, F, F], [F, F, F, T, T, F, F], [F] * 7, [F, F, F, F, F, F, T]],
    # Jaccard {E,PE} vs {E} = 1/2, {E,PE} vs {E,PE,Pn} = 2/3, {E} vs {E,PE,Pn} = 1/3, empty vs empty = 1.
    ("jaccard>=0.5", "positive"): [[T, T, T, F, F, F, T], [T, T, T, F, F, F, T], [T, T, T, F, F, F, F],
                                   [F, F, F, T, T, F, F], [F, F, F, T, T, F, F], [F] * 7, [T, T, F, F, F, F, T]],
    ("jaccard>=0.6", "positive"): [[T, T, F, F, F, F, T], [T, T, F, F, F, F, T], [F, F, T, F, F, F, F],
                                   [F, F, F, T, T, F, F], [F, F, F, T, T, F, F], [F] * 7, [T, T, F, F, F, F, T]],
    ("jaccard:0.333333", "negative"): [[T, T, T, F, F, F, T], [T, T, T, F, F, F, T], [T, T, T, F, F, F, T],
                                       [F, F, F, T, T, F, F], [F, F, F, T, T, F, F], [F] * 7,
                                       [T, T, T, F, F, F, T]],
    ("jaccard>=1", "positive"): [[T, T, F, F, F, F, F], [T, T, F, F, F, F, F], [F, F, T, F, F, F, F],
                                 [F, F, F, T, T, F, F], [F, F, F, T, T, F, F], [F] * 7, [F, F, F, F, F, F, T]],
}


@pytest.mark.parametrize("rule, uncertain", list(ORACLE))
def test_label_match_against_a_hand_computed_oracle(rule: str, uncertain: str) -> None:
    match = LabelMatch(StudyLabels(CHEXPERT_LABELS, MATCH_CODES, MATCH_LABELLED, "hand"), rule, uncertain)
    want = np.array(ORACLE[(rule, uncertain)])
    got = match.rows(np.arange(7))
    assert got.dtype == bool and got.shape == (7, 7)
    assert np.array_equal(got, want), f"{rule}/{uncertain}:\n{got.astype(int)}"
    assert np.array_equal(match.labelled, MATCH_LABELLED)
    # Rows in any order and with repeats (several images of one study) are the oracle's rows.
    q = np.array([6, 5, 0, 0, 3])
    assert np.array_equal(match.rows(q), want[q])
    assert match.rows(np.array([], dtype=np.int64)).shape == (0, 7)


def test_label_match_agrees_with_a_set_oracle_on_random_labels() -> None:
    rng = np.random.default_rng(3)
    codes = rng.choice([P, N, U, X], size=(60, 14), p=[0.08, 0.2, 0.04, 0.68]).astype(np.int8)
    codes[:, 5:] = np.where(codes[:, 5:] == P, X, codes[:, 5:])  # few labels in play: ties are common
    labelled = rng.random(60) > 0.15
    codes[~labelled] = X
    labels = StudyLabels.from_codes(codes, labelled)
    for uncertain in UNCERTAIN_POLICIES:
        present = [{j for j in range(14) if c[j] == P or (c[j] == U and uncertain == "positive")} for c in codes]
        for rule, t in (("exact", None), ("jaccard>=0.5", 0.5), ("jaccard:0.2", 0.2)):
            def ok(a: set[int], b: set[int]) -> bool:
                if t is None:
                    return a == b
                return not (a | b) or len(a & b) / len(a | b) >= t
            want = np.array([[bool(labelled[i] and labelled[j] and ok(present[i], present[j])) for j in range(60)]
                             for i in range(60)])
            assert np.array_equal(LabelMatch(labels, rule, uncertain).rows(np.arange(60)), want), (rule, uncertain)


def test_label_match_describe_and_bad_arguments() -> None:
    labels = StudyLabels.from_codes(MATCH_CODES)
    assert LabelMatch(labels).describe().startswith("identical CheXpert label vectors (uncertain counted as positive")
    assert "Jaccard similarity >= 0.5" in LabelMatch(labels, "jaccard:0.5", "negative").describe()
    assert "uncertain counted as negative" in LabelMatch(labels, "jaccard:0.5", "negative").describe()
    with pytest.raises(ValueError, match="choose one of positive, negative"):
        LabelMatch(labels, uncertain="drop")
    with pytest.raises(ValueError, match="accepted rules"):
        LabelMatch(labels, "cosine")
    with pytest.raises(IndexError):
        LabelMatch(labels).rows(np.array([7]))
    with pytest.raises(ValueError, match="1-D array of integers"):
        LabelMatch(labels).rows(np.array([[0]]))


# --- the label file reader -----------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_read_label_file_every_spelling_csv_and_gz(tmp_path: Path, gz: bool) -> None:
    studies = [study(n) for n in range(1, 6)]
    cells = {"s50000001": {"Edema": "1.0", "Pneumonia": "-1.0", "Fracture": "0.0"},
             "s50000002": {"Edema": "1", "Pneumonia": "-1", "Fracture": "0"},
             "s50000003": {"No Finding": "1.00", "Edema": " -1. ", "Fracture": "-0"},
             "s50000004": {}}  # a row of empty cells: labelled, nothing mentioned
    path = write_label_file(tmp_path, studies, cells=cells, gz=gz, omit=["s50000005"], shuffle_columns=True)
    assert path.name == f"mimic-cxr-2.0.0-chexpert.csv{'.gz' if gz else ''}"
    assert find_label_file(tmp_path) == path and find_label_file(tmp_path, "negbio") is None
    # Set order, not file order; s50000005 has no row (unlabelled); s59999999 is in neither.
    got = read_label_file(path, ["s50000004", "s50000005", "s50000001", "50000002", "s50000003", "s59999999"])
    want = np.array([[X] * 14, [X] * 14, row(Edema=P, Pneumonia=U, Fracture=N), row(Edema=P, Pneumonia=U, Fracture=N),
                     row(No_Finding=P, Edema=U, Fracture=N), [X] * 14])
    assert np.array_equal(got.codes, want)
    assert got.labelled.tolist() == [True, False, True, True, True, False]
    assert got.source == path.name and got.names == CHEXPERT_LABELS
    assert got.summary()["unlabelled_studies"] == 2 and got.summary()["uncertain_studies"] == 3


def test_find_label_file_prefers_gz_and_knows_its_labelers(tmp_path: Path) -> None:
    write_label_file(tmp_path, [study(1)], gz=False, labeler="negbio")
    assert find_label_file(tmp_path, "negbio") == tmp_path / "mimic-cxr-2.0.0-negbio.csv"
    write_label_file(tmp_path, [study(1)], gz=True, labeler="negbio")
    assert find_label_file(tmp_path, "negbio") == tmp_path / "mimic-cxr-2.0.0-negbio.csv.gz"
    with pytest.raises(ValueError, match="choose one of chexpert, negbio"):
        find_label_file(tmp_path, "chexbert")


STUDIES = [study(n) for n in range(1, 5)]


def _bad_value(tmp: Path) -> Path:
    cells = fake_label_cells(STUDIES)
    cells["s50000002"]["Edema"] = SENTINEL
    cells["s50000004"]["Edema"] = "2.0"
    cells["s50000003"]["Fracture"] = SENTINEL + "b"
    return write_label_file(tmp, STUDIES, cells=cells, gz=False)


def _non_digit_study(tmp: Path) -> Path:
    path = write_label_file(tmp, STUDIES, gz=False)
    path.write_text(path.read_text().replace("50000003", SENTINEL))
    return path


def _not_utf8(tmp: Path) -> Path:
    cells = fake_label_cells(STUDIES)
    cells["s50000002"]["Edema"] = SENTINEL
    path = write_label_file(tmp, STUDIES, cells=cells, gz=False)
    path.write_bytes(path.read_bytes().replace(SENTINEL.encode(), SENTINEL.encode() + b"\xff\xfe"))
    return path


def _noisy_cells() -> dict[str, dict[str, str]]:
    """The sentinel in the first row, then cells of random hex that gzip cannot shrink (a long stream)."""
    rng = np.random.default_rng(0)
    return {s.study: {"Edema": SENTINEL if j == 0 else rng.bytes(2000).hex()} for j, s in enumerate(STUDIES)}


def _truncated_gz(tmp: Path) -> Path:
    path = write_label_file(tmp, STUDIES, cells=_noisy_cells())
    return write_label_file(tmp, STUDIES, cells=_noisy_cells(), truncate=len(path.read_bytes()) // 2)


def _not_gzip(tmp: Path) -> Path:
    path = tmp / "mimic-cxr-2.0.0-chexpert.csv.gz"
    path.write_text(f"study_id,Edema\n1,{SENTINEL}\n")
    return path


def _corrupt_gz(tmp: Path) -> Path:
    path = write_label_file(tmp, STUDIES, cells=_noisy_cells())
    data = bytearray(path.read_bytes())
    data[-200:-100] = bytes(range(100))  # damage the deflate stream near its end (the CRC check fails too)
    path.write_bytes(bytes(data))
    return path


def _header_less(tmp: Path) -> Path:
    cells = fake_label_cells(STUDIES)
    cells["s50000001"]["Edema"] = SENTINEL
    return write_label_file(tmp, STUDIES, cells=cells, header=False, gz=False)


def _renamed_columns(tmp: Path) -> Path:
    path = write_label_file(tmp, STUDIES, gz=False)
    text = path.read_text().replace("Edema", "edema").replace("study_id", SENTINEL, 1)
    path.write_text(text)
    return path


def _cut_off_csv(tmp: Path) -> Path:
    cells = fake_label_cells(STUDIES)
    cells[STUDIES[-1].study] = {"Atelectasis": SENTINEL}
    path = write_label_file(tmp, STUDIES, cells=cells, gz=False)
    return write_label_file(tmp, STUDIES, cells=cells, gz=False, truncate=len(path.read_bytes()) - 6)


def _empty_file(tmp: Path) -> Path:
    (tmp / "labels.csv").write_bytes(b"")
    return tmp / "labels.csv"


# case: (builder, words the message must hold, in order)
FILE_CASES = {
    "missing_file": (lambda tmp: tmp / "mimic-cxr-2.0.0-chexpert.csv.gz", ("does not exist",)),
    "empty_file": (_empty_file, ("cannot read", "the file is empty")),
    "no_rows": (lambda tmp: write_label_file(tmp, STUDIES, omit=[s.study for s in STUDIES]),
                ("has a header but no rows",)),
    "missing_label_column": (lambda tmp: write_label_file(tmp, STUDIES, drop_columns=["Edema", "Fracture"]),
                             ("lacks column(s) ['Edema', 'Fracture']",)),
    "missing_study_id": (lambda tmp: write_label_file(tmp, STUDIES, drop_columns=["study_id"]),
                         ("lacks column(s) ['study_id']",)),
    "renamed_columns": (_renamed_columns, ("lacks column(s) ['study_id', 'Edema']", "resembles 'Edema'")),
    "header_less": (_header_less, ("lacks column(s)", "the first row looks like data")),
    "bad_value": (_bad_value, ("2 cell(s) of column 'Edema'", "line(s) [3, 5]", "expected 1.0, 0.0, -1.0 or empty",
                               "columns ['Fracture']")),
    "non_digit_study_id": (_non_digit_study, ("study_id that is not digits", "line(s) [4]", "column study_id")),
    "duplicate_study": (lambda tmp: write_label_file(tmp, STUDIES, duplicate="s50000002"),
                        ("study s50000002 is listed twice", "line(s) [3, 4]")),
    "cut_off_csv": (_cut_off_csv, ("the last row (line(s) [5])", "fewer fields than the header", "cut off")),
    "not_utf8": (_not_utf8, ("cannot read", "UnicodeDecodeError", "not UTF-8")),
    "truncated_gz": (_truncated_gz, ("cannot read", "truncated or damaged")),
    "corrupt_gz": (_corrupt_gz, ("cannot read",)),
    "not_gzip": (_not_gzip, ("cannot read", "not a valid gzip file")),
}


SENTINEL_IN_FILE = {"cut_off_csv", "bad_value", "non_digit_study_id", "not_utf8", "truncated_gz", "corrupt_gz",
                    "not_gzip", "header_less", "renamed_columns"}


def _content(path: Path) -> bytes:
    """The file's bytes, decompressed as far as they go (a damaged stream up to the damage)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    d = zlib.decompressobj(wbits=31)
    out = b""
    for k in range(0, len(raw), 64):  # small steps: stop at the first damaged block, keep what came before
        try:
            out += d.decompress(raw[k:k + 64])
        except zlib.error:
            break
    return out


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_malformed_label_files_name_file_and_place_never_the_cell(case: str, tmp_path: Path) -> None:
    build, words = FILE_CASES[case]
    path = build(tmp_path)
    if case in SENTINEL_IN_FILE:
        assert SENTINEL.encode() in _content(path)  # the sentinel really is in the file
    with pytest.raises(LabelFileError) as info:
        read_label_file(path, [s.study for s in STUDIES])
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    assert SENTINEL not in msg
    err = info.value  # no reader exception rides along (a traceback would print its message)
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    pos = 0
    for w in words:
        assert w in msg[pos:], f"{w!r} not in {msg!r}"
        pos = msg.index(w, pos)


# --- load_mimic ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_load_mimic_attaches_the_chexpert_file(tmp_path: Path, gz: bool, caplog: pytest.LogCaptureFixture) -> None:
    fake = build_fake_mimic(tmp_path / "m", reports=("zip",), gz=gz)
    studies = default_studies()
    cells = fake_label_cells(studies)
    cells["s50000002"]["Edema"] = "-1.0"
    path = write_label_file(fake.root, studies, cells=cells, gz=gz, omit=["s50000009"])
    caplog.set_level(logging.INFO)
    rs = load_mimic(fake.root)
    assert rs.study_ids == KEPT and rs.labels is not None
    want = pd.DataFrame([{n: {"1.0": P, "0.0": N, "-1.0": U, "": X}[cells[s].get(n, "")] for n in CHEXPERT_LABELS}
                         for s in KEPT]).to_numpy(copy=True)
    want[KEPT.index("s50000009")] = X
    assert np.array_equal(rs.labels.codes, want)
    assert rs.labels.labelled.tolist() == [s != "s50000009" for s in KEPT]
    assert rs.meta["labels"] == {**rs.labels.summary(), "labeler": "chexpert", "path": str(path)}
    assert rs.meta["labels"]["unlabelled_studies"] == 1 and rs.meta["labels"]["source"] == path.name
    assert "4 of 5 studies labelled" in caplog.text
    # Same studies and images as without labels: labels never exclude.
    assert (rs.num_studies, rs.num_images) == (5, 9)
    sub = rs.subset([3, 0])
    assert sub.labels is not None and np.array_equal(sub.labels.codes, want[[3, 0]])


def test_load_mimic_without_label_file_or_with_labels_none(tmp_path: Path) -> None:
    fake = build_fake_mimic(tmp_path / "m", reports=("zip",))
    rs = load_mimic(fake.root)
    assert rs.labels is None
    assert rs.meta["labels"] == {"source": None,
                                 "looked_for": f"{fake.root}/mimic-cxr-2.0.0-chexpert.csv(.gz)"}
    write_label_file(fake.root, fake.studies, labeler="negbio")
    assert load_mimic(fake.root).labels is None  # the negbio file is not the chexpert one
    neg = load_mimic(fake.root, labels="negbio")
    assert neg.labels is not None and neg.labels.source == "mimic-cxr-2.0.0-negbio.csv.gz"
    skipped = load_mimic(fake.root, labels=None)
    assert skipped.labels is None and skipped.meta["labels"] == {"source": None, "skipped": True}
    with pytest.raises(ValueError, match="choose one of chexpert, negbio, or None"):
        load_mimic(fake.root, labels="chexbert")


def test_build_fake_mimic_can_write_the_label_file(tmp_path: Path) -> None:
    fake = build_fake_mimic(tmp_path / "m", reports=("zip",), labels="chexpert", gz=False)
    assert (fake.root / "mimic-cxr-2.0.0-chexpert.csv").is_file()
    rs = load_mimic(fake.root)
    assert rs.labels is not None and rs.labels.labelled.all()


def test_load_mimic_refuses_a_malformed_label_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = build_fake_mimic(tmp_path / "m", reports=("zip",))
    cells = fake_label_cells(fake.studies)
    cells["s50000010"]["Pneumothorax"] = SENTINEL
    path = write_label_file(fake.root, fake.studies, cells=cells)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MimicLayoutError) as info:
        load_mimic(fake.root)
    err = info.value
    assert isinstance(err, MimicLabelFileError) and isinstance(err, LabelFileError)
    msg = str(err)
    assert str(path) in msg and "column 'Pneumothorax'" in msg and "line(s) [" in msg
    assert "re-download" in msg and "labels=None" in msg
    assert SENTINEL not in msg and SENTINEL not in caplog.text
    assert load_mimic(fake.root, labels=None).labels is None  # the way around it works


# --- manifest label columns -----------------------------------------------------------------------------

def write_manifest(tmp: Path, rows: list[dict], name: str = "m.csv") -> Path:
    df = pd.DataFrame(rows)
    for p in df["image_path"]:
        (tmp / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp / p).write_bytes(b"")
    path = tmp / name
    if name.endswith(".parquet"):
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)
    return path


MANIFEST = [
    {"image_path": "a1.png", "study_id": "A", "report": "r1", " edema ": "1.0", "PLEURAL EFFUSION": "-1"},
    {"image_path": "a2.png", "study_id": "A", "report": "r1", " edema ": "1", "PLEURAL EFFUSION": "-1.0"},
    {"image_path": "b1.png", "study_id": "B", "report": "r2", " edema ": "", "PLEURAL EFFUSION": "0"},
    {"image_path": "c1.png", "study_id": "C", "report": "r3", " edema ": "0.0", "PLEURAL EFFUSION": ""},
]


def test_manifest_label_columns(tmp_path: Path) -> None:
    rs = load_manifest(write_manifest(tmp_path, MANIFEST))
    assert rs.study_ids == ["A", "B", "C"] and rs.labels is not None
    assert np.array_equal(rs.labels.codes, [row(Edema=P, Pleural_Effusion=U), row(Pleural_Effusion=N),
                                            row(Edema=N)])
    assert rs.labels.labelled.all() and rs.labels.source == "manifest columns"
    assert rs.meta["labels"]["columns"] == ["Edema", "Pleural Effusion"]
    assert rs.meta["labels"]["labelled_studies"] == 3 and rs.meta["labels"]["uncertain_studies"] == 1
    assert rs.texts("impression") == ["r1", "r2", "r3"]  # label columns are not text


def test_manifest_label_columns_survive_skipped_rows(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, MANIFEST)
    (tmp_path / "a1.png").unlink()
    (tmp_path / "b1.png").unlink()
    rs = load_manifest(path, on_bad_image="skip")
    assert rs.study_ids == ["A", "C"] and rs.labels is not None
    assert np.array_equal(rs.labels.codes, [row(Edema=P, Pleural_Effusion=U), row(Edema=N)])


def test_manifest_label_columns_from_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    rows = [{"image_path": "a.png", "study_id": "A", "report": "r", "Edema": 1.0, "Fracture": -1.0},
            {"image_path": "b.png", "study_id": "B", "report": "s", "Edema": None, "Fracture": 0.0}]
    rs = load_manifest(write_manifest(tmp_path, rows, "m.parquet"))
    assert rs.labels is not None
    assert np.array_equal(rs.labels.codes, [row(Edema=P, Fracture=U), row(Fracture=N)])


def test_manifest_without_label_columns_has_no_labels(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k in ("image_path", "study_id", "report")} for r in MANIFEST]
    rs = load_manifest(write_manifest(tmp_path, rows))
    assert rs.labels is None and rs.meta["labels"]["source"] is None


def test_manifest_rows_of_a_study_must_agree_on_labels(tmp_path: Path) -> None:
    rows = [dict(r) for r in MANIFEST]
    rows[1]["PLEURAL EFFUSION"] = "1.0"
    path = write_manifest(tmp_path, rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    msg = str(info.value)
    assert str(path) in msg and "study ['A']" in msg and "label column 'Pleural Effusion'" in msg
    assert "line(s) [2, 3]" in msg and "1.0" not in msg and "-1" not in msg


def test_manifest_bad_label_value_is_not_shown(tmp_path: Path) -> None:
    rows = [dict(r) for r in MANIFEST]
    rows[2][" edema "] = SENTINEL
    path = write_manifest(tmp_path, rows)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    msg = str(info.value)
    assert str(path) in msg and "label column 'Edema' on line(s) [4]" in msg
    assert "expected 1.0, 0.0, -1.0 or empty" in msg and SENTINEL not in msg


def test_manifest_two_columns_for_one_label(tmp_path: Path) -> None:
    rows = [{**r, "Edema": r[" edema "]} for r in MANIFEST]
    with pytest.raises(ManifestError, match=r"columns \[4, 6\] all name label 'Edema'"):
        load_manifest(write_manifest(tmp_path, rows))
