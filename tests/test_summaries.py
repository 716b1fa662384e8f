"""Robustness summaries (AUC, relative drop, bootstrap CIs), the AUC gate, and per-cell seed spread."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_robust.metrics import RankCounts
from cxr_robust.stats import (CellInput, GateRule, bootstrap_means, decide, decide_per_cell, seed_sd_for_baseline,
                              seed_spread)
from cxr_robust.summaries import auc_gate, auc_vs_baseline, auc_weights, hits_matrix, robustness_summary

RATIOS = (0.0, 0.0025, 0.01, 0.04, 0.09, 0.25, 0.49, 0.81)


def _counts_from_hits(hits: np.ndarray, n: int = 200, k: int = 10) -> RankCounts:
    """Rank counts whose hits at depth k are ``hits`` (0/1): rank 1 for a hit, rank n for a miss."""
    return RankCounts(np.where(hits > 0, 0, n - 1).astype(np.int64), np.zeros(hits.size, np.int64), n)


def test_auc_weights_are_a_normalised_trapezoid() -> None:
    w = auc_weights(RATIOS)
    assert w.sum() == pytest.approx(1.0)
    r = np.array(RATIOS)
    assert (1 - r) @ w == pytest.approx(np.trapezoid(1 - r, r) / 0.81)
    with pytest.raises(ValueError, match="start at 0"):
        auc_weights((0.01, 0.04))


def test_auc_of_a_flat_curve_equals_its_value() -> None:
    rng = np.random.default_rng(0)
    hits = (rng.random(500) < 0.3).astype(float)
    counts = {r: _counts_from_hits(hits) for r in RATIOS}
    s = robustness_summary(counts, (10,), n_boot=300)
    assert s["auc@10"]["value"] == pytest.approx(hits.mean())
    assert s["auc_rel@10"]["value"] == pytest.approx(1.0)
    # Identical columns and shared resampling: every relative drop and its CI are exactly zero.
    for cell in s["drop@10"].values():
        assert cell["value"] == 0.0 and cell["ci"] == pytest.approx([0.0, 0.0], abs=1e-12)


def test_relative_drop_of_a_model_at_chance_is_zero() -> None:
    m, n = 300, 120
    chance = {r: RankCounts(np.zeros(m, np.int64), np.full(m, n - 1, np.int64), n) for r in RATIOS}  # constant scores
    s = robustness_summary(chance, (5, 10, 100), n_boot=200)
    for k in (5, 10, 100):
        assert s[f"clean@{k}"]["value"] == pytest.approx(k / n) and s[f"auc@{k}"]["value"] == pytest.approx(k / n)
        for cell in s[f"drop@{k}"].values():
            assert cell["value"] == pytest.approx(0.0, abs=1e-12)
            assert cell["ci"] == pytest.approx([0.0, 0.0], abs=1e-12)


def test_summary_is_json_serialisable_even_with_zero_clean_recall() -> None:
    rng = np.random.default_rng(1)
    counts = {r: _counts_from_hits((rng.random(200) < 0.5 - 0.5 * r).astype(float)) for r in RATIOS}
    counts[0.0] = _counts_from_hits(np.zeros(200))
    s = robustness_summary(counts, (10, 50), n_boot=100)
    text = json.dumps(s, allow_nan=False)
    back = json.loads(text)
    assert back["auc_rel@10"] == {"value": None, "ci": None}
    assert back["drop@10"]["0.81"] == {"value": None, "ci": None}
    assert back["ratios"] == list(RATIOS) and set(back["drop@50"]) == {repr(r) for r in RATIOS[1:]}


def test_summary_cis_contain_estimates_and_are_seeded() -> None:
    rng = np.random.default_rng(2)
    counts = {r: _counts_from_hits((rng.random(400) < 0.6 - 0.6 * r).astype(float)) for r in RATIOS}
    a = robustness_summary(counts, (10,), n_boot=400, seed=5)
    assert a == robustness_summary(counts, (10,), n_boot=400, seed=5)
    assert a != robustness_summary(counts, (10,), n_boot=400, seed=6)
    for key in ("clean@10", "auc@10", "auc_rel@10"):
        lo, hi = a[key]["ci"]
        assert lo <= a[key]["value"] <= hi
    expected = 1 - counts[0.81].hits(10).mean() / counts[0.0].hits(10).mean()
    assert a["drop@10"]["0.81"]["value"] == pytest.approx(expected)


def test_bootstrap_means_coverage_sanity() -> None:
    rng = np.random.default_rng(3)
    covered = []
    for rep in range(150):
        x = (rng.random(250) < 0.2).astype(float)
        boot = bootstrap_means(x, 800, seed=rep)[:, 0]
        lo, hi = np.quantile(boot, [0.025, 0.975])
        covered.append(lo <= 0.2 <= hi)
    assert 0.90 <= np.mean(covered) <= 0.99


def test_auc_gate_passes_identical_runs_and_fails_a_clear_drop() -> None:
    rng = np.random.default_rng(4)
    ratios = np.array(RATIOS)
    ref = (rng.random((800, len(RATIOS))) < 0.5 * (1 - ratios)).astype(float)
    same = auc_gate(ref, ref, RATIOS)
    assert same["passed"] and same["diff"] == 0.0 and same["upper"] == 0.0
    worse = ref * (rng.random(ref.shape) > 0.15)  # loses 15 % of its hits at every ratio
    res = auc_gate(ref, worse, RATIOS)
    assert not res["passed"] and res["upper"] < 0
    assert auc_gate(ref, worse, RATIOS, tolerance=0.2)["passed"]
    counts = {r: _counts_from_hits(ref[:, i]) for i, r in enumerate(RATIOS)}
    ratios_h, h = hits_matrix(counts, 10)
    assert list(ratios_h) == list(RATIOS) and np.array_equal(h, ref)


def test_auc_vs_baseline() -> None:
    measured = {"value": 0.30, "ci": [0.28, 0.32]}
    assert auc_vs_baseline(measured, 0.31)["passed"]
    assert not auc_vs_baseline(measured, 0.35)["passed"]
    assert auc_vs_baseline(measured, 0.35, tolerance=0.05)["passed"]
    # A baseline that is itself a sample widens the tolerance.
    assert not auc_vs_baseline(measured, 0.325)["passed"]
    assert auc_vs_baseline(measured, {"value": 0.325, "ci": [0.305, 0.345]})["passed"]
    assert not auc_vs_baseline(measured, {"value": 0.40, "ci": [0.38, 0.42]})["passed"]


def test_seed_spread_and_per_cell_rule() -> None:
    grids = [{0.0: {10: 0.5}, 0.25: {10: v}} for v in (0.40, 0.42, 0.44)]
    spread = seed_spread(grids)
    assert spread[(0.0, 10)] == 0.0 and spread[(0.25, 10)] == pytest.approx(0.02)
    assert seed_sd_for_baseline(spread, 4)[(0.25, 10)] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="at least 2"):
        seed_spread(grids[:1])
    with pytest.raises(ValueError, match="different cells"):
        seed_spread([grids[0], {0.0: {10: 0.5}}])
    cells = [CellInput("m", r, 10, b - 0.03, 1000, 500, b, 1000) for r, b in ((0.0, 0.5), (0.25, 0.42))]
    # Without a per-cell sd the rule is exactly decide().
    plain = decide(cells, GateRule())
    same = decide_per_cell(cells, GateRule(), {})
    assert [d.p_adjusted for d in plain] == pytest.approx([d.p_adjusted for d in same])
    # A large seed sd in one cell widens only that cell's tolerance.
    wide = decide_per_cell(cells, GateRule(), {(0.25, 10): 0.05})
    assert wide[1].tolerance > plain[1].tolerance and wide[0].tolerance == pytest.approx(plain[0].tolerance)
    assert wide[1].extras["seed_sd"] == 0.05 and "seed_sd(condition,k)" in wide[1].rule


def test_corruption_errors_and_mce_against_a_reference_model() -> None:
    from cxr_robust.perturbations import Condition
    from cxr_robust.summaries import add_corruption_summary, corruption_errors, mce

    def grid(clean: float, noise: list[float], blur: list[float]) -> dict:
        out = {Condition("occlusion", 0.0): {5: clean}}
        out.update({Condition("gaussian_noise", s + 1): {5: v} for s, v in enumerate(noise)})
        out.update({Condition("gaussian_blur", s + 1): {5: v} for s, v in enumerate(blur)})
        return out

    model = corruption_errors(grid(0.8, [0.6, 0.4], [0.8, 0.7]), 5)
    ref = corruption_errors(grid(0.5, [0.3, 0.1], [0.5, 0.4]), 5)
    assert model["gaussian_noise"]["error_sum"] == pytest.approx(0.4 + 0.6)
    assert model["gaussian_noise"]["mean_relative_drop"] == pytest.approx((0.25 + 0.5) / 2)
    assert model["gaussian_blur"]["mean_relative_drop"] == pytest.approx((0.0 + 0.125) / 2)
    got = mce(model, ref)
    assert got["ce"] == pytest.approx({"gaussian_noise": 1.0 / 1.6, "gaussian_blur": 0.5 / 1.1})
    assert got["mce"] == pytest.approx((1.0 / 1.6 + 0.5 / 1.1) / 2)

    def cells(g: dict) -> list[dict]:
        return [{"perturbation": c.perturbation, "severity": c.severity, "k": 5, "measured": v[5]}
                for c, v in g.items()]

    doc = {"config": {"reference_model": "ref"},
           "models": [{"model": "m", "status": "measured", "cells": cells(grid(0.8, [0.6, 0.4], [0.8, 0.7]))},
                      {"model": "ref", "status": "measured", "cells": cells(grid(0.5, [0.3, 0.1], [0.5, 0.4]))}]}
    add_corruption_summary(doc)
    assert doc["models"][0]["corruption"]["5"]["mce"]["mce"] == pytest.approx(got["mce"])
    assert doc["models"][1]["corruption"]["5"]["mce"]["mce"] == pytest.approx(1.0)  # the reference against itself


def test_report_side_perturbations_are_averaged_apart_from_the_film_corruptions() -> None:
    """A run of both sides gets one mean relative drop per side, and the mCE of the image side only."""
    from cxr_robust.perturbations import Condition
    from cxr_robust.summaries import add_corruption_summary

    def cells(clean: float, noise: float, typos: float) -> list[dict]:
        grid = {Condition("occlusion", 0.0): clean, Condition("gaussian_noise", 1): noise, Condition("typos", 1): typos}
        return [{"perturbation": c.perturbation, "severity": c.severity, "k": 5, "measured": v} for c, v in grid.items()]

    doc = {"config": {"reference_model": "ref"},
           "models": [{"model": "m", "status": "measured", "cells": cells(0.8, 0.4, 0.6)},
                      {"model": "ref", "status": "measured", "cells": cells(0.5, 0.3, 0.1)}]}
    entry = add_corruption_summary(doc)["models"][0]["corruption"]["5"]
    assert entry["mean_relative_drop"] == pytest.approx(0.5)  # gaussian noise alone: 1 - 0.4 / 0.8
    assert entry["report_mean_relative_drop"] == pytest.approx(0.25)  # typos: 1 - 0.6 / 0.8
    assert set(entry["per_perturbation"]) == {"gaussian_noise", "typos"}
    assert set(entry["mce"]["ce"]) == {"gaussian_noise"}
    image_only = {"config": {}, "models": [{"model": "m", "status": "measured", "cells": cells(0.8, 0.4, 0.6)[:2]}]}
    assert "report_mean_relative_drop" not in add_corruption_summary(image_only)["models"][0]["corruption"]["5"]
