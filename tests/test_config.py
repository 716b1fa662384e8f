"""Configuration layers: parsing what people write, pyproject lookup, and the documented precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_robust import PAPER_KS, PAPER_RATIOS
from cxr_robust.config import (ENV_VARS, ConfigError, build_gate_options, find_pyproject, load_pyproject_config,
                               merge_options, options_from_env, parse_layer)
from cxr_robust.gate import GateOptions

PYPROJECT = """\
[project]
name = "my-models"

[tool.cxr_robust]
models = ["phantom-clip", "clip"]
dataset = "mimic"
mimic_root = "data/mimic"
weights_dir = "~/weights"
bert_vocab = "/abs/vocab"
ratios = [0, 0.25, 25]
ks = [5, 10]
seed = 3
alpha = 0.01
cache_dir = "cache"
report_dir = "reports/robustness"
phantom_studies = 120
weights = { clip = "w/ViT-B-32.pt", cxr-repair = "/abs/repair.pt" }
"""


def write_pyproject(folder: Path, text: str = PYPROJECT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ----- parse_layer ---------------------------------------------------------------------------------------------
def test_parse_layer_converts_what_people_write() -> None:
    layer = parse_layer({"models": "a, b,", "ratios": "0,0.25,81", "ks": [5, "10"], "seed": "7", "alpha": "0.1",
                         "phantom_studies": 60.0, "require_all": "yes", "weights": ["clip=/w/a.pt", "x=y"],
                         "baselines": "b1.csv,b2.csv", "dataset": " phantom ", "device": None, "views": ""},
                        "test")
    assert layer == {"models": ("a", "b"), "ratios": (0.0, 0.0025, 0.81), "ks": (5, 10), "seed": 7, "alpha": 0.1,
                     "phantom_studies": 60, "require_all": True, "weights": {"clip": "/w/a.pt", "x": "y"},
                     "baselines": ("b1.csv", "b2.csv"), "dataset": "phantom"}


@pytest.mark.parametrize(("raw", "message"), [
    ({"ratio": [0, 1]}, "unknown key 'ratio'; did you mean ratios"),
    ({"nonsense": 1}, "unknown key 'nonsense'; known keys: models"),
    ({"ratios": [0, 100]}, "ratios are occluded area in percent, in [0, 100); got [100.0]"),
    ({"ratios": "0,abc"}, "ratios must be a number, got 'abc'"),
    ({"ks": [0, 5]}, "ks must be positive integers"),
    ({"seed": True}, "seed must be a number, got True"),
    ({"seed": 1.5}, "seed must be an integer, got 1.5"),
    ({"weights": ["clip"]}, "weights expects MODEL=PATH, got 'clip'"),
    ({"models": 3}, "models must be a list or a comma-separated string"),
    ({"require_all": "maybe"}, "require_all must be true or false"),
    ({"dataset": ["mimic"]}, "dataset must be one of phantom, mimic, manifest; got ['mimic']"),
    ({"seed": -1}, "seed must be a non-negative integer, got -1"),
    ({"data_seed": "-2"}, "data_seed must be a non-negative integer, got -2"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"phantom_studies": "0"}, "phantom_studies must be an integer >= 1, got 0"),
    ({"alpha": 5}, "alpha must be in (0, 1), e.g. 0.05; got 5"),
    ({"alpha": "0"}, "alpha must be in (0, 1)"),
    ({"alpha": "nan"}, "alpha must be in (0, 1)"),
    ({"text_policy": "findings_impression"},
     "text_policy must be one of findings+impression, impression, longest; got 'findings_impression'"),
])
def test_parse_layer_errors_name_source_and_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="^where: ") as info:
        parse_layer(raw, "where")
    assert message in str(info.value)


def test_parse_layer_names_options_as_the_source_spells_them() -> None:
    labels = {"seed": "--seed", "ratios": "--ratios", "weights": "--weights", "alpha": "--alpha"}
    for raw, message in (({"seed": "-1"}, "command line: --seed must be a non-negative integer, got -1"),
                         ({"ratios": "0,120"}, "command line: --ratios are occluded area in percent"),
                         ({"weights": ["clip"]}, "command line: --weights expects MODEL=PATH"),
                         ({"alpha": "1.5"}, "command line: --alpha must be in (0, 1)")):
        with pytest.raises(ConfigError) as info:
            parse_layer(raw, "command line", labels=labels)
        assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(ConfigError, match="^command line: --seed must be"):
        build_gate_options(cli={"seed": "-1"}, environ={}, use_pyproject=False, cli_labels=labels)
    # values at the edge of the range are accepted, and text policies are normalised
    assert parse_layer({"seed": 0, "batch_size": 1, "phantom_studies": 1, "alpha": "0.999",
                        "text_policy": "LONGEST"}, "x") == {"seed": 0, "batch_size": 1, "phantom_studies": 1,
                                                              "alpha": 0.999, "text_policy": "longest"}


# ----- pyproject -------------------------------------------------------------------------------------------------
def test_pyproject_table_is_typed_and_paths_resolve_against_the_file(tmp_path: Path) -> None:
    write_pyproject(tmp_path / "proj")
    (tmp_path / "proj" / "src" / "pkg").mkdir(parents=True)
    layer = load_pyproject_config(tmp_path / "proj" / "src" / "pkg")  # found by walking up
    root = tmp_path / "proj"
    assert layer["models"] == ("phantom-clip", "clip")
    assert layer["ratios"] == (0.0, 0.0025, 0.25) and layer["ks"] == (5, 10)
    assert layer["seed"] == 3 and layer["alpha"] == 0.01 and layer["phantom_studies"] == 120
    assert layer["mimic_root"] == str(root / "data/mimic")
    assert layer["cache_dir"] == str(root / "cache") and layer["report_dir"] == str(root / "reports/robustness")
    assert layer["weights_dir"] == str(Path("~/weights").expanduser())  # ~ expands, then is absolute
    assert layer["bert_vocab"] == "/abs/vocab"
    assert layer["weights"] == {"clip": str(root / "w/ViT-B-32.pt"), "cxr-repair": "/abs/repair.pt"}


def test_nearest_pyproject_wins_even_without_the_table(tmp_path: Path) -> None:
    write_pyproject(tmp_path)
    inner = write_pyproject(tmp_path / "sub", "[project]\nname = 'inner'\n")
    assert find_pyproject(tmp_path / "sub") == inner
    assert load_pyproject_config(tmp_path / "sub") == {}
    assert find_pyproject(inner) == inner  # a file as start point: its folder


def test_pyproject_errors(tmp_path: Path) -> None:
    write_pyproject(tmp_path / "bad", "[tool.cxr_robust\n")
    with pytest.raises(ConfigError, match="pyproject.toml: not valid TOML"):
        load_pyproject_config(tmp_path / "bad")
    write_pyproject(tmp_path / "typo", "[tool.cxr_robust]\nmodel = 'clip'\n")
    with pytest.raises(ConfigError, match=r"pyproject.toml \[tool.cxr_robust\]: unknown key 'model'; did you mean "
                                          "models"):
        load_pyproject_config(tmp_path / "typo")
    write_pyproject(tmp_path / "rec", "[tool.cxr_robust]\nupdate_baselines = true\n")
    with pytest.raises(ConfigError, match="update_baselines is an action, not a setting"):
        load_pyproject_config(tmp_path / "rec")


# ----- environment -------------------------------------------------------------------------------------------------
def test_environment_layer() -> None:
    env = {ENV_VARS["models"]: "clip,medclip-vit", ENV_VARS["dataset"]: "mimic", ENV_VARS["mimic_root"]: "/m",
           ENV_VARS["weights_dir"]: "/w", ENV_VARS["cache_dir"]: "", "UNRELATED": "x"}
    assert options_from_env(env) == {"models": ("clip", "medclip-vit"), "dataset": "mimic", "mimic_root": "/m",
                                     "weights_dir": "/w"}
    assert options_from_env({}) == {}


# ----- merging and precedence ---------------------------------------------------------------------------------------
def test_merge_later_layers_win_and_weights_merge_per_model() -> None:
    opts = merge_options({"seed": 1, "weights": {"clip": "/base"}},
                         {"seed": 2, "weights": {"clip": "/env", "medclip-vit": "/m"}, "alpha": None},
                         {"weights": {"clip": "/cli"}})
    assert isinstance(opts, GateOptions)
    assert opts.seed == 2 and opts.alpha == 0.05
    assert opts.weights == {"clip": "/cli", "medclip-vit": "/m"}
    assert opts.ratios == PAPER_RATIOS and opts.ks == PAPER_KS  # untouched fields keep their defaults


def test_merge_rejects_invalid_results() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        merge_options({}, {"dataset": "imagenet"})
    with pytest.raises(ConfigError, match="alpha must be in"):
        merge_options({}, {"alpha": 2.0})
    with pytest.raises(ConfigError, match="unknown GateOptions field 'colour'"):
        merge_options({"colour": "red"})


def test_precedence_cli_over_ini_over_pyproject_over_env_over_defaults(tmp_path: Path) -> None:
    write_pyproject(tmp_path, "[tool.cxr_robust]\nseed = 3\nks = [5]\nalpha = 0.01\nmimic_root = '/py'\n"
                              "weights = { clip = '/py/clip.pt' }\n")
    env = {ENV_VARS["mimic_root"]: "/env", ENV_VARS["weights_dir"]: "/env-w", ENV_VARS["device"]: "cpu"}
    opts = build_gate_options(cli={"seed": "9", "weights": ["medclip-vit=/cli/m.zip"]},
                              ini={"seed": "5", "ks": "10,20"}, start=tmp_path, environ=env)
    assert opts.seed == 9                    # command line beats ini and pyproject
    assert opts.ks == (10, 20)               # ini beats pyproject
    assert opts.alpha == 0.01                # pyproject beats the default
    assert opts.mimic_root == "/py"          # pyproject beats the environment
    assert opts.weights_dir == "/env-w" and opts.device == "cpu"  # environment beats the default
    assert opts.batch_size == GateOptions().batch_size  # default
    assert opts.weights == {"clip": "/py/clip.pt", "medclip-vit": "/cli/m.zip"}
    assert build_gate_options(start=tmp_path, environ=env, use_pyproject=False).mimic_root == "/env"


def test_layer_errors_name_the_layer(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^command line: ks must be positive"):
        build_gate_options(cli={"ks": "0"}, start=tmp_path, environ={})
    with pytest.raises(ConfigError, match="^ini file: ratios must be a number"):
        build_gate_options(ini={"ratios": "1,x"}, start=tmp_path, environ={})
    with pytest.raises(ConfigError, match="dataset must be one of phantom, mimic, manifest; got 'nope'"):
        build_gate_options(start=tmp_path, environ={ENV_VARS["dataset"]: "nope"})


def test_perturbations_and_severities_from_pyproject_and_the_command_line(tmp_path: Path) -> None:
    from cxr_robust.perturbations import Condition

    (tmp_path / "pyproject.toml").write_text('[tool.cxr_robust]\nperturbations = ["occlusion", "jpeg"]\n'
                                             'ratios = [0, 25]\nseverities = {jpeg = [1, 5]}\n')
    opts = build_gate_options(start=tmp_path, environ={})
    assert opts.perturbations == ("occlusion", "jpeg")
    assert opts.conditions() == (Condition("occlusion", 0), Condition("occlusion", 0.25), Condition("jpeg", 1),
                                 Condition("jpeg", 5))
    cli = build_gate_options(cli={"perturbations": "gaussian_noise", "severities": "gaussian_noise=s2"},
                             start=tmp_path, environ={})
    assert cli.conditions() == (Condition("gaussian_noise", 0), Condition("gaussian_noise", 2))
    with pytest.raises(ConfigError, match="did you mean 'jpeg'"):
        build_gate_options(cli={"perturbations": "jepg"}, start=tmp_path, environ={})
