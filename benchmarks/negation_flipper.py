"""Negated twins on the phantom evaluation set: the generator's exact twins and the rule-based flipper.

    python benchmarks/negation_flipper.py                                # prints the tables
    python benchmarks/negation_flipper.py --out docs/negation_flipper.json

Exact twins (:func:`cxr_robust.data.phantom.twin_report`): which finding each of the 994 eval studies' twins
flips and in which direction, and the share whose labels differ from the original's in exactly the declared
label (plus No Finding exactly when the study becomes or stops being normal), by the generator's labels
(``label_vector``) and by the phantom report reader (``read_labels``).

Rule-based flipper (:func:`cxr_robust.data.negation.flip_report`) on the same 994 phantom reports (the only
reports available here; its coverage on MIMIC-CXR is unmeasured): coverage (share of studies with a twin) and
correctness (share of twins whose ``read_labels`` differ from the original's in the declared label, in the
declared direction, and otherwise at most in No Finding; "strict": in the declared label only), on the
reports as written and on the reports rewritten by the report perturbations (synonyms and abbreviations at
level 5, typos at levels 1, 3, 5), which word the same findings differently. Phantom reports are far more
regular than real ones: these numbers bound nothing on MIMIC-CXR. Only numbers and label names are written.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from cxr_robust.data.labels import CHEXPERT_LABELS
from cxr_robust.data.negation import FLIP_FINDINGS, eligible_findings, flip_report
from cxr_robust.data.phantom import GENERATOR_VERSION, SPLITS, TWIN_FINDINGS, study_text, study_twin
from cxr_robust.data.phantom_labels import label_vector, read_labels
from cxr_robust.perturbations import get_perturbation


def _changed(a: np.ndarray, b: np.ndarray) -> set[str]:
    return {CHEXPERT_LABELS[k] for k in np.flatnonzero(a != b)}


def _direction(present: bool) -> str:
    return "absent -> present" if present else "present -> absent"


def exact_twins(split: str, seed: int, n: int) -> dict:
    by = Counter()
    ok_truth = ok_read = no_finding = 0
    t0 = time.perf_counter()
    for i in range(n):
        _, f, im = study_text(split, seed, i)
        desc, twin, rep = study_twin(split, seed, i)
        expected = {rep.finding} | ({"No Finding"} if desc.is_normal != twin.is_normal else set())
        no_finding += "No Finding" in expected
        ok_truth += _changed(label_vector(desc), label_vector(twin)) == expected
        ok_read += _changed(read_labels(f, im), read_labels(rep.findings, rep.impression)) == expected
        by[(rep.finding, rep.present)] += 1
    return {"studies": n, "twins": sum(by.values()), "coverage": sum(by.values()) / n,
            "exact_by_generator_labels": ok_truth / n, "exact_by_report_reader": ok_read / n,
            "no_finding_changes_too": no_finding,
            "flips": {f: {_direction(p): by[(f, p)] for p in (False, True)} for f in TWIN_FINDINGS},
            "seconds": round(time.perf_counter() - t0, 2)}


CONDITIONS = (("as written", None, 0), ("synonyms 5", "synonyms", 5), ("abbreviations 5", "abbreviations", 5),
              ("typos 1", "typos", 1), ("typos 3", "typos", 3), ("typos 5", "typos", 5))
"""The phantom reports as written, and rewritten by report perturbations at a level (run seed 0): other
wordings of the same findings ("cardiac enlargement", "pleural fluid collection", "PTX") and misspellings."""


def flipper(split: str, seed: int, n: int, perturbation: str | None = None, level: int = 0) -> dict:
    by, good_by = Counter(), Counter()
    made = correct = strict = 0
    eligible_counts = Counter()
    rewrite = get_perturbation(perturbation) if perturbation else None
    t0 = time.perf_counter()
    for i in range(n):
        _, f, im = study_text(split, seed, i)
        if rewrite is not None:
            f, im = rewrite.perturb(f, im, f"ph-{split}-s{seed}-{i:06d}", level, 0)
        eligible_counts[len(eligible_findings(f, im))] += 1
        t = flip_report(f, im, f"ph-{split}-s{seed}-{i:06d}")
        if t is None:
            continue
        made += 1
        by[(t.finding, t.present)] += 1
        after = read_labels(t.findings, t.impression)
        changed = _changed(read_labels(f, im), after)
        good = bool(t.finding in changed and changed <= {t.finding, "No Finding"}
                and (after[CHEXPERT_LABELS.index(t.finding)] == 1) == t.present)
        correct += good
        strict += changed == {t.finding}
        good_by[t.finding] += good
    seconds = time.perf_counter() - t0
    names = [f for f in FLIP_FINDINGS if any(by[(f, p)] for p in (False, True))]
    return {"studies": n, "twins": made, "coverage": made / n, "correctness": correct / made if made else None,
            "correctness_strict": strict / made if made else None,
            "eligible_findings_per_study": {str(k): v for k, v in sorted(eligible_counts.items())},
            "flips": {f: {_direction(p): by[(f, p)] for p in (False, True)} for f in names},
            "correct_by_finding": {f: good_by[f] for f in names},
            "studies_per_second": round(n / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="eval", choices=sorted(SPLITS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-studies", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args()
    n = args.num_studies or SPLITS[args.split]

    exact = exact_twins(args.split, args.seed, n)
    rules = {label: flipper(args.split, args.seed, n, name, level) for label, name, level in CONDITIONS}
    rule = rules["as written"]
    print(f"phantom {args.split} seed {args.seed}: {n} studies (generator version {GENERATOR_VERSION})\n")
    print(f"{'finding':<28}{'exact: pres->abs':>17}{'abs->pres':>11}{'flipper: pres->abs':>20}{'abs->pres':>11}")
    for f in FLIP_FINDINGS:
        e, r = exact["flips"].get(f, {}), rule["flips"].get(f, {})
        if not e and not r:
            continue
        cells = [e.get(_direction(False), 0), e.get(_direction(True), 0), r.get(_direction(False), 0),
                 r.get(_direction(True), 0)]
        print(f"{f:<28}{cells[0]:>17}{cells[1]:>11}{cells[2]:>20}{cells[3]:>11}")
    print(f"\nexact twins: coverage {exact['coverage']:.3f}; one label flipped (+ No Finding when normality "
          f"changes): generator labels {exact['exact_by_generator_labels']:.3f}, report reader "
          f"{exact['exact_by_report_reader']:.3f}; No Finding changed too in {exact['no_finding_changes_too']}\n")
    print(f"{'flipper on reports':<22}{'coverage':>10}{'correct':>10}{'strict':>9}{'studies/s':>11}")
    for label, r in rules.items():
        print(f"{label:<22}{r['coverage']:>10.3f}{r['correctness']:>10.3f}{r['correctness_strict']:>9.3f}"
              f"{r['studies_per_second']:>11}")
    if args.out:
        doc = {"command": "python benchmarks/negation_flipper.py --out docs/negation_flipper.json",
               "data": {"split": args.split, "seed": args.seed, "studies": n, "generator_version": GENERATOR_VERSION},
               "exact_twins": exact, "rule_based_flipper": rule,
               "rule_based_flipper_on_rewritten_reports": {k: v for k, v in rules.items() if k != "as written"},
               "mimic_cxr": "flipper coverage on real MIMIC-CXR reports is unmeasured here (no MIMIC data); "
                            "negation_twins(...).coverage reports it on a user's data"}
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
