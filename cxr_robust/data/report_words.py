"""How report wording varies: word tables (abbreviations, synonyms, cues), case-keeping replacement, typo keys,
sentence splitting.

Data-layer vocabulary shared by :mod:`cxr_robust.perturbations.report` (the report perturbations) and the
readers that check them
(:func:`canonical_text` undoes what they do, so :func:`cxr_robust.data.phantom_labels.read_labels` can check that
a perturbation never adds or removes a finding). Pure string functions; no NumPy, no torch.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, Iterable, Sequence

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


def table_hash(*tables: Any) -> str:
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


def recase(text: str, start: int, end: int, form: str, replacement: str) -> str:
    """:func:`carry_case` of the occurrence ``text[start:end]`` of ``form``."""
    return carry_case(text[start:end], form, replacement, _sentence_start(text, start),
                      _all_caps_sentence(text, start, end))


def replace_spans(text: str, edits: list[tuple[int, int, str]]) -> str:
    out, last = [], 0
    for start, end, new in edits:
        out.append(text[last:start])
        out.append(new)
        last = end
    out.append(text[last:])
    return "".join(out)


@functools.lru_cache(maxsize=None)
def abbreviation_table() -> PhraseTable:
    groups: dict[str, list[str]] = {}
    for abbr, expansion in ABBREVIATIONS:
        groups.setdefault(expansion, [expansion]).append(abbr)
    return PhraseTable(groups.values())


@functools.lru_cache(maxsize=None)
def synonym_table() -> PhraseTable:
    return PhraseTable(SYNONYMS)


def expand_abbreviations(text: str) -> str:
    """``text`` with every abbreviation of :data:`ABBREVIATIONS` written out (case carried over)."""
    table = abbreviation_table()
    edits = []
    for start, end, gi, form in table.find(text):
        expansion = table.groups[gi][0]
        if form != expansion:
            edits.append((start, end, recase(text, start, end, form, expansion)))
    return replace_spans(text, edits)


def canonical_synonyms(text: str) -> str:
    """``text`` with every phrase of :data:`SYNONYMS` written as its group's first (canonical) phrase."""
    table = synonym_table()
    edits = [(s, e, recase(text, s, e, form, table.groups[gi][0]))
             for s, e, gi, form in table.find(text) if form != table.groups[gi][0]]
    return replace_spans(text, edits)


# ----------------------------------------------------------------------------------------------------------
# Typos: the swap and its undoing

WORD = re.compile(r"[A-Za-z]+")


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
    return frozenset(w.lower() for w in WORD.findall(text)) | NEGATION_CUES | HEDGE_CUES


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

    return WORD.sub(fix, text)


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


def terminated(sentence: str) -> bool:
    return bool(re.search(r"[.!?][\"')\]]*$", sentence))
