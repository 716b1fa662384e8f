"""Every option is declared once (``cxr_robust/options.py``) and every front end is derived from it.

Before, options were listed four times (plugin, CLI, config, GateOptions) and had drifted: ``cxr-robust run``
rejected options its own errors recommended, help and code spelled the text policy differently, and several
pytest flags had no ``--cxr-`` prefix. These tests hold each front end to the declaration.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

# Loaded once at module level: pytester restores sys.modules after each test (see tests/test_plugin.py).
import torch  # noqa: F401

from cxr_robust.cli import _gate_options, build_parser
from cxr_robust.config import ENV_VARS, build_gate_options
from cxr_robust.gate import GateOptions
from cxr_robust.options import OPTIONS, for_front_end, markdown_table

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[1]

SAMPLES: dict[str, tuple[str, Any]] = {
    # field: (value as typed, value GateOptions holds)
    "models": ("phantom-clip,clip", ("phantom-clip", "clip")),
    "dataset": ("mimic", "mimic"),
    "phantom_studies": ("60", 60),
    "mimic_root": ("/m", "/m"),
    "mimic_reports": ("/r.zip", "/r.zip"),
    "mimic_split": ("test", "test"),
    "views": ("frontal", "frontal"),
    "manifest": ("/x.csv", "/x.csv"),
    "weights": ("clip=/w/ViT-B-32.pt", {"clip": "/w/ViT-B-32.pt"}),
    "weights_dir": ("/w", "/w"),
    "bert_vocab": ("/v", "/v"),
    "model_options": ("cxr-clip-swint:pre_resize=none", {"cxr-clip-swint": {"pre_resize": None}}),
    "text_policy": ("impression", "impression"),
    "perturbations": ("occlusion,gaussian_noise", ("occlusion", "gaussian_noise")),
    "severities": ("occlusion=0,25", "occlusion=0,25"),
    "ratios": ("0,25", (0.0, 0.25)),
    "ks": ("5,10", (5, 10)),
    "seed": ("3", 3),
    "reference_model": ("clip", "clip"),
    "metrics": ("recall,mrr", ("recall", "mrr")),
    "labeler": ("negbio", "negbio"),
    "label_match": ("jaccard>=0.5", "jaccard>=0.5"),
    "uncertain_labels": ("negative", "negative"),
    "negation": (None, True),
    "device": ("cpu", "cpu"),
    "precision": ("bf16", "bf16"),
    "draft_decode": (None, True),
    "engine": ("ray", "ray"),
    "ray_address": ("10.0.0.1:6379", "10.0.0.1:6379"),
    "batch_size": ("8", 8),
    "cache_dir": ("/c", "/c"),
    "on_bad_image": ("skip", "skip"),
    "refresh_cache": (None, True),
    "baselines": ("/b1.csv,/b2.csv", ("/b1.csv", "/b2.csv")),
    "baselines_dir": ("/bd", "/bd"),
    "compare_to": ("/ranks.npz", "/ranks.npz"),
    "alpha": ("0.01", 0.01),
    "allow_missing_baseline": (None, True),
    "require_all": (None, True),
    "update_baselines": (None, True),
    "report_dir": ("/out", "/out"),
}
"""One value per command-line option; ``None``: a switch."""


def test_every_gate_option_is_declared_once() -> None:
    declared = [o.field for o in OPTIONS]
    assert len(declared) == len(set(declared))
    assert set(declared) == {f.name for f in fields(GateOptions)}


def test_readme_option_table_equals_the_declaration() -> None:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- options-table:[^\n]*-->\n(.*?)<!-- /options-table -->", readme, re.S)
    assert found, "README.md lost its generated option table markers"
    assert found.group(1) == markdown_table(), "README's option table is stale: python -m cxr_robust.options"


def test_the_table_script_prints_the_table() -> None:
    out = subprocess.run([sys.executable, "-m", "cxr_robust.options"], capture_output=True, text=True, check=True)
    assert out.stdout == markdown_table()


def test_pytest_help_lists_every_option_under_the_cxr_robust_group(pytester: pytest.Pytester) -> None:
    res = pytester.runpytest_subprocess("--help")
    out = res.stdout.str()
    start = out.index("\ncxr-robust: ")  # the group heading README names
    group = out[start:out.index("\n\n", start + 1)]
    for option in for_front_end("pytest"):
        assert option.flag in group, option.flag
        assert not any(f"  {old}" in group.split() for old in option.deprecated_flags)  # old spellings hidden
    ini = out[out.index("[pytest] configuration options"):]
    for option in for_front_end("ini"):
        assert option.ini in ini, option.ini
    unprefixed = [line.split()[0] for line in group.splitlines()[1:]
                  if line.startswith("  --") and not line.split()[0].startswith("--cxr-")]
    assert unprefixed == [], unprefixed


def test_cli_run_accepts_both_spellings_of_every_option() -> None:
    parser = build_parser()
    for option in for_front_end("cli"):
        text, expected = SAMPLES[option.field]
        for flag in option.cli_flags:
            argv = ["run", "--no-pyproject", flag] + ([] if text is None else [text])
            args = parser.parse_args(argv)
            got = getattr(_gate_options(args), option.field)
            assert got == expected, (flag, got)


def test_pytest_and_cli_read_every_option_the_same(pytester: pytest.Pytester) -> None:
    parser = build_parser()
    for option in for_front_end("pytest"):
        text, expected = SAMPLES[option.field]
        flag = option.flag if text is None else f"{option.flag}={text}"
        config = pytester.parseconfig(flag, "-p", "no:cacheprovider")
        from cxr_robust.plugin import build_options

        got = getattr(build_options(config), option.field)
        cli = getattr(_gate_options(parser.parse_args(["run", "--no-pyproject", option.cli_flags[0]]
                                                      + ([] if text is None else [text]))), option.field)
        assert got == cli == expected, (option.field, got, cli)


def test_pyproject_and_ini_keys_and_env_vars_come_from_the_declaration(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.cxr_robust]\nks = [5]\nprecision = 'bf16'\n")
    options = build_gate_options(start=tmp_path, environ={"CXR_ROBUST_DEVICE": "cpu"})
    assert (options.ks, options.precision, options.device) == ((5,), "bf16", "cpu")
    assert ENV_VARS == {o.field: f"CXR_ROBUST_{o.field.upper()}" for o in for_front_end("env")}
    assert "update_baselines" not in {o.field for o in for_front_end("pyproject")}  # an action, not a setting


def test_old_pytest_spellings_still_work_and_warn(pytester: pytest.Pytester) -> None:
    from cxr_robust.plugin import build_options

    assert build_options(pytester.parseconfig("--phantom-studies=60", "-p", "no:cacheprovider")).phantom_studies == 60
    res = pytester.runpytest_subprocess("--collect-only", "--phantom-studies=120", "-p", "no:cacheprovider")
    res.stdout.fnmatch_lines(["*DeprecatedOptionWarning: cxr-robust: --phantom-studies is deprecated*write "
                              "--cxr-phantom-studies instead*"])
    both = pytester.parseconfig("--phantom-studies=60", "--cxr-phantom-studies=70", "-p", "no:cacheprovider")
    with pytest.raises(pytest.UsageError, match="--phantom-studies and --cxr-phantom-studies both given"):
        build_options(both)


def test_gate_options_built_in_code_check_the_text_policy() -> None:
    with pytest.raises(ValueError, match="text_policy must be one of findings\\+impression, impression, longest; "
                                         "got 'findings_impression'"):
        GateOptions(text_policy="findings_impression")
    assert GateOptions(text_policy=" Impression ").text_policy == "impression"


@pytest.mark.parametrize("doc", ["README.md", "docs/usage.md", "docs/models.md", "docs/nightly-ci.yml",
                                 "examples/custom_model/README.md"])
def test_docs_teach_the_prefixed_pytest_spellings(doc: str) -> None:
    """pytest command lines in the docs use ``--cxr-`` flags (the old ones warn)."""
    old = {flag for o in OPTIONS for flag in o.deprecated_flags}
    in_pytest = False
    for line in (ROOT / doc).read_text().splitlines():
        stripped = line.strip()
        in_pytest = "pytest " in stripped or (in_pytest and stripped.startswith("--"))
        if in_pytest and "cxr-robust " not in stripped:
            used = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", stripped))
            assert not used & old, f"{doc}: {stripped}"
        in_pytest = in_pytest and stripped.endswith("\\")
