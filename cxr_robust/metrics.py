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

Label-aware counts (:class:`LabelCounts`) judge the whole top k against findings labels: a candidate is
relevant to a query when a :class:`Relevance` says its labels match those of the query's true study. They
are computed from the same score rows as the rank counts (:func:`cxr_robust.scoring.score_ranks` with
``relevance=``), and **always under the expected policy** (uniformly random tie-breaking): the top k of a
row is well defined only up to the order of the candidates tied at its k-th score.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol, Sequence

import numpy as np

TIE_POLICIES = ("expected", "optimistic", "pessimistic")


class Relevance(Protocol):
    """Which candidates count as relevant to a query, from findings labels.

    ``labelled[i]`` says whether candidate study ``i`` has labels; a query is *labelled* iff its true study
    is. ``rows(study_indices)`` is a bool matrix ``(len(study_indices), N)``: row ``j`` marks the candidates
    relevant to a query whose true study is ``study_indices[j]`` (only asked for labelled studies). A
    labelled query's own true report always counts as relevant, whatever ``rows`` says.
    (:class:`cxr_robust.data.labels.LabelMatch` implements it.)
    """

    labelled: np.ndarray

    def rows(self, study_indices: np.ndarray) -> np.ndarray:
        """Bool ``(len(study_indices), N)``: the candidates relevant to each of these true studies."""
        ...


@dataclass(frozen=True)
class LabelCounts:
    """Per-query label precision@k and label hit@k, expected under uniformly random tie-breaking.

    For query ``q`` and depth ``k``, let ``t`` be the k-th largest score of its row, ``c`` the number of
    candidates scored above ``t`` and ``r`` the relevant ones among them, ``g`` the number scored exactly
    ``t`` and ``rg`` the relevant ones among those, and ``s = k - c`` (1..g) the top-k slots the tie group
    fills. Then

    * ``precision = (r + s * rg / g) / k`` (the expected fraction of the top k that is relevant);
    * ``hit = 1`` if ``r > 0``, else ``1 - C(g - rg, s) / C(g, s)`` (the probability that the top k holds a
      relevant candidate: one minus that of drawing no relevant one in ``s`` draws from the tie group).

    Always the ``expected`` tie policy, whatever policy the rank metrics use. Rows of unlabelled queries are
    NaN (``labelled`` is False there). ``precision`` and ``hit`` are ``(M, K)`` float64, columns in ``ks``.
    """

    ks: tuple[int, ...]
    precision: np.ndarray
    hit: np.ndarray
    labelled: np.ndarray

    def __post_init__(self) -> None:
        m = int(np.shape(self.labelled)[0]) if np.ndim(self.labelled) == 1 else -1
        shape = (m, len(self.ks))
        if m < 0 or np.shape(self.precision) != shape or np.shape(self.hit) != shape:
            raise ValueError(f"label counts: precision {np.shape(self.precision)} and hit {np.shape(self.hit)} must "
                             f"be (queries, len(ks)) = {shape} with labelled of shape (queries,)")

    @property
    def n_labelled(self) -> int:
        """How many queries have findings labels (the label metrics average over these)."""
        return int(np.count_nonzero(self.labelled))

    def column(self, k: int) -> int:
        """The column of depth ``k``; a ValueError naming the recorded depths when it was not computed."""
        if k not in self.ks:
            raise ValueError(f"label counts were computed at k in {list(self.ks)}, not k={k}; pass it in label_ks")
        return self.ks.index(k)

    def take(self, index: np.ndarray) -> "LabelCounts":
        """The counts of the queries ``index`` (in that order)."""
        return LabelCounts(self.ks, self.precision[index], self.hit[index], self.labelled[index])


@dataclass(frozen=True)
class RankCounts:
    """Per-query ``above`` and ``ties`` counts over ``n_candidates`` candidates.

    ``label``: label-aware counts from the same scores (:class:`LabelCounts`), when findings labels were given.
    """

    above: np.ndarray
    ties: np.ndarray
    n_candidates: int
    label: LabelCounts | None = None

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


def rank_counts(scores: Any, targets: Any, relevance: Relevance | None = None,
                label_ks: Sequence[int] = ()) -> RankCounts:
    """Count, per query, candidates scored above and tied with the true one.

    ``scores`` is an ``(M, N)`` NumPy array or torch tensor (any device; counted there, no Python loop over
    queries); ``targets`` holds each query's true candidate index. With ``relevance`` the result also
    carries :class:`LabelCounts` at depths ``label_ks`` (see :func:`label_counts`).
    """
    if relevance is not None or len(label_ks):
        base = rank_counts(scores, targets)
        scores_np = scores_to_numpy(scores) if _is_torch(scores) else np.asarray(scores)
        return RankCounts(base.above, base.ties, base.n_candidates,
                          label_counts(scores_np, targets, relevance, label_ks))
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


def scores_to_numpy(scores: Any) -> np.ndarray:
    """A torch score matrix as NumPy on the host, with the same order and ties (half types widen to float32
    exactly; float32 and float64 stay as they are)."""
    scores = scores.detach()
    if scores.element_size() < 4:
        scores = scores.float()
    return scores.cpu().numpy()


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def check_label_inputs(relevance: Relevance | None, label_ks: Sequence[int], n_candidates: int) -> tuple[int, ...]:
    """Validate ``relevance`` and ``label_ks`` together (both or neither); returns the depths."""
    if relevance is None:
        if len(label_ks):
            raise ValueError(f"label_ks={list(label_ks)} given without relevance: label metrics need findings labels")
        return ()
    ks = tuple(check_ks(label_ks, n_candidates))
    if not ks:
        raise ValueError("relevance given without label_ks: name the depths k of label precision@k and hit@k")
    if len(set(ks)) != len(ks):
        raise ValueError(f"label_ks {list(ks)} repeat a depth")
    labelled = np.asarray(relevance.labelled)
    if labelled.dtype != bool or labelled.shape != (n_candidates,):
        raise ValueError(f"relevance.labelled must be a bool array of shape ({n_candidates},) (one per candidate "
                         f"study), got {labelled.dtype} {labelled.shape}")
    return ks


def label_counts(scores: np.ndarray, targets: Any, relevance: Relevance | None, ks: Sequence[int]) -> LabelCounts:
    """:class:`LabelCounts` of an ``(M, N)`` NumPy score matrix (one call per score chunk is fine: rows are
    independent, so chunking never changes the result)."""
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    _check_inputs(scores.shape, targets.shape, targets.min() if targets.size else 0,
                  targets.max() if targets.size else 0)
    ks_t = check_label_inputs(relevance, ks, scores.shape[1])
    if relevance is None:  # unreachable: check_label_inputs refuses ks without relevance; keeps type checkers happy
        raise ValueError("label counts need a relevance")
    precision, hit, labelled = label_rows(scores, targets, relevance, np.array(ks_t, dtype=np.int64))
    return LabelCounts(ks_t, precision, hit, labelled)


def label_rows(scores: np.ndarray, targets: np.ndarray, relevance: Relevance,
               ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected label precision and hit ``(m, K)`` and the labelled mask ``(m,)`` of a score chunk.

    Inputs are assumed checked (:func:`check_label_inputs`). Cost per chunk: a sort of each labelled row's
    values (for the k-th largest scores), one comparison of the row with its ``max(ks)``-th score to pick
    out the top ``max(ks)`` candidates, and ``K`` comparisons of those ``(m, max(ks))`` with the k-th
    scores. Rows where a tie straddles the ``max(ks)``-th score are compared whole instead. Memory stays
    ``O(m x N)``; no Python loop over queries.
    """
    m, n = scores.shape
    n_k = len(ks)
    labelled = np.asarray(relevance.labelled, dtype=bool)[targets]
    precision = np.full((m, n_k), np.nan)
    hit = np.full((m, n_k), np.nan)
    rows = np.flatnonzero(labelled)
    if rows.size == 0:
        return precision, hit, labelled
    own = targets[rows]
    rel = np.asarray(relevance.rows(own))
    if rel.dtype != bool or rel.shape != (rows.size, n):
        raise ValueError(f"relevance.rows returned {rel.dtype} {rel.shape}, expected bool ({rows.size}, {n})")
    ar = np.arange(rows.size)
    if not rel[ar, own].all():  # the true report is relevant to its own query (copy: rows may be cached)
        rel = rel.copy()
        rel[ar, own] = True
    s = scores if rows.size == m else scores[rows]
    kmax = int(ks.max())
    # The k-th largest score of each row, from one sort of its values (NumPy's vectorised sort beats
    # argpartition here, and sorted values need no gather).
    ascending = np.sort(s, axis=1)
    t = ascending[:, n - ks]  # (m', K)
    t_max = ascending[:, n - kmax]
    # The top set, every candidate scored at least the kmax-th score, holds everything the counts look at.
    top = s >= t_max[:, None]
    narrow = np.count_nonzero(top, axis=1) == kmax  # no tie straddles the kmax-th score: exactly kmax wide
    c, r, g, rg = (np.empty((rows.size, n_k), np.int64) for _ in range(4))
    wide = np.flatnonzero(~narrow)
    if narrow.any():
        every = wide.size == 0
        flat = np.flatnonzero(top if every else top & narrow[:, None])  # row-major: row by row, kmax each
        _count_at(s.ravel()[flat].reshape(-1, kmax), rel.ravel()[flat].reshape(-1, kmax),
                  t if every else t[narrow], (c, r, g, rg), slice(None) if every else narrow)
    if wide.size:  # a tie straddles the kmax-th score: count over whole rows
        _count_at(s[wide], rel[wide], t[wide], (c, r, g, rg), wide)
    slots = ks[None, :] - c  # 1..g
    precision[rows] = (r + slots * rg / g) / ks[None, :]
    miss = r == 0
    out = np.ones(r.shape)
    out[miss] = 1.0 - _none_drawn(g[miss], rg[miss], slots[miss])
    hit[rows] = out
    return precision, hit, labelled


def _count_at(vals: np.ndarray, rel: np.ndarray, t: np.ndarray, out: tuple[np.ndarray, ...], where: Any) -> None:
    """Per row of ``vals`` and depth column ``j`` of ``t``: candidates above ``t``, relevant ones among them,
    candidates equal to ``t``, relevant ones among those; written to ``out[i][where, j]``. A depth at a time,
    so memory stays that of ``vals``."""
    c, r, g, rg = out
    for j in range(t.shape[1]):
        tj = t[:, j:j + 1]
        above, tied = vals > tj, vals == tj
        c[where, j], r[where, j] = np.count_nonzero(above, axis=1), np.count_nonzero(above & rel, axis=1)
        g[where, j], rg[where, j] = np.count_nonzero(tied, axis=1), np.count_nonzero(tied & rel, axis=1)


def _none_drawn(g: np.ndarray, rg: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``C(g - rg, s) / C(g, s)``: the probability that ``s`` draws without replacement from ``g`` items, ``rg``
    of them relevant, miss every relevant one.

    Symmetric in ``rg`` and ``s``, it is the product of ``(g - B - j) / (g - j)`` for ``j < L``, with
    ``L = min(rg, s)`` and ``B = max(rg, s)``: exact to a few ulps, and the loop runs ``max(L)`` times over
    whole arrays (``L`` is 0 or 1 unless scores tie).
    """
    short = np.minimum(rg, s)
    base = g - np.maximum(rg, s)
    out = np.ones(g.shape)
    for j in range(int(short.max()) if short.size else 0):
        factor = np.maximum(base - j, 0) / (g - j).clip(min=1)
        out *= np.where(j < short, factor, 1.0)
    return out


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
