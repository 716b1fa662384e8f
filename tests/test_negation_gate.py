"""The negation test per model (``--cxr-negation``): a model made blind to negation fails it, a model that
reads negation worse than its recording fails it (paired), and a test without a recording never passes.

The blind models are the demo model with parts of its text tower's input removed (tests/negation_models.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Loaded once at module level (see tests/test_plugin.py).
import torch  # noqa: F401

from cxr_robust import verdicts
from cxr_robust.gate import GateOptions, GateSession
from cxr_robust.plugin import NegationCheck
from cxr_robust.results import load_negation

pytest_plugins = ["pytester"]

BLIND = "tests.negation_models:blind"
PARTLY_BLIND = "tests.negation_models:partly_blind"
SMALL = {"phantom_studies": 120, "ratios": (0.0,), "ks": (1, 5), "summaries": False, "negation": True}


def _outcome(check: NegationCheck) -> tuple[str, str]:
    try:
        check.check()
    except pytest.fail.Exception as exc:
        return "failed", str(exc)
    except pytest.skip.Exception as exc:
        return "skipped", str(exc)
    return "passed", ""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project where phantom-clip's negation values are recorded (with its cells) on 120 phantom studies."""
    root = tmp_path_factory.mktemp("negation")
    (root / "baselines").mkdir()
    record = GateSession(GateOptions(models=("phantom-clip",), cache_dir=str(root / "cache"), update_baselines=True,
                                     report_dir=str(root / "recording"), **SMALL), rootdir=root)
    assert record.run("phantom-clip").error is None
    written, _ = record.update_baselines()
    (ranks,) = [p for p in written if p.suffix == ".npz"]
    ids, values = load_negation(ranks)
    assert len(ids) == values.shape[0] and np.isfinite(values).all()  # every phantom study has an exact twin
    # Recording a condition of the same model again keeps the others without calling it another model (the
    # fingerprint read back from JSON has lists where the live one has tuples).
    again = GateSession(GateOptions(models=("phantom-clip",), cache_dir=str(root / "cache"), update_baselines=True,
                                    report_dir=str(root / "recording"), **{**SMALL, "ratios": (0.25,)}), rootdir=root)
    assert again.run("phantom-clip").error is None
    again.update_baselines()
    assert not [n for n in again.notes if "different model" in n], again.notes
    assert load_negation(ranks) is not None  # the negation values recorded earlier are kept too
    return root


def _session(project: Path, *models: str, **options: object) -> GateSession:
    return GateSession(GateOptions(models=models, cache_dir=str(project / "cache"),
                                   report_dir=str(project / "out"), **{**SMALL, **options}), rootdir=project)


def test_the_demo_reads_negation_and_passes_against_its_recording(project: Path) -> None:
    session = _session(project, "phantom-clip")
    run = session.run("phantom-clip")
    d = run.negation
    assert run.error is None and d is not None
    assert d.below_half and d.ci_high < 0.5 and d.passed is True and d.baseline == pytest.approx(d.rate)
    assert d.n_twins == d.n_studies == 120 and d.method == "phantom generator (exact)"
    assert _outcome(NegationCheck("phantom-clip", run, session)) == ("passed", "")
    doc = session.document()
    assert doc["verdict"] == verdicts.RUN_PASS and doc["models"][0]["negation"]["state"] == verdicts.PASS


def test_a_negation_blind_model_fails_whatever_its_baseline(project: Path) -> None:
    """Every twin ties with its report: 50 %, the CI touches 50 %, the test fails; also when recording."""
    session = _session(project, BLIND, allow_missing_baseline=True)
    run = session.run(BLIND)
    assert run.error is None and run.negation is not None
    assert run.negation.rate == 0.5 and not run.negation.below_half
    outcome, message = _outcome(NegationCheck(BLIND, run, session))
    assert outcome == "failed" and "is blind to negation" in message and "50.0%" in message
    doc = session.document()
    assert doc["verdict"] == verdicts.RUN_FAIL
    assert any("blind to negation" in line for line in doc["verdict_reasons"])
    html = session.write_outputs(doc)["html"].read_text()
    assert "<h3>Negation</h3>" in html and "blind to negation" in html
    recording = _session(project, BLIND, update_baselines=True)
    recording.run(BLIND)
    assert verdicts.run_verdict(recording.document())[0] == verdicts.RUN_FAIL  # never recorded as fine


def test_a_model_that_reads_negation_worse_than_its_recording_fails_paired(project: Path) -> None:
    """Effusion-blind: still below 50 % overall, but every effusion twin now ties; paired with the demo's
    recording (``--cxr-compare-to``), which holds its per-query negation values."""
    (recorded,) = (project / "baselines" / "ranks").glob("phantom-clip__*.npz")
    session = _session(project, PARTLY_BLIND, compare_to=str(recorded))
    run = session.run(PARTLY_BLIND)
    d = run.negation
    assert run.error is None and d is not None and run.mode == "paired"
    assert d.below_half and d.baseline is not None and d.rate > d.baseline
    assert d.passed is False and d.p_value < 0.025
    outcome, message = _outcome(NegationCheck(PARTLY_BLIND, run, session))
    assert outcome == "failed" and "significantly worse than the recorded run" in message


def test_without_a_recording_the_test_never_passes(project: Path, tmp_path: Path) -> None:
    for allow, expected in ((False, ("failed", verdicts.MISSING)), (True, ("skipped", verdicts.NOT_COMPARED))):
        session = GateSession(GateOptions(models=("phantom-clip",), cache_dir=str(project / "cache"),
                                          report_dir=str(tmp_path / "out"), allow_missing_baseline=allow, **SMALL),
                              rootdir=tmp_path)
        run = session.run("phantom-clip")
        assert run.negation is not None and run.negation.passed is None
        outcome, message = _outcome(NegationCheck("phantom-clip", run, session))
        assert outcome == expected[0] and "--cxr-negation --cxr-update-baselines" in message
        assert session.document()["models"][0]["negation"]["state"] == expected[1]


def test_the_negation_case_skips_saying_how_to_enable_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gate="def test_negation(gate_negation):\n    gate_negation.check()\n")
    res = pytester.runpytest_subprocess("--cxr-models", "phantom-clip", "-v", "-rs", "-p", "no:cacheprovider")
    res.assert_outcomes(skipped=1)
    res.stdout.fnmatch_lines(["*test_negation?phantom-clip-negation? SKIPPED*",
                              "*the negation test is off: enable it with --cxr-negation*"])


def test_a_long_metrics_table_is_collapsed_under_its_heading() -> None:
    from cxr_robust.report import METRICS_ROWS_SHOWN, _metrics

    row = {"perturbation": "typos", "severity": 1.0, "side": "report", "recall": {"10": 0.5}, "mrr": 0.25,
           "median_rank": 3.0, "mean_rank": 7.5}
    short = _metrics({"metrics": [row] * 3, "meta": {"labels": {"source": None}}})
    assert short.startswith("<h3>Metrics</h3>") and short.count("<tr><th class=nowrap>") == 3
    assert "no findings labels" in short and "label P@" not in short  # columns of unreported metrics left out
    long = _metrics({"metrics": [row] * (METRICS_ROWS_SHOWN + 1), "meta": {}})
    assert long.startswith("<details class=metrics>") and f"({METRICS_ROWS_SHOWN + 1} conditions" in long
