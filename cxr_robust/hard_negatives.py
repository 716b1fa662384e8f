"""Negation hard negatives: does a model rank a study's own report above its negated twin?

Each study may have a *twin*: its report with exactly one finding's presence flipped (present -> absent or
absent -> present) and nothing else changed (:mod:`cxr_robust.data.negation`). The twins join the candidate
pool, and for every query image whose study has a twin we record

* ``1`` when the twin scores higher than the true report, ``0.5`` when they tie, ``0`` when it scores lower.

The **negation confusion rate** is the mean of these over the queries with a twin. A model that does not read
negation scores a report and its twin alike and sits at 50 %; a model that does sits well below.

The gate's negation test per model (:func:`decide_negation`) has two parts, each at ``alpha / 2`` (Bonferroni,
so the test as a whole errs with probability at most ``alpha``):

* **clearly below 50 %**: the upper end of the rate's two-sided ``1 - alpha`` confidence interval is below
  0.5. The interval is a bootstrap over *studies* (the images of a study share one twin, so they are not
  independent);
* **not worse than its baseline** (paired): the recorded per-query values of the same queries against the
  candidate's, one-sided sign-flip test on the per-query differences (:func:`cxr_robust.paired.sign_flip_p`).

Without a recording there is nothing to compare with: the test is ``missing`` (a failure) or NOT COMPARED,
never a pass (:func:`cxr_robust.verdicts.negation_state`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cxr_robust.metrics import RankCounts, rank_counts

if TYPE_CHECKING:
    import torch

NEGATION_BLIND = 0.5
"""The confusion rate of a model that cannot tell a report from its negated twin."""
N_BOOT = 2000


@dataclass
class NegationResult:
    """A model's per-query comparisons with the twins, and the pool ranks with the twins among the candidates."""

    confusion: np.ndarray
    """Per query: 1 (twin above the true report), 0.5 (tie), 0 (below), NaN (its study has no twin)."""
    query_study: np.ndarray
    """The study index of each query (the bootstrap's clusters)."""
    pool_counts: RankCounts
    """Ranks of each query's true report among the N reports plus the T twins (N + T candidates)."""
    method: str
    n_twins: int
    n_studies: int
    by_finding: dict[str, int] = field(default_factory=dict)
    """How many twins flip each finding (label names and numbers only)."""

    @property
    def n_queries(self) -> int:
        """Queries whose study has a twin (the rate's denominator)."""
        return int(np.isfinite(self.confusion).sum())

    @property
    def rate(self) -> float:
        """The negation confusion rate (NaN when no query has a twin)."""
        return float(np.nanmean(self.confusion)) if self.n_queries else float("nan")

    @property
    def coverage(self) -> float:
        """The share of studies that have a twin."""
        return self.n_twins / self.n_studies if self.n_studies else 0.0


def measure_negation(image_emb: "torch.Tensor", text_emb: "torch.Tensor", twin_emb: "torch.Tensor",
                     twin_study: Sequence[int], query_study: Sequence[int], method: str,
                     by_finding: dict[str, int] | None = None, chunk_rows: int = 8192) -> NegationResult:
    """Score every query against the N reports plus the twins (``twin_emb[t]`` is the twin of study
    ``twin_study[t]``) with one product per chunk of queries, on the embeddings' device.

    Embeddings are L2-normalised rows (the engine guarantees it), so the product is the cosine.
    """
    import torch

    n = int(text_emb.shape[0])
    twin_study = np.asarray(twin_study, dtype=np.int64)
    query_study = np.asarray(query_study, dtype=np.int64)
    if twin_emb.shape[0] != twin_study.shape[0]:
        raise ValueError(f"{twin_emb.shape[0]} twin embeddings for {twin_study.shape[0]} twin studies")
    if len(set(twin_study.tolist())) != len(twin_study) or (len(twin_study) and
                                                            (twin_study.min() < 0 or twin_study.max() >= n)):
        raise ValueError("twin_study must name distinct studies among the N candidates")
    twin_col = np.full(n, -1, dtype=np.int64)  # pool column of each study's twin, -1: none
    twin_col[twin_study] = n + np.arange(len(twin_study))
    pool_t = torch.cat([text_emb, twin_emb.to(text_emb.device, text_emb.dtype)]).T.contiguous()
    confusion = np.full(len(query_study), np.nan)
    above, ties = [], []
    for a in range(0, len(query_study), chunk_rows):
        b = min(a + chunk_rows, len(query_study))
        scores = (image_emb[a:b] @ pool_t).cpu().numpy()
        targets = query_study[a:b]
        counts = rank_counts(scores, targets)
        above.append(counts.above)
        ties.append(counts.ties)
        cols = twin_col[targets]
        has = cols >= 0
        rows = np.flatnonzero(has)
        true = scores[rows, targets[has]]
        twin = scores[rows, cols[has]]
        confusion[a + rows] = np.where(twin > true, 1.0, np.where(twin == true, 0.5, 0.0))
    pool = RankCounts(np.concatenate(above) if above else np.zeros(0, np.int64),
                      np.concatenate(ties) if ties else np.zeros(0, np.int64), n + len(twin_study))
    return NegationResult(confusion, query_study, pool, method, len(twin_study), n, dict(by_finding or {}))


def confusion_ci(confusion: np.ndarray, query_study: np.ndarray, alpha: float = 0.05, n_boot: int = N_BOOT,
                 seed: int = 0) -> tuple[float, float]:
    """Two-sided ``1 - alpha`` percentile interval of the confusion rate, resampling studies (clusters)."""
    ok = np.isfinite(confusion)
    if not ok.any():
        return float("nan"), float("nan")
    from cxr_robust.stats import bootstrap_means

    _, cluster = np.unique(np.asarray(query_study)[ok], return_inverse=True)
    sums = np.bincount(cluster, weights=confusion[ok])
    sizes = np.bincount(cluster).astype(float)
    # Resampling studies: the rate of a resample is its mean per-study sum over its mean study size.
    means = bootstrap_means(np.column_stack([sums, sizes]), n_boot=n_boot, seed=seed)
    lo, hi = np.quantile(means[:, 0] / means[:, 1], [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


@dataclass
class NegationDecision:
    """The negation test of one model (see the module docstring); ``as_dict`` is what ``results.json`` holds."""

    model: str
    rate: float
    ci_low: float
    ci_high: float
    n_queries: int
    n_twins: int
    n_studies: int
    method: str
    by_finding: dict[str, int]
    below_half: bool
    """The rate's upper confidence bound is below 50 % (the model reads negation)."""
    baseline: float | None = None
    """The recorded run's rate on the same queries (paired), when one was recorded."""
    baseline_source: str | None = None
    p_value: float | None = None
    """One-sided paired p-value of "worse than the recorded run"."""
    passed: bool | None = None
    """Not significantly worse than the recorded run; None when there is nothing to compare with."""
    alpha: float = 0.05
    pool_recall: dict[int, float] = field(default_factory=dict)
    """Recall@k of the true report with the twins in the candidate pool (N + T candidates)."""
    rule: str = ""

    @property
    def coverage(self) -> float:
        """The share of studies with a twin."""
        return self.n_twins / self.n_studies if self.n_studies else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (numbers, label names and ids only)."""
        out = asdict(self)
        out["coverage"] = self.coverage
        out["pool_recall"] = {str(k): v for k, v in self.pool_recall.items()}
        return out


def negation_rule(alpha: float) -> str:
    """The negation test's rule in one line, for failure messages and reports."""
    level = 100 * (1 - alpha)
    return (f"negation confusion rate: fail when the upper end of its {level:g}% CI (bootstrap over studies) is "
            f"not below 50 %, or when it is worse than the recorded run of the same queries (paired sign-flip "
            f"test, one-sided p < {alpha / 2:g}); each part at alpha/2 = {alpha / 2:g}")


def decide_negation(model: str, result: NegationResult, alpha: float, ks: Sequence[int],
                    reference: np.ndarray | None = None, reference_source: str | None = None,
                    seed: int = 0) -> NegationDecision:
    """Decide the negation test of ``model``; ``reference`` holds the recorded per-query values of the same
    queries in the same order (NaN where the recording had no twin)."""
    from cxr_robust.metrics import recall_at_k
    from cxr_robust.paired import sign_flip_p

    lo, hi = confusion_ci(result.confusion, result.query_study, alpha, seed=seed)
    ks_ok = [k for k in ks if k <= result.pool_counts.n_candidates]
    pool = recall_at_k(result.pool_counts, ks_ok) if result.pool_counts.n_queries and ks_ok else {}
    decision = NegationDecision(model=model, rate=result.rate, ci_low=lo, ci_high=hi, n_queries=result.n_queries,
                                n_twins=result.n_twins, n_studies=result.n_studies, method=result.method,
                                by_finding=dict(result.by_finding),
                                below_half=bool(result.n_queries and hi < NEGATION_BLIND), alpha=alpha,
                                pool_recall=pool, rule=negation_rule(alpha))
    if reference is not None:
        reference = np.asarray(reference, dtype=float)
        if reference.shape != result.confusion.shape:
            raise ValueError(f"recorded negation values for {reference.shape[0]} queries, measured "
                             f"{result.confusion.shape[0]}")
        both = np.isfinite(reference) & np.isfinite(result.confusion)
        if both.any():
            decision.baseline = float(reference[both].mean())
            decision.baseline_source = reference_source
            # Positive differences: the candidate puts the twin above the true report where the recording did not.
            decision.p_value, _ = sign_flip_p(result.confusion[both] - reference[both], seed=seed)
            decision.passed = bool(decision.p_value >= alpha / 2)
    return decision
