"""The worked example of a new perturbation: one file plus a registration is all the suite needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxr_robust.perturbations import Condition, available, get_perturbation
from cxr_robust.perturbations import registry as registry_module
from examples.custom_perturbation.grid_lines import GridLines, register_example


@pytest.fixture
def grid_lines() -> GridLines:
    spec = register_example()
    yield spec
    registry_module._REGISTRY.pop(spec.name, None)


def test_the_example_keeps_the_suite_invariants(grid_lines: GridLines) -> None:
    assert "grid_lines" in available() and get_perturbation("grid") is grid_lines
    x = torch.full((3, 3, 16, 16), 200, dtype=torch.uint8)
    ids = ["a", "b", "c"]
    assert torch.equal(grid_lines(x, ids, 0, 7), x)
    out = grid_lines(x, ids, 5, 7)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out[1:2], grid_lines(x[1:2], ["b"], 5, 7))  # batch-independent
    # Exactly one row in four is darkened, by the level's depth.
    assert int((out[0, 0, :, 0] < 200).sum()) == 4 and int(out.min()) == 100


def test_a_sweep_over_the_example_is_keyed_by_it(grid_lines: GridLines, tmp_path: Path) -> None:
    from cxr_robust.cache import EmbeddingCache
    from cxr_robust.data.phantom import phantom
    from cxr_robust.engine import SweepConfig, run_sweep
    from cxr_robust.gate import GateOptions, cell_id
    from cxr_robust.models import load_model

    options = GateOptions(models=("phantom-clip",), perturbations=("grid_lines",), severities="grid_lines=1,5",
                          ks=(1, 5))
    conds = options.conditions()
    assert conds == (Condition("grid_lines", 0), Condition("grid_lines", 1), Condition("grid_lines", 5))
    assert [cell_id("phantom-clip", c, 5) for c in conds[1:]] == ["phantom-clip-grid-s1-k5", "phantom-clip-grid-s5-k5"]
    data = phantom("tiny").subset(range(12), name="grid")
    result = run_sweep(load_model("phantom-clip"), data, SweepConfig(conditions=conds, ks=(1, 5)),
                       EmbeddingCache(tmp_path))
    assert list(result.counts) == list(conds) and result.perturbations() == ["grid_lines"]
    assert result.meta["image_encodings"] == 3 * data.num_images
    assert all(0 <= result.recall(c, 5) <= 1 for c in conds)
