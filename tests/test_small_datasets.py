"""Data sets with fewer reports than the default ks (5-100): check-data warns first, and the gate's refusal
(GateOptions.check_grid) names the ks to drop and the value to paste instead."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_robust.cli import EXIT_OK, EXIT_USAGE, main
from cxr_robust.config import build_gate_options
from cxr_robust.gate import GateOptions, GateUsageError

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("clean_cxr_env")  # tests/conftest.py

STUDIES = 40


def write_manifest(folder: Path, studies: int = STUDIES) -> Path:
    """A manifest of ``studies`` one-image studies with real (tiny) PNGs: check-data reads every header."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = ["image_path,study_id,report,view"]
    for i in range(studies):
        Image.fromarray(np.full((8, 8), i, dtype=np.uint8), mode="L").save(folder / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,s{i},Report number {i}.,PA")
    path = folder / "m.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("ks, n, drop, paste", [
    ((5, 10, 20, 30, 50, 100), 40, "50, 100", "5,10,20,30"),
    ((5, 10, 20, 30, 50, 100), 50, "100", "5,10,20,30,50"),  # k = N fits
    ((10, 5), 7, "10", "5"),  # the order given is kept
    ((5, 10), 3, "5, 10", "1"),  # nothing fits: k = 1 is the only k that always does
])
def test_check_grid_names_the_ks_to_drop_and_the_value_to_paste(ks: tuple[int, ...], n: int, drop: str,
                                                                paste: str) -> None:
    with pytest.raises(GateUsageError) as info:
        GateOptions(ks=ks).check_grid(n, "manifest-m")
    message = str(info.value)
    assert f"dataset manifest-m has only {n} reports, so Recall@k needs k <= {n}" in message
    assert f"drop k = {drop} and pass --cxr-ks={paste} " in message
    assert f"cxr-robust run: --ks {paste};" in message and f"ks = [{paste.replace(',', ', ')}]" in message
    # the pasted value is accepted, and fits
    pasted = re.search(r"--cxr-ks=(\S+) ", message).group(1)
    build_gate_options(cli={"ks": pasted}, use_pyproject=False, environ={}).check_grid(n, "manifest-m")


def test_check_grid_accepts_ks_up_to_n() -> None:
    GateOptions(ks=(5, 10, 40)).check_grid(40, "manifest-m")


def test_check_data_warns_which_ks_are_too_big(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_manifest(tmp_path)
    assert main(["check-data", "--project", str(tmp_path), "--manifest", str(manifest)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"evaluation set: {STUDIES} studies / {STUDIES} images" in out
    warning = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert warning == [f"warning: the gate would stop after loading this set: --cxr-ks 50,100: dataset manifest-m "
                       f"has only {STUDIES} reports, so Recall@k needs k <= {STUDIES}: drop k = 50, 100 and pass "
                       "--cxr-ks=5,10,20,30 (cxr-robust run: --ks 5,10,20,30; pyproject.toml [tool.cxr_robust]: "
                       "ks = [5, 10, 20, 30]), or use a larger data set"]

    assert main(["check-data", "--project", str(tmp_path), "--manifest", str(manifest), "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["ks"] == [5, 10, 20, 30, 50, 100] and "drop k = 50, 100" in doc["ks_warning"]


def test_check_data_is_quiet_when_the_configured_ks_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_manifest(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.cxr_robust]\nks = [5, 10, 20, 30]\n")
    assert main(["check-data", "--project", str(tmp_path), "--manifest", str(manifest), "--json"]) == EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["ks"] == [5, 10, 20, 30] and doc["ks_warning"] is None
    assert main(["check-data", "--project", str(tmp_path), "--manifest", str(manifest)]) == EXIT_OK
    assert "warning" not in capsys.readouterr().out


def test_run_on_a_small_manifest_stops_with_the_value_to_paste(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_manifest(tmp_path)
    code = main(["run", "--project", str(tmp_path), "--no-pyproject", "--models", "phantom-clip", "--manifest",
                 str(manifest), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert "drop k = 50, 100 and pass --cxr-ks=5,10,20,30" in err and "Traceback" not in err


def test_pytest_on_a_small_phantom_set_stops_before_any_work(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml('[project]\nname = "user-project"\n')
    pytester.makepyfile(test_gate="def test_gate(gate_cell):\n    gate_cell.check_chance()\n")
    res = pytester.runpytest("-m", "robustness", "--cxr-models=phantom-clip",
                             "--cxr-phantom-studies=40", "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--cxr-ks 50,100: dataset phantom-eval-s0-n40 has only 40 reports*drop k = 50, 100 "
                              "and pass --cxr-ks=5,10,20,30 *"])
