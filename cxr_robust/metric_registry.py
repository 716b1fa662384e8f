"""The retrieval metrics the gate can report, by name: built-ins plus any registered by a project.

A metric turns :class:`~cxr_robust.metrics.RankCounts` into one value per query (``per_query``: NaN where it
is undefined, e.g. a label metric on an unlabelled query) and aggregates them NaN-ignoring (``mean`` or
``median``). Everything is computed from counts the scoring pass already produced, so a metric never needs
another similarity product.

Built-ins, in this order:

========================  =====================================================================================
``recall``                Recall@k: the (expected) hit@k of the true report; equals :func:`metrics.recall_at_k`
``mrr``                   mean reciprocal rank of the true report (expected over random tie-breaks)
``mean_rank``             mean rank of the true report
``median_rank``           median over queries of the per-query rank
``label_precision``       label precision@k: fraction of the top k whose findings labels match the query's
``label_hit``             label hit@k: whether the top k holds a report with matching findings labels
========================  =====================================================================================

Label metrics need :class:`~cxr_robust.metrics.LabelCounts` (``score_ranks(..., relevance=, label_ks=)``),
and always use the ``expected`` tie policy.

Adding a metric is one function plus a registration::

    import numpy as np
    from cxr_robust.metric_registry import Metric, register_metric

    def _top1_or_tied(counts, k, policy):          # per-query values, NaN where undefined
        return (counts.above == 0).astype(float)

    register_metric(Metric(name="top1_or_tied", label="Top-1 (ties count)", per_k=False,
                           higher_is_better=True, per_query=_top1_or_tied, aggregate="mean",
                           unit="fraction", paired_test="sign-flip test of per-query differences",
                           description="Share of queries with no candidate scored above the true report."))

after which ``compute_metrics(counts, ["recall", "top1_or_tied"], ks)`` reports it, and
:func:`paired_metric_p` compares two runs on it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from cxr_robust.metrics import RankCounts, _check_policy, check_ks, recall_at_k
from cxr_robust.paired import sign_flip_p

AGGREGATES = ("mean", "median")
UNITS = ("fraction", "rank")

PerQuery = Callable[[RankCounts, "int | None", str], np.ndarray]


@dataclass(frozen=True)
class Metric:
    """A named retrieval metric.

    ``per_query(counts, k, policy)`` returns one float per query (NaN where undefined; ``k`` is None for
    metrics that are not ``per_k``). ``aggregate`` (``mean`` or ``median``) reduces them, ignoring NaN.
    ``label`` is what tables show (``{k}`` is replaced by the depth). ``needs_labels``: the metric reads
    ``counts.label`` (findings labels); :func:`compute_metrics` skips it on counts without them. ``exact``,
    when given, computes the aggregate itself (``recall`` uses it to equal
    :func:`~cxr_robust.metrics.recall_at_k` bit for bit).
    """

    name: str
    label: str
    per_k: bool
    higher_is_better: bool
    per_query: PerQuery
    aggregate: str
    unit: str
    paired_test: str
    description: str
    needs_labels: bool = False
    exact: Callable[[RankCounts, "int | None", str], float] | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum() or self.name != self.name.lower():
            raise ValueError(f"metric name {self.name!r} must be lower-case letters, digits and '_'")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"metric {self.name!r}: aggregate {self.aggregate!r} is not one of {AGGREGATES}")
        if self.unit not in UNITS:
            raise ValueError(f"metric {self.name!r}: unit {self.unit!r} is not one of {UNITS}")
        if not callable(self.per_query):
            raise TypeError(f"metric {self.name!r}: per_query must be callable")

    def title(self, k: int | None = None) -> str:
        """The display label, with ``{k}`` filled in."""
        return self.label.replace("{k}", str(k)) if k is not None else self.label


class UnknownMetricError(KeyError):
    """A metric name that is not registered; the message lists the registered names and the closest ones."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


_REGISTRY: dict[str, Metric] = {}


def register_metric(metric: Metric, *, replace: bool = False) -> Metric:
    """Add ``metric`` to the registry (``replace=True`` overrides a registered name); returns it."""
    if not isinstance(metric, Metric):
        raise TypeError(f"{metric!r} is not a cxr_robust.metric_registry.Metric")
    if metric.name in _REGISTRY and not replace:
        raise ValueError(f"metric {metric.name!r} is already registered (pass replace=True to override it)")
    _REGISTRY[metric.name] = metric
    return metric


def available_metrics() -> list[str]:
    """Registered metric names: the built-ins in order, then those registered later."""
    return list(_REGISTRY)


def get_metric(name: str | Metric) -> Metric:
    """The registered metric ``name`` (a :class:`Metric` is returned as is); an unknown name raises
    :class:`UnknownMetricError` listing the registered names and the closest ones."""
    if isinstance(name, Metric):
        return name
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownMetricError(f"unknown metric {name!r}{hint} Registered: {', '.join(_REGISTRY)}. Add one with "
                             "cxr_robust.metric_registry.register_metric.")


def parse_metrics(names: str | Iterable[str]) -> tuple[str, ...]:
    """``"recall,mrr"``, ``"all"`` or a list of names -> registered names in the order given, without repeats
    (``all``: every registered metric)."""
    parts = [names] if isinstance(names, str) else list(names)
    items = [item.strip() for part in parts for item in str(part).split(",") if item.strip()]
    if not items:
        raise ValueError("no metric named; use e.g. 'recall,mrr' or 'all'")
    out: list[str] = []
    for item in items:
        for name in (available_metrics() if item == "all" else [get_metric(item).name]):
            if name not in out:
                out.append(name)
    return tuple(out)


def labelled_queries(counts: RankCounts) -> int:
    """How many queries the label metrics average over (0 when the counts carry no findings labels)."""
    return 0 if counts.label is None else counts.label.n_labelled


def per_query_values(counts: RankCounts, name: str | Metric, k: int | None = None,
                     policy: str = "expected") -> np.ndarray:
    """The metric's per-query values (float, NaN where undefined), with ``k`` checked."""
    metric = get_metric(name)
    _check_policy(policy)
    k = _check_k(metric, k, counts)
    return np.asarray(metric.per_query(counts, k, policy), dtype=float)


def metric_value(counts: RankCounts, name: str | Metric, k: int | None = None, policy: str = "expected") -> float:
    """The metric aggregated over queries (NaN-ignoring; NaN when no query has a value)."""
    metric = get_metric(name)
    _check_policy(policy)
    k = _check_k(metric, k, counts)
    if metric.needs_labels and counts.label is None:
        raise ValueError(_no_labels(metric.name))
    if counts.n_queries == 0:
        raise ValueError(f"no queries: {metric.title(k)} is undefined for M = 0")
    if metric.exact is not None:
        return float(metric.exact(counts, k, policy))
    return _aggregate(np.asarray(metric.per_query(counts, k, policy), dtype=float), metric.aggregate)


def compute_metrics(counts: RankCounts, names: str | Iterable[str], ks: Sequence[int],
                    policy: str = "expected") -> dict[str, float | dict[int, float]]:
    """Every named metric: a float, or ``{k: value}`` over ``ks`` for per-k metrics.

    Label metrics are left out (no entry at all) when ``counts`` carries no findings labels, so one list of
    names serves runs with and without labels; :func:`metric_value` on them raises instead.
    """
    out: dict[str, float | dict[int, float]] = {}
    for name in parse_metrics(names):
        metric = get_metric(name)
        if metric.needs_labels and counts.label is None:
            continue
        if metric.per_k:
            out[name] = {k: metric_value(counts, metric, k, policy) for k in check_ks(ks, counts.n_candidates)}
        else:
            out[name] = metric_value(counts, metric, None, policy)
    return out


def paired_metric_p(metric: str | Metric, ref_values: np.ndarray, cand_values: np.ndarray, n_perm: int = 20000,
                    seed: int = 0) -> tuple[float, str]:
    """One-sided p-value that the candidate is worse than the reference on a metric's per-query values.

    Rows NaN in either run are dropped. The differences are oriented so that positive means the candidate is
    worse (``ref - cand`` when higher is better, ``cand - ref`` for ranks) and tested with
    :func:`cxr_robust.paired.sign_flip_p`. That function counts differences of magnitude exactly 1 as
    binomial "unit" flips and drops magnitudes below an absolute 1e-9, both tuned to hit-like values in
    [-1, 1]; differences beyond that (ranks) are divided by their largest magnitude first. Scaling all
    differences by one positive constant leaves the sign-flip test unchanged, so only the bookkeeping
    changes. Differences already within [-1, 1] are not rescaled, so ``recall`` hits give exactly
    :func:`cxr_robust.paired.paired_cell`'s p-value. Returns ``(p, method)``; with no rows left,
    ``(1.0, "no-pairs")``.
    """
    metric = get_metric(metric)
    ref, cand = np.asarray(ref_values, dtype=float), np.asarray(cand_values, dtype=float)
    if ref.shape != cand.shape or ref.ndim != 1:
        raise ValueError(f"per-query values must be two 1-D arrays of equal length, got {ref.shape} and {cand.shape}")
    keep = ~(np.isnan(ref) | np.isnan(cand))
    d = (ref - cand)[keep] if metric.higher_is_better else (cand - ref)[keep]
    if d.size == 0:
        return 1.0, "no-pairs"
    scale = float(np.max(np.abs(d)))
    if scale > 1.0:
        d = d / scale
    return sign_flip_p(d, n_perm=n_perm, seed=seed)


def _aggregate(values: np.ndarray, how: str) -> float:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan")
    return float(np.mean(values) if how == "mean" else np.median(values))


def _check_k(metric: Metric, k: int | None, counts: RankCounts) -> int | None:
    if not metric.per_k:
        if k is not None:
            raise ValueError(f"metric {metric.name!r} has no depth k (got k={k})")
        return None
    if k is None:
        raise ValueError(f"metric {metric.name!r} needs a depth k")
    return check_ks([k], counts.n_candidates)[0]


# ---- built-ins ----------------------------------------------------------------------------------------------

def _recall(counts: RankCounts, k: int | None, policy: str) -> np.ndarray:
    return counts.hits(int(k), policy)  # type: ignore[arg-type]


def _recall_exact(counts: RankCounts, k: int | None, policy: str) -> float:
    return recall_at_k(counts, [int(k)], policy)[int(k)]  # type: ignore[arg-type]


def _harmonic(n: np.ndarray) -> np.ndarray:
    """``H(n) = 1 + 1/2 + ... + 1/n`` (``H(0) = 0``) for integer arrays, from one cumulative table."""
    top = int(n.max()) if n.size else 0
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, top + 1))])
    return table[n]


def _mrr(counts: RankCounts, k: int | None, policy: str) -> np.ndarray:
    above, ties = np.asarray(counts.above, np.int64), np.asarray(counts.ties, np.int64)
    if policy == "optimistic":
        return 1.0 / (above + 1.0)
    if policy == "pessimistic":
        return 1.0 / (above + ties + 1.0)
    # Rank uniform on above+1 .. above+ties+1: mean of 1/r is (H(above+ties+1) - H(above)) / (ties+1). Without
    # ties that is 1/(above+1), computed directly so tie-free queries carry no table rounding.
    out = 1.0 / (above + 1.0)
    tied = ties > 0
    if tied.any():
        a, t = above[tied], ties[tied]
        out[tied] = (_harmonic(a + t + 1) - _harmonic(a)) / (t + 1.0)
    return out


def _rank(counts: RankCounts, k: int | None, policy: str) -> np.ndarray:
    return np.asarray(counts.ranks(policy), dtype=float)


def _label_column(counts: RankCounts, k: int | None, what: str, metric: str) -> np.ndarray:
    if counts.label is None:
        raise ValueError(_no_labels(metric))
    return getattr(counts.label, what)[:, counts.label.column(int(k))]  # type: ignore[arg-type]


def _label_precision(counts: RankCounts, k: int | None, policy: str) -> np.ndarray:
    return _label_column(counts, k, "precision", "label_precision")


def _label_hit(counts: RankCounts, k: int | None, policy: str) -> np.ndarray:
    return _label_column(counts, k, "hit", "label_hit")


def _no_labels(name: str) -> str:
    return (f"metric {name!r} needs findings labels; these rank counts have none (score with "
            "score_ranks(..., relevance=, label_ks=) on a data set with labels)")


_HIT_TEST = ("exact McNemar test of the per-query hits (0/1), or the exact/Monte-Carlo sign-flip test of the "
             "per-query differences when ties make hits fractional")
_SIGN_FLIP = "paired sign-flip permutation test of the per-query differences (one-sided: candidate worse)"

for _metric in (
    Metric("recall", "Recall@{k}", per_k=True, higher_is_better=True, per_query=_recall, aggregate="mean",
           unit="fraction", paired_test=_HIT_TEST, exact=_recall_exact,
           description="Share of queries whose true report is among the top k (expected over random tie-breaks "
                       "under the default policy); Recall@k = Hit@k, one true report per query."),
    Metric("mrr", "MRR", per_k=False, higher_is_better=True, per_query=_mrr, aggregate="mean", unit="fraction",
           paired_test=_SIGN_FLIP + " of reciprocal ranks",
           description="Mean reciprocal rank of the true report; under the expected policy each query's "
                       "reciprocal rank is averaged exactly over its tied positions."),
    Metric("mean_rank", "Mean rank", per_k=False, higher_is_better=False, per_query=_rank, aggregate="mean",
           unit="rank", paired_test=_SIGN_FLIP + " of ranks (scaled to [-1, 1]; a higher rank is worse)",
           description="Mean 1-based rank of the true report (1 is best)."),
    Metric("median_rank", "Median rank", per_k=False, higher_is_better=False, per_query=_rank,
           aggregate="median", unit="rank",
           paired_test=_SIGN_FLIP + " of ranks (scaled to [-1, 1]; a higher rank is worse)",
           description="Median over queries of the true report's rank; under the expected policy each query "
                       "contributes its expected rank (above + (ties + 2) / 2), not a random draw."),
    Metric("label_precision", "Label P@{k}", per_k=True, higher_is_better=True, per_query=_label_precision,
           aggregate="mean", unit="fraction", needs_labels=True,
           paired_test=_SIGN_FLIP + " of label precision@k (labelled queries)",
           description="Share of the top k whose findings labels match the query's true study (labelled "
                       "queries only; always the expected tie policy)."),
    Metric("label_hit", "Label Hit@{k}", per_k=True, higher_is_better=True, per_query=_label_hit,
           aggregate="mean", unit="fraction", needs_labels=True,
           paired_test=_SIGN_FLIP + " of label hit@k (labelled queries)",
           description="Share of labelled queries with at least one report of matching findings labels in the "
                       "top k (always the expected tie policy)."),
):
    register_metric(_metric)
del _metric
