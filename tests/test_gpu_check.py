"""benchmarks/gpu_check.py keeps working between GPU loans: its CPU dry run, end to end, in CI.

The GPU run happens once per loan, by hand; if the script had rotted in between (a renamed engine argument, a
model builder that moved, a section that cannot parse its own numbers) that one chance would be lost. The dry
run executes every section on the CPU at tiny sizes, so this test fails on the same mistakes. To keep CI's time
it measures one architecture (``--models medclip-vit``: a Swin-T and a BERT tower); the sections' code is the
same for every architecture, and each architecture's builder and adapter are tested in its own module.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_robust.models import PAPER_MODELS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ("a_gpu_tests", "b_throughput", "c_table1_grid", "d_precision_agreement", "e_fp32_parity")
DRY_MODELS = ("medclip-vit",)
LABELS = {"clip": "CLIP ViT-B/32", "cxr-repair": "CXR-RePaiR", "medclip-vit": "MedCLIP-ViT",
          "cxr-clip-swint": "CXR-CLIP Swin-T"}


def _numbers(value: object) -> list[float]:
    """Every int/float inside a JSON value (booleans excluded)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu-check") / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--models", ",".join(DRY_MODELS),
                           "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (f"gpu_check --dry-run exited {proc.returncode}\n{proc.stdout[-4000:]}\n"
                                  f"{proc.stderr[-4000:]}")
    return proc, json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_dry_run_fills_every_section_without_errors(dry_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    _, doc = dry_run
    assert doc["mode"].startswith("dry-run") and doc["dry_run"] is True
    assert doc["environment"]["device"] == "cpu" and doc["environment"]["torch"]
    assert doc["failed"] == [] and isinstance(doc["wall_s"], float)
    assert not doc["setup"]["models"]["errors"] and not doc["setup"]["phantom"]["errors"]
    assert set(doc["sections"]) == set(SECTIONS)
    for key in SECTIONS:
        section = doc["sections"][key]
        assert section["ok"] is True and section["error"] is None and not section.get("errors"), (key, section)
        assert section["seconds"] >= 0 and _numbers(section), key
        assert section["on_gpu"], f"{key}: the dry run must say what it would measure on a GPU"


@pytest.mark.slow
def test_dry_run_numbers_cover_every_architecture_and_cell(dry_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    _, doc = dry_run
    plan, s = doc["plan"], doc["sections"]
    a = s["a_gpu_tests"]
    # on a CPU-only machine every gpu-marked test skips (and none may pass: that would be a missing skip)
    assert a["returncode"] == 0 and a["failed"] == a["errors"] == 0 and a["skipped"] + a["passed"] > 0
    rows = s["b_throughput"]["rows"]
    assert {(r["model"], r["precision"]) for r in rows} == {(m, p) for m in DRY_MODELS for p in plan["precisions"]}
    assert all(r["images_per_s"][str(bs)] > 0 for r in rows for bs in plan["batch_sizes"])
    grid = s["c_table1_grid"]
    assert set(grid["per_model"]) == set(DRY_MODELS)
    for v in grid["per_model"].values():
        assert v["seconds"] > 0 and v["text_encodings"] == grid["studies"]
        assert v["cells"] == len(plan["ratios"]) * len(plan["ks"])
    assert grid["total_s"] == pytest.approx(sum(v["seconds"] for v in grid["per_model"].values()), abs=0.05)
    reduced = [p for p in plan["precisions"] if p != "fp32"]
    agreement = s["d_precision_agreement"]["rows"]
    assert {(r["model"], r["precision"]) for r in agreement} == {(m, p) for m in DRY_MODELS for p in reduced}
    assert all(0 <= r["identical_rank"] <= 1 and r["max_rank_shift"] >= 0 for r in agreement)
    parity = s["e_fp32_parity"]
    assert parity["compared"].startswith("cpu vs cpu") and set(parity["per_model"]) == set(DRY_MODELS)
    assert all(v["max_abs_diff"] <= parity["tolerance"] for v in parity["per_model"].values())
    # what a GPU run measures is recorded, at the paper's size
    assert doc["gpu_plan"]["studies"] == 994 and doc["gpu_plan"]["batch_sizes"][-1] == 1024
    assert s["c_table1_grid"]["on_gpu"]["studies"] == 994 and len(s["c_table1_grid"]["on_gpu"]["ratios"]) == 8


@pytest.mark.slow
def test_dry_run_says_so_and_prints_its_architectures(dry_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    proc, doc = dry_run
    assert "dry-run" in proc.stdout and "all sections OK" in proc.stdout
    assert "CPU DRY RUN" in proc.stderr  # loud, so nobody pastes CPU numbers into README as GPU numbers
    assert doc["plan"]["models"] == list(DRY_MODELS)
    assert doc["gpu_plan"]["models"] == list(PAPER_MODELS)  # a GPU run measures all four by default
    for name in DRY_MODELS:
        assert LABELS[name] in proc.stdout, f"{LABELS[name]} missing from the printed table"
    for key in SECTIONS:
        assert f"[{key[0]}] {doc['sections'][key]['title']}" in proc.stdout


def test_without_cuda_the_check_falls_back_to_the_dry_run_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # dataclasses look their module up while executing
    spec.loader.exec_module(gpu_check)
    assert gpu_check.choose_mode(False, True, "2.5.0", "12.4") == "gpu"
    fallback = gpu_check.choose_mode(False, False, "2.5.0+cpu", None)
    assert fallback.startswith("dry-run (no CUDA device)") and "is_available() is False" in fallback
    assert "CUDA build none" in fallback and "2.5.0+cpu" in fallback
    assert gpu_check.choose_mode(True, True, "2.5.0", "12.4").startswith("dry-run (--dry-run)")
    counts = gpu_check.parse_pytest_summary("....\n3 passed, 2 skipped, 1 error, 1620 deselected in 9.10s\n")
    assert (counts["passed"], counts["skipped"], counts["errors"], counts["deselected"]) == (3, 2, 1, 1620)
    with pytest.raises(ValueError, match="no pytest summary"):
        gpu_check.parse_pytest_summary("ImportError while loading conftest")
