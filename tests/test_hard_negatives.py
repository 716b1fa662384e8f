"""The negation measurement and its decision (cxr_robust.hard_negatives), on hand-made embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_robust.hard_negatives import confusion_ci, decide_negation, measure_negation


def _unit(rows: list[list[float]]) -> torch.Tensor:
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


def test_each_query_is_compared_with_its_own_studys_twin() -> None:
    """Query 0 prefers its report, query 1 its twin, query 2 ties them, query 3's study has no twin."""
    texts = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    twins = _unit([[0.6, 0.8, 0], [0, 0, 1], [0, 0, 1]])  # twins of studies 0, 1, 2
    images = _unit([[1, 0.1, 0], [0, 0.2, 1], [0, 0.3, 1], [0, 1, 0]])
    query_study = [0, 1, 2, 1]
    res = measure_negation(images, texts, twins[:2], [0, 1], [0, 1, 1, 1], "test")
    assert res.confusion.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert res.n_twins == 2 and res.coverage == pytest.approx(2 / 3)
    # study 2 has no twin: its query is left out of the rate
    res = measure_negation(images, texts, twins[:2], [0, 1], query_study, "test")
    assert np.isnan(res.confusion[2]) and res.n_queries == 3
    # a twin equal to the report ties: half a confusion
    res = measure_negation(images, texts, texts[2:3].clone(), [2], query_study, "test")
    assert res.confusion[2] == 0.5 and np.isnan(res.confusion[[0, 1, 3]]).all()


def test_the_twins_join_the_candidate_pool() -> None:
    texts = _unit([[1, 0], [0, 1]])
    twins = _unit([[1, 0.01]])  # study 0's twin sits right next to its report
    images = _unit([[1, 0.02], [0, 1]])
    res = measure_negation(images, texts, twins, [0], [0, 1], "test")
    assert res.pool_counts.n_candidates == 3
    assert res.pool_counts.above.tolist() == [1, 0]  # the twin outranks query 0's report
    assert res.confusion[0] == 1.0 and np.isnan(res.confusion[1])


def test_chunking_does_not_change_anything() -> None:
    g = torch.Generator().manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=1)
    twins = torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=1)
    images = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    qs = np.arange(50) % 30
    a = measure_negation(images, texts, twins, np.arange(20), qs, "t", chunk_rows=7)
    b = measure_negation(images, texts, twins, np.arange(20), qs, "t")
    np.testing.assert_array_equal(a.confusion, b.confusion)
    np.testing.assert_array_equal(a.pool_counts.above, b.pool_counts.above)


def test_bad_twin_indices_are_refused() -> None:
    texts = _unit([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="distinct studies"):
        measure_negation(texts, texts, texts, [0, 0], [0, 1], "t")
    with pytest.raises(ValueError, match="2 twin embeddings for 1"):
        measure_negation(texts, texts, texts, [0], [0, 1], "t")


def test_the_confidence_interval_resamples_studies_and_covers_the_rate() -> None:
    rng = np.random.default_rng(0)
    study = np.repeat(np.arange(300), 2)  # two images per study share the study's twin
    per_study = (rng.random(300) < 0.2).astype(float)
    values = per_study[study]
    lo, hi = confusion_ci(values, study)
    assert lo < values.mean() < hi
    # the same values as independent queries give a narrower interval: clustering is taken into account
    lo_i, hi_i = confusion_ci(values, np.arange(600))
    assert hi - lo > (hi_i - lo_i) * 1.2
    assert np.isnan(confusion_ci(np.full(3, np.nan), np.arange(3))).all()


def _result(values: np.ndarray) -> "object":
    texts = _unit([[1, 0], [0, 1]])
    res = measure_negation(texts, texts, texts[:1], [0], [0, 1], "t")
    res.confusion = np.asarray(values, dtype=float)
    res.query_study = np.arange(len(values))
    return res


def test_a_blind_model_is_not_below_half_and_a_reader_is() -> None:
    blind = decide_negation("m", _result(np.full(400, 0.5)), 0.05, ks=(1,))
    assert blind.rate == 0.5 and not blind.below_half and blind.passed is None
    reader = decide_negation("m", _result(np.r_[np.zeros(300), np.ones(100)]), 0.05, ks=(1,))
    assert reader.below_half and reader.ci_high < 0.5


def test_paired_against_the_recorded_run() -> None:
    recorded = np.r_[np.zeros(300), np.ones(100)]
    same = decide_negation("m", _result(recorded), 0.05, ks=(1,), reference=recorded, reference_source="r.npz")
    assert same.passed is True and same.baseline == 0.25
    worse = recorded.copy()
    worse[:60] = 1.0  # 60 more queries now put the twin first
    d = decide_negation("m", _result(worse), 0.05, ks=(1,), reference=recorded, reference_source="r.npz")
    assert d.below_half and d.passed is False and d.p_value < 0.025
    better = recorded.copy()
    better[300:360] = 0.0
    assert decide_negation("m", _result(better), 0.05, ks=(1,), reference=recorded).passed is True
    with pytest.raises(ValueError, match="recorded negation values for 3 queries"):
        decide_negation("m", _result(recorded), 0.05, ks=(1,), reference=np.zeros(3))
