"""The plugin's hint for ``pytest -m robustness`` in a project without a gate test (cxr_robust/plugin_hints.py)."""

from __future__ import annotations

import pytest

from cxr_robust.plugin_hints import HINT, needs_hint, note_worker_collection, selects_gate

pytest_plugins = ["pytester"]

PLAIN_TEST = "def test_unit():\n    assert 1 + 1 == 2\n"
GATE_TEST = "import pytest\n\n@pytest.mark.robustness\ndef test_gate(gate_cell):\n    gate_cell.check_chance()\n"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A project that installs cxr-robust (the plugin comes from its entry point) but has no gate test."""
    pytester.makepyprojecttoml('[project]\nname = "user-project"\n')
    pytester.makepyfile(test_unit=PLAIN_TEST)
    return pytester


def test_robustness_run_without_a_gate_test_says_how_to_get_one(project: pytest.Pytester) -> None:
    res = project.runpytest("-m", "robustness", "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    res.stdout.fnmatch_lines(["*= cxr-robust =*", HINT.replace("[", "[[]")])
    assert "cxr-robust init" in res.stdout.str()


@pytest.mark.parametrize("args", [(), ("-m", "not robustness"), ("-m", "slow")])
def test_no_hint_when_the_gate_was_not_asked_for(project: pytest.Pytester, args: tuple[str, ...]) -> None:
    res = project.runpytest(*args, "-p", "no:cacheprovider")
    assert "cxr-robust init" not in res.stdout.str()


def test_no_hint_when_a_gate_test_was_collected_but_deselected(project: pytest.Pytester) -> None:
    project.makepyfile(test_gate=GATE_TEST)
    res = project.runpytest("-m", "robustness", "-k", "no_such_test", "--cxr-models=phantom-clip",
                            "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.NO_TESTS_COLLECTED  # nothing ran, but the project does have the gate
    assert "cxr-robust init" not in res.stdout.str()
    res = project.runpytest("-m", "robustness", "--collect-only", "-q", "--cxr-models=phantom-clip",
                            "-p", "no:cacheprovider")
    assert "test_gate.py::test_gate[phantom-clip-grid]" in res.stdout.str()
    assert "cxr-robust init" not in res.stdout.str()


@pytest.mark.parametrize("markexpr, selected", [
    ("robustness", True), ("robustness and not slow", True), ("slow or robustness", True),
    ("not robustness", False), ("slow", False), ("robustness_extra", False), (None, False), ("", False),
])
def test_which_marker_expressions_ask_for_the_gate(markexpr: str | None, selected: bool) -> None:
    assert selects_gate(markexpr) is selected


def test_xdist_controller_hints_only_when_the_workers_collected_nothing(pytester: pytest.Pytester) -> None:
    """The controller collects nothing itself; it counts the workers' test ids (pytest_xdist_node_collection_finished)."""
    config = pytester.parseconfigure("-m", "robustness", "-p", "no:cacheprovider")
    assert not needs_hint(config)  # nothing reported yet: nothing known, nothing said
    note_worker_collection(config, [])
    note_worker_collection(config, [])
    assert needs_hint(config)
    note_worker_collection(config, ["test_a.py::test_a"])
    assert not needs_hint(config)
