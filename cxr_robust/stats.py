"""Confidence bounds and the gate's decision rule.

The rule, in one place (it is printed in every failure message and in the report):

* **Regression test, per cell** (model, ratio, k). H0: the model's true Recall@k is at least the baseline's.
  The measured recall over M queries is compared with the baseline by a one-sided z-test whose standard
  error adds the binomial variance of the measurement (``b(1-b)/M``), of the baseline when the baseline is
  itself a sample (``b(1-b)/M_baseline``; true for the paper's table and for recorded runs), and the
  variance from the choice of occlusion seed (``seed_sd**2``). ``b`` is floored at ``0.5/M`` away from 0
  and 1 so a cell at 0 % or 100 % still has a tolerance.
* **Family-wise control**: the p-values of all cells of one model form a family, adjusted with Holm's
  step-down method; a cell fails when its adjusted p-value is below ``alpha`` (default 0.05). An unchanged
  model therefore fails any cell with probability at most ``alpha``.
* **Chance test, per cell**. chance = k/N. If the baseline is clearly above chance (its one-sided
  Clopper-Pearson lower bound at level alpha/G exceeds k/N), the measurement must be clearly above chance
  too (exact binomial test at level alpha); otherwise the measurement must not be clearly below chance
  (exact binomial test, Holm-adjusted over those cells): that would mean broken scoring, e.g. reversed
  similarities. A row at chance level (the paper's CLIP) is thus tested, and fails only when it is
  significantly worse than random.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np


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


@dataclass(frozen=True)
class GateRule:
    """Parameters of the decision rule described in this module's docstring."""

    alpha: float = 0.05
    baseline_is_sample: bool = True
    seed_sd: float = 0.0

    def describe(self) -> str:
        """One line stating the rule, for failure messages and reports."""
        parts = "b(1-b)/M" + (" + b(1-b)/M_base" if self.baseline_is_sample else "")
        if self.seed_sd:
            parts += f" + {self.seed_sd:.4f}^2"
        return (f"one-sided z-test, se = sqrt({parts}), Holm-adjusted over the model's grid, "
                f"fail if adjusted p < alpha={self.alpha}")


@dataclass(frozen=True)
class CellInput:
    """One measured cell and its baseline (recalls as fractions)."""

    model: str
    ratio: float
    k: int
    measured: float
    n_queries: int
    n_candidates: int
    baseline: float | None = None
    baseline_n_queries: int | None = None


@dataclass
class CellDecision:
    """The gate's verdict on one cell, with every number the failure message needs."""

    model: str
    ratio: float
    k: int
    measured: float
    n_queries: int
    n_candidates: int
    chance: float
    baseline: float | None
    se: float | None = None
    tolerance: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    passed: bool | None = None
    chance_mode: str = "not-below"
    chance_p: float = 1.0
    chance_p_adjusted: float = 1.0
    chance_passed: bool = True
    rule: str = ""
    extras: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)


def _se(cell: CellInput, rule: GateRule) -> float:
    assert cell.baseline is not None
    m = cell.n_queries
    b = min(max(cell.baseline, 0.5 / m), 1 - 0.5 / m)
    var = b * (1 - b) / m
    if rule.baseline_is_sample:
        mb = cell.baseline_n_queries or m
        var += b * (1 - b) / mb
    return math.sqrt(var + rule.seed_sd ** 2)


def decide(cells: Sequence[CellInput], rule: GateRule = GateRule()) -> list[CellDecision]:
    """Apply the rule to one model's grid (the Holm family) and return one decision per cell."""
    from scipy.stats import norm

    g = len(cells)
    out = [CellDecision(model=c.model, ratio=c.ratio, k=c.k, measured=c.measured, n_queries=c.n_queries,
                        n_candidates=c.n_candidates, chance=c.k / c.n_candidates, baseline=c.baseline,
                        rule=rule.describe()) for c in cells]
    # Regression against the baseline.
    with_base = [i for i, c in enumerate(cells) if c.baseline is not None]
    pvals = []
    z_bonf = float(norm.ppf(1 - rule.alpha / max(len(with_base), 1)))
    for i in with_base:
        se = _se(cells[i], rule)
        out[i].se = se
        out[i].tolerance = z_bonf * se
        out[i].p_value = float(norm.cdf((cells[i].measured - cells[i].baseline) / se))
        pvals.append(out[i].p_value)
    for i, p_adj in zip(with_base, holm(pvals) if pvals else []):
        out[i].p_adjusted = float(p_adj)
        out[i].passed = bool(p_adj >= rule.alpha)
    # Relation to chance. Only "not-below" failures are false alarms under H0, so only that family is
    # Holm-adjusted; an "above" cell passes when its own exact test rejects "recall <= chance".
    below = []
    for c, d in zip(cells, out):
        mb = c.baseline_n_queries or c.n_queries
        clearly_above = (c.baseline is not None
                         and clopper_pearson(c.baseline, mb, 2 * rule.alpha / g)[0] > d.chance)
        if clearly_above:
            d.chance_mode = "above"
            d.chance_p = d.chance_p_adjusted = p_at_least(c.measured, c.n_queries, d.chance)
            d.chance_passed = bool(d.chance_p < rule.alpha)
        else:
            d.chance_mode = "not-below"
            d.chance_p = p_at_most(c.measured, c.n_queries, d.chance)
            below.append(d)
    for d, p_adj in zip(below, holm([d.chance_p for d in below]) if below else []):
        d.chance_p_adjusted = float(p_adj)
        d.chance_passed = bool(p_adj >= rule.alpha)
    return out


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


def seed_spread(grids: Sequence[dict[float, dict[int, float]]]) -> dict[tuple[float, int], float]:
    """Per-cell standard deviation (ddof=1) of Recall@k across runs that differ only in the occlusion seed.

    ``grids`` are ``SweepResult.grid()`` outputs of one model on one data set, one per seed. The result is
    the sd of a *single* run's recall due to where the boxes fall (0 at ratio 0, where nothing is occluded).
    """
    if len(grids) < 2:
        raise ValueError(f"seed_spread needs runs with at least 2 seeds, got {len(grids)}")
    cells = {(r, k) for r, by_k in grids[0].items() for k in by_k}
    for i, g in enumerate(grids[1:], start=1):
        other = {(r, k) for r, by_k in g.items() for k in by_k}
        if other != cells:
            diff = sorted(cells ^ other)[:3]
            raise ValueError(f"run {i} measured different cells than run 0 (e.g. (ratio, k) {diff}); "
                             "seed_spread needs the same grid in every run")
    return {(r, k): float(np.std([g[r][k] for g in grids], ddof=1)) for r, k in sorted(cells)}


def seed_sd_for_baseline(spread: dict[tuple[float, int], float],
                         baseline_runs: int = 1) -> dict[tuple[float, int], float]:
    """Per-cell ``seed_sd`` for :func:`decide_per_cell` when the baseline was recorded on the same images.

    The baseline is then not an independent sample of queries (``GateRule(baseline_is_sample=False)``), but
    it still carries its own occlusion noise: sd / sqrt(baseline_runs) for a mean over that many seeds.
    """
    if baseline_runs < 1:
        raise ValueError(f"baseline_runs must be >= 1, got {baseline_runs}")
    return {cell: sd / math.sqrt(baseline_runs) for cell, sd in spread.items()}


def decide_per_cell(cells: Sequence[CellInput], rule: GateRule = GateRule(),
                    seed_sd: dict[tuple[float, int], float] | None = None) -> list[CellDecision]:
    """:func:`decide` with a per-cell seed sd: ``seed_sd[(ratio, k)]`` replaces ``rule.seed_sd`` for that cell.

    Cells missing from ``seed_sd`` use ``rule.seed_sd``. The chance tests do not involve the seed sd and are
    exactly those of :func:`decide`; the regression test, its tolerance and the Holm family are recomputed.
    """
    from scipy.stats import norm

    out = decide(cells, rule)
    seed_sd = seed_sd or {}
    parts = "b(1-b)/M" + (" + b(1-b)/M_base" if rule.baseline_is_sample else "") + " + seed_sd(ratio,k)^2"
    text = (f"one-sided z-test, se = sqrt({parts}), Holm-adjusted over the model's grid, "
            f"fail if adjusted p < alpha={rule.alpha}")
    with_base = [i for i, c in enumerate(cells) if c.baseline is not None]
    z_bonf = float(norm.ppf(1 - rule.alpha / max(len(with_base), 1)))
    pvals = []
    for i in with_base:
        c = cells[i]
        sd = float(seed_sd.get((c.ratio, c.k), rule.seed_sd))
        se = _se(c, GateRule(alpha=rule.alpha, baseline_is_sample=rule.baseline_is_sample, seed_sd=sd))
        out[i].se, out[i].tolerance = se, z_bonf * se
        out[i].p_value = float(norm.cdf((c.measured - c.baseline) / se))
        out[i].extras["seed_sd"] = sd
        out[i].rule = text
        pvals.append(out[i].p_value)
    for i, p_adj in zip(with_base, holm(pvals) if pvals else []):
        out[i].p_adjusted = float(p_adj)
        out[i].passed = bool(p_adj >= rule.alpha)
    return out
