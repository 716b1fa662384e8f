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
