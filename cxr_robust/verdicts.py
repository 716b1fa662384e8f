"""Every verdict of the gate, decided in one place: the pytest plugin, the CLI and the report call these.

They read the JSON form of a run (``results.json``: cells and grid tests as dicts, the run's config), so a
re-rendered report says exactly what the run said. Nothing here imports torch or pytest.

A cell (or a model's grid test) is in exactly one state:

* ``pass``: compared with its baseline and not significantly worse; not below chance;
* ``fail``: significantly worse than its baseline, or clearly below chance;
* ``missing``: it has no baseline, which is a failure (a gate that compares nothing must not go green);
* ``not-compared``: it has no baseline and the run allowed that (``--cxr-allow-missing-baseline``);
* ``recorded``: a ``--cxr-update-baselines`` run measured it for the record (the chance test still applies).

A model's negation test (``--cxr-negation``; :mod:`cxr_robust.hard_negatives`) takes the same states: ``fail``
when its confusion rate is not clearly below 50 % (in any run, as the chance test) or is significantly worse
than the recorded run, ``missing`` / ``not-compared`` without a recording, ``recorded``, else ``pass``.
"""

from __future__ import annotations

from typing import Any, Mapping

PASS, FAIL, MISSING, NOT_COMPARED, RECORDED = "pass", "fail", "missing", "not-compared", "recorded"
FAILING_STATES = (FAIL, MISSING)
STATE_LABELS = {PASS: "pass", FAIL: "FAIL", MISSING: "FAIL: no baseline", NOT_COMPARED: "NOT COMPARED",
                RECORDED: "recorded"}

RUN_PASS, RUN_FAIL, RUN_NOT_COMPARED, RUN_NOTHING, RUN_RECORDED = (
    "PASS", "FAIL", "NOT COMPARED", "NOTHING MEASURED", "RECORDED")


def chance_state(cell: Mapping[str, Any]) -> str:
    """The chance check alone: ``fail`` when the cell is clearly below chance (k/N), else ``pass``."""
    return FAIL if cell.get("chance_passed") is False else PASS


def baseline_state(cell: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The baseline check alone: ``recorded`` in a baseline-recording run, ``missing``/``not-compared`` without
    a baseline, else ``pass`` or ``fail`` as the cell's test decided."""
    if config.get("update_baselines"):
        return RECORDED
    if cell.get("baseline") is None:
        return NOT_COMPARED if config.get("allow_missing_baseline") else MISSING
    return PASS if cell.get("passed") is True else FAIL


def cell_state(cell: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The state of one cell (or grid test) dict under the run's ``config``: the one place a cell's fate is
    decided (the pytest cases run the two checks above separately; a cell fails if either fails)."""
    if chance_state(cell) == FAIL:
        return FAIL
    return baseline_state(cell, config)


def negation_state(negation: Any, config: Mapping[str, Any]) -> str | None:
    """The state of a model's negation test dict, or None when it was not measured."""
    if not isinstance(negation, Mapping):
        return None
    if negation.get("below_half") is not True:  # blind to negation (or no twin to measure): never a pass
        return FAIL
    if config.get("update_baselines"):
        return RECORDED
    if negation.get("passed") is None:
        return NOT_COMPARED if config.get("allow_missing_baseline") else MISSING
    return PASS if negation.get("passed") is True else FAIL


def grid_fails(grid: Any, config: Mapping[str, Any]) -> bool:
    """Whether a model's grid test fails the model. A grid without a baseline is not a failure of its own:
    its cells already fail as missing (or are NOT COMPARED when that was allowed)."""
    return isinstance(grid, Mapping) and cell_state(grid, config) == FAIL


def model_tally(model: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, int]:
    """Counts of a measured model's cells by state (grid test included under ``grid_*``)."""
    cells = [c for c in model.get("cells") or [] if isinstance(c, Mapping)]
    states = [cell_state(c, config) for c in cells]
    grid = model.get("grid")
    grid_failed = grid_fails(grid, config)
    compared = sum(s in (PASS, FAIL) and c.get("baseline") is not None for s, c in zip(states, cells))
    return {"cells": len(cells), "compared": compared, "passed": states.count(PASS),
            "failed": states.count(FAIL), "missing": states.count(MISSING),
            "not_compared": states.count(NOT_COMPARED), "recorded": states.count(RECORDED),
            "chance_failed": sum(1 for c in cells if c.get("chance_passed") is False),
            "grid_failed": int(grid_failed), "negation": negation_state(model.get("negation"), config)}


def model_verdict(model: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """``PASS``/``FAIL``/``NOT COMPARED``/``RECORDED`` for a measured model, ``FAIL`` for an errored one,
    ``FAIL`` for a skipped one under ``require_all`` and ``NOTHING MEASURED`` for a skipped one otherwise."""
    status = model.get("status")
    if status == "error":
        return RUN_FAIL
    if status != "measured":
        return RUN_FAIL if config.get("require_all") else RUN_NOTHING
    t = model_tally(model, config)
    if t["failed"] or t["missing"] or t["grid_failed"] or t["negation"] in FAILING_STATES:
        return RUN_FAIL
    if t["recorded"] or t["negation"] == RECORDED:
        return RUN_RECORDED
    if t["not_compared"] or t["negation"] == NOT_COMPARED:
        return RUN_NOT_COMPARED
    return RUN_PASS


def run_verdict(doc: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The run's verdict and one line per model that explains it.

    ``FAIL`` if any model fails; else ``NOT COMPARED`` if any measured cell was not compared (never shown as
    a pass); else ``RECORDED`` for a baseline-recording run; else ``PASS`` if at least one model was
    measured; else ``NOTHING MEASURED``.
    """
    config = doc.get("config") if isinstance(doc.get("config"), Mapping) else {}
    models = [m for m in doc.get("models") or [] if isinstance(m, Mapping)]
    why: list[str] = []
    verdicts = []
    for m in models:
        name, verdict = m.get("model", "?"), model_verdict(m, config)
        verdicts.append(verdict)
        if m.get("status") == "error":
            why.append(f"{name}: error while running (every cell of it fails)")
        elif m.get("status") == "measured":
            t = model_tally(m, config)
            if t["failed"]:
                why.append(f"{name}: {t['failed']} of {t['cells']} cells failing")
            if t["grid_failed"]:
                why.append(f"{name}: the grid as a whole is significantly worse than its baseline")
            if t["missing"]:
                why.append(f"{name}: {t['missing']} cells have no baseline (a failure; record one with "
                           "--cxr-update-baselines, or pass --cxr-allow-missing-baseline to report them as NOT COMPARED)")
            if t["not_compared"]:
                why.append(f"{name}: {t['not_compared']} cells NOT COMPARED (no baseline; "
                           "--cxr-allow-missing-baseline)")
            why.extend(_negation_reason(name, m.get("negation"), t["negation"]))
        else:
            why.append(f"{name}: skipped" + (" — a failure under require_all" if config.get("require_all") else ""))
    for verdict in (RUN_FAIL, RUN_NOT_COMPARED, RUN_RECORDED, RUN_PASS):
        if verdict in verdicts:
            return verdict, why
    return RUN_NOTHING, why or ["no model was configured"]


def _negation_reason(name: str, negation: Any, state: str | None) -> list[str]:
    """The line explaining a failing or uncompared negation test (none when it passed or was not measured)."""
    if state is None or state in (PASS, RECORDED) and negation.get("below_half"):
        return []
    if negation.get("below_half") is not True:
        if not negation.get("n_queries"):
            return [f"{name}: negation test measured nothing (no study has a negated twin)"]
        return [f"{name}: blind to negation: its twin outranks the true report for "
                f"{100 * negation['rate']:.1f}% of queries (95% CI up to {100 * negation['ci_high']:.1f}%), not "
                "clearly below 50%"]
    if state == FAIL:
        return [f"{name}: negation confusion rate {100 * negation['rate']:.1f}% is significantly worse than the "
                f"recorded {100 * negation['baseline']:.1f}%"]
    if state == MISSING:
        return [f"{name}: the negation test has no recorded run to compare with (a failure; record one with "
                "--cxr-update-baselines --cxr-negation)"]
    return [f"{name}: the negation test was NOT COMPARED (no recorded run; --cxr-allow-missing-baseline)"]


def annotate(doc: dict[str, Any]) -> dict[str, Any]:
    """Write each cell's, grid's and model's state and the run's verdict into ``doc`` (in place), so
    ``results.json`` says what the gate decided and the report only displays it."""
    config = doc.get("config") if isinstance(doc.get("config"), Mapping) else {}
    for m in doc.get("models") or []:
        if not isinstance(m, dict):
            continue
        for cell in m.get("cells") or []:
            if isinstance(cell, dict):
                cell["state"] = cell_state(cell, config)
        grid = m.get("grid")
        if isinstance(grid, dict):
            grid["state"] = cell_state(grid, config)
        if isinstance(m.get("negation"), dict):
            m["negation"]["state"] = negation_state(m["negation"], config)
        m["verdict"] = model_verdict(m, config)
        if m.get("status") == "measured":
            m["tally"] = model_tally(m, config)
    doc["verdict"], doc["verdict_reasons"] = run_verdict(doc)
    return doc
