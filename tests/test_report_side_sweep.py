"""Report-side conditions in a sweep: clean films scored against perturbed reports, through the same cache,
cells and metrics as image-side ones; findings labels reach the label-aware metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_robust.cache import EmbeddingCache
from cxr_robust.data.phantom import phantom
from cxr_robust.engine import SweepConfig, run_sweep
from cxr_robust.metric_registry import compute_metrics
from cxr_robust.models import load_model
from cxr_robust.perturbations import Condition


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    data = phantom("eval", num_studies=40)
    model = load_model("phantom-clip")
    conds = (Condition("occlusion", 0.0), Condition("typos", 3), Condition("synonyms", 5),
             Condition("impression_only", 1), Condition("typos", 0))
    cache = EmbeddingCache(tmp_path_factory.mktemp("cache"))
    config = SweepConfig(conditions=conds, ks=(1, 5))
    return data, model, config, cache, run_sweep(model, data, config, cache)


def test_a_report_condition_scores_the_clean_films_against_the_perturbed_reports(sweep: tuple) -> None:
    import torch

    data, model, config, cache, result = sweep
    clean = result.counts[Condition("occlusion", 0.0)]
    assert result.counts[Condition("typos", 0)] is clean  # severity 0 is the clean pass
    spec = Condition("typos", 3).spec()
    f, i = spec.perturb_reports(data.findings, data.impressions, data.study_ids, 3, config.seed)
    with torch.inference_mode():
        texts = model.encode_texts([f"{a} {b}".strip() for a, b in zip(f, i)]).float()
        images = torch.stack([torch.from_numpy(model.preprocess(data.open_image(j)))
                              for j in range(data.num_images)])
        films = model.encode_images(images).float()
    films, texts = films / films.norm(dim=1, keepdim=True), texts / texts.norm(dim=1, keepdim=True)
    scores = (films @ texts.T).numpy()
    true = scores[np.arange(data.num_images), data.image_study][:, None]
    np.testing.assert_array_equal(result.counts[Condition("typos", 3)].above, (scores > true + 1e-6).sum(1))
    assert result.grid()[Condition("typos", 3)][5] < result.grid()[Condition("occlusion", 0.0)][5]
    assert result.meta["reports_not_applicable"] == {"typos@3.0": 0, "synonyms@5.0": 0, "impression_only@1.0": 0}


def test_a_rerun_encodes_nothing_and_gives_the_same_ranks(sweep: tuple) -> None:
    data, model, config, cache, result = sweep
    again = run_sweep(model, data, config, cache)
    assert again.meta["text_encodings"] == 0 and again.meta["image_encodings"] == 0
    for c in config.conditions:
        np.testing.assert_array_equal(again.counts[c].above, result.counts[c].above)


def test_labels_reach_the_label_metrics(sweep: tuple) -> None:
    data, _, _, _, result = sweep
    assert result.meta["labels"]["source"] == "phantom generator"
    assert result.meta["labels"]["labelled_studies"] == data.num_studies
    for counts in result.counts.values():
        values = compute_metrics(counts, ["recall", "label_hit", "label_precision"], (1, 5))
        # the true report always matches itself, so label hit@k is at least Recall@k
        assert all(values["label_hit"][k] >= values["recall"][k] - 1e-12 for k in (1, 5))
        assert 0 < values["label_precision"][1] <= values["label_hit"][1] + 1e-12


def test_an_empty_perturbed_report_falls_back_to_the_original(tmp_path: Path) -> None:
    """impression_only on a study without an impression is not applicable: its report stays as it was."""
    data = phantom("eval", num_studies=12)
    data.impressions[3] = ""
    model = load_model("phantom-clip")
    res = run_sweep(model, data, SweepConfig(conditions=(Condition("impression_only", 1),), ks=(1,)),
                    EmbeddingCache(tmp_path))
    assert res.meta["reports_not_applicable"] == {"impression_only@1.0": 1}
