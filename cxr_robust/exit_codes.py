"""Exit codes of the ``cxr-robust`` command, defined once (docs/usage.md's table is checked against this).

When several apply to one ``run``, the largest is returned: an error outranks an unavailable model, which
outranks a failed cell.
"""

from __future__ import annotations

import textwrap

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_ERROR = 4

MEANINGS: dict[int, str] = {
    EXIT_OK: "OK: every measured (or compared) cell passed",
    EXIT_FAILED: "a cell failed: regressed below its baseline, failed the chance check, or (`compare "
                 "--fail-on-regression`) is significantly worse in B",
    EXIT_USAGE: "usage error: a bad option value, a missing or unusable input or output path, data that cannot "
                "be loaded, runs that cannot be compared (checked before any model work where possible)",
    EXIT_UNAVAILABLE: "a model could not run here (weights or data absent): with `--cxr-require-all` any such model, "
                      "otherwise when no model could run at all",
    EXIT_ERROR: "a sweep errored at run time (model or data error)",
}
"""Exit code -> one-line meaning."""

SUMMARY: dict[int, str] = {
    EXIT_OK: "all measured cells passed",
    EXIT_FAILED: "cells failed",
    EXIT_USAGE: "usage error",
    EXIT_UNAVAILABLE: "a required model could not run, or none could",
    EXIT_ERROR: "a sweep errored",
}
"""Exit code -> the few words ``cxr-robust run`` prints on its last line (``exit N: ...``)."""


def markdown_table() -> str:
    """The exit-code table as it appears in docs/usage.md (one row per code)."""
    rows = ["| exit code | meaning |", "|---|---|"]
    rows += [f"| {code} | {meaning} |" for code, meaning in sorted(MEANINGS.items())]
    return "\n".join(rows)


def help_text(width: int = 100) -> str:
    """The exit-code list for ``--help`` epilogs, wrapped to ``width`` (argparse's raw formatter keeps lines)."""
    return "exit codes (the largest applies):\n" + "\n".join(
        textwrap.fill(meaning.replace("`", ""), width, initial_indent=f"  {code}  ", subsequent_indent="     ",
                      break_on_hyphens=False)
        for code, meaning in sorted(MEANINGS.items()))
