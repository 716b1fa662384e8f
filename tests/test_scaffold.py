"""``cxr-robust init``: what it writes, what it never overwrites, and that the scaffolded gate works end to end.

The end-to-end test runs the next steps ``init`` prints, as printed (from ``ScaffoldResult.commands``), in a
fresh folder outside this repository: the demo model on a 60-study phantom set first FAILS for want of a
baseline (a gate never goes green without comparing), then records one, then passes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_robust import scaffold
from cxr_robust.cli import EXIT_OK, EXIT_USAGE, main
from cxr_robust.config import load_pyproject_config
from cxr_robust.models.base import RetrievalModel
from tests.conftest import CXR_ENV_VARS

WRITTEN = ["pyproject.toml", *scaffold.FILES]


def _init(root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["init", str(root)]) == EXIT_OK
    return capsys.readouterr().out


def _pytest_argv(command: list[str]) -> list[str]:
    """A printed ``pytest ...`` command, run with this environment's pytest (its console script, like a user)."""
    assert command[0] == "pytest", command
    script = Path(sys.executable).with_name("pytest")
    runner = [str(script)] if script.is_file() else [sys.executable, "-m", "pytest"]
    return [*runner, *command[1:], "-p", "no:cacheprovider"]


def _run(command: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in CXR_ENV_VARS and k != "PYTEST_ADDOPTS"}
    env["CXR_ROBUST_CACHE_DIR"] = str(cache)
    return subprocess.run(_pytest_argv(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_init_writes_every_file_and_prints_the_next_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _init(tmp_path / "proj", capsys)
    root = tmp_path / "proj"
    for rel in WRITTEN:
        assert (root / rel).is_file(), rel
        assert f"created  {rel}" in out
    assert not list(root.rglob("*.tmp")), "a temporary file was left behind"
    assert "next steps:" in out and "pytest -m robustness" in out and "my_model.py" in out
    # the table is valid, and says what the gate will run: the user's factory on the phantom set until data exists
    options = load_pyproject_config(root)
    assert options["models"] == (scaffold.MODEL_TARGET,) and options["dataset"] == "phantom"
    assert options["ks"] == (5, 10, 20, 30, 50, 100)


def test_scaffolded_model_stub_is_the_protocol_and_fails_loudly_until_filled_in(tmp_path: Path) -> None:
    scaffold.scaffold(tmp_path)
    spec = importlib.util.spec_from_file_location("scaffolded_my_model", tmp_path / "my_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert issubclass(module.MyModel, RetrievalModel) and not module.MyModel.__abstractmethods__
    with pytest.raises(NotImplementedError, match="my_model.py: load your checkpoint"):
        module.build(weights=None)
    # the scaffolded test module is what this repository's own gate module is: two checks on gate_cell
    text = (tmp_path / "tests" / "test_robustness.py").read_text()
    assert "gate_cell.check_baseline()" in text and "gate_cell.check_chance()" in text


def test_init_never_overwrites_and_says_what_it_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = {"my_model.py": "MINE = 1\n", "tests/test_robustness.py": "# mine\n",
            "pyproject.toml": '[project]\nname = "x"\n\n[tool.cxr_robust]\nmodels = ["clip"]\n'}
    for rel, text in mine.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    out = _init(tmp_path, capsys)
    for rel, text in mine.items():
        assert (tmp_path / rel).read_text() == text, rel
        assert f"skipped  {rel}: " in out
    assert "already has a [tool.cxr_robust] table" in out
    assert "created  data/manifest.csv" in out and (tmp_path / "baselines" / "README.md").is_file()
    assert _init(tmp_path, capsys).count("skipped  ") == len(WRITTEN)  # a second run writes nothing


def test_second_init_reports_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _init(tmp_path, capsys)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    out = _init(tmp_path, capsys)
    assert "nothing written: the project is already scaffolded" in out
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_table_is_appended_to_an_existing_pyproject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = '[project]\nname = "mine"\nversion = "1.0"\n\n[tool.black]\nline-length = 100'  # no final newline
    (tmp_path / "pyproject.toml").write_text(original)
    assert "appended pyproject.toml" in _init(tmp_path, capsys)
    text = (tmp_path / "pyproject.toml").read_text()
    assert text.startswith(original + "\n") and text.count("[tool.cxr_robust]") == 1
    assert load_pyproject_config(tmp_path)["models"] == (scaffold.MODEL_TARGET,)


@pytest.mark.parametrize("content, reason", [
    ("[project\nname = 1\n", "not valid TOML"),
    ("tool = { black = { line-length = 100 } }\n", "cannot take a [tool.cxr_robust] table"),
    ("[tool]\ncxr_robust.models = ['clip']\n", "already has a [tool.cxr_robust] table"),
])
def test_a_pyproject_that_cannot_take_the_table_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              content: str, reason: str) -> None:
    (tmp_path / "pyproject.toml").write_text(content)
    out = _init(tmp_path, capsys)
    assert (tmp_path / "pyproject.toml").read_text() == content
    assert "skipped  pyproject.toml: " in out and reason in out
    assert (tmp_path / "my_model.py").is_file()  # the rest is still scaffolded


def test_init_into_a_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "afile"
    target.write_text("x")
    assert main(["init", str(target)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("cxr-robust: error: ") and f"{target} is a file" in err and "Traceback" not in err


def test_a_failed_write_leaves_no_half_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left on device"):
        scaffold.scaffold(tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_file_that_appears_during_the_write_is_not_overwritten(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real_link = os.link
    target = tmp_path / "my_model.py"

    def racing_link(src: str, dst: str) -> None:
        if Path(dst) == target:
            target.write_text("SOMEONE ELSE\n")  # created between the existence check and the link
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    outcome = {o.path.name: o for o in scaffold.scaffold(tmp_path).outcomes}["my_model.py"]
    assert outcome.action == "skipped" and target.read_text() == "SOMEONE ELSE\n"
    assert not list(tmp_path.glob(".my_model.py.*"))


def test_next_steps_name_the_declared_pytest_flags() -> None:
    from cxr_robust.options import for_front_end

    pytest_flags = {o.flag for o in for_front_end("pytest")}
    for argv in scaffold.commands().values():
        assert all(a.split("=")[0] in pytest_flags for a in argv if a.startswith("--")), argv
    assert "--cxr-phantom-studies=60" in scaffold.commands()["demo"]


def test_scaffolded_default_gate_fails_loudly_until_the_model_is_filled_in(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """As scaffolded, the gate runs the user's `my_model:build` (imported through the scaffolded conftest.py under
    the pytest console script, which does not put the folder on sys.path): it fails, saying what to fill in."""
    root = tmp_path_factory.mktemp("user-project-default")
    scaffold.scaffold(root)
    small = [a for a in scaffold.commands()["demo"] if not a.startswith("--cxr-models")]
    res = _run(small, root, tmp_path_factory.getbasetemp() / "shared-embedding-cache")
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    assert "gate verdict: FAIL" in res.stdout
    assert "my_model:build: error: NotImplementedError: my_model.py: load your checkpoint" in res.stdout
    assert "cannot import" not in res.stdout


@pytest.mark.slow  # three pytest processes, each importing torch and open_clip (~20 s apiece on 2 busy cores)
def test_scaffolded_gate_fails_without_baseline_records_then_passes(tmp_path_factory: pytest.TempPathFactory,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The printed next steps, run as printed: FAIL (no baseline), record, PASS."""
    root = tmp_path_factory.mktemp("user-project")
    # the embedding cache other modules' 60-study demo runs fill too (tests/test_cli.py): a tmp dir
    cache = tmp_path_factory.getbasetemp() / "shared-embedding-cache"
    out = _init(root, capsys)
    commands = scaffold.commands()
    for key in ("demo", "demo_record"):
        assert " ".join(commands[key]) in out  # what is run below is what init printed

    first = _run(commands["demo"], root, cache)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-2000:]
    assert "gate verdict: FAIL" in first.stdout
    assert "was not compared: no baseline row 'phantom-clip' for dataset 'phantom-eval-s0-n60'" in first.stdout
    # every cell (2 occlusion levels x 2 ks) and the grid case fail the baseline check; chance checks pass
    assert "5 failed, 5 passed" in first.stdout
    assert not list((root / "baselines").glob("*.csv"))

    record = _run(commands["demo_record"], root, cache)
    assert record.returncode == 0, record.stdout[-3000:] + record.stderr[-2000:]
    assert (root / "baselines" / "phantom-clip__phantom-eval-s0-n60.csv").is_file()
    assert (root / "baselines" / "ranks" / "phantom-clip__phantom-eval-s0-n60__seed0.npz").is_file()

    again = _run(commands["demo"], root, cache)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert "gate verdict: PASS" in again.stdout
    assert "phantom-clip: PASS: 4 cells on phantom-eval-s0-n60" in again.stdout
    assert "4 compared, 0 failed, 0 not compared (paired against" in again.stdout
