"""The pytest plugin driven end to end with ``pytester``: pass, regression, skips, --cxr-require-all, baselines.

Each run uses the shipped demo model on a small phantom eval set (``--cxr-phantom-studies``) so the whole file
takes seconds; the sweep itself is the same code the full gate runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Imported here, not inside the helpers: pytester restores sys.modules after each test, and re-importing
# torch's C extension in the same process crashes the interpreter.
import torch
from safetensors.torch import load_file, save_file

from tests.gate_project import GATE_TESTS

pytest_plugins = ["pytester"]

SMALL = ["--cxr-phantom-studies", "120", "--cxr-ratios", "0,9,81", "--cxr-ks", "5,10,50", "-p", "no:cacheprovider", "-rs"]


class GateProject:
    """A pytester project with the two gate tests, its own baselines and report dirs, a shared cache."""

    def __init__(self, pytester: pytest.Pytester, cache: Path) -> None:
        self.pytester = pytester
        self.path = pytester.path
        # --rootdir: pytest would otherwise take the common ancestor of path-like arguments as rootdir,
        # and the baselines/ directory is looked up under rootdir.
        self.args = SMALL + ["--rootdir", str(pytester.path), "--cxr-cache-dir", str(cache),
                             "--cxr-report", str(pytester.path / "report")]


@pytest.fixture
def gate_dir(pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory) -> GateProject:
    pytester.makepyfile(test_gate=GATE_TESTS)
    (pytester.path / "baselines").mkdir()
    return GateProject(pytester, tmp_path_factory.getbasetemp() / "shared-embedding-cache")


def run(p: GateProject, *args: str) -> pytest.RunResult:
    return p.pytester.runpytest_subprocess(*p.args, *args)


def record_baseline(p: GateProject) -> Path:
    res = run(p, "--cxr-models", "phantom-clip", "--cxr-update-baselines")
    res.assert_outcomes(passed=20)  # 9 cells + the grid case, two tests each
    written = list((p.path / "baselines").glob("*.csv"))
    assert len(written) == 1, written
    return written[0]


def test_update_baselines_round_trip_then_pass(gate_dir: GateProject) -> None:
    table = record_baseline(gate_dir)
    text = table.read_text()
    assert "phantom-clip,phantom-eval-s0-n120,occlusion,0.00,5," in text
    assert len(text.strip().splitlines()) == 1 + 9
    ranks = list((gate_dir.path / "baselines" / "ranks").glob("*.npz"))
    assert len(ranks) == 1
    res = run(gate_dir, "--cxr-models", "phantom-clip")
    res.assert_outcomes(passed=20)
    res.stdout.fnmatch_lines(["gate verdict: PASS",
                              "*phantom-clip: PASS: 9 cells on phantom-eval-s0-n120*9 compared, 0 failed, 0 not compared "
                              "(paired against *phantom-clip__phantom-eval-s0-n120__seed0.npz); 0 report texts encoded*",
                              "html: *report.html"])
    doc = json.loads((gate_dir.path / "report" / "results.json").read_text())
    assert doc["models"][0]["status"] == "measured"
    assert all(c["passed"] for c in doc["models"][0]["cells"])
    assert (gate_dir.path / "report" / "report.html").stat().st_size > 1000
    assert (gate_dir.path / "report" / "results.csv").read_text().count("\n") == 10


def test_degraded_model_fails_with_numbers_against_a_table(gate_dir: GateProject, tmp_path: Path) -> None:
    """Without recorded ranks (a table only, like a published one) the unpaired rule decides, and says so."""
    record_baseline(gate_dir)
    for ranks in (gate_dir.path / "baselines" / "ranks").glob("*.npz"):
        ranks.unlink()
    degraded = tmp_path / "degraded.safetensors"
    _write_degraded_weights(degraded, noise=0.5)
    # "-p cxr_robust.plugin" loads the plugin with pytest's assertion rewriting, as a regular (non-editable)
    # install does: a bare `assert` there used to end every failure message with a dump of the decision object.
    res = run(gate_dir, "-p", "no:cxr_robust", "-p", "cxr_robust.plugin", "--cxr-models", "phantom-clip",
              "--cxr-weights", f"phantom-clip={degraded}")
    outcomes = res.parseoutcomes()
    assert outcomes.get("failed", 0) >= 3, res.stdout.str()
    res.stdout.fnmatch_lines(["*phantom-clip at 0% occlusion, k = 10, regressed: measured Recall@10 = *%, baseline *%, "
                              "tolerance * pp, chance 8.33% (k/N), N = 120 reports, M = 210 images*unpaired*"])
    # The one-paragraph explanation is the whole message: no assertion-rewriting dump of the decision object.
    assert "CellDecision(" not in res.stdout.str() and "where False" not in res.stdout.str()


def test_missing_weights_skip_with_reason_and_require_all_fails(gate_dir: GateProject) -> None:
    res = run(gate_dir, "--cxr-models", "clip", "--cxr-ks", "5")
    res.assert_outcomes(skipped=8)
    res.stdout.fnmatch_lines(["*clip: skipped: weights for 'clip' not found*CXR_ROBUST_CLIP_WEIGHTS*ViT-B-32.pt*"])
    res = run(gate_dir, "--cxr-models", "clip", "--cxr-ks", "5", "--cxr-require-all")
    res.assert_outcomes(failed=8)
    res.stdout.fnmatch_lines(["*--cxr-require-all: clip: weights for 'clip' not found*"])


def test_no_baseline_fails_and_only_an_explicit_option_reports_not_compared(gate_dir: GateProject) -> None:
    """A cell that compares nothing fails (it used to skip: exit 0, "0 failing"); skipping is opt-in and then
    says NOT COMPARED, never PASS."""
    res = run(gate_dir, "--cxr-models", "phantom-clip")
    res.assert_outcomes(passed=10, failed=10)
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.stdout.fnmatch_lines(["*was not compared: no baseline row 'phantom-clip' for dataset 'phantom-eval-s0-n120'"
                              "*--cxr-update-baselines*--cxr-allow-missing-baseline*",
                              "gate verdict: FAIL", "*0 compared, 9 failed, 0 not compared*"])
    # The sweep ran inside the first test, with output captured: its progress still reached the terminal.
    res.stdout.fnmatch_lines(["cxr-robust: phantom-clip: sweeping 3 conditions on phantom-eval-s0-n120 (210 images, "
                              "120 reports)", "cxr-robust: phantom-clip: [[]1/3] 0% occlusion: Recall@5 *% (*s)",
                              "cxr-robust: phantom-clip: [[]3/3] 81% occlusion: Recall@5 *% (*s)"])
    res = run(gate_dir, "--cxr-models", "phantom-clip", "--cxr-allow-missing-baseline", "-q")
    assert "cxr-robust: phantom-clip: [1/3]" not in res.stdout.str()  # -q: quiet
    res.assert_outcomes(passed=10, skipped=10)
    res.stdout.fnmatch_lines(["gate verdict: NOT COMPARED", "*0 compared, 0 failed, 9 not compared*",
                              "*NOT COMPARED (--cxr-allow-missing-baseline): no baseline row*"])
    doc = json.loads((gate_dir.path / "report" / "results.json").read_text())
    assert doc["verdict"] == "NOT COMPARED" and {c["state"] for c in doc["models"][0]["cells"]} == {"not-compared"}
    assert "NOT COMPARED" in (gate_dir.path / "report" / "report.html").read_text()


def test_unknown_model_is_a_usage_error(gate_dir: GateProject) -> None:
    res = run(gate_dir, "--cxr-models", "phantom-clp")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*unknown model 'phantom-clp'*did you mean 'phantom-clip'*"])


def test_unknown_precision_is_a_usage_error(gate_dir: GateProject) -> None:
    res = run(gate_dir, "--cxr-models", "phantom-clip", "--cxr-precision", "fp8")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    # The declared choices reach argparse: the message names the flag and every accepted value.
    res.stderr.fnmatch_lines(["*argument --cxr-precision: invalid choice: 'fp8' (choose from 'fp32', 'fp16', 'bf16')*"])


def test_collect_only_lists_the_full_paper_grid(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gate=GATE_TESTS)
    res = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    ids = [line for line in res.outlines if "::" in line]
    assert len(ids) == 5 * (8 * 6 + 1) * 2  # every cell plus one grid case per model
    assert "test_gate.py::test_recall_not_below_baseline[phantom-clip-grid]" in ids
    assert "test_gate.py::test_recall_not_below_baseline[cxr-clip-swint-occ25-k10]" in ids
    assert "test_gate.py::test_recall_vs_chance[clip-occ0.25-k5]" in ids


def _write_degraded_weights(path: Path, noise: float) -> None:
    """The shipped demo weights with Gaussian noise on the image tower (a deliberately broken update)."""
    from cxr_robust.models.demo import WEIGHTS_FILE

    state = load_file(str(WEIGHTS_FILE))
    gen = torch.Generator().manual_seed(0)
    for name, tensor in state.items():
        if name.startswith("visual.") and tensor.ndim >= 2:
            scale = tensor.float().std() * noise
            state[name] = (tensor.float() + torch.randn(tensor.shape, generator=gen) * scale).half()
    save_file(state, str(path))


def test_pytest_html_rows_carry_the_cell(gate_dir: GateProject) -> None:
    record_baseline(gate_dir)
    html = gate_dir.path / "tests.html"
    run(gate_dir, "--cxr-models", "phantom-clip", "--html", str(html)).assert_outcomes(passed=20)
    assert "measured Recall@10 = " in html.read_text()


def test_paired_mode_passes_unchanged_and_catches_a_degraded_model(gate_dir: GateProject, tmp_path: Path) -> None:
    record_baseline(gate_dir)
    ranks = gate_dir.path / "baselines" / "ranks"
    run(gate_dir, "--cxr-models", "phantom-clip", "--cxr-compare-to", str(ranks)).assert_outcomes(passed=20)
    degraded = tmp_path / "slightly-degraded.safetensors"
    _write_degraded_weights(degraded, noise=0.3)
    res = run(gate_dir, "--cxr-models", "phantom-clip", "--cxr-compare-to", str(ranks),
              "--cxr-weights", f"phantom-clip={degraded}")
    assert res.parseoutcomes().get("failed", 0) >= 1, res.stdout.str()
    res.stdout.fnmatch_lines(["*regressed against the recorded run *phantom-clip__phantom-eval-s0-n120__seed0.npz*"
                              "queries lost the hit*paired*"])
    doc = json.loads((gate_dir.path / "report" / "results.json").read_text())
    assert "auc@10" in doc["models"][0]["summary"]["occlusion"]  # one summary per perturbation
