"""Which part of a report a model sees as the candidate text."""

from __future__ import annotations

from enum import Enum


class TextPolicy(str, Enum):
    """How a study's report becomes one candidate string.

    - ``findings+impression``: ``findings + " " + impression`` (the default of the benchmark);
    - ``impression``: the impression only (CXR-RePaiR's training text);
    - ``longest``: the longer of findings and impression by character count (CXR-CLIP's evaluation text;
      its README's ``max(finding, impression)`` is a lexicographic max, which the authors did not mean).
    """

    FINDINGS_IMPRESSION = "findings+impression"
    IMPRESSION = "impression"
    LONGEST = "longest"

    @classmethod
    def parse(cls, value: "str | TextPolicy") -> "TextPolicy":
        """Accept a policy or its string name; a clear error lists the valid names."""
        if isinstance(value, TextPolicy):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown report text policy {value!r}; choose one of: {names}") from None


def report_text(findings: str, impression: str, policy: "str | TextPolicy") -> str:
    """The candidate text of one report under ``policy`` (whitespace-normalised)."""
    policy = TextPolicy.parse(policy)
    f = " ".join((findings or "").split())
    i = " ".join((impression or "").split())
    if policy is TextPolicy.IMPRESSION:
        return i
    if policy is TextPolicy.LONGEST:
        # Ties go to findings, deterministically.
        return f if len(f) >= len(i) else i
    return f"{f} {i}".strip()
