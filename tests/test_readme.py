"""README stays true: its two set-up commands exist and CI runs exactly the test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [c.strip() for c in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_has_the_two_setup_commands() -> None:
    commands = _commands()
    main_job = [c for c in commands if c.endswith("pytest -m robustness")]
    tests = [c for c in commands if c.endswith("&& pytest")]
    assert len(main_job) == 1 and len(tests) == 1, commands
    assert main_job[0].startswith("python3 -m venv .venv") and 'pip install -e ".[dev]"' in main_job[0]


def test_ci_runs_the_readme_test_command() -> None:
    readme_test = next(c for c in _commands() if c.endswith("&& pytest"))
    test_command = readme_test.rsplit("&&", 1)[1].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1].strip() == test_command
    assert any('pip install --quiet -e ".[dev]"' in line for line in ci)
    assert "set -euo pipefail" in ci
