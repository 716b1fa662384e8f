"""Whether a cell fails is decided in one place (:mod:`cxr_robust.verdicts`), and the pytest cases, the CLI and
the results document (hence the report) say the same thing about the same run.

Also: the baseline row a model is compared with is its registry entry's, else its own name, never an
adapter's default (an ad-hoc model built on the demo adapter was silently compared with, and recorded over,
``phantom-clip``'s baseline).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Loaded once at module level (see tests/test_plugin.py).
import torch  # noqa: F401

from cxr_robust import verdicts
from cxr_robust.baselines import BaselineCell, write_table
from cxr_robust.cli import _failing
from cxr_robust.gate import GateOptions, GateSession, baseline_row_rule
from cxr_robust.perturbations import Condition
from cxr_robust.plugin import CellParam, GateCell

GRID = {"phantom_studies": 60, "ratios": (0.0, 0.25, 0.81), "ks": (5, 10)}
CONFIGS = {"default": {}, "allow-missing": {"allow_missing_baseline": True}, "recording": {"update_baselines": True}}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose table has one cell the demo passes, one it fails, and no row for the others."""
    root = tmp_path_factory.mktemp("one-verdict")
    (root / "baselines").mkdir()
    probe = GateSession(GateOptions(models=("phantom-clip",), cache_dir=str(root / "cache"), summaries=False,
                                    report_dir=str(root / "out"), **GRID), rootdir=root)
    res = probe.run("phantom-clip").result
    assert res is not None
    grid = res.grid()
    clean, mid = Condition("occlusion", 0.0), Condition("occlusion", 0.25)
    cells = [BaselineCell("phantom-clip", res.dataset, 5, clean, grid[clean][5], res.n_queries, res.n_candidates),
             BaselineCell("phantom-clip", res.dataset, 10, mid, 0.99, res.n_queries, res.n_candidates)]
    write_table(cells, root / "baselines" / "table.csv")
    return root


def _pytest_outcome(cell: GateCell, check: str) -> str:
    try:
        getattr(cell, check)()
    except pytest.fail.Exception:
        return "failed"
    except pytest.skip.Exception:
        return "skipped"
    return "passed"


@pytest.mark.parametrize("name", CONFIGS)
def test_pytest_cli_and_results_agree_on_every_cell(project: Path, name: str) -> None:
    options = GateOptions(models=("phantom-clip",), cache_dir=str(project / "cache"), summaries=False,
                          report_dir=str(project / "out"), **GRID, **CONFIGS[name])
    session = GateSession(options, rootdir=project)
    run = session.run("phantom-clip")
    assert run.error is None and run.mode == "unpaired"
    keys = list(run.decisions)
    # pytest: a cell fails if either of its two cases fails, and is NOT COMPARED when its baseline case skips.
    outcomes = {key: {_pytest_outcome(GateCell(CellParam("phantom-clip", *key), run, session), check)
                      for check in ("check_baseline", "check_chance")} for key in keys}
    failed_in_pytest = {key for key, o in outcomes.items() if "failed" in o}
    skipped_in_pytest = {key for key, o in outcomes.items() if "skipped" in o}
    failed_in_cli = {(d.condition, d.k) for d in _failing(run, options) if d is not run.grid}
    doc = verdicts.annotate(session.document())
    states = {(Condition(c["perturbation"], c["severity"] if c["perturbation"] != "occlusion" else c["ratio"]),
               c["k"]): c["state"] for c in doc["models"][0]["cells"]}
    failed_in_doc = {key for key, state in states.items() if state in verdicts.FAILING_STATES}
    assert failed_in_pytest == failed_in_cli == failed_in_doc
    assert skipped_in_pytest == {key for key, state in states.items() if state == verdicts.NOT_COMPARED}
    clean5, mid10 = (Condition("occlusion", 0.0), 5), (Condition("occlusion", 0.25), 10)
    expected = {"default": (set(keys) - {clean5}, verdicts.RUN_FAIL),  # one regression + missing rows
                "allow-missing": ({mid10}, verdicts.RUN_FAIL),
                "recording": (set(), verdicts.RUN_RECORDED)}[name]
    assert (failed_in_doc, doc["verdict"]) == expected


ADHOC = '''
from cxr_robust.models import load_model

def build(weights=None, **_):
    return load_model("phantom-clip")  # the demo adapter: its own default baseline_row is "phantom-clip"
'''


def test_a_model_built_on_the_demo_adapter_is_compared_with_its_own_row(project: Path) -> None:
    """It used to inherit the adapter's row: compared with phantom-clip's recorded baseline (a pass that
    compared another model), and --update-baselines wrote into phantom-clip's table."""
    (project / "adhoc_demo.py").write_text(ADHOC)
    env = {**os.environ, "PYTHONPATH": str(project)}
    args = [sys.executable, "-m", "cxr_robust.cli", "run", "--no-pyproject", "--project", str(project),
            "--models", "adhoc_demo:build", "--phantom-studies", "60", "--ratios", "0,25,81", "--ks", "5,10",
            "--cache-dir", str(project / "cache"), "--out", str(project / "adhoc-out")]
    before = (project / "baselines" / "table.csv").read_bytes()
    res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=project, timeout=600)
    assert res.returncode == 1, res.stdout + res.stderr  # no row of its own: every cell FAILS as missing
    assert "6 without baseline" in res.stdout, res.stdout
    model = json.loads((project / "adhoc-out" / "results.json").read_text())["models"][0]
    assert model["baseline_row"] == "adhoc_demo:build"
    assert model["baseline_row_rule"] == "the model's own name (its registry entry declares no baseline_row)"
    assert baseline_row_rule("phantom-clip") == ("phantom-clip", "declared by the model's registry entry")
    assert (project / "baselines" / "table.csv").read_bytes() == before


def test_two_models_with_one_row_keep_their_own_ranks_and_are_not_recorded_together(project: Path) -> None:
    """Two models whose registry entries declare the same row: the results directory keeps both models' ranks
    (the second used to overwrite the first), and recording both into one row is refused."""
    from dataclasses import replace

    from cxr_robust.gate import BaselineUpdateRefused
    from cxr_robust.models.registry import _REGISTRY, get_spec, register

    register(replace(get_spec("phantom-clip"), name="phantom-clip-twin"))
    try:
        options = GateOptions(models=("phantom-clip", "phantom-clip-twin"), cache_dir=str(project / "cache"),
                              summaries=False, report_dir=str(project / "twin-out"), **GRID)
        session = GateSession(options, rootdir=project)
        for model in options.models:
            assert session.run(model).error is None
        written = session.save_ranks(project / "twin-out")
        assert len({p.name for p in written}) == 2, written
        assert {json.loads(str(np.load(p)["meta"])).get("model") for p in written} == set(options.models)
        with pytest.raises(BaselineUpdateRefused, match="phantom-clip, phantom-clip-twin all record into the "
                                                        "baseline row 'phantom-clip'"):
            session.update_baselines()
    finally:
        _REGISTRY.pop("phantom-clip-twin", None)
