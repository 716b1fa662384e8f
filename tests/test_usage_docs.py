"""docs/usage.md and docs/models.md say what the code does: every option they name exists where they use it,
every `cxr-robust` example parses, the offline examples run, and their tables match the code they describe.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_robust.cli import EXIT_FAILED, EXIT_OK, build_parser, main
from cxr_robust.config import ENV_VARS
from cxr_robust.data.manifest import load_manifest
from cxr_robust.gate import GateOptions, GateUsageError, baseline_row_rule
from cxr_robust.models import available, get_spec
from tests.conftest import CXR_ENV_VARS

ROOT = Path(__file__).resolve().parents[1]
USAGE = ROOT / "docs" / "usage.md"
DOCS = [USAGE, ROOT / "docs" / "models.md"]
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")

pytestmark = pytest.mark.usefixtures("clean_cxr_env")  # tests/conftest.py


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.fixture(scope="module")
def pytest_flags(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every long flag `pytest --help` shows in a project that only installs cxr-robust (hidden aliases are not)."""
    folder = tmp_path_factory.mktemp("help-project")
    (folder / "pyproject.toml").write_text('[project]\nname = "x"\n')
    env = {k: v for k, v in os.environ.items() if k not in CXR_ENV_VARS and k != "PYTEST_ADDOPTS"}
    out = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=folder, env=env,
                         capture_output=True, text=True, timeout=120).stdout
    flags = set(re.findall(r"^\s+(--[a-z][a-z0-9-]*)", out, re.M)) | set(re.findall(r", (--[a-z][a-z0-9-]*)", out))
    assert "--cxr-models" in flags and "--cxr-phantom-studies" in flags, out[-2000:]
    return flags


def _segments(text: str, inline: bool = True) -> list[str]:
    """Command lines of ```bash blocks (continuations joined) and, with ``inline``, every inline code span."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        out += [line.strip() for line in block.replace("\\\n", " ").splitlines()
                if line.strip() and not line.strip().startswith("#")]
    if inline:
        out += re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_option_the_docs_name_exists_where_they_use_it(doc: Path, pytest_flags: set[str]) -> None:
    commands = _subcommands()
    cli = {name: {s for a in p._actions for s in a.option_strings} for name, p in commands.items()}
    every_cli = set().union(*cli.values())
    problems = []
    for segment in _segments(doc.read_text(encoding="utf-8")):
        flags = FLAG.findall(segment)
        words = segment.split()
        # a command line: `CUDA_VISIBLE_DEVICES=2,3 pytest ...` is a pytest command too
        program = next((w for w in words if "=" not in w), "")
        if program == "pytest":
            known, where = pytest_flags, "pytest --help"
        elif program == "cxr-robust" and len(words) > 1 and words[1] in cli:
            known, where = cli[words[1]] | {"--help", "--version", "-v"}, f"cxr-robust {words[1]} --help"
        else:  # prose: the flag must exist somewhere
            known, where = pytest_flags | every_cli, "pytest --help or any cxr-robust command"
        problems += [f"{flag!r} in `{segment}` is not in {where}" for flag in flags if flag not in known]
    assert not problems, "\n".join(problems)


def test_every_cxr_robust_example_parses() -> None:
    parser = build_parser()
    lines = [s for s in _segments(USAGE.read_text(encoding="utf-8"), inline=False) if s.startswith("cxr-robust ")]
    assert len(lines) >= 8, lines
    for line in lines:
        try:
            parser.parse_args(shlex.split(line, comments=True)[1:])
        except SystemExit as exc:  # argparse refuses with exit 2
            pytest.fail(f"docs/usage.md example does not parse ({exc.code}): {line}")


def test_the_commands_table_lists_every_subcommand() -> None:
    text = USAGE.read_text(encoding="utf-8")
    section = text[text.index("## The `cxr-robust` command"):text.index("### Exit codes")]
    listed = {m.split()[0] for m in re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)}
    assert listed == set(_subcommands())


@pytest.mark.slow  # three sweeps of a 120-study phantom set (the first one cold unless the suite shares its cache)
def test_quick_run_example_fails_without_baseline_then_records_and_passes(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> None:
    """The "quick run" pair of docs/usage.md, run in an empty project folder (outputs and cache in tmp dirs)."""
    runs = [shlex.split(s)[1:] for s in _segments(USAGE.read_text(encoding="utf-8"))
            if s.startswith("cxr-robust run --models phantom-clip --phantom-studies 120 --ratios 0,25,81")]
    record, gate = runs
    assert record == [*gate, "--update-baselines"]
    extra = ["--project", str(tmp_path), "--out", str(tmp_path / "out"),
             "--cache-dir", str(tmp_path_factory.getbasetemp() / "shared-embedding-cache")]
    assert main([*gate, *extra]) == EXIT_FAILED  # as documented: nothing recorded yet, nothing compared
    assert "6 without baseline" in capsys.readouterr().out
    assert main([*record, *extra]) == EXIT_OK
    assert (tmp_path / "baselines" / "phantom-clip__phantom-eval-s0-n120.csv").is_file()
    capsys.readouterr()
    assert main([*gate, *extra]) == EXIT_OK
    assert "phantom-clip: 6 cells, 0 failing, 0 without baseline" in capsys.readouterr().out


def _csv_blocks() -> list[str]:
    return re.findall(r"```csv\n(.*?)```", USAGE.read_text(encoding="utf-8"), flags=re.S)


def test_manifest_examples_load_as_described(tmp_path: Path) -> None:
    report_form, section_form = _csv_blocks()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m.csv").write_text(report_form)
    for rel in re.findall(r"^(images/\S+?\.png),", report_form, flags=re.M):
        (tmp_path / "a" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8), mode="L").save(tmp_path / "a" / rel)
    rs = load_manifest(tmp_path / "a" / "m.csv")
    assert (rs.num_studies, rs.num_images) == (2, 3)  # "two studies ... and three images"
    assert rs.views == ["PA", "LATERAL", "AP"] and rs.findings == ["", ""]  # `report` becomes the impression
    assert rs.image_paths[0] == (tmp_path / "a" / "images" / "s0001" / "frontal.png").resolve()

    absolute = tmp_path / "cxr"
    absolute.mkdir()
    for name in ("0001.jpg", "0002.jpg"):
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8), mode="L").save(absolute / name)
    (tmp_path / "b.csv").write_text(section_form.replace("/data/cxr/", f"{absolute}/"))
    rs = load_manifest(tmp_path / "b.csv")
    assert rs.image_ids == ["0001", "0002"] and rs.texts("impression") == ["No acute cardiopulmonary process.", ""]
    assert rs.texts("findings+impression")[1] == "Small left pleural effusion."


def test_the_small_data_set_message_quoted_in_the_docs_is_the_gates() -> None:
    text = " ".join(USAGE.read_text(encoding="utf-8").split())
    quoted = re.search(r"for example `(--cxr-ks 50,100: dataset manifest-m [^`]+)`", text).group(1)
    with pytest.raises(GateUsageError) as info:
        GateOptions().check_grid(40, "manifest-m")
    assert quoted == str(info.value)


def test_environment_variable_table_matches_the_configuration() -> None:
    text = USAGE.read_text(encoding="utf-8")
    table = text[text.index("| environment variable | option |"):]
    table = table[:table.index("\n\n")]
    documented = {}
    for variables, fields in re.findall(r"^\| (`CXR_ROBUST_[A-Z_]+`(?:, `CXR_ROBUST_[A-Z_]+`)*) \| ([^|]+) \|",
                                        table, flags=re.M):
        for var, field in zip(re.findall(r"`(\w+)`", variables), re.findall(r"`(\w+)`", fields)):
            documented[field] = var
    assert documented == ENV_VARS


def test_models_md_weights_table_matches_the_registry() -> None:
    text = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    rows = {m[0]: m[1:] for m in re.findall(r"^\| `([\w-]+)` \| (.+?) \| `(\w+)` \|$", text, flags=re.M)}
    assert set(rows) == {n for n in available() if not get_spec(n).builtin_weights}
    for name, (files, env) in rows.items():
        spec = get_spec(name)
        assert re.findall(r"`([^`]+)`", files) == list(spec.weight_files) and env == spec.weights_env, name


def test_baseline_row_rule_is_the_documented_one() -> None:
    """docs/usage.md: the registry entry's declared row, else the model's name (an ad-hoc target as written)."""
    assert baseline_row_rule("clip")[0] == "CLIP"  # declared
    assert baseline_row_rule("cxr-clip-r50")[0] == "cxr-clip-r50"  # registered, nothing declared
    assert baseline_row_rule("my_model:build")[0] == "my_model:build"  # ad hoc
    assert "a model built on the demo model's adapter is not compared with `phantom-clip`'s baseline" in \
        " ".join(USAGE.read_text(encoding="utf-8").split())


def test_getting_started_shows_the_commands_init_prints() -> None:
    from cxr_robust.scaffold import commands

    segments = _segments(USAGE.read_text(encoding="utf-8"), inline=False)
    assert " ".join(commands()["demo"]) in segments
