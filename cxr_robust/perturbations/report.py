"""Report-side perturbations: meaning-preserving edits of the candidate reports' FINDINGS / IMPRESSION text.

An image perturbation asks whether a model still finds the right report when the *film* degrades; a report
perturbation asks whether it still finds it when the *report* is written differently: typing errors,
abbreviations, another sentence order, one section only, or synonyms. Each is a :class:`ReportPerturbation`
with the image suite's severity axis (levels 1-5, 0 = the report as written) and seeding: every random draw of
a study comes from ``np.random.default_rng(derive_seed(run_seed, study_id, name, severity))``, so a study's
text never depends on which other studies are in the batch, their order, or the worker.

The word tables (:mod:`cxr_robust.data.report_words`: abbreviations, synonyms, the protected cues, the
sentence-split exceptions) are part of every :meth:`ReportPerturbation.cache_key`, so editing a table re-encodes the texts.
:func:`canonical_text` maps a text written with any of these tables (and with :class:`Typos`' swaps undone for
the words it knows) to one canonical spelling; :func:`cxr_robust.data.phantom_labels.read_labels` reads
through it, which is how the tests check that a perturbation never adds or removes a finding.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from cxr_robust.perturbations.base import Params, Perturbation, canonical_severity, derive_seed
from cxr_robust.data.report_words import (ABBREVIATIONS, HEDGE_CUES, NEGATION_CUES, PHRASE_GUARDS,
                                         SENTENCE_ABBREVIATIONS, SYNONYMS, WORD, PhraseTable, abbreviation_table,
                                         join_sentences, protected, recase, replace_spans, split_sentences,
                                         swap_positions, synonym_table, table_hash, terminated)

if TYPE_CHECKING:
    import torch

# ----------------------------------------------------------------------------------------------------------
# The protocol


class _OnlyLevelOne(dict):
    """The level table of an on/off perturbation: level 1 only. Levels 2-5 do not exist (``check_severity``
    refuses them); looking one up gives an empty string, which is how the parameter table shows them."""

    def __missing__(self, key: Any) -> str:
        return ""


class ReportPerturbation(Perturbation):
    """A perturbation of report text (the retrieval candidates), not of pixels.

    Subclasses set the class attributes and :meth:`edit`; :meth:`perturb` is the contract the engine calls: pure
    and deterministic, severity 0 (and a report :meth:`not_applicable` says it cannot be perturbed) returns the
    inputs unchanged, every random draw comes from :meth:`rng` (``derive_seed(run_seed, study_id, name,
    severity)``).
    """

    side: ClassVar[str] = "report"
    group: ClassVar[str] = "report"
    version: ClassVar[int] = 1
    word_tables: ClassVar[tuple[Any, ...]] = ()
    """The tables the text depends on; their hash is part of :meth:`cache_key`."""

    def cache_key(self) -> dict[str, Any]:
        """Name, version, level table and a hash of :attr:`word_tables`: a table change re-encodes."""
        return {**super().cache_key(), "side": self.side, "tables": table_hash(*self.word_tables)}

    def rng(self, study_id: str, severity: float, run_seed: int) -> np.random.Generator:
        """The study's random stream at ``severity``."""
        return np.random.default_rng(derive_seed(run_seed, study_id, self.name, severity))

    def not_applicable(self, findings: str, impression: str) -> bool:
        """True when this perturbation cannot change the report (it is then returned as written, and the engine
        counts it); False by default."""
        return False

    def perturb(self, findings: str, impression: str, study_id: str, severity: float,
                run_seed: int) -> tuple[str, str]:
        """``(findings, impression)`` of study ``study_id`` perturbed at ``severity``."""
        severity = self.check_severity(severity)
        if severity == 0 or self.not_applicable(findings, impression):
            return findings, impression
        return self.edit(findings or "", impression or "", self.rng(study_id, severity, run_seed),
                         self.parameter(severity))

    def edit(self, findings: str, impression: str, rng: np.random.Generator, parameter: Any) -> tuple[str, str]:
        """The perturbed sections, drawing only from ``rng``; ``parameter`` is :attr:`levels` of the severity."""
        raise NotImplementedError

    def perturb_reports(self, findings: Sequence[str], impressions: Sequence[str], study_ids: Sequence[str],
                        severity: float, run_seed: int) -> tuple[list[str], list[str]]:
        """:meth:`perturb` of every study; each study's text depends on its own id and text only."""
        if not len(findings) == len(impressions) == len(study_ids):
            raise ValueError(f"{self.name}: {len(findings)} findings, {len(impressions)} impressions and "
                             f"{len(study_ids)} study ids; give one of each per study")
        severity = self.check_severity(severity)
        out_f, out_i = [], []
        for f, i, sid in zip(findings, impressions, study_ids):
            pf, pi = self.perturb(f, i, sid, severity, run_seed)
            out_f.append(pf)
            out_i.append(pi)
        return out_f, out_i

    def _no_pixels(self) -> TypeError:
        return TypeError(f"{self.name} perturbs report text, not pixels: call perturb(findings, impression, "
                         "study_id, severity, run_seed) or perturb_reports(...)")

    def sample_params(self, image_ids: Sequence[str], severity: float, run_seed: int, height: int,
                      width: int) -> Params:
        raise self._no_pixels()

    def apply(self, pixels: "torch.Tensor", params: Params, severity: float) -> "torch.Tensor":
        raise self._no_pixels()

    def __call__(self, pixels: "torch.Tensor", image_ids: Sequence[str], severity: float,  # type: ignore[override]
                 run_seed: int) -> "torch.Tensor":
        raise self._no_pixels()


# ----------------------------------------------------------------------------------------------------------
# The built-ins


class Typos(ReportPerturbation):
    """Typing errors: two adjacent inner letters of a word swapped (``effusion`` -> ``effsuion``).

    Each word of at least four letters is hit with the level's probability; the swap never moves the first or
    last letter (readers, human or subword, lean on them most) and never touches a negation or hedge cue
    (:data:`NEGATION_CUES`, :data:`HEDGE_CUES`), so a typo can blur a word but never flip a finding's polarity
    or certainty. Words are runs of ASCII letters; digits, punctuation and spacing are kept.
    """

    name = "typos"
    short = "typo"
    description = "two adjacent inner letters of a word swapped, for a share of the words of >= 4 letters"
    parameter_name = "probability that a word of >= 4 letters gets a swap"
    levels = {1: 0.05, 2: 0.1, 3: 0.2, 4: 0.3, 5: 0.5}
    source = ("Belinkov & Bisk, ICLR 2018 ('swap' noise: two adjacent letters, first and last kept, words of >= 4 "
              "letters); per-word probabilities: this project, from occasional to every other word")
    word_tables = (sorted(NEGATION_CUES), sorted(HEDGE_CUES))

    def _section(self, text: str, rng: np.random.Generator, p: float) -> str:
        def swap(m: re.Match[str]) -> str:
            w = m.group(0)
            if len(w) < 4 or protected(w):
                return w
            positions = swap_positions(w)
            if not positions or rng.random() >= p:
                return w
            i = positions[int(rng.integers(len(positions)))]
            return w[:i] + w[i + 1] + w[i] + w[i + 2:]

        return WORD.sub(swap, text)

    def edit(self, findings: str, impression: str, rng: np.random.Generator, parameter: Any) -> tuple[str, str]:
        return self._section(findings, rng, parameter), self._section(impression, rng, parameter)


class _TableSwitch(ReportPerturbation):
    """Shared by abbreviations and synonyms: each occurrence of a table form switched with probability p."""

    def table(self) -> PhraseTable:
        raise NotImplementedError

    def choose(self, group: tuple[str, ...], form: str, rng: np.random.Generator) -> str:
        raise NotImplementedError

    def _section(self, text: str, rng: np.random.Generator, p: float) -> str:
        table = self.table()
        edits = []
        for start, end, gi, form in table.find(text):
            if rng.random() < p:
                new = self.choose(table.groups[gi], form, rng)
                edits.append((start, end, recase(text, start, end, form, new)))
        return replace_spans(text, edits)

    def edit(self, findings: str, impression: str, rng: np.random.Generator, parameter: Any) -> tuple[str, str]:
        return self._section(findings, rng, parameter), self._section(impression, rng, parameter)


class Abbreviations(_TableSwitch):
    """Abbreviations expanded and expansions contracted, from one table of standard radiology abbreviations
    (:data:`ABBREVIATIONS`): ``PTX`` <-> ``pneumothorax``, ``ET tube`` <-> ``endotracheal tube``, ``RUL`` <->
    ``right upper lobe``, ``bilat`` <-> ``bilateral``... Each occurrence is switched with the level's
    probability; whole words only, case carried over (``Endotracheal tube`` at a sentence start)."""

    name = "abbreviations"
    short = "abbrev"
    description = "standard radiology abbreviations expanded and their expansions contracted"
    parameter_name = "probability that an abbreviation or expansion is switched"
    levels = {1: 0.1, 2: 0.25, 3: 0.5, 4: 0.75, 5: 1.0}
    source = ("this project: no published abbreviation perturbation of chest reports; the table holds common "
              "radiology abbreviations (PTX, ET tube, NG tube, PICC, CHF, RUL..., bilat, AP/PA view, CXR)")
    word_tables = (ABBREVIATIONS,)

    def table(self) -> PhraseTable:
        return abbreviation_table()

    def choose(self, group: tuple[str, ...], form: str, rng: np.random.Generator) -> str:
        # group[0] is the expansion, the rest its abbreviations: expand, or contract to the first abbreviation.
        return group[1] if form == group[0] else group[0]


class Synonyms(_TableSwitch):
    """Meaning-preserving paraphrase from one synonym table (:data:`SYNONYMS`): ``cardiomegaly`` -> ``cardiac
    enlargement``, ``pleural effusion`` -> ``pleural fluid collection``, ``nodule`` -> ``nodular opacity``,
    ``noted`` -> ``seen``... Each occurrence is replaced, with the level's probability, by another phrase of its
    group drawn uniformly. No group changes laterality, size, certainty or negation."""

    name = "synonyms"
    short = "synonym"
    description = "phrases replaced by true synonyms (cardiomegaly -> cardiac enlargement, ...)"
    parameter_name = "probability that a phrase of the synonym table is replaced"
    levels = {1: 0.1, 2: 0.25, 3: 0.5, 4: 0.75, 5: 1.0}
    source = ("this project: word substitution as in NLP robustness attacks (e.g. TextFooler, Jin et al., AAAI "
              "2020), restricted to a hand-checked table of radiology synonyms so that meaning is kept")
    word_tables = (SYNONYMS, PHRASE_GUARDS)

    def table(self) -> PhraseTable:
        return synonym_table()

    def choose(self, group: tuple[str, ...], form: str, rng: np.random.Generator) -> str:
        others = [g for g in group if g != form]
        return others[int(rng.integers(len(others)))]


class SentenceShuffle(ReportPerturbation):
    """Sentence order changed within each section (FINDINGS and IMPRESSION separately, never across them).

    Levels 1-4 apply that many random adjacent transpositions per section (1, 2, 3, 5: each swaps sentence
    ``i`` and ``i + 1`` for a uniform ``i``, so a later one can undo an earlier one: the level sets how far
    order moves on average); level 5 draws a uniform random permutation. A section of one sentence is unchanged.
    Separators between sentences stay where they were; a last sentence without a full stop gets one if it moves.
    """

    name = "sentence_shuffle"
    short = "shuffle"
    description = "sentence order permuted within each report section"
    parameter_name = "random adjacent sentence transpositions per section (full: a uniform permutation)"
    levels = {1: 1, 2: 2, 3: 3, 4: 5, 5: "full"}
    source = ("this project: radiologists and templates order the same findings differently; a retrieval model "
              "should match what is reported, not where")
    word_tables = (sorted(SENTENCE_ABBREVIATIONS),)

    def _section(self, text: str, rng: np.random.Generator, moves: Any) -> str:
        head, sentences, seps, tail = split_sentences(text)
        n = len(sentences)
        if n < 2:
            return text
        if moves == "full":
            order = [int(i) for i in rng.permutation(n)]
        else:
            order = list(range(n))
            for _ in range(int(moves)):
                i = int(rng.integers(n - 1))
                order[i], order[i + 1] = order[i + 1], order[i]
        if order == list(range(n)):
            return text
        moved = [sentences[j] for j in order]
        moved = [s if k == n - 1 or terminated(s) else s + "." for k, s in enumerate(moved)]
        return join_sentences(head, moved, seps, tail)

    def edit(self, findings: str, impression: str, rng: np.random.Generator, parameter: Any) -> tuple[str, str]:
        return self._section(findings, rng, parameter), self._section(impression, rng, parameter)


class _OneSection(ReportPerturbation):
    """Keep one section and drop the other: an on/off perturbation (severity 0 or 1)."""

    keep: ClassVar[str] = ""
    drop: ClassVar[str] = ""
    default_severities = (1.0,)
    unit = "on/off"

    def check_severity(self, severity: float) -> float:
        try:
            value = float(severity)
        except (TypeError, ValueError):
            value = float("nan")
        if value not in (0.0, 1.0):
            raise ValueError(f"{self.name}: severity {severity!r} is not valid; it is on or off: 1 keeps only the "
                             f"{self.keep} section, 0 is the full report")
        return canonical_severity(value)

    def parse_severity(self, text: str) -> float:
        t = str(text).strip().lower()
        return self.check_severity({"on": 1, "off": 0}.get(t, t[1:] if t[:1] == "s" else t))

    def format_severity(self, severity: float) -> str:
        return "on" if self.check_severity(severity) else "off"

    def label(self, severity: float) -> str:
        return f"{self.keep} only" if self.check_severity(severity) else f"{self.name} off (full report)"

    def id_token(self, severity: float) -> str:
        return self.short if self.check_severity(severity) else f"{self.short}-off"

    def _sections(self, findings: str, impression: str) -> tuple[str, str]:
        raise NotImplementedError

    def edit(self, findings: str, impression: str, rng: np.random.Generator, parameter: Any) -> tuple[str, str]:
        return self._sections(findings, impression)


class FindingsOnly(_OneSection):
    """The FINDINGS section alone, IMPRESSION dropped; a report without findings is left whole (not applicable)."""

    name = "findings_only"
    short = "findings_only"
    keep, drop = "findings", "impression"
    description = "the impression section dropped: findings only"
    parameter_name = "section dropped"
    levels = _OnlyLevelOne({1: "impression"})
    source = ("this project: MIMIC-CXR reports have findings, impression or both, and retrieval papers differ in "
              "which section they index")

    def not_applicable(self, findings: str, impression: str) -> bool:
        return not (findings or "").strip()

    def _sections(self, findings: str, impression: str) -> tuple[str, str]:
        return findings, ""


class ImpressionOnly(_OneSection):
    """The IMPRESSION section alone, FINDINGS dropped; a report without an impression is left whole."""

    name = "impression_only"
    short = "impression_only"
    keep, drop = "impression", "findings"
    description = "the findings section dropped: impression only"
    parameter_name = "section dropped"
    levels = _OnlyLevelOne({1: "findings"})
    source = FindingsOnly.source

    def not_applicable(self, findings: str, impression: str) -> bool:
        return not (impression or "").strip()

    def _sections(self, findings: str, impression: str) -> tuple[str, str]:
        return "", impression


REPORT_SUITE: tuple[type[ReportPerturbation], ...] = (Typos, Abbreviations, SentenceShuffle, FindingsOnly,
                                                      ImpressionOnly, Synonyms)
"""The built-in report perturbations, in the order the registry lists them (after the image suite)."""
