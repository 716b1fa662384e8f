"""Report-side perturbations (cxr_robust/perturbations/report.py) and the phantom label reader they are checked with
(cxr_robust/data/phantom_labels.py).

Texts: phantom reports (``study_text("eval", 0, i)``) and a few MIMIC-style sentences written for these tests
(never real MIMIC-CXR text). Each perturbation is held to the invariant that fits what it does; the docstrings
say which and why.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr_robust.data.labels import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN
from cxr_robust.data.phantom import SPLITS, StudyDescription, phantom, study_text
from cxr_robust.data.phantom_labels import (VOCABULARY, label_vector, labels_of_set, phantom_labels,
                                            read_labels)
from cxr_robust.perturbations import ReportPerturbation, available, get_perturbation
from cxr_robust.data.report_words import (ABBREVIATIONS, HEDGE_CUES, NEGATION_CUES, SYNONYMS, canonical_text,
                                         split_sentences, table_words, typo_key)

REPORT = [n for n in available() if get_perturbation(n).side == "report"]
LEVELLED = ["typos", "abbreviations", "sentence_shuffle", "synonyms"]
ON_OFF = ["findings_only", "impression_only"]
MEANING_KEPT = ["abbreviations", "synonyms", "sentence_shuffle"]
N_EVAL = SPLITS["eval"]
IDX = {name: i for i, name in enumerate(CHEXPERT_LABELS)}

MIMIC_STYLE = [
    # Written for these tests in the style of chest reports; not taken from any data set.
    ("PA and lateral views of the chest. The ET tube terminates 4.5 cm above the carina. Right PICC ends in the "
     "SVC. No PTX. Small bilateral pleural effusions, e.g. blunting of the left CP angle.",
     "Lines and tubes in place. Small bilat effusions. No pneumothorax."),
    ("Heart size is normal. The cardiomediastinal silhouette is unremarkable. No focal consolidation, pleural "
     "effusion, or pneumothorax. No acute osseous abnormality.", "No acute cardiopulmonary process."),
    ("Moderate cardiomegaly. Possible small left pleural effusion. NG tube in place of the prior OG tube. "
     "Patchy opacity in the LLL may reflect atelectasis.", "Cardiomegaly. Possible left effusion. CHF."),
    ("", "AP VIEW OF THE CHEST. NO PNEUMOTHORAX."),
    ("Nodule in the right upper lobe measures 1.2 cm. Dr. Smith was notified.", ""),
]


@lru_cache(maxsize=1)
def eval_studies() -> list[tuple[str, StudyDescription, str, str]]:
    """``(study id, description, findings, impression)`` of every eval study (text only: about 0.3 s)."""
    return [(f"ph-eval-s0-{i:06d}", *study_text("eval", 0, i)) for i in range(N_EVAL)]


def texts() -> st.SearchStrategy[tuple[str, str]]:
    """A phantom report, a MIMIC-style report or arbitrary text."""
    phantom_report = st.integers(0, N_EVAL - 1).map(lambda i: eval_studies()[i][2:])
    free = st.tuples(st.text(max_size=80), st.text(max_size=40))
    return st.one_of(phantom_report, st.sampled_from(MIMIC_STYLE), free)


study_ids = st.text(alphabet="abcdefghij0123456789-_", min_size=1, max_size=12)
seeds = st.integers(0, 2**31 - 1)


def levels(name: str) -> list[float]:
    return [s for s in get_perturbation(name).default_severities if s]


# ----- the protocol ----------------------------------------------------------------------------------------------
def test_the_report_suite_is_registered_after_the_image_suite_with_documented_levels() -> None:
    names = available()
    assert REPORT == ["typos", "abbreviations", "sentence_shuffle", "findings_only", "impression_only", "synonyms"]
    assert names[-len(REPORT):] == REPORT, "report perturbations come after every image perturbation"
    shorts = {n: get_perturbation(n).short for n in REPORT}
    assert shorts == {"typos": "typo", "abbreviations": "abbrev", "sentence_shuffle": "shuffle",
                      "findings_only": "findings_only", "impression_only": "impression_only", "synonyms": "synonym"}
    for name in REPORT:
        p = get_perturbation(name)
        assert isinstance(p, ReportPerturbation) and p.side == "report" and p.group == "report" and p.version == 1
        assert p.description and p.parameter_name and p.source, name
        assert p.cache_key()["tables"] and p.cache_key()["side"] == "report"
        assert not p.not_applicable("Heart size is normal.", "No acute disease.")
    for name in LEVELLED:
        p = get_perturbation(name)
        assert sorted(p.levels) == [1, 2, 3, 4, 5] and p.parameter(0) is None and p.parameter(3) == p.levels[3]
    assert get_perturbation("typo").levels == {1: 0.05, 2: 0.1, 3: 0.2, 4: 0.3, 5: 0.5}
    assert get_perturbation("shuffle").levels == {1: 1, 2: 2, 3: 3, 4: 5, 5: "full"}


def test_a_word_table_is_part_of_the_cache_key(monkeypatch: pytest.MonkeyPatch) -> None:
    p = get_perturbation("synonyms")
    before = p.cache_key()
    monkeypatch.setattr(type(p), "word_tables", (SYNONYMS + (("pneumothorax", "air leak"),),))
    assert p.cache_key() != before and p.cache_key()["levels"] == before["levels"]


@pytest.mark.parametrize("name", REPORT)
def test_a_report_perturbation_refuses_pixels(name: str) -> None:
    p = get_perturbation(name)
    x = np.zeros((1, 1, 8, 8), dtype=np.uint8)  # refused before it is looked at (no torch import needed)
    for call in (lambda: p(x, ["a"], 1, 0), lambda: p.apply(x, {}, 1), lambda: p.sample_params(["a"], 1, 0, 8, 8)):
        with pytest.raises(TypeError, match=f"{name} perturbs report text"):
            call()


def test_severity_errors_name_the_perturbation() -> None:
    for name in ON_OFF:
        p = get_perturbation(name)
        with pytest.raises(ValueError, match=f"{name}: severity 2 is not valid"):
            p.perturb("Heart size is normal.", "No acute disease.", "a", 2, 0)
        assert p.default_severities == (1.0,) and p.parse_severity("on") == 1 and p.parse_severity("s0") == 0
        assert (p.format_severity(1), p.format_severity(0)) == ("on", "off")
        assert p.id_token(1) == p.short and p.label(1) == f"{p.keep} only" and "full report" in p.label(0)
    with pytest.raises(ValueError, match="typos: severity 6"):
        get_perturbation("typos").perturb("a", "b", "a", 6, 0)
    with pytest.raises(ValueError, match="2 findings, 1 impressions and 2 study ids"):
        get_perturbation("typos").perturb_reports(["a", "b"], ["c"], ["x", "y"], 1, 0)


# ----- identity, determinism, batch independence ---------------------------------------------------------------
@pytest.mark.parametrize("name", REPORT)
@settings(max_examples=15, deadline=None)
@given(report=texts(), study_id=study_ids, seed=seeds, data=st.data())
def test_severity_zero_is_the_identity_and_every_call_is_deterministic(name: str, report: tuple[str, str],
                                                                      study_id: str, seed: int,
                                                                      data: st.DataObject) -> None:
    """Severity 0 returns the report as written; the same (text, id, severity, seed) gives the same text; and
    perturbing again from the original gives the same text (the id -> text mapping is a function)."""
    p = get_perturbation(name)
    findings, impression = report
    assert p.perturb(findings, impression, study_id, 0, seed) == (findings, impression)
    sev = data.draw(st.sampled_from(levels(name)))
    once = p.perturb(findings, impression, study_id, sev, seed)
    assert all(isinstance(s, str) for s in once)
    assert p.perturb(findings, impression, study_id, sev, seed) == once
    assert p.perturb_reports([findings], [impression], [study_id], sev, seed) == ([once[0]], [once[1]])


@pytest.mark.parametrize("name", REPORT)
@settings(max_examples=8, deadline=None)
@given(indices=st.lists(st.integers(0, N_EVAL - 1), min_size=1, max_size=8, unique=True), seed=seeds,
       data=st.data())
def test_a_study_text_does_not_depend_on_the_batch(name: str, indices: list[int], seed: int,
                                                   data: st.DataObject) -> None:
    """A study's perturbed text is the same alone, in any batch and in any order: draws are keyed by its id."""
    p = get_perturbation(name)
    sev = data.draw(st.sampled_from(levels(name)))
    rows = [eval_studies()[i] for i in indices]
    ids, findings, impressions = [r[0] for r in rows], [r[2] for r in rows], [r[3] for r in rows]
    whole = p.perturb_reports(findings, impressions, ids, sev, seed)
    for k, (sid, f, i) in enumerate(zip(ids, findings, impressions)):
        assert p.perturb(f, i, sid, sev, seed) == (whole[0][k], whole[1][k])
    order = data.draw(st.permutations(range(len(rows))))
    shuffled = p.perturb_reports([findings[k] for k in order], [impressions[k] for k in order],
                                 [ids[k] for k in order], sev, seed)
    assert shuffled == ([whole[0][k] for k in order], [whole[1][k] for k in order])


# ----- the label reader ------------------------------------------------------------------------------------------
def test_read_labels_recovers_the_generator_labels_on_every_eval_study() -> None:
    truth = np.stack([label_vector(d) for _, d, _, _ in eval_studies()])
    read = np.stack([read_labels(f, i) for _, _, f, i in eval_studies()])
    assert read.dtype == np.int8 and read.shape == (N_EVAL, 14)
    assert int((read == truth).all(axis=1).sum()) == N_EVAL
    # Every label the generator writes occurs both ways in the eval split, so the check has teeth.
    for label in ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Lung Lesion",
                  "Support Devices", "No Finding"):
        assert {POSITIVE, NEGATIVE} <= set(truth[:, IDX[label]].tolist()), label
    assert (truth[:, IDX["Cardiomegaly"]] == UNCERTAIN).any()
    untouched = [IDX[n] for n in CHEXPERT_LABELS if n not in {"Cardiomegaly", "Pleural Effusion", "Pneumothorax",
                                                              "Consolidation", "Lung Lesion", "Support Devices",
                                                              "No Finding"}]
    assert (truth[:, untouched] == NEGATIVE).all()


def test_phantom_labels_and_labels_of_set_follow_the_study_ids() -> None:
    labels = phantom_labels("eval", 0, 40)
    assert labels.dtype == np.int8 and labels.shape == (40, 14)
    assert (labels == np.stack([label_vector(d) for _, d, _, _ in eval_studies()[:40]])).all()
    data = phantom("tiny", 3, num_studies=5, image_size=64)
    assert (labels_of_set(data) == phantom_labels("tiny", 3, 5)).all()
    data.meta = {**data.meta, "generator": "somewhere else"}
    with pytest.raises(ValueError, match="not a phantom set"):
        labels_of_set(data)
    with pytest.raises(ValueError, match="unknown phantom split"):
        phantom_labels("test", 0, 3)


@pytest.mark.parametrize("findings, impression, expect", [
    ("No focal consolidation, pleural effusion, or pneumothorax.", "", {"No Finding": POSITIVE}),
    ("Possible small left pleural effusion.", "", {"Pleural Effusion": UNCERTAIN}),
    ("Borderline heart size, small right effusion.", "", {"Cardiomegaly": UNCERTAIN, "Pleural Effusion": POSITIVE}),
    ("The cardiac size is within normal limits. Right PTX.", "", {"Pneumothorax": POSITIVE}),
    ("Central line in place, but no pneumothorax.", "", {"Support Devices": POSITIVE, "No Finding": POSITIVE}),
    ("Pnuemothorax on the left.", "Cardiac enlargement.", {"Pneumothorax": POSITIVE, "Cardiomegaly": POSITIVE}),
    ("", "", {"No Finding": POSITIVE}),
])
def test_read_labels_on_written_sentences(findings: str, impression: str, expect: dict[str, int]) -> None:
    want = np.zeros(14, dtype=np.int8)
    for label, code in expect.items():
        want[IDX[label]] = code
    assert read_labels(findings, impression).tolist() == want.tolist()


def test_the_reader_knows_every_phantom_word_and_its_cues_are_protected() -> None:
    """The typo undoing is complete on phantom text (every word of >= 4 letters is known, and no two known words
    share a typo key), and every cue the reader negates or hedges with is one Typos never touches."""
    from cxr_robust.data import phantom_labels as pl

    known = table_words() | {w.lower() for w in VOCABULARY}
    corpus = {w.lower() for _, _, f, i in eval_studies() for w in re.findall(r"[A-Za-z]+", f + " " + i)}
    assert {w for w in corpus if len(w) >= 4} <= known
    keys: dict[tuple[str, str, str], str] = {}
    for w in sorted(w for w in known if len(w) >= 4):
        assert keys.setdefault(typo_key(w), w) == w, f"{w!r} and {keys[typo_key(w)]!r} share a typo key"
    for pattern in (pl._NEGATION, pl._HEDGE):
        cue_words = set(re.findall(r"[a-z]+", pattern.pattern.replace("?:", ""))) - {"b"}
        assert cue_words <= NEGATION_CUES | HEDGE_CUES | {"for", "of"}, cue_words


# ----- no finding added or removed ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MEANING_KEPT + ["typos"])
def test_labels_read_from_every_perturbed_eval_report_are_the_generator_labels(name: str) -> None:
    """Abbreviations, synonyms and sentence order never change what a report states: read_labels of every
    perturbed eval report equals label_vector of its study, at every level. (Typos too, because the reader undoes
    a swap of a word it knows: see the typo test for the invariant that does not rely on the reader.)"""
    p = get_perturbation(name)
    for sev in (1, 3, 5):
        for sid, desc, f, i in eval_studies():
            pf, pi = p.perturb(f, i, sid, sev, 7)
            assert (read_labels(pf, pi) == label_vector(desc)).all(), (name, sev, f, i, pf, pi)


@pytest.mark.parametrize("name", ["abbreviations", "synonyms"])
@settings(max_examples=20, deadline=None)
@given(report=texts(), study_id=study_ids, seed=seeds, data=st.data())
def test_abbreviations_and_synonyms_keep_the_canonical_text(name: str, report: tuple[str, str], study_id: str,
                                                           seed: int, data: st.DataObject) -> None:
    """Stronger than the labels: the text, with every table phrase written canonically, is unchanged (up to case),
    so no negation, laterality, size or certainty word can have moved, appeared or disappeared."""
    p = get_perturbation(name)
    sev = data.draw(st.sampled_from(levels(name)))
    out = p.perturb(*report, study_id, sev, seed)
    for before, after in zip(report, out):
        assert canonical_text(after) == canonical_text(before), (before, after)


def test_abbreviations_switch_whole_words_and_carry_case() -> None:
    p = get_perturbation("abbreviations")
    f, i = MIMIC_STYLE[0]
    out_f, out_i = p.perturb(f, i, "m0", 5, 0)  # level 5 switches every occurrence
    assert out_f == ("Posteroanterior and lateral views of the chest. The endotracheal tube terminates 4.5 cm above "
                     "the carina. Right peripherally inserted central catheter ends in the superior vena cava. No "
                     "pneumothorax. Small bilat pleural effusions, e.g. blunting of the left costophrenic angle.")
    assert out_i == "Lines and tubes in place. Small bilateral effusions. No PTX."
    assert p.perturb(*MIMIC_STYLE[3], "m3", 5, 0) == ("", "ANTEROPOSTERIOR VIEW OF THE CHEST. NO PTX.")
    assert p.perturb(*MIMIC_STYLE[4], "m4", 5, 0)[0].startswith("Nodule in the RUL measures 1.2 cm.")
    words = "PTXs, bilaterally, COPDX, pre-PTX, LLLobe, sPA view and RULE stay as written."
    assert p.perturb(words, "", "w", 5, 0) == (words, "")
    assert p.perturb("Endotracheal tube in place.", "", "e", 5, 0) == ("ET tube in place.", "")


def test_synonyms_replace_only_table_phrases() -> None:
    p = get_perturbation("synonyms")
    f, i = MIMIC_STYLE[2]
    out_f, out_i = p.perturb(f, i, "m2", 5, 0)
    assert "in place of the prior" in out_f, "'in place of' means 'instead of': never switched"
    assert out_f.startswith("Moderate ") and "Possible small left pleural " in out_f
    assert out_i.split(". ")[1] == "Possible left effusion"
    assert canonical_text(out_f) == canonical_text(f)
    table = [form for group in SYNONYMS for form in group]
    assert len(set(table)) == len(table), "a phrase in two synonym groups"
    for group in SYNONYMS:  # a group never mixes sides, sizes or negation
        words = [set(re.findall(r"[a-z]+", form)) for form in group]
        for guarded in ({"left", "right", "bilateral"}, {"small", "moderate", "large", "mild", "severe"},
                        NEGATION_CUES, HEDGE_CUES):
            assert len({frozenset(w & guarded) for w in words}) == 1, group


def test_abbreviation_table_is_one_to_one_per_direction() -> None:
    abbreviations = [a for a, _ in ABBREVIATIONS]
    assert len(set(a.lower() for a in abbreviations)) == len(abbreviations)
    assert not set(a.lower() for a in abbreviations) & {e.lower() for _, e in ABBREVIATIONS}


def _kendall(order: list[int]) -> int:
    return sum(1 for a in range(len(order)) for b in range(a + 1, len(order)) if order[a] > order[b])


def test_sentence_shuffle_permutes_sentences_within_each_section() -> None:
    """The multiset of sentences of each section is kept (sections never exchange sentences), and the average
    Kendall distance from the written order is non-decreasing in the level."""
    p = get_perturbation("sentence_shuffle")
    distance = {}
    for sev in levels("sentence_shuffle"):
        total = 0
        for sid, _, f, i in eval_studies()[:300]:
            out = p.perturb(f, i, sid, sev, 3)
            for before, after in zip((f, i), out):
                b, a = split_sentences(before)[1], split_sentences(after)[1]
                assert sorted(s.rstrip(".") for s in a) == sorted(s.rstrip(".") for s in b), (before, after)
                if len(set(b)) == len(b):
                    total += _kendall([b.index(s if s in b else s[:-1]) for s in a])
        distance[sev] = total
    values = [distance[s] for s in sorted(distance)]
    assert values[0] > 0 and all(x <= y for x, y in zip(values, values[1:])), distance


def test_sentence_split_keeps_abbreviations_and_decimals() -> None:
    head, sentences, seps, tail = split_sentences("  Effusion, e.g. on the left. Nodule 2.5 cm. Dr. Smith called. X")
    assert sentences == ["Effusion, e.g. on the left.", "Nodule 2.5 cm.", "Dr. Smith called.", "X"]
    assert (head, tail) == ("  ", "")
    p = get_perturbation("sentence_shuffle")
    out = p.perturb("No PTX.  Heart size is normal", "", "s", 5, 1)[0]
    assert out in ("No PTX.  Heart size is normal", "Heart size is normal.  No PTX."), out


def _letters_skeleton(text: str) -> str:
    return re.sub(r"[A-Za-z]+", "w", text)


def test_typos_swap_inner_letters_and_never_touch_cues() -> None:
    """Typos may break a finding word ("pnuemothorax"), so 'labels unchanged' is not their invariant by itself.
    What they guarantee, checked on every eval report at every level: punctuation, digits and spacing are kept;
    each changed word differs from the original by one swap of two adjacent inner letters (same first and last
    letter, same letters); negation and hedge cues are never changed; and with the swaps of known words undone
    (:func:`canonical_text`) the text is the original, so the labels read are the generator's. Half the eval
    studies at each level; the number of swaps is non-decreasing in the level."""
    p = get_perturbation("typos")
    counts = []
    for sev in levels("typos"):
        count = 0
        for sid, desc, f, i in eval_studies()[::2]:
            out = p.perturb(f, i, sid, sev, 11)
            for before, after in zip((f, i), out):
                assert _letters_skeleton(after) == _letters_skeleton(before)
                for wb, wa in zip(re.findall(r"[A-Za-z]+", before), re.findall(r"[A-Za-z]+", after)):
                    if wb == wa:
                        continue
                    count += 1
                    assert wb.lower() not in NEGATION_CUES | HEDGE_CUES
                    assert len(wb) >= 4 and typo_key(wb) == typo_key(wa) and (wa[0], wa[-1]) == (wb[0], wb[-1])
                    diff = [k for k in range(len(wb)) if wb[k] != wa[k]]
                    assert len(diff) == 2 and diff[1] == diff[0] + 1 and wa[diff[0]] == wb[diff[1]], (wb, wa)
                assert canonical_text(after, VOCABULARY) == canonical_text(before, VOCABULARY)
        counts.append(count)
    assert counts[0] > 0 and all(a <= b for a, b in zip(counts, counts[1:])), counts


@settings(max_examples=30, deadline=None)
@given(report=texts(), seed=seeds, sev=st.sampled_from([1, 2, 3, 4, 5]))
def test_typos_keep_the_skeleton_of_any_text(report: tuple[str, str], seed: int, sev: int) -> None:
    out = get_perturbation("typos").perturb(*report, "t", sev, seed)
    for before, after in zip(report, out):
        assert len(after) == len(before) and _letters_skeleton(after) == _letters_skeleton(before)
        assert sorted(after) == sorted(before)


def test_findings_only_and_impression_only_keep_one_section() -> None:
    """findings_only: the findings section alone still states every finding of the study (the phantom writes them
    all there); impression_only: the text is exactly the impression, and reads as it did."""
    fo, io = get_perturbation("findings_only"), get_perturbation("impression_only")
    for k, (sid, desc, f, i) in enumerate(eval_studies()):
        assert fo.perturb(f, i, sid, 1, 0) == (f, "")
        assert (read_labels(f, "") == label_vector(desc)).all()
        out = io.perturb(f, i, sid, 1, 0)
        assert out == ("", i)
        if k % 4 == 0:
            assert (read_labels(*out) == read_labels("", i)).all()
    # A report without the kept section cannot be perturbed: it is returned whole and flagged.
    assert fo.not_applicable("", "No acute disease.") and fo.perturb("", "No acute disease.", "x", 1, 0) == (
        "", "No acute disease.")
    assert io.not_applicable("Heart size is normal.", "  ") and io.perturb("Heart size is normal.", "  ", "x", 1,
                                                                           0) == ("Heart size is normal.", "  ")
    assert not fo.not_applicable("Heart size is normal.", "") and not io.not_applicable("", "No PTX.")


def test_stacked_perturbations_still_read_as_the_generator_labels() -> None:
    """Synonyms, then abbreviations, then sentence order, then typos, all at level 5, on a third of the eval set:
    the reader still recovers every study's labels (the tables compose: canonical text undoes them in order)."""
    names = ["synonyms", "abbreviations", "sentence_shuffle", "typos"]
    for sid, desc, f, i in eval_studies()[::3]:
        for name in names:
            f, i = get_perturbation(name).perturb(f, i, sid, 5, 5)
        assert (read_labels(f, i) == label_vector(desc)).all(), (f, i)


def test_the_documented_report_table_is_the_registry() -> None:
    """docs/perturbations.md's report-side table shows each perturbation's id and level parameters as registered."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "perturbations.md").read_text(encoding="utf-8")
    section = doc.split("## Report-side perturbations", 1)[1].split("\n#", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `")]
    assert [r[0].strip("`") for r in rows] == REPORT
    for row in rows:
        p = get_perturbation(row[0].strip("`"))
        assert row[1].strip("`") == p.short
        shown = [str(p.levels[k]) if not isinstance(p.levels[k], float) else f"{p.levels[k]:g}"
                 for k in sorted(p.levels)]
        assert row[3:3 + len(shown)] == shown, (p.name, row)
