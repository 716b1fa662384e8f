"""CheXpert labels of phantom studies: from the generator's description (the truth) and read back from the text.

* :func:`label_vector` turns a :class:`~cxr_robust.data.phantom.StudyDescription` into the 14 CheXpert labels
  (:data:`~cxr_robust.data.labels.CHEXPERT_LABELS` order, int8 codes of :mod:`cxr_robust.data.labels`).
* :func:`phantom_labels` / :func:`labels_of_set` label a whole phantom split without rendering an image.
* :func:`read_labels` is a small rule-based reader of phantom report text. It recovers :func:`label_vector`
  exactly from every study's report, and it knows the vocabulary of the report perturbations
  (:mod:`cxr_robust.perturbations.report`: abbreviations, synonyms, typos), so the tests can check that a
  meaning-preserving perturbation never adds or removes a finding.

The generator only writes six findings (heart size, pleural effusion, pneumothorax, focal opacity reported as
consolidation, nodules, support devices); every other label is 0 (negative: the generator never produces it),
and :func:`read_labels` reads only these six plus No Finding. It is a phantom reader, not a CheXpert labeler.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np

from cxr_robust.data.labels import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN
from cxr_robust.data.phantom import SPLITS, StudyDescription, describe_study, study_seed

_INDEX = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
DISEASE_LABELS: tuple[str, ...] = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation",
                                   "Lung Lesion")
"""The findings the generator writes that count against No Finding (support devices do not)."""
READ_LABELS: tuple[str, ...] = (*DISEASE_LABELS, "Support Devices", "No Finding")
"""The labels :func:`read_labels` reads; the other seven are always 0."""


def label_vector(desc: StudyDescription) -> np.ndarray:
    """The 14 CheXpert labels of ``desc`` (int8, :data:`CHEXPERT_LABELS` order).

    Cardiomegaly is 1 for heart grades 2-3 (mild, moderate to severe), UNCERTAIN (-1) for grade 1 ("borderline
    heart size") and 0 for a normal heart; No Finding is 1 exactly when ``desc.is_normal`` (devices do not
    count); labels the generator never produces are 0.
    """
    out = np.full(len(CHEXPERT_LABELS), NEGATIVE, dtype=np.int8)
    out[_INDEX["Cardiomegaly"]] = (NEGATIVE, UNCERTAIN, POSITIVE, POSITIVE)[desc.heart_grade]
    out[_INDEX["Pleural Effusion"]] = POSITIVE if desc.effusion_side != "none" else NEGATIVE
    out[_INDEX["Pneumothorax"]] = POSITIVE if desc.pneumothorax != "none" else NEGATIVE
    out[_INDEX["Consolidation"]] = POSITIVE if desc.opacity_zone else NEGATIVE
    out[_INDEX["Lung Lesion"]] = POSITIVE if desc.nodules else NEGATIVE
    out[_INDEX["Support Devices"]] = POSITIVE if desc.devices else NEGATIVE
    out[_INDEX["No Finding"]] = POSITIVE if desc.is_normal else NEGATIVE
    return out


def _check_split(split: str, seed: int, n: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown phantom split {split!r}; choose one of: {', '.join(SPLITS)}")
    for what, value in (("seed", seed), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"phantom_labels: {what}={value!r} must be a non-negative integer")


def phantom_labels(split: str, seed: int, n: int) -> np.ndarray:
    """Labels ``(n, 14)`` int8 of studies 0..n-1 of (``split``, ``seed``): descriptions only, no rendering."""
    _check_split(split, seed, n)
    out = np.empty((int(n), len(CHEXPERT_LABELS)), dtype=np.int8)
    for i in range(int(n)):
        out[i] = label_vector(describe_study(np.random.default_rng(study_seed(split, seed, i, "description"))))
    return out


_STUDY_ID = re.compile(r"ph-(?P<split>[a-z]+)-s(?P<seed>\d+)-(?P<index>\d{6,})")


def labels_of_set(data: Any) -> np.ndarray:
    """Labels ``(N, 14)`` of a phantom :class:`~cxr_robust.data.retrieval_set.RetrievalSet`, in its study order.

    Read from the set's ``meta`` (split, seed) and study ids (``ph-{split}-s{seed}-{index:06d}``), so a subset or
    reordering of a phantom set is labelled correctly; any other set is a ``ValueError``.
    """
    meta = getattr(data, "meta", None) or {}
    name = getattr(data, "name", "?")
    if meta.get("generator") != "cxr_robust.data.phantom":
        raise ValueError(f"labels_of_set: {name!r} is not a phantom set (its meta names no phantom generator); "
                         "labels of other sets come from their own label files")
    split, seed = meta.get("split"), meta.get("seed")
    _check_split(str(split), seed, 0)
    out = np.empty((len(data.study_ids), len(CHEXPERT_LABELS)), dtype=np.int8)
    for row, sid in enumerate(data.study_ids):
        m = _STUDY_ID.fullmatch(str(sid))
        if not m or m["split"] != split or int(m["seed"]) != seed:
            raise ValueError(f"labels_of_set: study id {sid!r} of {name!r} is not a phantom id of split "
                             f"{split!r}, seed {seed!r} (ph-{split}-s{seed}-<index>)")
        rng = np.random.default_rng(study_seed(split, int(seed), int(m["index"]), "description"))
        out[row] = label_vector(describe_study(rng))
    return out


# ----------------------------------------------------------------------------------------------------------
# Reading the labels back from report text

_NEGATION = re.compile(r"\b(?:no|not|without|negative for|free of|absence of|absent)\b")
"""Negation cues; a cue negates every mention after it up to the end of the sentence or a scope break."""
_SCOPE_BREAK = re.compile(r"\b(?:but|however|although|except)\b")
_HEDGE = re.compile(r"\b(?:borderline|possible|possibly|probable|questionable|suspected|may|might)\b")
"""Uncertainty cues; each hedges the mentions of its own clause (commas and 'and' end a clause)."""
_NORMAL_HEART = re.compile(r"\bheart size is (?:normal|within normal limits)\b|\bnormal heart size\b")

_MENTIONS: dict[str, re.Pattern[str]] = {
    "Cardiomegaly": re.compile(r"\bcardiomegaly\b|\bheart size\b"),
    "Pleural Effusion": re.compile(r"\beffusions?\b"),
    "Pneumothorax": re.compile(r"\bpneumothora(?:x|ces)\b"),
    "Consolidation": re.compile(r"\bconsolidations?\b"),
    "Lung Lesion": re.compile(r"\bnodules?\b|\bmass(?:es)?\b"),
    "Support Devices": re.compile(
        r"\b(?:endotracheal tube|tracheostomy tube|nasogastric tube|orogastric tube|feeding tube|enteric tube|"
        r"chest tube|central (?:venous )?line|central venous catheter|peripherally inserted central catheter|"
        r"et tube|ett|ng tube|og tube|picc|cvc|icd|pacemaker|implantable cardioverter-defibrillator|"
        r"support devices|devices)\b"),
}


def _sentences(text: str) -> list[str]:
    """Sentences of one section (a period followed by a space or the end; decimals stay whole)."""
    return [s for s in re.split(r"(?<=[.!?;])\s+", text) if s.strip()]


VOCABULARY: tuple[str, ...] = (
    # the reader's own words
    "cardiomegaly", "heart", "size", "normal", "within", "limits", "borderline", "effusion", "effusions",
    "pneumothorax", "pneumothoraces", "consolidation", "consolidations", "nodule", "nodules", "mass", "masses",
    "endotracheal", "tracheostomy", "nasogastric", "orogastric", "feeding", "enteric", "chest", "tube", "central",
    "venous", "line", "catheter", "peripherally", "inserted", "pacemaker", "implantable", "cardioverter",
    "defibrillator", "support", "devices", "possible", "possibly", "probable", "questionable", "suspected",
    "might", "negative", "without", "free", "absence", "absent", "however", "although", "except",
    # every other word of four or more letters the phantom generator writes
    "there", "mild", "moderate", "severe", "small", "large", "left", "right", "bilateral", "pleural", "noted",
    "focal", "patchy", "airspace", "upper", "lower", "zone", "lungs", "clear", "place", "acute",
    "cardiopulmonary", "process", "disease")
"""Words whose typos (:class:`~cxr_robust.perturbations.report.Typos`) the reader undoes, besides the report
perturbations' own tables: its own words and every word of four or more letters of a phantom report."""


@functools.lru_cache(maxsize=1)
def _canonicalizer() -> Any:
    """The report perturbations' normaliser (typos undone, abbreviations expanded, synonyms canonical)."""
    from cxr_robust.data.report_words import canonical_text

    return functools.partial(canonical_text, vocabulary=VOCABULARY)


def _read_sentence(sentence: str, found: dict[str, int]) -> None:
    s = sentence.lower()
    negated_from = len(s) + 1
    neg = _NEGATION.search(s)
    if neg:
        negated_from = neg.start()
    stop = _SCOPE_BREAK.search(s, negated_from) if neg else None
    negated_to = stop.start() if stop else len(s) + 1
    clauses = [(m.start(), m.end()) for m in re.finditer(r"[^,;:]+?(?=,|;|:|\band\b|$)", s)]
    for label, pattern in _MENTIONS.items():
        for m in pattern.finditer(s):
            if negated_from <= m.start() < negated_to:
                code = NEGATIVE
            elif label == "Cardiomegaly" and m.group(0) == "heart size":
                if _NORMAL_HEART.search(s):
                    code = NEGATIVE
                elif re.search(r"\bborderline heart size\b", s):
                    code = UNCERTAIN
                else:
                    continue  # "heart size" alone says nothing
            else:
                clause = next(((a, b) for a, b in clauses if a <= m.start() < b), (0, len(s)))
                code = UNCERTAIN if _HEDGE.search(s, clause[0], m.start()) else POSITIVE
            found[label] = max(found.get(label, NEGATIVE), code, key=lambda c: (c == POSITIVE, c == UNCERTAIN))


def read_labels(findings: str, impression: str) -> np.ndarray:
    """The 14 labels (int8) a phantom report states, read from its FINDINGS and IMPRESSION text.

    Positive anywhere beats uncertain beats negative; a label never mentioned is 0; No Finding is 1 when no
    disease label (:data:`DISEASE_LABELS`) is positive or uncertain. Synonyms, abbreviations and typos of the
    report perturbations are read as their canonical words first.
    """
    canonical = _canonicalizer()
    found: dict[str, int] = {}
    for section in (findings, impression):
        for sentence in _sentences(canonical(section or "")):
            _read_sentence(sentence, found)
    out = np.full(len(CHEXPERT_LABELS), NEGATIVE, dtype=np.int8)
    for label, code in found.items():
        out[_INDEX[label]] = code
    out[_INDEX["No Finding"]] = NEGATIVE if any(found.get(lab, NEGATIVE) != NEGATIVE for lab in DISEASE_LABELS) \
        else POSITIVE
    return out
