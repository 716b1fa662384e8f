"""Recall@k against a ten-line NumPy oracle, torchmetrics, and exact chance level."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_robust.metrics import TIE_POLICIES, chance_recall, rank_counts, recall_at_k

KS = (1, 5, 10, 20, 30, 50, 100)


def oracle_recall(scores: np.ndarray, targets: np.ndarray, k: int, policy: str, rng: np.random.Generator,
                  draws: int = 0) -> float:
    """Ten-line oracle: sort each row (argsort), read the true candidate's position."""
    m, n = scores.shape
    if policy == "expected":  # average over random tie-breaks, exactly, by enumerating tied positions
        true = scores[np.arange(m), targets][:, None]
        lo = (scores > true).sum(1) + 1
        hi = lo + (scores == true).sum(1) - 1
        return float(np.mean([np.mean(np.arange(a, b + 1) <= k) for a, b in zip(lo, hi)]))
    # Optimistic: the true item sorts first among equals; pessimistic: last. Lexsort does the tie-break.
    tiebreak = np.zeros_like(scores)
    tiebreak[np.arange(m), targets] = -1 if policy == "optimistic" else 1
    order = np.lexsort((tiebreak, -scores), axis=1)
    position = np.argmax(order == targets[:, None], axis=1) + 1
    return float(np.mean(position <= k))


def _scores(seed: int, m: int, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(m, n)).astype(np.float32) if ties else rng.normal(size=(m, n)).astype(np.float32)
    return scores, rng.integers(0, n, size=m)


@pytest.mark.parametrize("policy", TIE_POLICIES)
@pytest.mark.parametrize("ties", [False, True], ids=["no-ties", "ties"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_oracle(policy: str, ties: bool, seed: int) -> None:
    scores, targets = _scores(seed, 60, 120, ties)
    got = recall_at_k(rank_counts(scores, targets), KS, policy)
    rng = np.random.default_rng(seed)
    for k in KS:
        assert got[k] == pytest.approx(oracle_recall(scores, targets, k, policy, rng), abs=1e-12)


@pytest.mark.parametrize("policy", TIE_POLICIES)
def test_torch_path_equals_numpy_path(policy: str) -> None:
    scores, targets = _scores(3, 50, 120, ties=True)
    a = recall_at_k(rank_counts(scores, targets), KS, policy)
    b = recall_at_k(rank_counts(torch.from_numpy(scores), torch.from_numpy(targets)), KS, policy)
    assert a == b


def test_policies_agree_without_ties_and_are_ordered_with_ties() -> None:
    scores, targets = _scores(4, 80, 100, ties=False)
    counts = rank_counts(scores, targets)
    results = [recall_at_k(counts, KS, p) for p in TIE_POLICIES]
    assert results[0] == results[1] == results[2]
    scores, targets = _scores(5, 80, 100, ties=True)
    counts = rank_counts(scores, targets)
    exp, opt, pes = (recall_at_k(counts, KS, p) for p in TIE_POLICIES)
    for k in KS:
        assert pes[k] <= exp[k] <= opt[k]


def test_matches_torchmetrics_hit_rate_on_tie_free_data() -> None:
    from torchmetrics.functional.retrieval import retrieval_hit_rate

    scores, targets = _scores(6, 40, 70, ties=False)
    counts = rank_counts(scores, targets)
    for k in (1, 5, 10, 50):
        ours = recall_at_k(counts, [k])[k]
        theirs = np.mean([
            float(retrieval_hit_rate(torch.from_numpy(scores[i]), torch.arange(70) == targets[i], top_k=k))
            for i in range(40)
        ])
        assert ours == pytest.approx(theirs, abs=1e-12)


@pytest.mark.parametrize("n,m", [(994, 1770), (7, 3), (100, 1)])
def test_constant_scores_give_exactly_k_over_n(n: int, m: int) -> None:
    counts = rank_counts(np.full((m, n), 0.3, dtype=np.float32), np.arange(m) % n)
    ks = [k for k in (1, 2, 5, 10, 20, 30, 50, 100, n) if k <= n]
    got = recall_at_k(counts, ks)
    for k in ks:
        assert got[k] == k / n == chance_recall(k, n)  # exact equality, not approx


def test_rank_independent_of_candidate_order_under_expected_policy() -> None:
    scores, targets = _scores(7, 30, 120, ties=True)
    perm = np.random.default_rng(0).permutation(120)
    inverse = np.argsort(perm)
    a = recall_at_k(rank_counts(scores, targets), KS)
    b = recall_at_k(rank_counts(scores[:, perm], inverse[targets]), KS)
    assert a == b


def test_ranks_per_policy() -> None:
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.1]])
    counts = rank_counts(scores, np.array([2]))
    assert (counts.above[0], counts.ties[0]) == (1, 2)
    assert counts.ranks("optimistic")[0] == 2 and counts.ranks("pessimistic")[0] == 4
    assert counts.ranks("expected")[0] == 3
    assert counts.hits(2).tolist() == [pytest.approx(1 / 3)]


@pytest.mark.parametrize(
    "scores,targets,ks,match",
    [
        (np.zeros((3,)), np.zeros(3, int), [1], "2-D"),
        (np.zeros((3, 4)), np.zeros(2, int), [1], "shape"),
        (np.zeros((3, 4)), np.array([0, 1, 4]), [1], "outside 0..3"),
        (np.zeros((3, 4)), np.array([0, -1, 2]), [1], "outside"),
        (np.zeros((3, 4)), np.zeros(3, int), [0], "k=0"),
        (np.zeros((3, 4)), np.zeros(3, int), [5], "k=5 is outside 1..N=4"),
        (np.zeros((3, 4)), np.zeros(3, int), [2.5], "not an integer"),
        (np.array([[0.1, np.nan], [0.2, 0.3]]), np.zeros(2, int), [1], r"NaN or Inf in query rows \[0\]"),
        (np.array([[0.1, 0.2], [np.inf, 0.3]]), np.zeros(2, int), [1], r"rows \[1\]"),
    ],
)
def test_errors(scores: np.ndarray, targets: np.ndarray, ks: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        recall_at_k(rank_counts(scores, targets), ks)


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="tie policy"):
        recall_at_k(rank_counts(np.zeros((2, 3)), np.zeros(2, int)), [1], policy="random")
