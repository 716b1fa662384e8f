"""The gate never goes green by mistake: each way it once said PASS when it should not, driven with pytester.

1. a path option written with a space moved pytest's rootdir, so no baseline was found and every check skipped;
2. a cell without a baseline passed;
3. a model changed in memory got the shipped model's cached embeddings;
4. paired testing (stronger) was opt-in even where recorded ranks exist;
5. ``--cxr-update-baselines`` rewrote tables from errored runs and dropped rows it did not measure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# Imported at module level: pytester restores sys.modules after each test, and re-importing a C extension
# (torch, numpy) in the same process can crash it.
import torch  # noqa: F401  (kept loaded: see above)

from cxr_robust.options import for_front_end

from tests.gate_project import GATE_TESTS

pytest_plugins = ["pytester"]

SMALL = ["--cxr-phantom-studies=120", "--cxr-ratios=0,9,81", "--cxr-ks=5,10,50", "-p", "no:cacheprovider"]
PATH_FLAGS = [o.flag for o in for_front_end("pytest") if o.kind in ("path", "paths")] + ["--mimic-root"]
"""Every gate flag that takes a path, and one old spelling (the check reads them all from one list:
``plugin._value_options``)."""


def _project(pytester: pytest.Pytester) -> Path:
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_gate.py").write_text(GATE_TESTS)
    (pytester.path / "baselines").mkdir()
    return pytester.path


# ----- 1. rootdir ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["root", "subdir"])
@pytest.mark.parametrize("flag", PATH_FLAGS)
def test_a_path_option_after_a_space_never_loses_the_configuration(
        pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
        flag: str, where: str) -> None:
    """``--opt /outside`` made pytest pick another rootdir (no pytest.ini, no baselines/): every baseline check
    skipped and the run exited 0. Now it is a usage error that says what to write; ``--opt=/outside`` works."""
    project = _project(pytester)
    outside = tmp_path_factory.mktemp(f"outside{flag}")  # an existing path outside the project
    if where == "subdir":
        monkeypatch.chdir(project / "tests")
    spaced = pytester.runpytest_inprocess("--collect-only", "-q", "--cxr-models=phantom-clip", flag, str(outside))
    assert spaced.ret == pytest.ExitCode.USAGE_ERROR, spaced.stdout.str()
    spaced.stderr.fnmatch_lines([f"*pytest read the value of {flag} as a test path*Write the option with '=': "
                                 f"{flag}={outside}*"])
    joined = pytester.runpytest_inprocess("--collect-only", "-q", "--cxr-models=phantom-clip", f"{flag}={outside}")
    assert joined.ret == pytest.ExitCode.OK, joined.stdout.str() + joined.stderr.str()
    # the project's configuration was used: its testpaths found the gate module, one case per cell + grid
    assert sum("test_gate.py::" in line for line in joined.outlines) == 2 * (8 * 6 + 1)


def test_k_larger_than_the_data_set_is_one_usage_error_before_any_work(pytester: pytest.Pytester) -> None:
    _project(pytester)
    res = pytester.runpytest_inprocess("--collect-only", "-q", "--cxr-models=phantom-clip", "--cxr-phantom-studies=120",
                                       "--cxr-ks=5,500")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--cxr-ks 500: dataset phantom-eval-s0-n120 has only 120 reports*"])


# ----- helpers for the end-to-end cases -------------------------------------------------------------------------
class Gate:
    """A pytester project with the gate tests, its own baselines and report, and a shared embedding cache."""

    def __init__(self, pytester: pytest.Pytester, cache: Path) -> None:
        self.pytester = pytester
        self.path = _project(pytester)
        self.cache = cache

    def run(self, *args: str, cache: Path | None = None) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess(
            *SMALL, f"--cxr-cache-dir={cache or self.cache}", f"--cxr-report={self.path / 'report'}", *args)

    def results(self) -> dict:
        return json.loads((self.path / "report" / "results.json").read_text())

    def table(self) -> Path:
        return self.path / "baselines" / "phantom-clip__phantom-eval-s0-n120.csv"

    def record(self, *args: str) -> pytest.RunResult:
        res = self.run("--cxr-models=phantom-clip", "--cxr-update-baselines", *args)
        assert res.ret == pytest.ExitCode.OK, res.stdout.str()
        return res


@pytest.fixture
def gate(pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory) -> Gate:
    return Gate(pytester, tmp_path_factory.getbasetemp() / "trust-embedding-cache")


# ----- 3. cache identity ----------------------------------------------------------------------------------------
CHANGED_MODEL = '''
import torch
from cxr_robust.models import load_model

def build(weights=None, **_):
    """The shipped demo, loaded from its file and then changed in memory (its declared fingerprint is the same)."""
    model = load_model("phantom-clip")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.torch_modules()[0].named_parameters():
            if name.startswith("visual.") and p.ndim >= 2:
                p.add_(torch.randn(p.shape, generator=gen) * p.float().std() * 0.5)
    return model
'''


def test_a_model_changed_in_memory_is_re_encoded_and_fails(gate: Gate) -> None:
    gate.record()
    (gate.path / "changed_model.py").write_text(CHANGED_MODEL)
    res = gate.run("--cxr-models=changed_model:build")
    meta = gate.results()["models"][0]["meta"]
    assert meta["image_encodings"] > 0, "the changed model was served the demo's cached image embeddings"
    assert meta["model_fingerprint"]["state_sha256"] and meta["model_fingerprint"]["code_sha256"]
    assert res.ret == pytest.ExitCode.TESTS_FAILED, res.stdout.str()
    assert gate.results()["verdict"] == "FAIL"


def test_refresh_cache_recomputes_everything(gate: Gate) -> None:
    gate.record()
    res = gate.run("--cxr-models=phantom-clip", "--cxr-refresh-cache")
    assert res.ret == pytest.ExitCode.OK, res.stdout.str()
    meta = gate.results()["models"][0]["meta"]
    assert meta["text_encodings"] == 120 and meta["image_encodings"] == 3 * 210


# ----- 4. paired by default ---------------------------------------------------------------------------------
def test_recorded_ranks_make_the_gate_paired_by_default_and_a_seed_mismatch_is_stated(gate: Gate) -> None:
    gate.record()
    res = gate.run("--cxr-models=phantom-clip")
    assert res.ret == pytest.ExitCode.OK, res.stdout.str()
    model = gate.results()["models"][0]
    assert model["mode"] == "paired" and model["grid"]["mode"] == "paired"
    assert all("paired" in c["extras"] for c in model["cells"])
    res = gate.run("--cxr-models=phantom-clip", "--cxr-seed=1")
    assert res.ret == pytest.ExitCode.OK, res.stdout.str()
    cell = gate.results()["models"][0]["cells"][-1]
    assert "reference seed 0, run seed 1" in cell["rule"]
    assert cell["extras"]["paired"]["reference_seed"] == 0 and cell["extras"]["paired"]["run_seed"] == 1


# ----- 5. safe baseline updates -------------------------------------------------------------------------------
BROKEN_MODEL = '''
from cxr_robust.models import load_model

class Broken(type(load_model("phantom-clip"))):
    def encode_images(self, pixels):
        raise RuntimeError("the image tower is broken")

def build(weights=None, **_):
    model = load_model("phantom-clip")
    model.__class__ = Broken
    model.baseline_row = "phantom-clip"
    return model
'''


def test_update_from_an_errored_run_writes_nothing(gate: Gate) -> None:
    gate.record()
    before = gate.table().read_bytes()
    ranks = sorted((gate.path / "baselines" / "ranks").glob("*.npz"))
    ranks_before = [p.read_bytes() for p in ranks]
    (gate.path / "broken_model.py").write_text(BROKEN_MODEL)
    res = gate.run("--cxr-models=broken_model:build", "--cxr-update-baselines")
    assert res.ret != pytest.ExitCode.OK
    res.stdout.fnmatch_lines(["*--cxr-update-baselines: nothing recorded*"])
    assert gate.table().read_bytes() == before
    assert [p.read_bytes() for p in ranks] == ranks_before
    assert len(list(gate.table().parent.glob("*.csv"))) == 1


def test_update_of_a_subset_merges_and_says_what_changed(gate: Gate) -> None:
    gate.record()
    full = gate.table().read_text().splitlines()
    assert len(full) == 1 + 9
    res = gate.record("--cxr-ratios=9", "--cxr-ks=5")  # later flags win: one cell re-measured
    res.stdout.fnmatch_lines(["*phantom-clip__phantom-eval-s0-n120.csv: 0 cells added, 0 changed, "
                              "1 re-measured unchanged, 8 other rows kept*"])
    assert gate.table().read_text().splitlines() == full
    from cxr_robust.results import load_ranks

    counts, _, _ = load_ranks(gate.path / "baselines" / "ranks" / "phantom-clip__phantom-eval-s0-n120__seed0.npz")
    assert sorted(c.severity for c in counts) == [0.0, 0.09, 0.81]  # keyed by condition


def test_a_single_ratio_is_measured_not_48_errors(gate: Gate) -> None:
    """One ratio has no curve to summarise: the summary is omitted, every cell is still decided."""
    gate.record("--cxr-ratios=25")
    doc = gate.results()
    assert doc["models"][0]["status"] == "measured" and doc["models"][0]["summary"] == {}
    assert len(doc["models"][0]["cells"]) == 3


# ----- xdist parity -------------------------------------------------------------------------------------------
def test_two_workers_write_the_same_results_and_ranks_as_one(gate: Gate, tmp_path: Path) -> None:
    gate.record()
    single = gate.run("--cxr-models=phantom-clip", cache=tmp_path / "cold-1")
    assert single.ret == pytest.ExitCode.OK, single.stdout.str()
    one = gate.results()
    one_ranks = np.load(gate.path / "report" / "ranks" / "phantom-clip__phantom-eval-s0-n120__seed0.npz")
    one_ranks = {k: one_ranks[k] for k in one_ranks.files}
    (gate.path / "report" / "ranks" / "phantom-clip__phantom-eval-s0-n120__seed0.npz").unlink()
    multi = gate.run("--cxr-models=phantom-clip,clip", "-n", "2", cache=tmp_path / "cold-2")
    assert multi.ret == pytest.ExitCode.OK, multi.stdout.str()
    two = gate.results()
    a, b = one["models"][0], next(m for m in two["models"] if m["model"] == "phantom-clip")

    def strip(model: dict) -> dict:
        meta = {k: v for k, v in model["meta"].items() if k not in ("timings", "cache_dir")}
        return {**model, "meta": meta}

    assert strip(a) == strip(b)
    assert a["meta"]["text_encodings"] == b["meta"]["text_encodings"] == 120
    two_ranks = np.load(gate.path / "report" / "ranks" / "phantom-clip__phantom-eval-s0-n120__seed0.npz")
    assert sorted(two_ranks.files) == sorted(one_ranks)
    for key in one_ranks:
        assert np.array_equal(two_ranks[key], one_ranks[key]), key


def test_documented_pytest_commands_write_path_options_with_equals() -> None:
    """README and docs must not teach the space form that moves pytest's rootdir (a usage error now)."""
    root = Path(__file__).resolve().parents[1]
    flags = PATH_FLAGS
    for doc in (root / "README.md", root / "docs" / "usage.md", root / "docs" / "nightly-ci.yml"):
        in_pytest = False
        for line in doc.read_text().splitlines():
            stripped = line.strip()
            in_pytest = "pytest " in stripped or (in_pytest and stripped.startswith("--"))
            if in_pytest:
                assert not any(f"{flag} " in stripped + " " and f"{flag}=" not in stripped for flag in flags), \
                    f"{doc.name}: {stripped}"
            in_pytest = in_pytest and stripped.endswith("\\")
