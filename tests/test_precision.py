"""Encoder precision: option checks, autocast, separate cache entries, and the rank-agreement measure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_robust.cache import EmbeddingCache
from cxr_robust.data.phantom import phantom
from cxr_robust.engine import SweepConfig, SweepResult, run_sweep
from cxr_robust.gate import GateOptions
from cxr_robust.metrics import RankCounts
from cxr_robust.models import load_model
from cxr_robust.precision import autocast, check_precision, rank_agreement


def _result(above: list[int], ids: list[str] | None = None, ratio: float = 0.25) -> SweepResult:
    counts = {ratio: RankCounts(above=np.array(above), ties=np.zeros(len(above), dtype=int), n_candidates=50)}
    return SweepResult(model="m", dataset="d", baseline_row=None, text_policy="findings_impression", seed=0,
                       ks=(1, 5), counts=counts, image_ids=ids or [f"i{n}" for n in range(len(above))])


@pytest.mark.parametrize("bad", ["fp8", "float16", "", "FP32"])
def test_unknown_precision_is_refused_everywhere(bad: str) -> None:
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16"):
        check_precision(bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        SweepConfig(precision=bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        GateOptions(precision=bad)


def test_autocast_changes_the_matmul_dtype_only_when_asked() -> None:
    a = torch.randn(4, 8)
    with autocast("cpu", "fp32"):
        assert (a @ a.T).dtype == torch.float32
    with autocast("cpu", "bf16"):
        assert (a @ a.T).dtype == torch.bfloat16


def test_rank_agreement_of_identical_runs_is_perfect() -> None:
    a = _result([0, 3, 10, 49])
    assert rank_agreement(a, a)["overall"] == {"identical_rank": 1.0, "max_rank_shift": 0.0, "max_recall_diff": 0.0}


def test_rank_agreement_counts_moved_queries_and_recall_change() -> None:
    ref = _result([0, 3, 10, 49])
    other = _result([1, 3, 10, 42])  # query 0 drops from rank 1 to 2, query 3 climbs 7 places
    got = rank_agreement(ref, other)["per_condition"]["occlusion@0.25"]
    assert got["identical_rank"] == 0.5
    assert got["max_rank_shift"] == 7
    assert got["max_recall_diff"] == pytest.approx(0.25)  # Recall@1: 1/4 -> 0/4; Recall@5 unchanged


def test_rank_agreement_needs_the_same_queries() -> None:
    with pytest.raises(ValueError, match="same queries"):
        rank_agreement(_result([0, 1]), _result([0, 1], ids=["x", "y"]))
    with pytest.raises(ValueError, match="same conditions"):
        rank_agreement(_result([0, 1]), _result([0, 1], ratio=0.5))


def test_reduced_precision_has_its_own_cache_entries_and_stays_close(tmp_path: Path) -> None:
    """bf16 runs (emulated on CPU) never reuse fp32 embeddings, record their precision, and on the demo
    model keep the benchmark's answer: Recall@k within 3 points of fp32 on 50 studies."""
    data = phantom("eval", num_studies=50)
    model = load_model("phantom-clip")
    cache = EmbeddingCache(tmp_path)
    ratios = (0.0, 0.25)
    fp32 = run_sweep(model, data, SweepConfig(ratios=ratios, ks=(1, 5, 10)), cache)
    bf16 = run_sweep(model, data, SweepConfig(ratios=ratios, ks=(1, 5, 10), precision="bf16"), cache)
    assert bf16.meta["text_encodings"] == data.num_studies
    assert bf16.meta["image_encodings"] == data.num_images * len(ratios)
    assert (fp32.meta["precision"], bf16.meta["precision"]) == ("fp32", "bf16")
    again = run_sweep(model, data, SweepConfig(ratios=ratios, ks=(1, 5, 10), precision="bf16"), cache)
    assert again.meta["text_encodings"] == again.meta["image_encodings"] == 0
    agreement = rank_agreement(fp32, bf16)["overall"]
    assert agreement["max_recall_diff"] <= 0.03, agreement
