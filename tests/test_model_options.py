"""Model options (``--cxr-model-option MODEL:KEY=VALUE``, ``[tool.cxr_robust.model_options]``): parsing,
merging across layers, and refusal of anything that would not reach a model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_robust.config import ConfigError, build_gate_options
from cxr_robust.models.options import ModelOptionError, accepted, check_model_options, parse_item, parse_value

pytestmark = pytest.mark.usefixtures("clean_cxr_env")


@pytest.mark.parametrize("text, value", [("none", None), ("Off", None), ("512", 512), ("0.5", 0.5),
                                         ("true", True), ("no", False), ("bicubic", "bicubic")])
def test_values_are_typed(text: str, value: object) -> None:
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_items_name_model_key_and_value() -> None:
    assert parse_item("cxr-clip-swint:pre_resize=none") == ("cxr-clip-swint", "pre_resize", None)
    # an ad-hoc model is itself "module:factory": the key follows the last colon
    assert parse_item("mypkg.models:build:scale=2") == ("mypkg.models:build", "scale", 2)
    for bad in ("cxr-clip-swint=3", "pre_resize=3", ":pre_resize=3", "cxr-clip-swint:pre_resize"):
        with pytest.raises(ValueError, match="MODEL:KEY=VALUE"):
            parse_item(bad)


def test_declared_options_need_no_import_and_named_parameters_are_found() -> None:
    assert accepted("cxr-clip-swint") == {"pre_resize": 512}
    assert accepted("cxr-clip-r50") == {"pre_resize": 512}
    # the demo's factory takes **kwargs and ignores them: nothing is accepted, so nothing looks set in vain
    assert accepted("phantom-clip") == {}


def test_unknown_keys_models_and_reserved_keys_are_refused_naming_what_exists() -> None:
    with pytest.raises(ModelOptionError, match=r"no option 'pre_rsize'; its options: pre_resize \(default 512\)"):
        check_model_options("cxr-clip-swint", {"pre_rsize": None})
    with pytest.raises(ModelOptionError, match="did you mean 'cxr-clip-swint'"):
        check_model_options("cxr-clip-swnt", {"pre_resize": None})
    with pytest.raises(ModelOptionError, match="no option 'weights'"):  # weights have their own option
        check_model_options("cxr-clip-swint", {"weights": "x.tar"})
    with pytest.raises(ModelOptionError, match="phantom-clip.*its options: none"):
        check_model_options("phantom-clip", {"scale": 2})
    assert check_model_options("cxr-clip-r50", {"pre_resize": None}) == {"pre_resize": None}


def test_layers_merge_per_model_and_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.cxr_robust.model_options]\n"
        "cxr-clip-swint = { pre_resize = 384 }\n"
        "cxr-clip-r50 = { pre_resize = 640 }\n")
    options = build_gate_options(cli={"model_options": ["cxr-clip-swint:pre_resize=none"]}, start=tmp_path,
                                 environ={})
    assert options.model_options == {"cxr-clip-swint": {"pre_resize": None}, "cxr-clip-r50": {"pre_resize": 640}}


@pytest.mark.parametrize("layer", ["cli", "pyproject"])
def test_a_typo_fails_before_anything_runs(layer: str, tmp_path: Path) -> None:
    cli = {"model_options": ["cxr-clip-swint:pre_rsize=none"]} if layer == "cli" else {}
    if layer == "pyproject":
        (tmp_path / "pyproject.toml").write_text("[tool.cxr_robust.model_options]\n"
                                                 "cxr-clip-swint = { pre_rsize = 384 }\n")
    with pytest.raises(ConfigError, match="no option 'pre_rsize'"):
        build_gate_options(cli=cli, start=tmp_path, environ={})


def test_a_pyproject_value_that_is_not_a_table_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.cxr_robust.model_options]\ncxr-clip-swint = 384\n")
    with pytest.raises(ConfigError, match=r"model_options.cxr-clip-swint must be a table"):
        build_gate_options(start=tmp_path, environ={})


def test_models_listing_shows_each_models_options_as_this_run_would_build_it() -> None:
    out = subprocess.run([sys.executable, "-m", "cxr_robust.cli", "models", "--json", "--model-option",
                          "cxr-clip-r50:pre_resize=none"], capture_output=True, text=True, check=True).stdout
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["cxr-clip-r50"]["options"] == {"pre_resize": None}
    assert rows["cxr-clip-swint"]["options"] == {"pre_resize": 512}
    assert rows["clip"]["options"] == {}
