"""The official MIMIC-CXR section rules, one crafted (invented) report per rule."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cxr_robust.data.sections import (FREQUENT_SECTION_NAMES, SectionedReport, extract_report,
                                      normalize_section_name, split_sections)


def report(*lines: str) -> str:
    """MIMIC-shaped text: a title line, then every line prefixed with one space."""
    return "\n".join(["                                 FINAL REPORT", *(f" {ln}" for ln in lines)]) + "\n"


# --- header pattern -------------------------------------------------------------------------------------

def test_headers_on_their_own_line_and_inline() -> None:
    text = report("EXAMINATION:  CHEST (PA AND LAT)", "", "INDICATION:  ___ with cough.", "",
                  "FINDINGS:", "", "Heart size normal.", "Lungs clear.", "", "IMPRESSION:  Normal chest.")
    assert split_sections(text) == {
        "preamble": "FINAL REPORT", "examination": "CHEST (PA AND LAT)", "indication": "___ with cough.",
        "findings": "Heart size normal. Lungs clear.", "impression": "Normal chest."}


@pytest.mark.parametrize("line", [
    "Impression: lower-case header",      # not all caps
    "IMPRESSION 2: digits are not in a header",
    "IMPRESSION:no whitespace after the colon",
    "The IMPRESSION: mid-line, not at line start",
])
def test_lines_that_are_not_headers(line: str) -> None:
    sections = split_sections(report("FINDINGS:  Lungs clear.", line))
    assert set(sections) == {"preamble", "findings"}
    assert sections["findings"].startswith("Lungs clear.")


def test_header_at_text_start_and_without_leading_space() -> None:
    assert split_sections("FINDINGS: a\nIMPRESSION: b") == {"preamble": "", "findings": "a", "impression": "b"}


def test_the_first_line_of_a_section_is_never_a_header() -> None:
    # Official rule: after a header, the next header is searched from the following line break only.
    sections = split_sections("\n COMPARISON:\n IMPRESSION: stays inside comparison\n FINDINGS: f\n")
    assert sections["comparison"] == "IMPRESSION: stays inside comparison"
    assert "impression" not in sections and sections["findings"] == "f"


def test_title_header_followed_by_blank_line_does_not_swallow_the_next_header() -> None:
    sections = split_sections(report("CHEST, PA LATERAL:", "", "INDICATION: cough", "IMPRESSION: ok"))
    assert sections == {"preamble": "FINAL REPORT", "indication": "cough", "impression": "ok"}


def test_crlf_and_whitespace_are_normalised() -> None:
    text = " FINDINGS:  a\r\n   b\t c\r\n IMPRESSION:\r\n  d  \r\n"
    assert split_sections(text) == {"preamble": "", "findings": "a b c", "impression": "d"}


# --- names ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, canonical", sorted(FREQUENT_SECTION_NAMES.items()))
def test_frequency_map(raw: str, canonical: str) -> None:
    assert normalize_section_name(raw.upper()) == canonical
    assert normalize_section_name(f"  {raw.upper()} ") == canonical


@pytest.mark.parametrize("raw, canonical", [
    ("CLINICAL HISTORY", "history"), ("REASON FOR EXAM", "indication"), ("CONCLUSION", "impression"),
    ("RECOMMENDATION(S)", "recommendations"), ("WETREAD", "wet read"), ("TYPE OF EXAMINATION", "examination"),
    ("FINDINGS AND IMPRESSION", "impression"), ("FINDINGS/IMPRESSION", "impression"),
    ("NDICATION", "impression"),  # the official map's own (surprising) entry, kept to match its output
])
def test_frequency_map_examples(raw: str, canonical: str) -> None:
    assert normalize_section_name(raw) == canonical


@pytest.mark.parametrize("raw, canonical", [
    ("PRELIMINARY IMPRESSION", "impression"), ("IMPRESSION AND FINDINGS", "impression"),  # impression first
    ("FINDINGS AND RECOMMENDATIONS", "findings"), ("PERTINENT HISTORY", "history"),
    ("HISTORY AND COMPARISON", "history"), ("COMPARISON STUDIES", "comparison"), ("ADDENDUM NOTE", "addendum"),
])
def test_contains_rules(raw: str, canonical: str) -> None:
    assert normalize_section_name(raw) == canonical


@pytest.mark.parametrize("raw", ["CHEST RADIOGRAPH", "PORTABLE SEMI-ERECT", "PA AND LATERAL VIEWS", "AP VIEW",
                                 "FRONTAL UPRIGHT", "RIBS, LEFT", "TWO VIEWS", "BONE WINDOW"])
def test_view_phrases_mean_findings(raw: str) -> None:
    assert normalize_section_name(raw) == "findings"


@pytest.mark.parametrize("raw, canonical", [("TECHNIQUE", "technique"), ("NOTIFICATION", "notification"),
                                            ("PROCEDURE", "procedure"), ("OPINION", "opinion")])
def test_other_names_pass_through_lower_cased(raw: str, canonical: str) -> None:
    assert normalize_section_name(raw) == canonical


# --- which section wins ---------------------------------------------------------------------------------

def test_last_occurrence_wins() -> None:
    text = report("IMPRESSION: first", "FINDINGS: f1", "CONCLUSION: second", "COMPARISON: c1",
                  "COMPARISONS: c2")
    r = extract_report(text)
    assert (r.findings, r.impression, r.other["comparison"]) == ("f1", "second", "c2")


def test_empty_findings_or_impression_never_override_a_filled_one() -> None:
    r = extract_report(report("FINDINGS: real findings", "IMPRESSION: real impression", "FINDINGS:", "",
                              "IMPRESSION:", ""))
    assert (r.findings, r.impression) == ("real findings", "real impression")


def test_empty_sections() -> None:
    r = extract_report(report("INDICATION:", "", "FINDINGS:", "", "IMPRESSION: ok"))
    assert (r.findings, r.impression, r.other["indication"]) == ("", "ok", "")
    assert "findings" not in split_sections(report("FINDINGS:", "", "IMPRESSION: ok"))


def test_findings_and_impression_header_is_an_impression() -> None:
    for header in ("FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION", "FINDINGS/ IMPRESSION"):
        r = extract_report(report("INDICATION: cough", f"{header}: no acute process"))
        assert (r.findings, r.impression) == ("", "no acute process"), header


def test_view_phrase_header_holds_the_findings() -> None:
    r = extract_report(report("PA AND LATERAL VIEWS OF THE CHEST: clips", "IMPRESSION: none"))
    assert (r.findings, r.impression) == ("clips", "none")


# --- last_paragraph fallback ------------------------------------------------------------------------------

def test_no_headers_is_a_full_report_with_a_last_paragraph() -> None:
    r = extract_report(report("CHEST RADIOGRAPH", "", "Stable cardiomegaly.", "", "No edema."))
    assert r.fallback_used and (r.findings, r.impression) == ("", "")
    assert r.other == {"full report": "FINAL REPORT CHEST RADIOGRAPH", "last_paragraph":
                       "Stable cardiomegaly. No edema."}
    assert r.conclusion == "Stable cardiomegaly. No edema."


def test_fallback_splits_the_last_section_at_its_first_blank_line() -> None:
    r = extract_report(report("INDICATION: cough", "COMPARISON: None.", "", "Lungs clear.", "", "No effusion."))
    assert r.fallback_used
    assert r.other["comparison"] == "None."
    assert r.other["last_paragraph"] == "Lungs clear. No effusion."


def test_no_fallback_without_a_blank_line_or_with_findings() -> None:
    r = extract_report(report("INDICATION: cough", "COMPARISON: None.", "Lungs clear."))
    assert not r.fallback_used and "last_paragraph" not in r.other
    assert r.conclusion == "None. Lungs clear."  # official priority ends with comparison
    r = extract_report(report("FINDINGS: a", "", "b"))
    assert not r.fallback_used and r.findings == "a b"


def test_a_single_unbroken_text_has_no_sections_but_full_report() -> None:
    assert split_sections("just one line") == {"full report": "just one line"}
    assert split_sections("") == {"full report": ""}
    assert extract_report("") == SectionedReport("", "", {"full report": ""}, False)


# --- addenda ----------------------------------------------------------------------------------------------

SEP = "_" * 78


def test_addendum_at_the_top_is_split_off_at_the_underscores() -> None:
    text = "\n".join(["          FINAL ADDENDUM", " ADDENDUM:  Called to Dr. ___.", " ", " " + SEP,
                      "          FINAL REPORT", " FINDINGS:  f", " IMPRESSION:  i", ""])
    assert split_sections(text) == {"addendum": "Called to Dr. ___.", "preamble": "FINAL REPORT",
                                    "findings": "f", "impression": "i"}


def test_several_addenda_are_joined_and_headerless_addendum_text_is_kept() -> None:
    text = "\n".join([" FINAL ADDENDUM", " Second thought.", " " + SEP, " ADDENDUM: first thought.",
                      " " + SEP, " FINDINGS: f", " IMPRESSION: i"])
    assert extract_report(text).other["addendum"] == "Second thought. first thought."


def test_report_sections_win_over_addendum_sections_but_addendum_fills_gaps() -> None:
    text = "\n".join([" ADDENDUM: x", " IMPRESSION: from addendum", " " + SEP, " FINDINGS: f", " IMPRESSION: i"])
    assert extract_report(text).impression == "i"
    text = "\n".join([" ADDENDUM: x", " IMPRESSION: from addendum", " " + SEP, " FINDINGS: f"])
    assert extract_report(text).impression == "from addendum"


def test_phi_underscores_are_not_separators() -> None:
    r = extract_report(report("FINDINGS: seen by ___ on ___", "___", "IMPRESSION: i"))
    assert r.findings == "seen by ___ on ___ ___" and "addendum" not in r.other


# --- the dataclass ---------------------------------------------------------------------------------------

def test_sectioned_report_is_frozen_and_builds_from_a_csv_row() -> None:
    r = SectionedReport.from_sections({"findings": " a\n b ", "impression": "", "last_paragraph": "",
                                       "comparison": "None."})
    assert (r.findings, r.impression, r.other, r.fallback_used) == ("a b", "", {"last_paragraph": "",
                                                                                   "comparison": "None."}, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.findings = "x"  # type: ignore[misc]
    assert SectionedReport.from_sections({"findings": "", "impression": "", "last_paragraph": "p"}).fallback_used


@given(st.text(alphabet=st.sampled_from(list("AFINDGSMPRO :_\n \t.x")), max_size=300))
def test_any_text_sections_without_error(text: str) -> None:
    sections = split_sections(text)
    for value in sections.values():
        assert value == " ".join(value.split())
    r = extract_report(text)
    assert r.findings == sections.get("findings", "") and r.impression == sections.get("impression", "")
