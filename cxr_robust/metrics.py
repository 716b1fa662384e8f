"""Ranks of the true candidate and Recall@k (= Hit@k: one relevant report per query).

The rank of a query's true candidate is summarised by two integers: ``above`` (candidates scored strictly
higher) and ``ties`` (other candidates scored exactly equal). Every k is computed from these at once.

Tie policies:

- ``expected`` (default): the expectation under uniformly random tie-breaking. The true candidate's rank
  is uniform on ``above + 1 .. above + ties + 1``, so its hit probability at depth k is
  ``clip(k - above, 0, ties + 1) / (ties + 1)``. It does not depend on candidate order, and constant
  scores give exactly ``k / N``.
- ``optimistic``: ties resolved in favour of the true candidate (rank ``above + 1``).
- ``pessimistic``: ties resolved against it (rank ``above + ties + 1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

TIE_POLICIES = ("expected", "optimistic", "pessimistic")


@dataclass(frozen=True)
class RankCounts:
    """Per-query ``above`` and ``ties`` counts over ``n_candidates`` candidates."""

    above: np.ndarray
    ties: np.ndarray
    n_candidates: int

    @property
    def n_queries(self) -> int:
        """M, the number of queries."""
        return int(self.above.shape[0])

    def ranks(self, policy: str = "expected") -> np.ndarray:
        """1-based rank of the true candidate per query (the mean rank under ``expected``)."""
        _check_policy(policy)
        if policy == "optimistic":
            return self.above + 1.0
        if policy == "pessimistic":
            return self.above + self.ties + 1.0
        return self.above + (self.ties + 2.0) / 2.0

    def hits(self, k: int, policy: str = "expected") -> np.ndarray:
        """Per-query hit at depth ``k``: 0/1, or a probability in [0, 1] under ``expected``."""
        check_ks([k], self.n_candidates)
        num, den = _hit_fractions(self, np.array([k]), policy)
        return num[:, 0] / den[:, 0]


def _check_policy(policy: str) -> None:
    if policy not in TIE_POLICIES:
        raise ValueError(f"unknown tie policy {policy!r}; choose one of {', '.join(TIE_POLICIES)}")


def check_ks(ks: Sequence[int], n_candidates: int) -> list[int]:
    """Validate retrieval depths: integers with 1 <= k <= N."""
    out = []
    for k in ks:
        if isinstance(k, bool) or int(k) != k:
            raise ValueError(f"k={k!r} is not an integer")
        if not 1 <= int(k) <= n_candidates:
            raise ValueError(f"k={k} is outside 1..N={n_candidates}: Recall@k needs at least k candidates")
        out.append(int(k))
    return out


def rank_counts(scores: Any, targets: Any) -> RankCounts:
    """Count, per query, candidates scored above and tied with the true one.

    ``scores`` is an ``(M, N)`` NumPy array or torch tensor (any device; counted there, no Python loop over
    queries); ``targets`` holds each query's true candidate index.
    """
    if _is_torch(scores):
        return _rank_counts_torch(scores, targets)
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    m, n = _check_inputs(scores.shape, targets.shape, targets.min() if targets.size else 0,
                         targets.max() if targets.size else 0)
    finite = np.isfinite(scores).all(axis=1)
    if not finite.all():
        raise ValueError(f"scores contain NaN or Inf in query rows {np.flatnonzero(~finite)[:5].tolist()}")
    true = scores[np.arange(m), targets][:, None]
    above = (scores > true).sum(axis=1)
    ties = (scores == true).sum(axis=1) - 1
    return RankCounts(above.astype(np.int64), ties.astype(np.int64), n)


def _rank_counts_torch(scores: "Any", targets: Any) -> RankCounts:
    import torch

    targets_t = torch.as_tensor(np.asarray(targets) if not _is_torch(targets) else targets,
                                dtype=torch.int64, device=scores.device)
    lo = int(targets_t.min()) if targets_t.numel() else 0
    hi = int(targets_t.max()) if targets_t.numel() else 0
    m, n = _check_inputs(tuple(scores.shape), tuple(targets_t.shape), lo, hi)
    finite = torch.isfinite(scores).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:5].tolist()
        raise ValueError(f"scores contain NaN or Inf in query rows {bad}")
    true = scores.gather(1, targets_t[:, None])
    above = (scores > true).sum(dim=1)
    ties = (scores == true).sum(dim=1) - 1
    return RankCounts(above.cpu().numpy().astype(np.int64), ties.cpu().numpy().astype(np.int64), n)


def _check_inputs(score_shape: tuple, target_shape: tuple, lo: int, hi: int) -> tuple[int, int]:
    if len(score_shape) != 2:
        raise ValueError(f"scores must be a 2-D (queries x candidates) matrix, got shape {score_shape}")
    m, n = score_shape
    if n < 1:
        raise ValueError("scores have no candidates (N = 0)")
    if target_shape != (m,):
        raise ValueError(f"targets must have shape ({m},) to match {m} queries, got {target_shape}")
    if m and (lo < 0 or hi >= n):
        raise ValueError(f"target index {lo if lo < 0 else hi} is outside 0..{n - 1}")
    return m, n


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _hit_fractions(counts: RankCounts, ks: np.ndarray, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """Integer numerators ``(M, K)`` and denominators ``(M, 1)`` of per-query hits."""
    _check_policy(policy)
    above = counts.above[:, None]
    if policy == "expected":
        den = counts.ties[:, None] + 1
        return np.clip(ks[None, :] - above, 0, den), den
    rank = above + 1 if policy == "optimistic" else above + counts.ties[:, None] + 1
    return (rank <= ks[None, :]).astype(np.int64), np.ones_like(above)


def recall_at_k(counts: RankCounts, ks: Sequence[int], policy: str = "expected") -> dict[int, float]:
    """Recall@k for every k in ``ks`` from one set of rank counts.

    Sums are done in exact rational arithmetic (grouped by tie-group size, so it stays fast), hence
    constant scores give exactly ``k / N`` as a float.
    """
    ks_list = check_ks(ks, counts.n_candidates)
    m = counts.n_queries
    if m == 0:
        raise ValueError("no queries: Recall@k is undefined for M = 0")
    num, den = _hit_fractions(counts, np.array(ks_list, dtype=np.int64), policy)
    dens, inverse = np.unique(den[:, 0], return_inverse=True)
    # Per tie-group size d, the integer sum of numerators for each k.
    sums = np.zeros((len(dens), len(ks_list)), dtype=np.int64)
    np.add.at(sums, inverse, num)
    out = {}
    for j, k in enumerate(ks_list):
        total = sum((Fraction(int(s), int(d)) for s, d in zip(sums[:, j], dens)), Fraction(0))
        out[k] = float(total / m)
    return out


def chance_recall(k: int, n_candidates: int) -> float:
    """Recall@k of a model that ranks candidates uniformly at random: exactly ``k / N``."""
    check_ks([k], n_candidates)
    return k / n_candidates
