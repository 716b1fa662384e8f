"""Report-side perturbations: meaning-preserving edits of the candidate reports' FINDINGS / IMPRESSION text.

An image perturbation asks whether a model still finds the right report when the *film* degrades; a report
perturbation asks whether it still finds it when the *report* is written differently: typing errors,
abbreviations, another sentence order, one section only, or synonyms. Each is a :class:`ReportPerturbation`
with the image suite's severity axis (levels 1-5, 0 = the report as written) and seeding: every random draw of
a study comes from ``np.random.default_rng(derive_seed(run_seed, study_id, name, severity))``, so a study's
text never depends on which other studies are in the batch, their order, or the worker.

The word tables (:data:`ABBREVIATIONS`, :data:`SYNONYMS`, the protected cues, the sentence-split exceptions)
are part of every :meth:`ReportPerturbation.cache_key`, so editing a table re-encodes the texts.
:func:`canonical_text` maps a text written with any of these tables (and with :class:`Typos`' swaps undone for
the words it knows) to one canonical spelling; :func:`cxr_robust.data.phantom_labels.read_labels` reads
through it, which is how the tests check that a perturbation never adds or removes a finding.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Sequence

import numpy as np

from cxr_robust.perturbations.base import Params, Perturbation, canonical_severity, derive_seed

if TYPE_CHECKING:
    import torch

# ----------------------------------------------------------------------------------------------------------
# Word tables

NEGATION_CUES: frozenset[str] = frozenset({
    "no", "not", "without", "negative", "free", "absent", "absence", "none", "neither", "nor", "never",
    "denies", "resolved", "cannot", "excluded"})
"""Words that negate a finding; :class:`Typos` never touches them (nor :data:`HEDGE_CUES`)."""

HEDGE_CUES: frozenset[str] = frozenset({
    "borderline", "possible", "possibly", "probable", "probably", "questionable", "suspected", "likely", "may",
    "might", "suggest", "suggests", "suggestive", "concerning", "equivocal"})
"""Words that make a finding uncertain; :class:`Typos` never touches them either."""

ABBREVIATIONS: tuple[tuple[str, str], ...] = (
    ("PTX", "pneumothorax"),
    ("ET tube", "endotracheal tube"),
    ("ETT", "endotracheal tube"),
    ("NG tube", "nasogastric tube"),
    ("OG tube", "orogastric tube"),
    ("PICC", "peripherally inserted central catheter"),
    ("CVC", "central venous catheter"),
    ("ICD", "implantable cardioverter-defibrillator"),
    ("CHF", "congestive heart failure"),
    ("COPD", "chronic obstructive pulmonary disease"),
    ("RUL", "right upper lobe"),
    ("RML", "right middle lobe"),
    ("RLL", "right lower lobe"),
    ("LUL", "left upper lobe"),
    ("LLL", "left lower lobe"),
    ("SVC", "superior vena cava"),
    ("IVC", "inferior vena cava"),
    ("CP angle", "costophrenic angle"),
    ("CP angles", "costophrenic angles"),
    ("bilat", "bilateral"),
    ("AP view", "anteroposterior view"),
    ("PA view", "posteroanterior view"),
    ("PA and lateral", "posteroanterior and lateral"),
    ("CXR", "chest radiograph"),
)
"""(abbreviation, expansion): standard radiology abbreviations. An abbreviation expands to its expansion; an
expansion contracts to the first abbreviation listed for it (``endotracheal tube`` -> ``ET tube``). Upper-case
letters of a form match only upper case (``PTX``, not ``ptx``); lower-case letters match either case. "PA"
and "AP" appear only with "view" / "and lateral": alone, PA is also the pulmonary artery. Lobes are never
mapped from zones: a zone is not a lobe."""

SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("heart size is normal", "heart size is within normal limits", "cardiac size is normal",
     "cardiac size is within normal limits"),
    ("heart size", "cardiac size"),
    ("cardiomegaly", "cardiac enlargement", "enlargement of the cardiac silhouette"),
    ("pleural effusion", "pleural fluid collection"),
    ("pleural effusions", "pleural fluid collections"),
    ("consolidation", "consolidative opacity"),
    ("nodule", "nodular opacity"),
    ("nodules", "nodular opacities"),
    ("opacity", "opacification"),
    ("noted", "seen"),
    ("in place", "in situ"),
    ("central line", "central venous line", "central venous catheter"),
    ("pacemaker", "pacer"),
    ("moderate to severe", "moderate-to-severe"),
    ("acute cardiopulmonary process", "acute cardiopulmonary abnormality"),
    ("cardiomediastinal silhouette", "cardiomediastinal contours"),
    ("osseous", "bony"),
    ("edema", "oedema"),
)
"""Groups of interchangeable phrases, the first the canonical one. Only true synonyms: no group changes a
laterality, a size, a certainty or a negation, and each phrase reads correctly wherever the others do in a
chest report (``mild cardiac enlargement``, ``No pleural fluid collection``). A phrase followed by one of
:data:`PHRASE_GUARDS`' words is left alone (``in place of`` means "instead of")."""

PHRASE_GUARDS: dict[str, str] = {"in place": "of"}
"""Phrase -> a word that, when it follows the phrase, means the phrase is not the table's (never switched)."""

SENTENCE_ABBREVIATIONS: frozenset[str] = frozenset({
    "e.g.", "i.e.", "vs.", "approx.", "cf.", "dr.", "fig.", "mr.", "mrs.", "ms."})
"""Words ending in a period that do not end a sentence (a decimal such as ``2.5 cm`` never does either)."""


def _table_hash(*tables: Any) -> str:
    return hashlib.blake2b(repr(tables).encode(), digest_size=8).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Phrase tables: one regex for every form, case carried over on replacement


def _form_pattern(form: str) -> str:
    """Regex of one form: upper-case letters match upper case only, lower-case letters either case, spaces
    any run of whitespace; a :data:`PHRASE_GUARDS` word after the form blocks the match."""
    out = []
    for ch in form:
        if ch == " ":
            out.append(r"\s+")
        elif ch.isalpha() and ch.islower():
            out.append(f"[{ch}{ch.upper()}]")
        else:
            out.append(re.escape(ch))
    guard = PHRASE_GUARDS.get(form)
    if guard:
        out.append(rf"(?!\s+{_form_pattern(guard)}(?![A-Za-z0-9-]))")
    return "".join(out)


class PhraseTable:
    """Groups of interchangeable forms matched as whole words (never inside a longer or hyphenated word),
    longest form first, left to right without overlaps."""

    def __init__(self, groups: Iterable[Sequence[str]]) -> None:
        self.groups: tuple[tuple[str, ...], ...] = tuple(tuple(g) for g in groups)
        self.lookup: dict[str, tuple[int, str]] = {}
        for gi, group in enumerate(self.groups):
            for form in group:
                key = " ".join(form.lower().split())
                if key in self.lookup and self.lookup[key][0] != gi:
                    raise ValueError(f"phrase table: {form!r} is in two groups")
                self.lookup.setdefault(key, (gi, form))
        forms = sorted({form for g in self.groups for form in g}, key=lambda f: (-len(f), f))
        self.regex = re.compile(r"(?<![A-Za-z0-9-])(?:" + "|".join(_form_pattern(f) for f in forms)
                                + r")(?![A-Za-z0-9-])")

    def find(self, text: str) -> list[tuple[int, int, int, str]]:
        """``(start, end, group, form)`` of every occurrence in ``text``."""
        out = []
        for m in self.regex.finditer(text):
            gi, form = self.lookup[" ".join(m.group(0).lower().split())]
            out.append((m.start(), m.end(), gi, form))
        return out


def _sentence_start(text: str, pos: int) -> bool:
    before = text[:pos].rstrip()
    return not before or before[-1] in ".!?"


def _all_caps_sentence(text: str, start: int, end: int) -> bool:
    """True when the sentence around ``text[start:end]`` has other letters and all are upper case (a report
    written in capitals)."""
    left = max(text.rfind(c, 0, start) for c in ".!?") + 1
    ends = [k for k in (text.find(c, end) for c in ".!?") if k >= 0]
    right = min(ends) if ends else len(text)
    letters = [c for c in text[left:start] + text[end:right] if c.isalpha()]
    return len(letters) > 1 and all(c.isupper() for c in letters)


def carry_case(matched: str, form: str, replacement: str, at_sentence_start: bool, all_caps: bool = False) -> str:
    """``replacement`` written in the case of ``matched`` (which is the table's ``form`` as found in a text).

    A form with upper-case letters (an abbreviation) carries no case of its own: the replacement is capitalised at
    a sentence start, and all upper case in a sentence written in capitals (``all_caps``). For an all-lower-case
    form the text's capitals (ALL CAPS, Capitalised) carry over. Upper-case letters of the replacement (``PTX``)
    are always kept.
    """
    def cap(s: str) -> str:
        return s[:1].upper() + s[1:]

    if any(c.isupper() for c in form):
        if all_caps:
            return replacement.upper()
        return cap(replacement) if at_sentence_start else replacement
    letters = [c for c in matched if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return replacement.upper()
    return cap(replacement) if matched[:1].isupper() else replacement


def _recase(text: str, start: int, end: int, form: str, replacement: str) -> str:
    """:func:`carry_case` of the occurrence ``text[start:end]`` of ``form``."""
    return carry_case(text[start:end], form, replacement, _sentence_start(text, start),
                      _all_caps_sentence(text, start, end))


def _replace(text: str, edits: list[tuple[int, int, str]]) -> str:
    out, last = [], 0
    for start, end, new in edits:
        out.append(text[last:start])
        out.append(new)
        last = end
    out.append(text[last:])
    return "".join(out)


@functools.lru_cache(maxsize=None)
def _abbreviation_table() -> PhraseTable:
    groups: dict[str, list[str]] = {}
    for abbr, expansion in ABBREVIATIONS:
        groups.setdefault(expansion, [expansion]).append(abbr)
    return PhraseTable(groups.values())


@functools.lru_cache(maxsize=None)
def _synonym_table() -> PhraseTable:
    return PhraseTable(SYNONYMS)


def expand_abbreviations(text: str) -> str:
    """``text`` with every abbreviation of :data:`ABBREVIATIONS` written out (case carried over)."""
    table = _abbreviation_table()
    edits = []
    for start, end, gi, form in table.find(text):
        expansion = table.groups[gi][0]
        if form != expansion:
            edits.append((start, end, _recase(text, start, end, form, expansion)))
    return _replace(text, edits)


def canonical_synonyms(text: str) -> str:
    """``text`` with every phrase of :data:`SYNONYMS` written as its group's first (canonical) phrase."""
    table = _synonym_table()
    edits = [(s, e, _recase(text, s, e, form, table.groups[gi][0]))
             for s, e, gi, form in table.find(text) if form != table.groups[gi][0]]
    return _replace(text, edits)


# ----------------------------------------------------------------------------------------------------------
# Typos: the swap and its undoing

_WORD = re.compile(r"[A-Za-z]+")


def typo_key(word: str) -> tuple[str, str, str]:
    """What :class:`Typos` keeps of a word: first letter, the multiset of inner letters, last letter (lower case)."""
    w = word.lower()
    return (w[:1], "".join(sorted(w[1:-1])), w[-1:])


def swap_positions(word: str) -> list[int]:
    """Indices ``i`` where swapping letters ``i`` and ``i + 1`` changes ``word`` and keeps its first and last."""
    return [i for i in range(1, len(word) - 2) if word[i] != word[i + 1]]


def protected(word: str) -> bool:
    """True for a negation or hedge cue, which no report perturbation misspells."""
    return word.lower() in NEGATION_CUES or word.lower() in HEDGE_CUES


@functools.lru_cache(maxsize=8)
def _typo_lookup(words: frozenset[str]) -> dict[tuple[str, str, str], str]:
    """Typo key -> the one known word with that key (keys shared by two known words are left out)."""
    found: dict[tuple[str, str, str], set[str]] = {}
    for w in words:
        if len(w) >= 4:
            found.setdefault(typo_key(w), set()).add(w)
    return {k: next(iter(v)) for k, v in found.items() if len(v) == 1}


@functools.lru_cache(maxsize=1)
def table_words() -> frozenset[str]:
    """Every word (lower case) of the abbreviation and synonym tables and the cue lists."""
    text = " ".join([*(f for pair in ABBREVIATIONS for f in pair), *(f for g in SYNONYMS for f in g)])
    return frozenset(w.lower() for w in _WORD.findall(text)) | NEGATION_CUES | HEDGE_CUES


@functools.lru_cache(maxsize=8)
def _known_words(vocabulary: tuple[str, ...]) -> frozenset[str]:
    return table_words() | frozenset(w.lower() for w in vocabulary)


def undo_typos(text: str, vocabulary: Iterable[str] = ()) -> str:
    """``text`` with each unknown word that :class:`Typos` could have made from a known word (same first and
    last letter, same inner letters) written as that word, in the case of the text. Known words: the tables'
    and ``vocabulary``."""
    lookup = _typo_lookup(_known_words(tuple(vocabulary)))
    known = set(lookup.values())

    def fix(m: re.Match[str]) -> str:
        w = m.group(0)
        if len(w) < 4 or w.lower() in known:
            return w
        target = lookup.get(typo_key(w))
        if target is None:
            return w
        if w.isupper():
            return target.upper()
        return target[:1].upper() + target[1:] if w[:1].isupper() else target

    return _WORD.sub(fix, text)


def canonical_text(text: str, vocabulary: Iterable[str] = ()) -> str:
    """One spelling of ``text`` whatever the report perturbations did to its words: typos undone (for the
    tables' words and ``vocabulary``), abbreviations expanded, synonyms made canonical, lower case, single
    spaces. Sentence order and sections are kept as they are."""
    text = canonical_synonyms(expand_abbreviations(undo_typos(text, tuple(vocabulary))))
    return " ".join(text.lower().split())


# ----------------------------------------------------------------------------------------------------------
# Sentences


def split_sentences(text: str) -> tuple[str, list[str], list[str], str]:
    """``(head, sentences, separators, tail)`` with ``head + s0 + sep0 + s1 + ... + tail == text``.

    A sentence ends at ``.``, ``!`` or ``?`` (and closing quotes or brackets) followed by white space, unless the
    word ending there is one of :data:`SENTENCE_ABBREVIATIONS` (``e.g.``); decimals (``2.5 cm``) have no space after
    their point and never split.
    """
    stripped = text.strip()
    if not stripped:
        return text, [], [], ""
    head = text[:len(text) - len(text.lstrip())]
    tail = text[len(text.rstrip()):]
    body = text[len(head):len(text) - len(tail)]
    sentences, seps, start = [], [], 0
    for m in re.finditer(r"[.!?]+[\"')\]]*(\s+)", body):
        word = body[start:m.start(1)].split()[-1].lower()
        if word in SENTENCE_ABBREVIATIONS:
            continue
        sentences.append(body[start:m.start(1)])
        seps.append(m.group(1))
        start = m.end(1)
    sentences.append(body[start:])
    return head, sentences, seps, tail


def join_sentences(head: str, sentences: Sequence[str], seps: Sequence[str], tail: str) -> str:
    """Inverse of :func:`split_sentences`."""
    parts = [head]
    for i, s in enumerate(sentences):
        parts.append(s)
        if i < len(seps):
            parts.append(seps[i])
    parts.append(tail)
    return "".join(parts)


def _terminated(sentence: str) -> bool:
    return bool(re.search(r"[.!?][\"')\]]*$", sentence))


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
        return {**super().cache_key(), "side": self.side, "tables": _table_hash(*self.word_tables)}

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

        return _WORD.sub(swap, text)

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
                edits.append((start, end, _recase(text, start, end, form, new)))
        return _replace(text, edits)

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
        return _abbreviation_table()

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
        return _synonym_table()

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
        moved = [s if k == n - 1 or _terminated(s) else s + "." for k, s in enumerate(moved)]
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
