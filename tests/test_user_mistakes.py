"""Every user mistake is one line on stderr naming the option or file and what to do, with the right exit code.

Each case runs ``cxr_robust.cli.main([...])`` in-process and checks the exit code, that the error is a single
``cxr-robust: error: ...`` line with the option or file in it, that there is no traceback, and (for ``run``)
that nothing was written. Mistakes are caught before any model work, so only two tests sweep (the demo model
on a 120-study phantom set with a 2 x 2 grid, through the shared embedding cache). Exit codes 0 and 1 of a real
sweep are tested in test_cli.py (test_run_passes_and_writes_results, test_regression_exits_1_with_the_failing_cells);
2, 3 and 4 here.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from cxr_robust import atomic, exit_codes
from cxr_robust.atomic import OutputError, atomic_open, atomic_write_text
from cxr_robust.cli import EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, main
from cxr_robust.config import ConfigError, parse_layer
from cxr_robust.metrics import RankCounts
from cxr_robust.models import MissingWeightsError, get_spec, load_model
from cxr_robust.models.registry import ModelFactoryError
from cxr_robust.results import (ModelOutcome, RanksFileError, build_document, load_ranks, load_results, save_ranks,
                                write_results)

ROOT = Path(__file__).resolve().parent.parent

PROJECT_TOML = """\
[tool.cxr_robust]
models = ["phantom-clip"]
phantom_studies = 120
ratios = [0, 25]
ks = [5, 10]
cache_dir = "{cache}"
"""

# The machine's CXR_ROBUST_* settings (tests/conftest.py), and its cache directory, must not leak in.
pytestmark = pytest.mark.usefixtures("clean_cxr_env")


@pytest.fixture(autouse=True)
def _no_cache_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_ROBUST_CACHE_DIR", raising=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder whose [tool.cxr_robust] runs the demo model on a small phantom set."""
    root = tmp_path_factory.mktemp("mistakes-project")
    cache = tmp_path_factory.getbasetemp() / "shared-embedding-cache"
    (root / "pyproject.toml").write_text(PROJECT_TOML.format(cache=cache.as_posix()))
    return root


def run(project: Path, *args: str) -> int:
    return main(["run", "--project", str(project), *args])


def one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """The single error line on stderr; it must hold every needle and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cxr-robust: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ----- 1. exit codes ----------------------------------------------------------------------------------------------
def test_exit_codes_are_defined_once_with_a_meaning_each() -> None:
    assert (exit_codes.EXIT_OK, exit_codes.EXIT_FAILED, exit_codes.EXIT_USAGE, exit_codes.EXIT_UNAVAILABLE,
            exit_codes.EXIT_ERROR) == (0, 1, 2, 3, 4)
    assert sorted(exit_codes.MEANINGS) == sorted(exit_codes.SUMMARY) == [0, 1, 2, 3, 4]
    assert all(m and "\n" not in m for m in exit_codes.MEANINGS.values())
    from cxr_robust import cli

    assert (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_UNAVAILABLE, cli.EXIT_ERROR) == (0, 1, 2, 3, 4)


def test_usage_md_exit_code_table_equals_the_constants() -> None:
    text = (ROOT / "docs" / "usage.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- exit-codes:start -->\n(.*?)\n<!-- exit-codes:end -->", text, flags=re.S)
    assert found, "docs/usage.md lost its exit-code table markers"
    assert found.group(1).strip() == exit_codes.markdown_table()


def test_nothing_measured_is_never_exit_0(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # clip has no weights here: skipped, so no model is measured (the old code exited 0)
    assert run(project, "--out", str(tmp_path / "o"), "--models", "clip") == EXIT_UNAVAILABLE
    out = capsys.readouterr().out
    assert "no model was measured" in out and f"exit {EXIT_UNAVAILABLE}: " in out
    assert load_results(tmp_path / "o")["models"][0]["status"] == "skipped"  # the report says why


# ----- 2. option values out of range ------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "needles"), [
    (["--seed", "-1"], ["command line", "--seed", "non-negative", "-1"]),
    (["--cxr-seed", "-1"], ["--seed", "non-negative"]),
    (["--batch-size", "0"], ["--batch-size", ">= 1", "got 0"]),
    (["--phantom-studies", "0"], ["--phantom-studies", ">= 1"]),
    (["--alpha", "5"], ["--alpha", "(0, 1)", "got 5"]),
    (["--alpha", "nan"], ["--alpha", "(0, 1)"]),
    (["--seed", "abc"], ["--seed must be an integer", "'abc'"]),
])
def test_out_of_range_values_exit_2_before_any_work(project: Path, tmp_path: Path, args: list[str],
                                                    needles: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert run(project, "--out", str(out), *args) == EXIT_USAGE
    one_line_error(capsys, *needles)
    assert not out.exists()  # nothing half-written


def test_out_of_range_values_in_pyproject_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.cxr_robust]\nseed = -3\n")
    assert run(tmp_path, "--out", str(tmp_path / "o")) == EXIT_USAGE
    one_line_error(capsys, "pyproject.toml [tool.cxr_robust]: seed must be a non-negative integer, got -3")


# ----- 3. outputs that cannot be written --------------------------------------------------------------------------
def test_run_out_that_is_a_file_exits_2_before_the_sweep(project: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert run(project, "--out", str(target)) == EXIT_USAGE
    one_line_error(capsys, f"--out {target} is a file; pass a directory")
    assert target.read_text() == "keep me"
    deeper = target / "sub"
    assert run(project, "--out", str(deeper)) == EXIT_USAGE
    one_line_error(capsys, f"--out {deeper}", f"{target} is a file, not a directory")


def test_run_out_not_writable_exits_2_before_the_sweep(project: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(**_: Any) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied")

    # root ignores permission bits, so the refusal of the file system is simulated at the probe
    monkeypatch.setattr(atomic, "tempfile", SimpleNamespace(mkstemp=refuse))
    assert run(project, "--out", str(tmp_path / "new" / "out")) == EXIT_USAGE
    one_line_error(capsys, f"--out {tmp_path / 'new' / 'out'}", f"cannot write into {tmp_path} (permission denied)",
                   "choose another path")
    assert "dataset" not in capsys.readouterr().out and not (tmp_path / "new").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores permission bits: run the tests as a non-root user to enable this test "
                           "(the simulated case above runs everywhere)")
def test_run_out_read_only_by_permissions(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert run(project, "--out", str(locked)) == EXIT_USAGE
        one_line_error(capsys, f"--out {locked}", "permission denied")
    finally:
        locked.chmod(0o755)


def _results_dir(folder: Path, dataset: dict[str, Any] | None = None, above: np.ndarray | None = None,
                 n_candidates: int = 50, with_ranks: bool = False) -> Path:
    """A results directory of a fake model ``m`` (k = 5, 10 at 0 % occlusion) from per-query ranks."""
    above = np.zeros(100, dtype=np.int64) if above is None else above
    cells = [{"ratio": 0.0, "k": k, "measured": float(np.mean(above < k)), "n_queries": len(above),
              "n_candidates": n_candidates, "chance": k / n_candidates, "baseline": None} for k in (5, 10)]
    doc = build_document([ModelOutcome("m", "measured", cells=cells)],
                         {"config": {}, "dataset": dataset or {"name": "d"}})
    write_results(folder, doc)
    if with_ranks:
        ids = [f"img{i:03d}" for i in range(len(above))]
        save_ranks(folder / "ranks" / "m__d__seed0.npz", {0.0: RankCounts(above, np.zeros_like(above), 50)}, ids,
                   {"model": "m"})
    return folder


def test_report_output_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _results_dir(tmp_path / "run")
    folder = tmp_path / "html"
    folder.mkdir()
    assert main(["report", str(results), "-o", str(folder)]) == EXIT_USAGE
    one_line_error(capsys, f"-o {folder} is a directory; pass a file path")
    assert list(folder.iterdir()) == []


def test_compare_csv_that_is_a_directory_exits_2_before_comparing(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    a = _results_dir(tmp_path / "a")
    folder = tmp_path / "csvdir"
    folder.mkdir()
    assert main(["compare", str(a), str(a), "--csv", str(folder)]) == EXIT_USAGE
    one_line_error(capsys, f"--csv {folder} is a directory; pass a file path")
    assert capsys.readouterr().out == ""


def test_atomic_writers_raise_output_error_naming_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "dir"
    folder.mkdir()
    with pytest.raises(OutputError, match=f"cannot write {folder}: it is a directory; pass a file path"):
        atomic_write_text(folder, "x")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=f"{blocker} is a file, not a directory; choose another path") as info:
        atomic_write_text(blocker / "results.json", "x")
    assert isinstance(info.value, OSError) and info.value.path == blocker / "results.json"
    with pytest.raises(OutputError, match=f"results directory {blocker} is a file; pass a directory"):
        write_results(blocker, build_document([], {"config": {}}))
    with pytest.raises(OutputError, match="is a directory"):
        save_ranks(folder, {}, [], {})

    def refuse(**_: Any) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic, "tempfile", SimpleNamespace(mkstemp=refuse))
    with pytest.raises(OutputError, match=f"cannot write into {folder} \\(read-only file system\\)"):
        atomic_write_text(folder / "a.txt", "x")


def test_disk_full_inside_the_block_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "ranks.npz"
    with pytest.raises(OutputError, match=f"cannot write {target}: no space left on device; free disk space"):
        with atomic_open(target, "wb") as fh:
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a .tmp
    with pytest.raises(KeyError):  # the caller's own errors are not dressed up as output errors
        with atomic_open(target, "w"):
            raise KeyError("mine")


# ----- 4. compare ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", ["5", "0", "1", "nan"])
def test_compare_alpha_outside_unit_interval(tmp_path: Path, alpha: str, capsys: pytest.CaptureFixture[str]) -> None:
    a = _results_dir(tmp_path / "a")
    assert main(["compare", str(a), str(a), "--alpha", alpha]) == EXIT_USAGE
    one_line_error(capsys, "--alpha must be in (0, 1)")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_compare_with_a_damaged_ranks_file_names_it(tmp_path: Path, damage: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    a = _results_dir(tmp_path / "a", with_ranks=True)
    b = _results_dir(tmp_path / "b", with_ranks=True)
    ranks = b / "ranks" / "m__d__seed0.npz"
    ranks.write_bytes(ranks.read_bytes()[:200] if damage == "truncated" else b"garbage\n")
    assert main(["compare", str(a), str(b)]) == EXIT_USAGE
    one_line_error(capsys, f"ranks file {ranks} is truncated or not a ranks file", "re-record it")
    assert "significantly worse" not in capsys.readouterr().out


def test_load_ranks_errors_name_the_file(tmp_path: Path) -> None:
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(RanksFileError, match=f"ranks file {other} is truncated or not a ranks file \\(no "
                                             "'image_ids' or 'meta' array"):
        load_ranks(other)
    good = save_ranks(tmp_path / "good.npz", {0.0: RankCounts(np.zeros(4, dtype=np.int64),
                                                              np.zeros(4, dtype=np.int64), 9)},
                      ["a", "b", "c", "d"], {"model": "m"})
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(RanksFileError, match=f"ranks file {cut} is truncated") as info:
        load_ranks(cut)
    assert isinstance(info.value, ValueError) and info.value.path == cut
    npy = tmp_path / "array.npz"
    with npy.open("wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(RanksFileError, match="a single array, not an .npz archive"):
        load_ranks(npy)
    with pytest.raises(FileNotFoundError, match=f"ranks file {tmp_path / 'none.npz'} is missing"):
        load_ranks(tmp_path / "none.npz")
    assert load_ranks(good)[1] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(("da", "db", "nb", "needles"), [
    ({"name": "phantom-eval-s0-n120", "counts": {"studies": 120, "images": 210}},
     {"name": "phantom-eval-s0-n60", "counts": {"studies": 60, "images": 108}}, 50,
     ["phantom-eval-s0-n120 (120 studies / 210 images)", "phantom-eval-s0-n60 (60 studies / 108 images)"]),
    ({"name": "phantom-eval-s0-n120"}, {"name": "mimic-cxr-validate"}, 50,
     ["phantom-eval-s0-n120", "mimic-cxr-validate"]),
    ({"name": "d"}, {"name": "d"}, 80, ["cannot compare"]),  # same name, other candidate count
])
def test_compare_refuses_runs_on_different_data(tmp_path: Path, da: dict, db: dict, nb: int, needles: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    a = _results_dir(tmp_path / "a", dataset=da)
    b = _results_dir(tmp_path / "b", dataset=db, above=np.full(100, 40, dtype=np.int64), n_candidates=nb)
    assert main(["compare", str(a), str(b), "--fail-on-regression"]) == EXIT_USAGE
    one_line_error(capsys, *needles, "same dataset and size")
    assert "significantly worse" not in capsys.readouterr().out


# ----- 5. the dataset and its source --------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "needles"), [
    (["--mimic-root", "/data/mimic", "--manifest", "m.csv"],
     ["--mimic-root and --manifest name two datasets", "--dataset mimic or --dataset manifest"]),
    (["--dataset", "phantom", "--manifest", "m.csv"], ["--manifest is not used with --dataset phantom"]),
    (["--dataset", "manifest", "--mimic-root", "/m"], ["--mimic-root is not used with --dataset manifest"]),
    (["--dataset", "manifest"], ["the manifest dataset needs --manifest CSV"]),
    (["--dataset", "mimic"], ["the mimic dataset needs --mimic-root DIR"]),
])
def test_dataset_source_mistakes(project: Path, tmp_path: Path, args: list[str], needles: list[str],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "--out", str(tmp_path / "o"), *args) == EXIT_USAGE
    one_line_error(capsys, *needles)
    assert not (tmp_path / "o").exists()


def test_a_lone_source_implies_its_dataset(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the path is used, not silently ignored: the loader of the implied dataset is what complains about it
    absent = tmp_path / "no-mimic-here"
    assert run(project, "--out", str(tmp_path / "o"), "--mimic-root", str(absent)) == EXIT_USAGE
    captured = capsys.readouterr()
    assert "dataset mimic (implied by --mimic-root)" in captured.out
    assert "cannot load the mimic dataset" in captured.err and str(absent) in captured.err
    manifest = tmp_path / "m.csv"
    assert run(project, "--out", str(tmp_path / "o"), "--manifest", str(manifest)) == EXIT_USAGE
    captured = capsys.readouterr()
    assert "dataset manifest (implied by --manifest)" in captured.out
    assert "cannot load the manifest dataset" in captured.err and str(manifest) in captured.err
    assert "Traceback" not in captured.err and not (tmp_path / "o").exists()


# ----- 6. weights paths that were given but do not exist -------------------------------------------------------------
@pytest.mark.parametrize(("args", "needles"), [
    (["--models", "clip", "--weights", "clip=/typo/ViT-B-32.pt"],
     ["'clip'", "/typo/ViT-B-32.pt does not exist", "--cxr-weights clip=PATH"]),
    (["--weights", "phantom-clip=/typo.safetensors"],
     ["'phantom-clip'", "/typo.safetensors does not exist", "use the built-in weights"]),
    (["--models", "clip", "--weights-dir", "/typo-dir"], ["--cxr-weights-dir /typo-dir does not exist"]),
    (["--weights", "clp=/w.pt"], ["--weights clp=/w.pt: no model named 'clp'; did you mean 'clip'"]),
])
def test_explicit_weights_that_do_not_exist_exit_2(project: Path, tmp_path: Path, args: list[str],
                                                   needles: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "--out", str(tmp_path / "o"), *args) == EXIT_USAGE
    one_line_error(capsys, *needles)
    assert not (tmp_path / "o").exists()


def test_weights_env_that_does_not_exist_exit_2(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CXR_ROBUST_CLIP_WEIGHTS", "/typo/clip.pt")
    assert run(project, "--out", str(tmp_path / "o"), "--models", "clip") == EXIT_USAGE
    one_line_error(capsys, "$CXR_ROBUST_CLIP_WEIGHTS=/typo/clip.pt does not exist")


def test_models_command_exits_2_on_a_wrong_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--no-pyproject", "--project", str(tmp_path), "--weights", "clip=/typo.pt"]) == EXIT_USAGE
    captured = capsys.readouterr()
    # the table still lists it: its row says WRONG PATH, the line under it what is wrong
    assert "  WRONG PATH\n    weights for 'clip': /typo.pt does not exist" in captured.out
    assert captured.err.count("\n") == 1 and "/typo.pt" in captured.err and "Traceback" not in captured.err


def test_configuration_error_tells_a_typo_from_not_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_ROBUST_WEIGHTS_DIR", raising=False)
    clip = get_spec("clip")
    assert clip.configuration_error() is None and "not found" in (clip.missing() or "")  # not configured: skip
    assert "does not exist" in (clip.configuration_error("/typo.pt") or "")
    assert "--cxr-weights-dir /nope does not exist" in (clip.configuration_error(None, "/nope") or "")
    real = tmp_path / "ViT-B-32.pt"
    real.write_bytes(b"x")
    assert clip.configuration_error(real) is None and clip.configuration_error(None, tmp_path) is None
    assert get_spec("phantom-clip").configuration_error(None, "/nope") is None  # it never looks there
    with pytest.raises(MissingWeightsError, match="/typo.pt does not exist"):
        load_model("clip", weights="/typo.pt")


# ----- 7. a factory that does not return a model ---------------------------------------------------------------------
def not_a_model(weights: Any = None, **_: Any) -> int:
    """A factory with a bug: returns an int."""
    return 5


def duck_model(weights: Any = None, **_: Any) -> Any:
    """A factory returning an object with the protocol's methods (accepted without subclassing)."""
    return SimpleNamespace(preprocess=print, encode_images=print, encode_texts=print, fingerprint=dict, name="duck")


def test_factory_returning_a_non_model_is_named() -> None:
    with pytest.raises(ModelFactoryError) as info:
        load_model(f"{__name__}:not_a_model")
    message = str(info.value)
    assert isinstance(info.value, TypeError)
    for needle in (f"model '{__name__}:not_a_model'", f"factory {__name__}:not_a_model", "builtins.int",
                   "RetrievalModel"):
        assert needle in message
    assert load_model(f"{__name__}:duck_model").name == "duck"


def test_factory_returning_a_non_model_in_a_run_exits_4(project: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    target = f"{__name__}:not_a_model"
    assert run(project, "--out", str(tmp_path / "o"), "--models", target) == EXIT_ERROR
    out = capsys.readouterr().out
    assert f"{target}: ERROR: ModelFactoryError: model '{target}': its factory {target} returned a builtins.int" in out
    assert "object has no attribute" not in out


def test_ad_hoc_target_that_does_not_import_exit_2(project: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "--out", str(tmp_path / "o"), "--models", f"{__name__}:nope") == EXIT_USAGE
    one_line_error(capsys, f"--models {__name__}:nope", "has no attribute 'nope'")


# ----- 8. text policy spellings --------------------------------------------------------------------------------------
def test_text_policy_help_and_errors_give_the_accepted_spellings(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == EXIT_OK
    assert "findings+impression (spelled with a plus), impression or longest" in " ".join(
        capsys.readouterr().out.split())
    assert main(["run", "--text-policy", "findings_impression"]) == EXIT_USAGE
    err = capsys.readouterr().err
    # The same check and wording as every other layer (argparse's own "invalid choice" would differ).
    assert "--text-policy must be one of findings+impression, impression, longest; got 'findings_impression'" in err
    (tmp_path / "pyproject.toml").write_text("[tool.cxr_robust]\ntext_policy = 'findings_impression'\n")
    assert run(tmp_path, "--out", str(tmp_path / "o")) == EXIT_USAGE
    one_line_error(capsys, "text_policy must be one of findings+impression, impression, longest",
                   "'findings_impression'")
    assert parse_layer({"text_policy": " Impression "}, "x") == {"text_policy": "impression"}
    with pytest.raises(ConfigError, match="^x: text_policy must be one of"):
        parse_layer({"text_policy": "both"}, "x")


# ----- 9. run accepts the options its errors recommend ----------------------------------------------------------------
def test_run_accepts_on_bad_image_and_compare_to(project: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    reference = _results_dir(tmp_path / "ref")
    code = run(project, "--out", str(tmp_path / "o"), "--models", "clip", "--on-bad-image", "skip",
               "--compare-to", str(reference))
    assert code == EXIT_UNAVAILABLE  # parsed and applied; clip has no weights here, so nothing is measured
    config = load_results(tmp_path / "o")["config"]
    assert config["on_bad_image"] == "skip" and config["compare_to"] == str(reference)
    capsys.readouterr()
    assert run(project, "--out", str(tmp_path / "o"), "--compare-to", str(tmp_path / "absent")) == EXIT_USAGE
    one_line_error(capsys, f"--compare-to {tmp_path / 'absent'}: no such file or directory")
    assert run(project, "--out", str(tmp_path / "o"), "--on-bad-image", "ignore") == EXIT_USAGE
    assert "invalid choice: 'ignore'" in capsys.readouterr().err
