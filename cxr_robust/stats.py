"""Confidence bounds and the gate's decision rule.

The rule, in one place (it is printed in every failure message and in the report):

* **Regression test, per cell** (model, condition, k). H0: the model's true Recall@k is at least the baseline's.
  The measured recall over M queries is compared with the baseline by a one-sided z-test whose standard
  error adds the binomial variance of the measurement (``b(1-b)/M``), of the baseline when the baseline is
  itself a sample (``b(1-b)/M_baseline``; true for the paper's table and for recorded runs), and the
  variance from the choice of occlusion seed (``seed_sd**2``). ``b`` is floored at ``0.5/M`` away from 0
  and 1 so a cell at 0 % or 100 % still has a tolerance.
* **Paired test, per cell** (the default wherever recorded per-query ranks of the same model row, dataset
  and queries exist; :mod:`cxr_robust.paired`): exact McNemar / sign-flip test on the per-query hits.
* **Grid test, per model**: the mean Recall over all compared cells, tested with the per-query evidence
  pooled (paired t-test on each query's mean hit difference; unpaired: a z-test). A small regression spread
  over many cells is invisible cell by cell but clear in the pooled test.
* **Chance test, per cell and for the grid** (H0: recall >= chance, k/N): fails only when a value is
  clearly *below* chance (exact binomial; t-test for the grid), which means broken scoring. A cell that
  falls from far above chance to chance is a large regression, caught by the regression tests.
* **Family-wise control**: every test of one model (grid, cells, chance) is one family, adjusted with the
  weighted Holm procedure (:data:`FAMILY_WEIGHTS`); a test fails when its adjusted p-value is below
  ``alpha`` (default 0.05). An unchanged model therefore fails any of its tests with probability at most
  ``alpha``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from cxr_robust.perturbations.base import Condition, as_condition


def clopper_pearson(recall: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval for a proportion ``recall`` observed over ``n`` queries."""
    from scipy.stats import beta

    x = recall * n
    lo = 0.0 if x <= 0 else float(beta.ppf(alpha / 2, x, n - x + 1))
    hi = 1.0 if x >= n else float(beta.ppf(1 - alpha / 2, x + 1, n - x))
    return lo, hi


def wilson(recall: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a proportion ``recall`` observed over ``n`` queries."""
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha / 2))
    denom = 1 + z * z / n
    centre = (recall + z * z / (2 * n)) / denom
    half = z * math.sqrt(recall * (1 - recall) / n + z * z / (4 * n * n)) / denom
    # min/max with the estimate guard against rounding at 0 and 1.
    return max(0.0, min(recall, centre - half)), min(1.0, max(recall, centre + half))


def p_at_least(recall: float, n: int, p0: float) -> float:
    """One-sided exact p-value of H0 "true proportion <= p0" given ``recall`` over ``n`` (P(X >= x | p0))."""
    from scipy.stats import beta

    x = recall * n
    if x <= 0:
        return 1.0
    return float(beta.cdf(p0, x, n - x + 1))


def p_at_most(recall: float, n: int, p0: float) -> float:
    """One-sided exact p-value of H0 "true proportion >= p0" given ``recall`` over ``n`` (P(X <= x | p0))."""
    from scipy.stats import beta

    x = recall * n
    if x >= n:
        return 1.0
    return float(beta.sf(p0, x + 1, n - x))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (same order as the input)."""
    p = np.asarray(pvalues, dtype=float)
    g = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (g - np.arange(g))))
    out = np.empty(g)
    out[order] = adjusted
    return out


FAMILY_WEIGHTS: dict[str, float] = {"grid": 0.45, "grid_chance": 0.05, "cells": 0.40, "chance": 0.10}
"""How a model's family-wise error rate ``alpha`` is shared between its tests (weighted Holm). The grid test
pools every cell's per-query evidence, so it gets the largest share: it is what detects a small regression
spread over the whole grid. Each part's share is split equally between its cells."""


@dataclass(frozen=True)
class GateRule:
    """Parameters of the decision rule described in this module's docstring."""

    alpha: float = 0.05
    baseline_is_sample: bool = True
    seed_sd: float = 0.0

    def describe(self, mode: str = "unpaired") -> str:
        """One line stating the rule, for failure messages and reports (``mode``: paired or unpaired)."""
        family = (f"weighted Holm over the model's tests (grid {FAMILY_WEIGHTS['grid']:g}, cells "
                  f"{FAMILY_WEIGHTS['cells']:g}, chance {FAMILY_WEIGHTS['chance'] + FAMILY_WEIGHTS['grid_chance']:g} "
                  f"of alpha={self.alpha}); fail if adjusted p < alpha")
        if mode == "paired":
            return (f"paired: exact McNemar / sign-flip test per cell and a paired t-test of the grid's mean "
                    f"recall on the same queries against the recorded per-query ranks, one-sided; {family}")
        parts = "b(1-b)/M" + (" + b(1-b)/M_base" if self.baseline_is_sample else "")
        if self.seed_sd:
            parts += f" + {self.seed_sd:.4f}^2"
        return (f"unpaired (against a published aggregate): one-sided z-test per cell, se = sqrt({parts}), and "
                f"a z-test of the grid's mean recall; {family}")


@dataclass(frozen=True)
class CellInput:
    """One measured cell and its baseline (recalls as fractions); ``condition`` is a perturbation at a severity."""

    model: str
    condition: Condition
    k: int
    measured: float
    n_queries: int
    n_candidates: int
    baseline: float | None = None
    baseline_n_queries: int | None = None

    def __post_init__(self) -> None:  # a bare number is an occlusion ratio (backward compatibility)
        object.__setattr__(self, "condition", as_condition(self.condition))


@dataclass(kw_only=True)
class TestOutcome:
    """The p-values and verdicts of a regression test and its chance test (shared by cells and grids).

    ``p_value`` / ``chance_p`` are raw one-sided p-values; the ``*_adjusted`` ones are after the model's
    family-wise adjustment (:func:`apply_family`). ``passed`` is None when there is nothing to compare with.
    """

    __test__ = False  # not a pytest test class, whatever its name

    p_value: float | None = None
    p_adjusted: float | None = None
    passed: bool | None = None
    chance_p: float = 1.0
    chance_p_adjusted: float = 1.0
    chance_passed: bool = True
    rule: str = ""
    extras: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


@dataclass
class CellDecision(TestOutcome):
    """The gate's verdict on one cell, with every number the failure message needs."""

    model: str
    condition: Condition
    k: int
    measured: float
    n_queries: int
    n_candidates: int
    chance: float
    baseline: float | None
    baseline_n_queries: int | None = None
    se: float | None = None
    tolerance: float | None = None
    chance_mode: str = "not-below"

    def __post_init__(self) -> None:
        self.condition = as_condition(self.condition)

    def as_dict(self) -> dict:
        """JSON-serialisable form: the condition as ``perturbation`` + ``severity`` (and ``ratio`` for occlusion,
        as results files had it before perturbations existed)."""
        out = asdict(self)
        cond = out.pop("condition")
        out["perturbation"], out["severity"] = cond["perturbation"], cond["severity"]
        if self.condition.perturbation == "occlusion":
            out["ratio"] = self.condition.severity
        return out


@dataclass
class GridDecision(TestOutcome):
    """The grid test of one model: is the mean Recall over its compared cells significantly lower?

    ``measured`` / ``baseline`` are grid means (fractions) over the ``n_cells`` cells that have a baseline;
    ``chance`` is the mean of their k/N.
    """

    model: str
    mode: str
    measured: float
    baseline: float | None
    chance: float
    n_cells: int
    n_queries: int


def _se(cell: CellInput, rule: GateRule) -> float:
    assert cell.baseline is not None
    m = cell.n_queries
    b = min(max(cell.baseline, 0.5 / m), 1 - 0.5 / m)
    var = b * (1 - b) / m
    if rule.baseline_is_sample:
        mb = cell.baseline_n_queries or m
        var += b * (1 - b) / mb
    return math.sqrt(var + rule.seed_sd ** 2)


def weighted_holm(pvalues: Sequence[float], weights: Sequence[float]) -> np.ndarray:
    """Adjusted p-values of the weighted Holm procedure (Holm 1979, weighted form), same order as the input.

    Hypothesis ``i`` is rejected at level alpha exactly when its adjusted p-value is below alpha; the
    family-wise error rate is at most alpha for any dependence between the tests. Equal weights give
    :func:`holm`.
    """
    p = np.asarray(pvalues, dtype=float)
    w = np.asarray(weights, dtype=float)
    if p.shape != w.shape:
        raise ValueError(f"{p.size} p-values but {w.size} weights")
    if p.size == 0:
        return p.copy()
    if np.any(w <= 0):
        raise ValueError("weights must be positive")
    order = np.lexsort((np.arange(p.size), p / w))
    remaining = w.sum() - np.concatenate(([0.0], np.cumsum(w[order])[:-1]))
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * remaining / w[order]))
    out = np.empty(p.size)
    out[order] = adjusted
    return out


def chance_p(measured: float, n_queries: int, chance: float) -> float:
    """p-value of "the cell is clearly BELOW chance" (exact binomial, H0: recall >= k/N)."""
    return p_at_most(measured, n_queries, chance)


def decide(cells: Sequence[CellInput], rule: GateRule = GateRule(),
           grid: GridDecision | None = None) -> list[CellDecision]:
    """Raw p-values of each cell's tests (unpaired z-test; chance) and the model's family-wise verdicts.

    ``grid`` (optional) joins the same family; see :func:`apply_family`.
    """
    from scipy.stats import norm

    g = max(1, sum(c.baseline is not None for c in cells))
    z_cell = float(norm.ppf(1 - rule.alpha * FAMILY_WEIGHTS["cells"] / g))
    out = []
    for c in cells:
        d = CellDecision(model=c.model, condition=c.condition, k=c.k, measured=c.measured, n_queries=c.n_queries,
                         n_candidates=c.n_candidates, chance=c.k / c.n_candidates, baseline=c.baseline,
                         baseline_n_queries=c.baseline_n_queries, rule=rule.describe())
        if c.baseline is not None:
            d.se = _se(c, rule)
            d.tolerance = z_cell * d.se  # the Bonferroni bound of the cell's share: Holm is never stricter
            d.p_value = float(norm.cdf((c.measured - c.baseline) / d.se))
        d.chance_p = chance_p(c.measured, c.n_queries, d.chance)
        out.append(d)
    apply_family(out, grid, rule.alpha)
    return out


def apply_family(cells: Sequence[CellDecision], grid: GridDecision | None, alpha: float) -> None:
    """Adjust every test of one model together (weighted Holm, :data:`FAMILY_WEIGHTS`) and set the verdicts.

    The family is: the grid test and its chance test (when ``grid`` is given), each cell's regression test
    (cells with a baseline) and each cell's chance test. An unchanged model therefore fails *any* of its
    tests with probability at most ``alpha``.
    """
    tests: list[tuple[Any, str, float, float]] = []  # (decision, which, p, weight)
    regression = [d for d in cells if d.p_value is not None]
    for d in regression:
        tests.append((d, "p", d.p_value, FAMILY_WEIGHTS["cells"] / len(regression)))
    for d in cells:
        tests.append((d, "chance_p", d.chance_p, FAMILY_WEIGHTS["chance"] / len(cells)))
    if grid is not None:
        if grid.p_value is not None:
            tests.append((grid, "p", grid.p_value, FAMILY_WEIGHTS["grid"]))
        tests.append((grid, "chance_p", grid.chance_p, FAMILY_WEIGHTS["grid_chance"]))
    if not tests:
        return
    adjusted = weighted_holm([t[2] for t in tests], [t[3] for t in tests])
    for (d, which, _, _), p_adj in zip(tests, adjusted):
        if which == "p":
            d.p_adjusted, d.passed = float(p_adj), bool(p_adj >= alpha)
        else:
            d.chance_p_adjusted, d.chance_passed = float(p_adj), bool(p_adj >= alpha)


def grid_test_paired(ref_hits: np.ndarray, cand_hits: np.ndarray) -> tuple[float, dict]:
    """One-sided paired t-test that the candidate's grid-mean recall is lower than the reference's.

    ``*_hits`` are ``(M, C)`` per-query hits of the same queries (rows) in the same cells (columns). Each
    query's difference is averaged over the cells first, so the test pools the whole grid while the
    dependence between cells of one query is kept. Returns ``(p, numbers)``.
    """
    ref_hits, cand_hits = np.asarray(ref_hits, float), np.asarray(cand_hits, float)
    if ref_hits.shape != cand_hits.shape or ref_hits.ndim != 2 or ref_hits.shape[0] < 2:
        raise ValueError(f"need two (M >= 2, C) hit matrices of equal shape, got {ref_hits.shape}, {cand_hits.shape}")
    d = (ref_hits - cand_hits).mean(axis=1)
    return _one_sided_t(d), {"diff": -float(d.mean()), "sd_query": float(d.std(ddof=1))}


def grid_test_unpaired(cand_hits: np.ndarray, baseline_mean: float, n_baseline: int) -> tuple[float, dict]:
    """One-sided z-test that the candidate's grid-mean recall is below a published grid mean.

    The baseline is treated as an independent sample of ``n_baseline`` queries with the candidate's
    per-query spread (the per-cell rule makes the same assumption).
    """
    from scipy.stats import norm

    per_query = np.asarray(cand_hits, float).mean(axis=1)
    m = per_query.size
    var = float(per_query.var(ddof=1)) if m > 1 else 0.0
    se = math.sqrt(var / m + var / max(n_baseline, 1))
    diff = float(per_query.mean()) - baseline_mean
    if se <= 0:
        return (0.0 if diff < 0 else 1.0), {"diff": diff, "se": se}
    return float(norm.cdf(diff / se)), {"diff": diff, "se": se}


def grid_chance_p(cand_hits: np.ndarray, chances: np.ndarray) -> float:
    """p-value of "the grid-mean recall is clearly BELOW the grid-mean chance level" (one-sided t-test)."""
    per_query = np.asarray(cand_hits, float).mean(axis=1)
    return _one_sided_t(float(np.mean(chances)) - per_query)


def _one_sided_t(d: np.ndarray) -> float:
    """p-value of H0 "mean(d) <= 0" against "mean(d) > 0" (one-sample t-test)."""
    from scipy.stats import t as student_t

    d = np.asarray(d, dtype=float)
    m = d.size
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if m > 1 else 0.0
    if sd <= 1e-15:
        return 0.0 if mean > 1e-12 else 1.0
    return float(student_t.sf(mean / (sd / math.sqrt(m)), df=m - 1))


# ----- resampling and per-cell seed spread (used by paired.py, summaries.py and the validation study) -------


def bootstrap_means(values: np.ndarray, n_boot: int = 2000, seed: int = 0, chunk: int = 256) -> np.ndarray:
    """Means of the columns of ``values`` ``(M, P)`` over ``n_boot`` resamples of its rows: ``(n_boot, P)``.

    Every column is resampled with the same row indices (the rows are queries, the columns cells measured
    on those queries), so dependence between columns is kept. Row indices are drawn uniformly from
    ``numpy.random.default_rng(seed)`` and turned into per-row counts, in chunks so memory stays ``chunk x M``.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    m = values.shape[0]
    if m == 0:
        raise ValueError("cannot bootstrap an empty sample (M = 0)")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, values.shape[1]))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        # Counts of each row in each resample (one bincount for the chunk: much faster than multinomial).
        flat = (rng.integers(0, m, (b, m)) + (np.arange(b) * m)[:, None]).ravel()
        weights = np.bincount(flat, minlength=b * m).reshape(b, m)
        out[start:start + b] = weights @ values / m
    return out


def seed_spread(grids: Sequence[dict[Any, dict[int, float]]]) -> dict[tuple[Any, int], float]:
    """Per-cell standard deviation (ddof=1) of Recall@k across runs that differ only in the perturbation seed.

    ``grids`` are ``SweepResult.grid()`` outputs of one model on one data set, one per seed. The result is
    the sd of a *single* run's recall due to the random draws (0 at severity 0, where nothing is perturbed).
    """
    if len(grids) < 2:
        raise ValueError(f"seed_spread needs runs with at least 2 seeds, got {len(grids)}")
    cells = {(r, k) for r, by_k in grids[0].items() for k in by_k}
    for i, g in enumerate(grids[1:], start=1):
        other = {(r, k) for r, by_k in g.items() for k in by_k}
        if other != cells:
            diff = sorted(cells ^ other)[:3]
            raise ValueError(f"run {i} measured different cells than run 0 (e.g. (condition, k) {diff}); "
                             "seed_spread needs the same grid in every run")
    return {(r, k): float(np.std([g[r][k] for g in grids], ddof=1)) for r, k in sorted(cells)}


def seed_sd_for_baseline(spread: dict[tuple[Any, int], float],
                         baseline_runs: int = 1) -> dict[tuple[Any, int], float]:
    """Per-cell ``seed_sd`` for :func:`decide_per_cell` when the baseline was recorded on the same images.

    The baseline is then not an independent sample of queries (``GateRule(baseline_is_sample=False)``), but
    it still carries its own occlusion noise: sd / sqrt(baseline_runs) for a mean over that many seeds.
    """
    if baseline_runs < 1:
        raise ValueError(f"baseline_runs must be >= 1, got {baseline_runs}")
    return {cell: sd / math.sqrt(baseline_runs) for cell, sd in spread.items()}


def decide_per_cell(cells: Sequence[CellInput], rule: GateRule = GateRule(),
                    seed_sd: dict[tuple[Any, int], float] | None = None) -> list[CellDecision]:
    """:func:`decide` with a per-cell seed sd: ``seed_sd[(condition, k)]`` replaces ``rule.seed_sd`` for that cell.

    Cells missing from ``seed_sd`` use ``rule.seed_sd``. The chance tests do not involve the seed sd and are
    exactly those of :func:`decide`; the regression test, its tolerance and the Holm family are recomputed.
    """
    from scipy.stats import norm

    out = decide(cells, rule)
    seed_sd = {(as_condition(c), k): sd for (c, k), sd in (seed_sd or {}).items()}
    with_base = [i for i, c in enumerate(cells) if c.baseline is not None]
    z_cell = float(norm.ppf(1 - rule.alpha * FAMILY_WEIGHTS["cells"] / max(len(with_base), 1)))
    for i in with_base:
        c = cells[i]
        sd = float(seed_sd.get((c.condition, c.k), rule.seed_sd))
        se = _se(c, GateRule(alpha=rule.alpha, baseline_is_sample=rule.baseline_is_sample, seed_sd=sd))
        out[i].se, out[i].tolerance = se, z_cell * se
        out[i].p_value = float(norm.cdf((c.measured - c.baseline) / se))
        out[i].extras["seed_sd"] = sd
        out[i].rule = rule.describe().replace("se = sqrt(", "se = sqrt(seed_sd(condition,k)^2 + ")
    apply_family(out, None, rule.alpha)
    return out
