"""Split a MIMIC-CXR free-text report into named sections, following the official MIMIC-CXR rules.

This is an independent implementation of the behaviour of MIT-LCP/mimic-cxr ``txt/section_parser.py`` and
``txt/create_section_files.py`` (the code that produced ``mimic_cxr_sectioned.csv``). Rules implemented:

1. **Header pattern.** A section starts at a line that begins with whitespace, then an upper-case header made
   of ``A-Z``, space, ``( ) / , -``, then a colon followed by whitespace (official regex
   ``\\n ([A-Z ()/,-]+):\\s``). The section's text runs from after that whitespace to the next header. As in
   the official parser, the next header is only searched from the first line break after the header, so the
   first line of a section is never itself read as a header (this avoids bad parses).
2. **Preamble / full report.** Text before the first header is ``preamble``; a report without any header is
   one section, ``full report``.
3. **Name normalisation.** Names are lower-cased and stripped, then, in this order: (a) the frequency map of
   the official parser (frequent names, synonyms and misspellings -> canonical name, see
   :data:`FREQUENT_SECTION_NAMES`); (b) the "contains" rule: a name containing ``impression``, ``findings``,
   ``history``, ``comparison`` or ``addendum`` becomes that word (first match in that order); (c) a name
   mentioning a view or body part (``chest``, ``portable``, ``pa and lateral``, ``ribs``, ...) becomes
   ``findings``. Anything else passes through lower-cased.
4. **Combined headers.** ``FINDINGS AND IMPRESSION:`` / ``FINDINGS/IMPRESSION:`` map to ``impression`` (frequency
   map); such a report therefore has no findings section, exactly as in the official output.
5. **Empty findings/impression are dropped** before anything else looks at them (a title such as
   ``CHEST, PA LATERAL:`` followed directly by the next header is not a findings section).
6. **Last occurrence wins.** When a name occurs more than once, the last non-dropped section is used
   (``list_rindex`` in the official code).
7. **last_paragraph fallback.** When no findings and no impression section exists and the last section has
   a blank line, the text after its first blank line becomes a new section ``last_paragraph``.
8. **Addenda.** MIMIC-CXR puts addenda at the top of the report, separated from the final report by a line
   of underscores. The official parser has no special case for them (the separator and the ``FINAL REPORT``
   title end up inside the addendum's text). Here a line of 20 or more underscores ends a block: every block
   but the last is an addendum, its headerless text is named ``addendum`` and all addendum text is joined
   in document order (addenda are supplements, so none is dropped). Sections inside an addendum
   (e.g. ``IMPRESSION:``) are kept in document order, so the final report's sections, which come later,
   still win -- as in the official parser.

Deliberate, documented leniencies that cannot change the result on MIMIC-CXR text (where every line starts
with a space): a header may also start at the very beginning of the text or at a line with no leading
space, a header at the very end of the text needs no whitespace after its colon, a header must contain a
letter, and blank lines may hold any whitespace. The official per-study overrides (``custom_mimic_cxr_rules``,
54 badly formatted reports) are data about specific credentialed reports and are not reproduced here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["SectionedReport", "extract_report", "normalize_section_name", "split_sections",
           "FREQUENT_SECTION_NAMES"]

# Group 1 is the raw header; the match consumes the single whitespace character after the colon (official).
# The first letter is matched explicitly so the pattern cannot backtrack quadratically on long lines.
_HEADER = re.compile(r"\n[ \t]*([ ()/,-]*[A-Z][A-Z ()/,-]*):(?:\s|\Z)")
_SEPARATOR = re.compile(r"^[ \t]*_{20,}[ \t]*$", re.MULTILINE)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_TITLE_LINE = re.compile(r"^[ \t]*FINAL (?:ADDENDUM|REPORT)[ \t]*$", re.MULTILINE)

# canonical name -> raw (lower-case) names that the official frequency map sends there.
_FREQUENCY_GROUPS: dict[str, tuple[str, ...]] = {
    "preamble": ("preamble",),
    "impression": (
        "impression", "conclusion", "findings and impression", "findings/impression", "findings/ impression",
        # The official map sends this fragment to impression (not indication); kept to reproduce its output.
        "ndication",
        "impresson", "imprression", "imoression", "impressoin", "imprssion", "impresion", "imperssion",
        "mpression", "impession",
    ),
    "findings": ("findings", "chest, two views", "finding", "findins", "findindgs", "findgings", "findngs",
                 "findnings", "finidngs", "reference findings"),
    "comparison": ("comparison", "comparisons", "reference exam", "comparison exam", "comparison film",
                   "comparision", "comparsion", "comparrison", "comparisions"),
    "indication": ("indication", "reason for examination", "reason for exam", "clinical indication",
                   "idication"),
    "history": ("history", "clinical history", "clinical information", "patient history", "pfi"),
    "examination": ("examination", "exam", "type of examination"),
    "technique": ("technique",),
    "notification": ("notification",),
    "recommendations": ("recommendations", "recommendation(s)", "recommendation"),
    "addendum": ("addendum",),
    "date": ("date",),
    "comment": ("comment",),
    "wet read": ("wet read", "wetread"),
}
FREQUENT_SECTION_NAMES: Mapping[str, str] = {raw: canon for canon, raws in _FREQUENCY_GROUPS.items()
                                             for raw in raws}
"""The official frequency map: lower-case raw header -> canonical section name."""

# "Contains" rule: checked in this order, so "impression and findings" is an impression.
_MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
# Headers that describe the whole study (views, body part) hold the findings.
_VIEW_PHRASES = re.compile("|".join(re.escape(p) for p in (
    "chest", "portable", "pa and lateral", "lateral and pa", "ap and lateral", "lateral and ap", "frontal and",
    "two views", "frontal view", "pa view", "ap view", "one view", "lateral view", "bone window",
    "frontal upright", "frontal semi-upright", "ribs", "pa and lat")))

_MAIN_NAMES = ("findings", "impression")


def normalize_section_name(name: str) -> str:
    """The canonical name of a raw section header (frequency map, then contains rules, then view phrases)."""
    s = name.lower().strip()
    if s in FREQUENT_SECTION_NAMES:
        return FREQUENT_SECTION_NAMES[s]
    for main in _MAIN_SECTIONS:
        if main in s:
            return main
    if _VIEW_PHRASES.search(s):
        return "findings"
    return s


def _split_block(block: str, lead_name: str, lead_name_if_no_header: str) -> list[tuple[str, str]]:
    """(raw name, raw text) pairs of one block; headerless leading text gets ``lead_name``."""
    t = "\n" + block  # lets a header on the first line match, like every later line
    m = _HEADER.search(t)
    if m is None:
        return [(lead_name_if_no_header, block)]
    out = [(lead_name, t[1:m.start()])]
    while m is not None:
        start = m.end()
        # Official rule: look for the next header only from the first line break after this header.
        nl = t.find("\n", start)
        nxt = _HEADER.search(t, nl if nl != -1 else len(t))
        out.append((m.group(1), t[start:nxt.start() if nxt else len(t)]))
        m = nxt
    return out


def _raw_sections(text: str) -> list[tuple[str, str]]:
    """Normalised (name, raw text) pairs in document order, addenda first, empty findings/impression dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks = _SEPARATOR.split(text)
    # The final report is the last block with content; blocks before it are addenda.
    filled = [i for i, b in enumerate(blocks) if b.strip()]
    body_at = filled[-1] if filled else len(blocks) - 1
    pairs: list[tuple[str, str]] = []
    for block in blocks[:body_at]:
        if block.strip():
            pairs += _split_block(_TITLE_LINE.sub("", block), "addendum", "addendum")
    pairs += _split_block(blocks[body_at], "preamble", "full report")
    named = [(normalize_section_name(n) if n not in ("preamble", "full report") else n, s) for n, s in pairs]
    return [(n, s) for n, s in named if not (n in _MAIN_NAMES and not s.strip())]


def _with_fallback(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], bool]:
    """Add ``last_paragraph`` when there is no findings/impression and the last section has a blank line."""
    if not pairs or any(n in _MAIN_NAMES for n, _ in pairs):
        return pairs, False
    name, text = pairs[-1]
    m = _BLANK_LINE.search(text)
    if m is None:
        return pairs, False
    return pairs[:-1] + [(name, text[:m.start()]), ("last_paragraph", text[m.end():])], True


def _clean(text: str) -> str:
    """Whitespace runs (line breaks, MIMIC's leading spaces) become single spaces."""
    return " ".join(text.split())


def _collect(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Last occurrence of each name wins; addenda are joined instead, in document order."""
    out: dict[str, str] = {}
    addenda = [_clean(s) for n, s in pairs if n == "addendum" and s.strip()]
    for n, s in pairs:
        out[n] = _clean(s)
    if "addendum" in out:
        out["addendum"] = " ".join(addenda)
    return out


def split_sections(text: str) -> dict[str, str]:
    """Canonical section name -> whitespace-normalised text, by the official MIMIC-CXR rules (module doc)."""
    pairs, _ = _with_fallback(_raw_sections(text))
    return _collect(pairs)


@dataclass(frozen=True)
class SectionedReport:
    """A report's findings and impression (last occurrence, whitespace-normalised; ``""`` when absent).

    ``other`` holds every other section by canonical name (``preamble``, ``comparison``, ``addendum``,
    ``last_paragraph``, ...). ``fallback_used`` is True when the report had no findings and no impression
    and its last paragraph was split off into ``other["last_paragraph"]``; findings and impression are
    never filled from that fallback, so a filter on both stays the official one.
    """

    findings: str
    impression: str
    other: dict[str, str] = field(default_factory=dict)
    fallback_used: bool = False

    @property
    def conclusion(self) -> str:
        """The official "conclusion" text: impression > findings > last_paragraph > comparison."""
        for text in (self.impression, self.findings, self.other.get("last_paragraph", ""),
                     self.other.get("comparison", "")):
            if text:
                return text
        return ""

    @classmethod
    def from_sections(cls, sections: Mapping[str, str], fallback_used: bool | None = None) -> "SectionedReport":
        """Build from a name -> text mapping (e.g. a row of the official ``mimic_cxr_sectioned.csv``)."""
        clean = {k: _clean(v or "") for k, v in sections.items()}
        findings, impression = clean.pop("findings", ""), clean.pop("impression", "")
        if fallback_used is None:
            fallback_used = bool(clean.get("last_paragraph")) and not (findings or impression)
        return cls(findings=findings, impression=impression, other=clean, fallback_used=fallback_used)


def extract_report(text: str) -> SectionedReport:
    """Section ``text`` (:func:`split_sections`) and return its findings, impression and the rest."""
    pairs, fallback = _with_fallback(_raw_sections(text))
    return SectionedReport.from_sections(_collect(pairs), fallback_used=fallback)
