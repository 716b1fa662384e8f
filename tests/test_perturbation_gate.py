"""The gate over perturbations end to end: the default grid is the paper's (same test ids as before), and a
small-phantom smoke run of every family records baselines, then passes against them, keyed by perturbation."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_robust import PAPER_KS, PAPER_RATIOS, verdicts
from cxr_robust.gate import GateOptions, GateSession, cell_id
from cxr_robust.perturbations import Condition, available, get_perturbation


def test_the_default_grid_is_the_papers_occlusion_grid_with_unchanged_ids() -> None:
    options = GateOptions(models=("phantom-clip",))
    assert options.perturbations == ("occlusion",)
    assert options.conditions() == tuple(Condition("occlusion", r) for r in PAPER_RATIOS)
    ids = [cell_id("phantom-clip", c, k) for c in options.conditions() for k in PAPER_KS]
    # the ids the gate produced before perturbations existed (occluded area in percent, trailing zeros cut)
    assert ids[:7] == ["phantom-clip-occ0-k5", "phantom-clip-occ0-k10", "phantom-clip-occ0-k20", "phantom-clip-occ0-k30",
                       "phantom-clip-occ0-k50", "phantom-clip-occ0-k100", "phantom-clip-occ0.25-k5"]
    assert ids[-1] == "phantom-clip-occ81-k100" and len(ids) == len(set(ids)) == 48
    assert cell_id("clip", 0.01, 20) == "clip-occ1-k20"  # a bare ratio still names an occlusion cell


def test_unknown_perturbations_and_bad_severities_fail_before_any_loading() -> None:
    with pytest.raises(ValueError, match="did you mean 'jpeg'"):
        GateOptions(perturbations=("jpg",))
    with pytest.raises(ValueError, match="not a level"):
        GateOptions(perturbations=("gaussian_noise",), severities="gaussian_noise=7")


@pytest.mark.slow
def test_every_family_records_then_passes_against_its_baselines(tmp_path: Path) -> None:
    """Smoke run of the whole suite on 30 phantom studies: record, then gate against the recording."""
    common = dict(models=("phantom-clip",), phantom_studies=30, perturbations=("all",), ks=(1, 5),
                  ratios=(0.0, 0.25), cache_dir=str(tmp_path / "cache"), report_dir=str(tmp_path / "report"))
    record = GateSession(GateOptions(**common, update_baselines=True), rootdir=tmp_path)
    assert record.run("phantom-clip").error is None
    written, _ = record.update_baselines()
    table = next(p for p in written if p.suffix == ".csv")
    header = table.read_text().splitlines()[0]
    assert header.startswith("model,dataset,perturbation,severity,k,recall_pct")

    gate = GateSession(GateOptions(**common), rootdir=tmp_path)
    run = gate.run("phantom-clip")
    assert run.error is None and run.mode == "paired"
    measured = {c for c, _ in run.decisions}
    assert {c.perturbation for c in measured} == set(available())
    levels = sum(len(get_perturbation(n).default_severities) for n in available() if n != "occlusion")
    assert len(measured) == 1 + 1 + levels  # clean + occlusion 25 % + each perturbation's default levels
    failing = [(c.label, k) for (c, k), d in run.decisions.items() if d.passed is False or not d.chance_passed]
    assert not failing and run.grid is not None and run.grid.passed
    doc = gate.document()
    assert doc["verdict"] == verdicts.RUN_PASS
    (model,) = doc["models"]
    assert set(model["summary"]) == set(available())  # one robustness curve per perturbation
    across = model["corruption"]["5"]
    assert set(across["per_perturbation"]) == set(available()) and across["mean_relative_drop"] is not None
    html = (gate.write_outputs(doc)["html"]).read_text()
    for name in available():
        assert f"<h3>{name}</h3>" in html and f"versus {name} severity" in html
    assert "Across perturbations" in html


@pytest.mark.usefixtures("clean_cxr_env")
def test_the_cli_lists_perturbations_and_refuses_unknown_ones(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from cxr_robust.cli import EXIT_OK, EXIT_USAGE, main

    assert main(["perturbations"]) == EXIT_OK
    listing = capsys.readouterr().out
    for name in available():
        assert name in listing
    assert "MedMNIST-C" in listing and "sigma (intensity, [0, 1]): s1=0.04" in listing
    code = main(["run", "--project", str(tmp_path), "--perturbations", "gausian_noise", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "did you mean 'gaussian_noise'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_the_demo_has_baselines_on_every_family_and_degrades_with_severity() -> None:
    """The shipped demo recording covers every perturbation at its default levels (five; one for the on/off
    report-side ones) and the paper's ks, and the demo's
    Recall@k never rises by more than 3.5 points (3 binomial standard errors at M = 1,757) from one level
    to the next (the only rise above 1.5 points: pixelate s2 -> s3, where blocks of 32 and 25 px fall
    differently on the anatomy)."""
    from collections import defaultdict

    from cxr_robust.baselines import BaselineTable

    table = BaselineTable.load(Path(__file__).resolve().parents[1] / "baselines" / "phantom_demo.csv")
    curves: dict[tuple[str, int], dict[float, float]] = defaultdict(dict)
    for cell in table.for_dataset("phantom-eval-s0").for_model("phantom-clip"):
        curves[(cell.condition.perturbation, cell.k)][cell.condition.severity] = cell.recall
    for name in available():
        for k in PAPER_KS:
            curve = curves[(name, k)]
            expected = PAPER_RATIOS if name == "occlusion" else get_perturbation(name).default_severities
            assert sorted(curve) == sorted(expected), (name, k)
            values = [curves[("occlusion", k)][0.0]] + [curve[s] for s in sorted(curve) if s]
            rises = [b - a for a, b in zip(values, values[1:])]
            assert max(rises) <= 0.035, f"{name} k={k}: recall rises by {max(rises):.3f} between levels"
