"""The plugin's hint for a project that asks for the gate but has no gate test.

A project that installs cxr-robust gets the plugin, not tests: ``pytest -m robustness`` there collects
nothing and pytest says only "collected 0 items" (or "no tests ran"). When the ``-m`` expression selects the
``robustness`` marker and no collected test takes the ``gate_cell`` fixture, the terminal summary says what to
do instead. The hook functions that call this module are at the end of :mod:`cxr_robust.plugin` (pytest
allows one function per hook name in a plugin module, so they carry other names and ``specname``).

Under pytest-xdist the controller collects nothing itself: it hints only when the workers collected no test
at all (it cannot see their fixtures).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import pytest

__all__ = ["HINT", "count_gate_tests", "note_worker_collection", "selects_gate", "write_hint"]

HINT = ("no cxr-robust gate test was collected: run `cxr-robust init` to scaffold one, or see docs/usage.md "
        "of cxr-robust (\"Getting started\")")

_GATE_TESTS: "pytest.StashKey[int]" = pytest.StashKey()
"""Tests taking ``gate_cell`` among everything collected, before ``-m``/``-k`` deselected any."""
_WORKER_TESTS: "pytest.StashKey[int]" = pytest.StashKey()
"""xdist controller: tests the workers collected (any kind)."""


def selects_gate(markexpr: str | None) -> bool:
    """True when ``-m markexpr`` would select a test marked only ``robustness`` (a gate cell).

    ``-m robustness`` and ``-m "robustness and not slow"`` do; ``-m "not robustness"`` and ``-m slow`` do not.
    """
    if not markexpr or not re.search(r"\brobustness\b", markexpr):
        return False
    try:  # pytest's own evaluator: exactly how -m reads the expression
        from _pytest.mark.expression import Expression

        return bool(Expression.compile(markexpr).evaluate(lambda name, **kwargs: name == "robustness"))
    except Exception:  # noqa: BLE001 - private API changed, or an expression pytest will itself reject
        return not re.search(r"\bnot\s+robustness\b", markexpr)


def count_gate_tests(config: pytest.Config, items: Iterable[Any]) -> None:
    """Record how many collected tests take the ``gate_cell`` fixture (call before deselection)."""
    config.stash[_GATE_TESTS] = sum("gate_cell" in getattr(item, "fixturenames", ()) for item in items)


def note_worker_collection(config: pytest.Config, ids: Iterable[str]) -> None:
    """xdist controller: add a worker's collected test ids to the count."""
    config.stash[_WORKER_TESTS] = config.stash.get(_WORKER_TESTS, 0) + len(list(ids))


def needs_hint(config: pytest.Config) -> bool:
    """The run asked for the gate (``-m``) and no gate test was collected."""
    if hasattr(config, "workerinput") or not selects_gate(config.getoption("markexpr", None)):
        return False
    gate = config.stash.get(_GATE_TESTS, None)
    if gate is not None:
        return gate == 0
    # This process collected nothing itself (an xdist controller): hint only if the workers found no test.
    return config.stash.get(_WORKER_TESTS, None) == 0


def write_hint(terminalreporter: Any, config: pytest.Config) -> None:
    """The hint as a ``cxr-robust`` section of the terminal summary, when :func:`needs_hint`."""
    if needs_hint(config):
        terminalreporter.section("cxr-robust")
        terminalreporter.write_line(HINT, yellow=True, bold=True)
