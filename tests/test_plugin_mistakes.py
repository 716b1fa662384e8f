"""User mistakes under pytest end in one line and a non-zero exit, never a traceback or a green run."""

from __future__ import annotations

from pathlib import Path

import pytest

# Imported at module level: pytester restores sys.modules after each test, and re-importing a C extension
# (torch, numpy) in the same process can crash it.
import torch  # noqa: F401  (kept loaded: see above)

from tests.gate_project import GATE_TESTS

pytest_plugins = ["pytester"]

SMALL = ["--cxr-phantom-studies=120", "--cxr-ratios=0,81", "--cxr-ks=5", "--cxr-models=phantom-clip",
         "-p", "no:cacheprovider"]


@pytest.fixture
def project(pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory) -> pytest.Pytester:
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_gate.py").write_text(GATE_TESTS)
    (pytester.path / "baselines").mkdir()
    cache = tmp_path_factory.getbasetemp() / "mistakes-embedding-cache"
    pytester.cache_arg = f"--cxr-cache-dir={cache}"  # type: ignore[attr-defined]
    return pytester


def _run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    return p.runpytest_subprocess(*SMALL, p.cache_arg, *args)  # type: ignore[attr-defined]


def test_a_garbage_compare_to_file_is_one_usage_error_naming_it(project: pytest.Pytester) -> None:
    garbage = project.path / "reference.npz"
    garbage.write_bytes(b"PK\x03\x04 truncated")
    res = _run(project, f"--cxr-compare-to={garbage}", f"--cxr-report={project.path / 'report'}")
    assert res.ret == pytest.ExitCode.INTERRUPTED or res.ret == pytest.ExitCode.USAGE_ERROR, res.stdout.str()
    out = res.stdout.str() + res.stderr.str()
    assert f"cannot pair with the recorded ranks {garbage}" in out and "Traceback" not in out


def test_a_report_path_that_is_a_file_fails_the_run_with_one_line(project: pytest.Pytester) -> None:
    target = project.path / "report-is-a-file"
    target.write_text("not a directory")
    res = _run(project, f"--cxr-report={target}", "--cxr-allow-missing-baseline")
    assert res.ret == pytest.ExitCode.USAGE_ERROR, res.stdout.str()
    res.stdout.fnmatch_lines([f"*cannot write the gate's outputs: *{target}* is a file; pass a directory*"])
    assert target.read_text() == "not a directory"


def test_update_baselines_into_an_unwritable_place_fails_and_writes_nothing(project: pytest.Pytester) -> None:
    # the table's path is taken by a directory: the write must fail cleanly, naming it
    blocked = project.path / "baselines" / "phantom-clip__phantom-eval-s0-n120.csv"
    blocked.mkdir()
    res = _run(project, "--cxr-update-baselines", f"--cxr-report={project.path / 'report'}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR, res.stdout.str()
    res.stdout.fnmatch_lines([f"*cannot write the gate's outputs: *{blocked}*"])
    assert blocked.is_dir() and not list(blocked.iterdir())
    assert "Traceback" not in res.stdout.str() + res.stderr.str()


def test_explicit_weights_that_do_not_exist_are_a_usage_error(project: pytest.Pytester, tmp_path: Path) -> None:
    res = project.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider", "--cxr-models=phantom-clip",
                                       f"--cxr-weights=phantom-clip={tmp_path / 'typo.safetensors'}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*weights for 'phantom-clip': *typo.safetensors does not exist*"])
