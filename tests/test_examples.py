"""The bring-your-own-model example (``examples/custom_model``) works the way its README says.

The gate runs on it through ``pytester`` in a subprocess, from a copy of the example in a fresh folder, so
this checks what a user gets: the ad-hoc ``module:factory`` model is importable, its committed baseline is
found under the row the gate looks up, and every cell passes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch  # before any pytester test: pytester restores sys.modules, and torch cannot be imported twice

from cxr_robust.baselines import BaselineTable, ratio_key
from cxr_robust.cli import EXIT_OK, main
from cxr_robust.models import registry
from cxr_robust.models.base import RetrievalModel

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "custom_model"
TARGET = "examples.custom_model.model:build"
DATASET = "phantom-eval-s0-n120"
BASELINE = EXAMPLE / "baselines" / f"examples.custom_model.model_build__{DATASET}.csv"
RATIOS, KS = (0.0, 9.0, 81.0), (5, 10, 50)
GRID = ["--cxr-phantom-studies", "120", "--cxr-ratios", ",".join(f"{r:g}" for r in RATIOS),
        "--cxr-ks", ",".join(map(str, KS))]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "shared-embedding-cache"


def test_committed_baseline_covers_the_tested_grid() -> None:
    table = BaselineTable.load(BASELINE).for_dataset(DATASET)
    cells = {(c.k, ratio_key(c.ratio)) for c in table.for_model(TARGET)}
    assert {(k, ratio_key(r / 100)) for k in KS for r in RATIOS} <= cells
    assert all(c.n_candidates == 120 for c in table.cells)


def test_example_gate_passes_under_pytest(pytester: pytest.Pytester, shared_cache: Path) -> None:
    (pytester.path / "examples").mkdir()
    shutil.copy(REPO / "examples" / "__init__.py", pytester.path / "examples")
    shutil.copytree(EXAMPLE, pytester.path / "examples" / "custom_model",
                    ignore=shutil.ignore_patterns("__pycache__", "ranks"))
    csv = f"examples/custom_model/baselines/{BASELINE.name}"
    # Path options with '=': after a space pytest would take them for test paths when choosing its rootdir.
    res = pytester.runpytest_subprocess("examples/custom_model", "-m", "robustness", "--cxr-models", TARGET,
                                        f"--cxr-baselines={csv}", *GRID, f"--cxr-cache-dir={shared_cache}",
                                        f"--cxr-report={pytester.path / 'report'}", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=2 * (len(RATIOS) * len(KS) + 1))  # every cell and the grid case, two tests each
    res.stdout.fnmatch_lines([f"*{TARGET}: PASS: 9 cells on {DATASET} (* images, 120 reports): 9 compared, 0 failed*"])
    doc = json.loads((pytester.path / "report" / "results.json").read_text())
    (model,) = doc["models"]
    assert model["model"] == TARGET and model["baseline_source"].endswith(BASELINE.name)
    assert all(c["baseline"] is not None and c["passed"] for c in model["cells"])


def test_example_through_the_cli(tmp_path: Path, shared_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--project", str(REPO), "--no-pyproject", "--models", TARGET, "--baselines", str(BASELINE),
                 "--phantom-studies", "120", "--ratios", "0,81", "--ks", "5,10", "--cache-dir", str(shared_cache),
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert f"{TARGET}: 4 cells, 0 failing, 0 without baseline" in out


def test_example_registers_by_name_and_implements_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from examples.custom_model.model import spec

    # What the entry point does on import, undone after the test.
    monkeypatch.setitem(registry._REGISTRY, "custom-phantom", spec())
    model = registry.load_model("custom-phantom")
    assert isinstance(model, RetrievalModel) and model.name == "custom-phantom"
    wide = Image.fromarray(np.full((60, 100), 200, dtype=np.uint8), mode="L")
    pixels = model.preprocess(wide)
    assert pixels.shape == (3, 128, 128) and pixels.dtype == np.uint8
    assert pixels[:, 0].max() == 0 and pixels[:, 64].min() > 150  # letterboxed: black bars above and below
    with torch.no_grad():
        img = model.encode_images(torch.from_numpy(np.stack([pixels, pixels])))
        txt = model.encode_texts(["No acute process.", "Small left pleural effusion."])
    assert img.shape == txt.shape == (2, model.embed_dim)
    assert torch.allclose(img.norm(dim=1), torch.ones(2), atol=1e-5)
    json.dumps(model.fingerprint())  # part of cache keys: must be JSON
