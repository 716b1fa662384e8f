"""Paired comparison of two runs on the same queries: exact McNemar, sign-flip test, Holm, id matching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import binomtest

from cxr_robust.metrics import RankCounts
from cxr_robust.paired import (align_ids, find_reference_ranks, mcnemar_p, paired_bootstrap_ci, paired_cell,
                               paired_decide, ranks_filename, sign_flip_p)
from cxr_robust.results import save_ranks

KS = (5, 10, 20, 30, 50, 100)
RATIOS = (0.0, 0.0025, 0.01, 0.04, 0.09, 0.25, 0.49, 0.81)


def _run(m: int = 600, n: int = 300, seed: int = 0, ties: bool = False) -> dict[float, RankCounts]:
    """A plausible run: ranks of the true report get worse with occlusion."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, r in enumerate(RATIOS):
        above = np.minimum(rng.geometric(0.08 / (1 + 3 * r), m) - 1, n - 1)
        tie = rng.integers(0, 4, m) * (rng.random(m) < 0.2) if ties else np.zeros(m, np.int64)
        out[r] = RankCounts(above.astype(np.int64), np.minimum(tie, n - 1 - above).astype(np.int64), n)
    return out


def _ids(m: int) -> list[str]:
    return [f"img{i:05d}" for i in range(m)]


def test_mcnemar_matches_hand_computation_and_scipy() -> None:
    # b = 8 losses, c = 2 gains: P(X >= 8 | 10, 1/2) = (C(10,8) + C(10,9) + C(10,10)) / 2^10 = 56/1024.
    assert mcnemar_p(8, 2) == pytest.approx(56 / 1024, rel=1e-12)
    assert mcnemar_p(0, 0) == 1.0
    for b, c in [(0, 5), (3, 3), (12, 1), (40, 17), (150, 120)]:
        assert mcnemar_p(b, c) == pytest.approx(binomtest(b, b + c, 0.5, alternative="greater").pvalue, rel=1e-9)


def test_zero_one_hits_use_exact_mcnemar_with_the_right_counts() -> None:
    ref = np.array([1, 1, 1, 1, 1, 0, 0, 1, 0, 1], float)
    cand = np.array([0, 0, 0, 1, 1, 1, 0, 1, 0, 1], float)
    cell = paired_cell(ref, cand)
    assert (cell["b"], cell["c"], cell["method"]) == (3.0, 1.0, "mcnemar-exact")
    assert cell["p_value"] == pytest.approx(binomtest(3, 4, 0.5, alternative="greater").pvalue)
    assert cell["diff"] == pytest.approx(-0.2)


def _brute_force_sign_flip(d: np.ndarray) -> float:
    t = d.sum()
    return float(np.mean([np.dot(s, d) >= t - 1e-9 for s in itertools.product((-1, 1), repeat=len(d))]))


def test_sign_flip_is_exact_for_fractional_hits_and_mc_agrees() -> None:
    d = np.array([1, 1, 1, -1, 0.5, -1 / 3, 0.25, 1, 0, 0, -0.5, 2 / 3])
    exact = _brute_force_sign_flip(d[d != 0])
    p, method = sign_flip_p(d)
    assert method == "sign-flip-exact" and p == pytest.approx(exact, rel=1e-12)
    p_mc, method = sign_flip_p(d, n_perm=50_000, seed=3, max_exact=0)
    assert method == "sign-flip-mc" and p_mc == pytest.approx(exact, abs=0.01)


def test_identical_runs_never_fail() -> None:
    for ties in (False, True):
        run = _run(ties=ties)
        decisions = paired_decide(run, run, _ids(600), _ids(600), KS)
        assert len(decisions) == len(RATIOS) * len(KS)
        assert all(d.passed and d.p_value == 1.0 and d.b == d.c == 0 and d.diff == 0 for d in decisions)


def test_candidate_losing_hits_on_five_percent_of_queries_fails() -> None:
    m, n = 600, 300
    ref = _run(m, n)
    rng = np.random.default_rng(1)
    lost = rng.choice(m, size=m // 20, replace=False)
    cand = {}
    for r, c in ref.items():
        above = c.above.copy()
        above[lost] = n - 1  # those queries now rank their report last: a miss at every k
        cand[r] = RankCounts(above, c.ties, n)
    decisions = {(d.condition.severity, d.k): d for d in paired_decide(ref, cand, _ids(m), _ids(m), KS)}
    clean10 = decisions[(0.0, 10)]
    assert not clean10.passed and clean10.c == 0 and clean10.b == int(ref[0.0].hits(10)[lost].sum())
    assert clean10.p_value == pytest.approx(0.5 ** clean10.b)
    # Wherever the lost queries were hits in at least 12 cases, the loss is significant even after Holm.
    assert all(not d.passed for d in decisions.values() if d.b >= 12)


def test_symmetric_noise_rarely_fails() -> None:
    """Runs that differ only by exchangeable noise (like another occlusion seed) fail at most ~alpha."""
    m, n = 400, 200
    rng = np.random.default_rng(7)
    alarms = 0
    for _ in range(60):
        ref, cand = {}, {}
        for r in RATIOS[:3]:
            base = rng.geometric(0.05, m)
            ref[r] = RankCounts(np.minimum(base + rng.integers(0, 6, m), n - 1), np.zeros(m, np.int64), n)
            cand[r] = RankCounts(np.minimum(base + rng.integers(0, 6, m), n - 1), np.zeros(m, np.int64), n)
        alarms += any(not d.passed for d in paired_decide(ref, cand, _ids(m), _ids(m), KS))
    assert alarms / 60 <= 0.10


def test_ids_are_matched_by_value_and_mismatches_are_named() -> None:
    m = 50
    ref = _run(m, 100, ties=True)
    perm = np.random.default_rng(0).permutation(m)
    cand = {r: RankCounts(c.above[perm], c.ties[perm], c.n_candidates) for r, c in ref.items()}
    cand_ids = [_ids(m)[i] for i in perm]
    assert align_ids(_ids(m), _ids(m)) is None
    assert all(d.p_value == 1.0 for d in paired_decide(ref, cand, _ids(m), cand_ids, (5, 10)))
    with pytest.raises(ValueError, match=r"reference has 50, candidate 49.*img00049"):
        paired_decide(ref, ref, _ids(m), _ids(m)[:-1], (5,))
    other = _ids(m)[:-1] + ["imgXYZ"]
    with pytest.raises(ValueError, match=r"1 only in the reference.*img00049.*1 only in the candidate.*imgXYZ"):
        align_ids(_ids(m), other)
    with pytest.raises(ValueError, match="more than once.*img00001"):
        align_ids(_ids(m), _ids(m)[:-1] + ["img00001"])


def test_missing_ratio_and_report_set_mismatch_raise() -> None:
    ref = _run(40, 100)
    cand = dict(ref)
    cand[0.5] = ref[0.0]
    with pytest.raises(ValueError, match=r"no ranks at 50% occlusion"):
        paired_decide(ref, cand, _ids(40), _ids(40), (5,))
    cand = {0.0: RankCounts(ref[0.0].above, ref[0.0].ties, 101)}
    with pytest.raises(ValueError, match="ranked 100 reports, candidate 101"):
        paired_decide(ref, cand, _ids(40), _ids(40), (5,))


def test_fractional_hits_use_the_sign_flip_test() -> None:
    ref = _run(600, 300, seed=0, ties=True)
    cand = _run(600, 300, seed=1, ties=True)
    methods = {d.method for d in paired_decide(ref, cand, _ids(600), _ids(600), KS)}
    assert methods <= {"mcnemar-exact", "sign-flip-exact", "sign-flip-mc"} and methods & {"sign-flip-exact",
                                                                                          "sign-flip-mc"}


def test_min_drop_tolerates_small_drops_only() -> None:
    rng = np.random.default_rng(2)
    ref = (rng.random(2000) < 0.5).astype(float)
    small = ref.copy()
    small[np.flatnonzero(ref)[:20]] = 0  # a 1-point drop: exact test alone would fail it
    assert paired_cell(ref, small)["p_value"] < 1e-5
    cell = paired_cell(ref, small, min_drop=0.02)
    assert cell["p_value"] > 0.5 and cell["method"] == "mcnemar-exact+t-margin"
    big = ref.copy()
    big[np.flatnonzero(ref)[:200]] = 0  # a 10-point drop
    assert paired_cell(ref, big, min_drop=0.02)["p_value"] < 1e-10


def test_paired_bootstrap_ci_covers_the_true_difference() -> None:
    rng = np.random.default_rng(11)
    m, p_ref, p_cand = 300, 0.4, 0.35
    covered = []
    for rep in range(150):
        ref = (rng.random(m) < p_ref).astype(float)
        # Correlated pairs: the candidate keeps most of the reference's hits.
        cand = np.where(rng.random(m) < 0.8, ref, (rng.random(m) < p_ref).astype(float))
        cand[(cand == 1) & (rng.random(m) < (p_ref - p_cand) / p_ref)] = 0
        true = -(p_ref - p_cand)
        diff, lo, hi = paired_bootstrap_ci(ref, cand, n_boot=1000, seed=rep)
        assert lo <= diff <= hi
        covered.append(lo <= true <= hi)
    assert 0.90 <= np.mean(covered) <= 0.99
    assert paired_bootstrap_ci(ref, cand, 500, seed=1) == paired_bootstrap_ci(ref, cand, 500, seed=1)


def test_find_reference_ranks(tmp_path) -> None:
    run = _run(10, 50)
    path = save_ranks(tmp_path / "ranks" / ranks_filename("phantom-clip", "phantom-eval-s0", 0), run, _ids(10), {})
    assert find_reference_ranks(path, "x", "y", 0) == path
    assert find_reference_ranks(tmp_path, "phantom-clip", "phantom-eval-s0", 0) == path
    assert find_reference_ranks(tmp_path, "phantom-clip", "phantom-eval-s0", 3) == path  # only other seed
    with pytest.raises(FileNotFoundError, match="--cxr-update-baselines"):
        find_reference_ranks(tmp_path, "clip", "phantom-eval-s0", 0)
