"""The ``cxr-robust`` command, run in-process through ``main([...])``: outputs and exit codes of every subcommand.

Sweeps use the shipped demo model on a 60-study phantom set with a 2 x 2 grid, configured through the test
project's ``pyproject.toml`` (so the configuration layer is exercised too); the embedding cache is shared by
the whole module, so only the first sweep encodes report texts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cxr_robust.cli import EXIT_ERROR, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, compare_documents, main
from cxr_robust.exit_codes import MEANINGS
from cxr_robust.metrics import RankCounts
from cxr_robust.results import ModelOutcome, build_document, load_results, save_ranks, write_results
from tests.fake_mimic import build_fake_mimic

PROJECT_TOML = """\
[tool.cxr_robust]
models = ["phantom-clip"]
phantom_studies = 60
ratios = [0, 25]
ks = [5, 10]
cache_dir = "{cache}"
"""


pytestmark = pytest.mark.usefixtures("clean_cxr_env")  # tests/conftest.py


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with [tool.cxr_robust] and a recorded baseline of the demo model."""
    root = tmp_path_factory.mktemp("cli-project")
    cache = tmp_path_factory.getbasetemp() / "shared-embedding-cache"
    (root / "pyproject.toml").write_text(PROJECT_TOML.format(cache=cache.as_posix()))
    code = main(["run", "--project", str(root), "--out", str(root / "recorded"), "--update-baselines"])
    assert code == EXIT_OK
    return root


def run(project: Path, *args: str) -> int:
    return main(["run", "--project", str(project), *args])


# ----- help -----------------------------------------------------------------------------------------------------
def test_help_names_every_subcommand_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "report", "compare", "models", "check-data"):
        assert command in out
    assert "examples:" in out and "pyproject.toml" in out
    for command in ("run", "report", "compare", "models", "check-data"):
        assert main([command, "--help"]) == 0
        sub = capsys.readouterr().out
        assert "examples:" in sub and f"cxr-robust {command}" in sub
    assert main(["run", "--help"]) == 0
    run_help = " ".join(capsys.readouterr().out.split())
    for code, meaning in MEANINGS.items():  # the exit codes come from cxr_robust.exit_codes
        assert f"{code} {meaning.replace('`', '')}" in run_help
    assert main([]) == EXIT_USAGE  # a subcommand is required
    assert main(["frobnicate"]) == EXIT_USAGE


# ----- run --------------------------------------------------------------------------------------------------------
def test_update_baselines_records_the_table_and_ranks(project: Path) -> None:
    table = project / "baselines" / "phantom-clip__phantom-eval-s0-n60.csv"
    rows = list(csv.DictReader(table.open()))
    assert {(r["model"], r["dataset"], r["perturbation"], r["k"], r["severity"]) for r in rows} == {
        ("phantom-clip", "phantom-eval-s0-n60", "occlusion", k, occ) for k in ("5", "10") for occ in ("0.00", "25.00")}
    assert (project / "baselines" / "ranks" / "phantom-clip__phantom-eval-s0-n60__seed0.npz").is_file()
    assert (project / "recorded" / "ranks" / "phantom-clip__phantom-eval-s0-n60__seed0.npz").is_file()


def test_run_passes_and_writes_results(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert run(project, "--out", str(out)) == EXIT_OK
    text = capsys.readouterr().out
    assert "phantom-clip: 4 cells, 0 failing, 0 without baseline" in text
    assert "exit 0: all measured cells passed" in text
    for name in ("results.json", "results.csv", "report.html"):
        assert (out / name).is_file(), name
    doc = load_results(out)
    (model,) = doc["models"]
    assert model["status"] == "measured" and all(c["passed"] for c in model["cells"])
    assert doc["config"]["phantom_studies"] == 60 and doc["config"]["ks"] == [5, 10]  # from pyproject.toml
    assert doc["dataset"]["name"] == "phantom-eval-s0-n60"


def test_command_line_overrides_pyproject(project: Path, tmp_path: Path) -> None:
    assert run(project, "--out", str(tmp_path), "--ks", "5") == EXIT_OK
    doc = load_results(tmp_path)
    assert doc["config"]["ks"] == [5] and doc["config"]["ratios"] == [0.0, 0.25]
    assert {c["k"] for c in doc["models"][0]["cells"]} == {5}


def test_regression_exits_1_with_the_failing_cells(project: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    recorded = project / "baselines" / "phantom-clip__phantom-eval-s0-n60.csv"
    inflated = tmp_path / "inflated.csv"
    rows = list(csv.DictReader(recorded.open()))
    for r in rows:  # at 25 % occlusion, a baseline far above what the model measures: those cells regressed
        if r["severity"] == "25.00":
            r["recall_pct"] = "95.00"
    with inflated.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    # an empty baselines directory: no recorded ranks to pair with, so the (inflated) table is what gates
    code = run(project, "--out", str(tmp_path / "out"), "--baselines", str(inflated),
               "--baselines-dir", str(tmp_path / "no-recorded-ranks"))
    text = capsys.readouterr().out
    assert code == EXIT_FAILED, text
    assert "phantom-clip: 4 cells, 2 failing" in text and "FAIL occ0%" not in text
    assert "FAIL occ25 k10: measured" in text and "baseline 95.00%" in text and "regressed, adjusted p" in text
    assert "exit 1: cells failed" in text


def test_unavailable_model_skips_or_exits_3_with_require_all(project: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "--out", str(tmp_path), "--models", "phantom-clip,clip") == EXIT_OK
    assert "clip: skipped: weights for 'clip' not found" in capsys.readouterr().out
    # nothing measured at all is never a pass, even without --require-all
    assert run(project, "--out", str(tmp_path), "--models", "clip") == EXIT_UNAVAILABLE
    text = capsys.readouterr().out
    assert "clip: skipped: weights for 'clip' not found" in text and "no model was measured" in text
    assert run(project, "--out", str(tmp_path), "--models", "phantom-clip,clip", "--require-all") == EXIT_UNAVAILABLE
    text = capsys.readouterr().out
    assert "clip: UNAVAILABLE: weights for 'clip' not found" in text
    assert "phantom-clip: 4 cells, 0 failing" in text  # what can run still runs and is reported
    doc = load_results(tmp_path)
    assert [(m["model"], m["status"]) for m in doc["models"]] == [("phantom-clip", "measured"), ("clip", "skipped")]


def test_missing_baseline_fails_unless_explicitly_allowed(project: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A cell that compares nothing is a failure (it used to exit 0); --allow-missing-baseline says NOT COMPARED."""
    assert run(project, "--out", str(tmp_path), "--phantom-studies", "61") == EXIT_FAILED
    text = capsys.readouterr().out
    assert "4 without baseline" in text and "no baseline: record one with --update-baselines" in text
    assert run(project, "--out", str(tmp_path), "--phantom-studies", "61", "--allow-missing-baseline") == EXIT_OK
    text = capsys.readouterr().out
    assert "4 without baseline (none: no baseline) NOT COMPARED" in text
    assert load_results(tmp_path)["verdict"] == "NOT COMPARED"
    # The last line must not claim that cells passed when none was compared (it said "all measured cells passed").
    last = text.strip().splitlines()[-1]
    assert last == "exit 0: NOT COMPARED: no cell failed, but 4 of 4 cells had no baseline (--allow-missing-baseline)"


def test_sweep_error_exits_4(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    code = run(project, "--out", str(tmp_path / "out"), "--weights", f"phantom-clip={broken}")
    text = capsys.readouterr().out
    assert code == EXIT_ERROR, text
    assert "phantom-clip: ERROR:" in text and "exit 4: a sweep errored" in text
    assert load_results(tmp_path / "out")["models"][0]["status"] == "error"


@pytest.mark.parametrize(("args", "message"), [
    (["--models", "phantom-clp"], "unknown model 'phantom-clp'; did you mean 'phantom-clip'?"),
    (["--ratios", "0,120"], "command line: --ratios are occluded area in percent"),
    (["--weights", "phantom-clip"], "weights expects MODEL=PATH"),
    (["--alpha", "1.5"], "alpha must be in (0, 1)"),
    (["--dataset", "mimic", "--mimic-root", "/nonexistent/mimic"],
     "cannot load the mimic dataset: MimicLayoutError: MIMIC-CXR-JPG root /nonexistent/mimic is not a directory"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
])
def test_usage_and_config_errors_exit_2(project: Path, args: list[str], message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, *args) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_bad_pyproject_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.cxr_robust]\nratio = [0]\n")
    assert run(tmp_path) == EXIT_USAGE
    assert "unknown key 'ratio'; did you mean ratios" in capsys.readouterr().err
    # the table is ignored: clip is skipped (no weights here) and nothing is measured, so exit 3, not 2
    assert run(tmp_path, "--no-pyproject", "--models", "clip", "--out", str(tmp_path / "o")) == EXIT_UNAVAILABLE


# ----- report -----------------------------------------------------------------------------------------------------
def test_report_rerenders_html(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(project / "recorded"), "-o", str(out)]) == EXIT_OK
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "phantom-clip" in html
    assert main(["report", str(project / "recorded" / "results.json")]) == EXIT_OK
    assert str(project / "recorded" / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == EXIT_USAGE
    assert "no results at" in capsys.readouterr().err
    (tmp_path / "results.json").write_text("{")
    assert main(["report", str(tmp_path)]) == EXIT_USAGE


# ----- compare ----------------------------------------------------------------------------------------------------
def test_compare_two_real_runs_is_paired(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "--out", str(tmp_path / "again")) == EXIT_OK
    capsys.readouterr()
    table = tmp_path / "diff.csv"
    assert main(["compare", str(project / "recorded"), str(tmp_path / "again"), "--csv", str(table)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "4 cells compared (paired); 0 significantly worse in B" in text
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 4 and {r["test"] for r in rows} == {"paired"}
    assert all(float(r["diff_pp"]) == 0.0 for r in rows)  # same weights, data and seed: identical numbers


def _synthetic_run(folder: Path, above: np.ndarray, with_ranks: bool) -> Path:
    """A results directory for a fake model ``m`` from per-query ``above`` counts (N = 50, no ties)."""
    counts = {0.0: RankCounts(above, np.zeros_like(above), 50)}
    ids = [f"img{i:03d}" for i in range(len(above))]
    cells = [{"ratio": 0.0, "k": k, "measured": float(np.mean(above < k)), "n_queries": len(above),
              "n_candidates": 50, "chance": k / 50, "baseline": None} for k in (5, 10)]
    doc = build_document([ModelOutcome("m", "measured", cells=cells)], {"config": {}, "dataset": {"name": "d"}})
    write_results(folder, doc)
    if with_ranks:
        save_ranks(folder / "ranks" / "m__d__seed0.npz", counts, ids, {"model": "m"})
    return folder


@pytest.mark.parametrize("with_ranks", [True, False])
def test_compare_flags_a_regression(tmp_path: Path, with_ranks: bool, capsys: pytest.CaptureFixture[str]) -> None:
    good = np.zeros(200, dtype=np.int64)  # every query's report ranked first
    bad = np.where(np.arange(200) % 2 == 0, 0, 30).astype(np.int64)  # half of them lose it
    a = _synthetic_run(tmp_path / "a", good, with_ranks)
    b = _synthetic_run(tmp_path / "b", bad, with_ranks)
    assert main(["compare", str(a), str(b)]) == EXIT_OK
    text = capsys.readouterr().out
    kind = "paired" if with_ranks else "unpaired"
    assert f"2 cells compared ({kind}); 2 significantly worse in B" in text
    assert "-50.00" in text
    assert main(["compare", str(a), str(b), "--fail-on-regression"]) == EXIT_FAILED
    assert main(["compare", str(b), str(a), "--fail-on-regression"]) == EXIT_OK  # B better: not a regression


def test_compare_unpaired_rows_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _synthetic_run(tmp_path / "a", np.zeros(100, dtype=np.int64), False)
    rows = compare_documents(load_results(a), load_results(a))
    assert [(r["k"], r["diff_pp"], r["test"], r["verdict"]) for r in rows] == [(5, 0.0, "unpaired", ""),
                                                                                 (10, 0.0, "unpaired", "")]
    other = tmp_path / "o"
    write_results(other, build_document([], {"config": {}}))
    assert main(["compare", str(a), str(other)]) == EXIT_USAGE
    assert "no measured cell in common" in capsys.readouterr().err


# ----- models -----------------------------------------------------------------------------------------------------
def test_models_lists_registry_and_where_weights_are(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cxr_robust.models.demo import WEIGHTS_FILE

    assert main(["models", "--project", str(tmp_path), "--no-pyproject"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "phantom-clip     phantom-clip    findings+impression  found\n" in text
    assert f"\n    {WEIGHTS_FILE} (shipped in the cxr-robust package)\n" in text
    assert "cxr-repair       CXR-RePaiR      impression           NOT FOUND\n" in text  # details: test_models_listing
    clip = tmp_path / "w" / "ViT-B-32.pt"
    clip.parent.mkdir()
    clip.write_bytes(b"x")
    (tmp_path / "pyproject.toml").write_text("[tool.cxr_robust]\nweights_dir = 'w'\n")
    assert main(["models", "--project", str(tmp_path), "--json"]) == EXIT_OK
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["clip"]["available"] and rows["clip"]["path"] == str(clip)
    assert rows["clip"]["source"] == f"weights dir {tmp_path / 'w'}"
    assert rows["clip"]["baseline_row"] == "CLIP" and rows["cxr-clip-swint"]["text_policy"] == "longest"
    assert main(["models", "--project", str(tmp_path), "--weights", f"cxr-repair={clip}", "--json"]) == EXIT_OK
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["cxr-repair"]["source"].startswith("--weights")


# ----- check-data -------------------------------------------------------------------------------------------------
def test_check_data_on_a_fake_mimic_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = build_fake_mimic(tmp_path / "mimic")
    want = fake.expected()
    assert main(["check-data", "--no-pyproject", "--mimic-root", str(fake.root)]) == EXIT_OK
    text = capsys.readouterr().out
    assert (f"evaluation set: {want['studies']} studies / {want['images']} images   (paper: 994 / 1,770; "
            f"difference {want['studies'] - 994:+,} / {want['images'] - 1770:+,})") in text
    assert "views: AP 2, LATERAL 2, LL 1, PA 2, SWIMMERS 1, UNKNOWN 1" in text
    assert "excluded studies: not_in_split 5, missing_report 1, missing_findings 3, missing_impression 2" in text

    assert main(["check-data", "--no-pyproject", "--mimic-root", str(fake.root), "--views", "frontal",
                 "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    frontal = fake.expected(views="frontal")
    assert doc["counts"] == {"studies": frontal["studies"], "images": frontal["images"], "views": frontal["views"]}
    assert {k: v for k, v in doc["excluded_studies"].items() if v} == frontal["excluded_studies"]
    assert {k: v for k, v in doc["excluded_images"].items() if v} == frontal["excluded_images"]
    assert doc["paper_reference"] == {"studies": 994, "images": 1770}


def test_check_data_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-data", "--no-pyproject", "--mimic-root", str(tmp_path / "absent")]) == EXIT_USAGE
    assert "is not a directory" in capsys.readouterr().err
    fake = build_fake_mimic(tmp_path / "mimic")
    (fake.root / fake.study("s50000001").image_path(0)).unlink()  # an image of the evaluation set goes missing
    assert main(["check-data", "--no-pyproject", "--mimic-root", str(fake.root)]) == EXIT_USAGE
    assert "1 of 9 images of the validate evaluation set are missing" in capsys.readouterr().err
    assert main(["check-data", "--no-pyproject", "--mimic-root", str(fake.root), "--skip-bad"]) == EXIT_OK
    assert "missing_image 1" in capsys.readouterr().out
    assert main(["check-data", "--no-pyproject", "--project", str(tmp_path)]) == EXIT_USAGE
    assert "nothing to check" in capsys.readouterr().err


def test_check_data_reads_pyproject_and_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = build_fake_mimic(tmp_path / "mimic")
    (tmp_path / "pyproject.toml").write_text("[tool.cxr_robust]\nmimic_root = 'mimic'\n")
    assert main(["check-data", "--project", str(tmp_path)]) == EXIT_OK
    assert f"{fake.expected()['studies']} studies" in capsys.readouterr().out
    images = sorted((fake.root / "files").rglob("*.jpg"))[:3]
    manifest = tmp_path / "m.csv"
    rows = "".join(f"{p},s{i},Report {i}.\n" for i, p in enumerate(images))
    manifest.write_text("image_path,study_id,report\n" + rows)
    assert main(["check-data", "--project", str(tmp_path), "--manifest", str(manifest)]) == EXIT_OK
    assert "evaluation set: 3 studies / 3 images" in capsys.readouterr().out
    manifest.write_text("image_path,study_id\nx.jpg,s1\n")
    assert main(["check-data", "--project", str(tmp_path), "--manifest", str(manifest)]) == EXIT_USAGE


def test_a_grid_below_chance_fails_the_cli_run_even_when_missing_baselines_are_allowed() -> None:
    """With --allow-missing-baseline no cell is compared; a grid clearly below chance must still fail the run
    (it used to be left out of the CLI's failures whenever the grid had no baseline)."""
    from types import SimpleNamespace

    from cxr_robust.cli import _failing
    from cxr_robust.gate import GateOptions
    from cxr_robust.stats import CellDecision, GridDecision

    cell = CellDecision(model="m", condition=0.0, k=5, measured=0.0, n_queries=100, n_candidates=50, chance=0.1,
                        baseline=None)
    grid = GridDecision(model="m", mode="none", measured=0.0, baseline=None, chance=0.1, n_cells=0, n_queries=100,
                        chance_passed=False)
    run = SimpleNamespace(decisions={(0.0, 5): cell}, grid=grid)
    assert _failing(run, GateOptions(allow_missing_baseline=True)) == [grid]
    grid.chance_passed = True
    assert _failing(run, GateOptions(allow_missing_baseline=True)) == []
    assert _failing(run, GateOptions()) == [cell]  # without the option the cell's missing baseline fails
