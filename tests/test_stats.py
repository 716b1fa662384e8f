"""Confidence bounds, Holm adjustment and the gate's per-cell decisions."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_robust.stats import CellInput, GateRule, clopper_pearson, decide, holm, p_at_least, p_at_most, wilson


def test_holm_matches_hand_computation() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])


@pytest.mark.parametrize("interval", [clopper_pearson, wilson])
def test_intervals_cover_the_estimate(interval) -> None:
    for p in (0.0, 0.005, 0.3, 1.0):
        lo, hi = interval(p, 1770)
        assert 0.0 <= lo <= p <= hi <= 1.0


def test_clopper_pearson_coverage_by_simulation() -> None:
    rng = np.random.default_rng(0)
    true, n = 0.1, 500
    covered = [lo <= true <= hi for lo, hi in (clopper_pearson(x / n, n) for x in rng.binomial(n, true, 400))]
    assert np.mean(covered) >= 0.94  # exact intervals are conservative


def test_exact_p_values_at_the_boundary() -> None:
    assert p_at_least(0.0, 100, 0.01) == 1.0
    assert p_at_most(1.0, 100, 0.5) == 1.0
    assert p_at_least(0.2, 1000, 0.01) < 1e-50
    assert p_at_most(0.0, 1770, 0.05) < 1e-30


def _grid(measured_shift: float, baseline: float = 0.4, n: int = 1770) -> list[CellInput]:
    return [CellInput("m", r, k, baseline + measured_shift, n, 994, baseline, n)
            for r in (0, 0.25) for k in (5, 10, 20)]


def test_unchanged_model_passes_and_a_large_drop_fails() -> None:
    assert all(d.passed and d.chance_passed for d in decide(_grid(0.0)))
    failed = decide(_grid(-0.10))
    assert not any(d.passed for d in failed)
    for d in failed:
        assert d.tolerance is not None and 0 < d.tolerance < 0.10
        assert "Holm" in d.rule


def test_small_drop_within_sampling_error_passes() -> None:
    assert all(d.passed for d in decide(_grid(-0.005)))


def test_unchanged_model_false_alarm_rate_is_controlled() -> None:
    """Simulate unchanged models: the share of grids with any failing cell stays below alpha."""
    rng = np.random.default_rng(1)
    n, base = 1770, np.array([0.05, 0.2, 0.4, 0.6, 0.8, 0.95] * 8)
    alarms = 0
    for _ in range(200):
        measured = rng.binomial(n, base) / n
        recorded = rng.binomial(n, base) / n
        cells = [CellInput("m", i, 5, float(m), n, 994, float(b), n) for i, (m, b) in enumerate(zip(measured, recorded))]
        alarms += not all(d.passed for d in decide(cells, GateRule(alpha=0.05)))
    assert alarms / 200 <= 0.08


def test_chance_semantics() -> None:
    n, c = 1770, 10 / 994
    # Baseline clearly above chance, measurement collapsed to chance: a huge regression (the regression test
    # fails); being *at* chance is not "below chance", so the chance test (a null-controlled test) passes.
    above = decide([CellInput("m", 0, 10, c, n, 994, 0.5, n)])[0]
    assert above.passed is False and above.chance_passed
    # A row at chance (the paper's CLIP): at chance passes, clearly below fails.
    at_chance = decide([CellInput("clip", 0, 10, c, n, 994, 0.0107, n)])[0]
    assert at_chance.chance_mode == "not-below" and at_chance.chance_passed
    below = decide([CellInput("clip", 0, 10, 0.0, n, 994, 0.0107, n)])[0]
    assert not below.chance_passed


def test_weighted_holm_matches_holm_with_equal_weights_and_controls_the_family() -> None:
    from cxr_robust.stats import holm, weighted_holm

    p = [0.001, 0.04, 0.03, 0.5, 0.0125]
    assert np.allclose(weighted_holm(p, [1] * 5), holm(p))
    # a heavier weight lowers a test's adjusted p-value (0.04 / 0.9 < 0.05, while Holm gives 0.08)
    adj = weighted_holm([0.04, 0.2], [0.9, 0.1])
    assert adj[0] < 0.05 < holm([0.04, 0.2])[0] and np.all(adj >= np.array([0.04, 0.2]) - 1e-12)
    with pytest.raises(ValueError, match="weights"):
        weighted_holm([0.1], [0.0])


def test_chance_tests_share_the_family_with_regression_tests() -> None:
    """A model at chance level (p-values uniform) must not fail its chance tests more often than alpha."""
    rng = np.random.default_rng(3)
    n, N = 1770, 994
    ks = [5, 10, 20, 30, 50, 100] * 8
    alarms = 0
    for _ in range(300):
        measured = rng.binomial(n, np.array(ks) / N) / n
        cells = [CellInput("clip", i / 100, k, float(m), n, N, None) for i, (k, m) in enumerate(zip(ks, measured))]
        alarms += not all(d.chance_passed for d in decide(cells, GateRule(alpha=0.05)))
    assert alarms / 300 <= 0.05


def test_grid_test_pools_small_drops_that_no_cell_shows() -> None:
    """A 1-point drop in every one of 48 cells: no single cell is significant, the grid test is."""
    from cxr_robust.stats import GridDecision, apply_family, grid_test_paired

    rng = np.random.default_rng(0)
    m, c = 1757, 48
    ref = (rng.random((m, c)) < 0.6).astype(float)
    cand = ref.copy()
    lose = rng.random((m, c)) < 0.03  # churn: 3 % of hits lost, 2 % of misses gained
    gain = rng.random((m, c)) < 0.02
    cand[(ref == 1) & lose] = 0
    cand[(ref == 0) & gain] = 1
    p, numbers = grid_test_paired(ref, cand)
    assert numbers["diff"] < 0 and p < 1e-6
    grid = GridDecision("m", "paired", float(cand.mean()), float(ref.mean()), 0.03, c, m, p_value=p)
    apply_family([], grid, 0.05)
    assert grid.passed is False and grid.chance_passed
    # the same model against itself: nothing to find
    p_same, _ = grid_test_paired(ref, ref)
    assert p_same == 1.0
