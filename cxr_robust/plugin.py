"""pytest plugin: the robustness gate as parametrized tests over model x occlusion ratio x k.

Registered through the ``pytest11`` entry point, so any project that installs cxr-robust gets the options
and the ``gate_cell`` fixture. A test module asks for ``gate_cell`` and is parametrized with one case per
(model, ratio, k); see ``tests/test_robustness.py``::

    @pytest.mark.robustness
    def test_recall_not_below_baseline(gate_cell):
        gate_cell.check_baseline()

Heavy imports (torch, open_clip) happen only when a cell is first evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from cxr_robust.gate import GateSession, ModelRun
    from cxr_robust.stats import CellDecision

_SESSION_KEY: "pytest.StashKey[GateSession]" = pytest.StashKey()

# option name -> (ini name, environment variable, help); precedence: command line > ini > pyproject > env.
_OPTIONS: dict[str, tuple[str, str | None, str]] = {
    "cxr_models": ("cxr_robust_models", "CXR_ROBUST_MODELS",
                   "comma-separated models to gate (default: phantom-clip and the four Table 1 models)"),
    "cxr_dataset": ("cxr_robust_dataset", "CXR_ROBUST_DATASET", "phantom (default), mimic or manifest"),
    "phantom_studies": ("cxr_robust_phantom_studies", None,
                        "studies in the phantom eval set (default 994, the paper's count; smaller for smoke runs)"),
    "mimic_root": ("cxr_robust_mimic_root", "CXR_ROBUST_MIMIC_ROOT", "MIMIC-CXR-JPG root directory"),
    "mimic_reports": ("cxr_robust_mimic_reports", "CXR_ROBUST_MIMIC_REPORTS",
                      "mimic-cxr-reports.zip, a files/ tree of reports, or mimic_cxr_sectioned.csv"),
    "mimic_split": ("cxr_robust_mimic_split", None, "MIMIC-CXR split (default validate)"),
    "cxr_views": ("cxr_robust_views", None, "view filter: all (default), frontal, PA, AP, lateral"),
    "cxr_manifest": ("cxr_robust_manifest", "CXR_ROBUST_MANIFEST", "CSV/Parquet manifest for --cxr-dataset manifest"),
    "weights_dir": ("cxr_robust_weights_dir", "CXR_ROBUST_WEIGHTS_DIR", "directory holding published weights files"),
    "bert_vocab": ("cxr_robust_bert_vocab", "CXR_ROBUST_BERT_VOCAB", "directory with Bio_ClinicalBERT's vocab.txt"),
    "cxr_device": ("cxr_robust_device", "CXR_ROBUST_DEVICE", "cpu, cuda, cuda:1 ... (default: cuda when present)"),
    "cxr_precision": ("cxr_robust_precision", None,
                      "fp32 (default), fp16 or bf16 autocast around the encoders; check rank agreement first "
                      "(benchmarks/precision_agreement.py)"),
    "cxr_ratios": ("cxr_robust_ratios", None, "comma-separated occlusion ratios in percent (default: the paper's)"),
    "cxr_ks": ("cxr_robust_ks", None, "comma-separated k (default: 5,10,20,30,50,100)"),
    "cxr_seed": ("cxr_robust_seed", None, "occlusion seed (default 0)"),
    "cxr_batch_size": ("cxr_robust_batch_size", None, "images/texts per forward pass (default 64; raise it on a GPU)"),
    "cxr_cache_dir": ("cxr_robust_cache_dir", "CXR_ROBUST_CACHE_DIR", "embedding cache (default ~/.cache/cxr_robust)"),
    "cxr_report": ("cxr_robust_report", None, "directory for report.html, results.json, results.csv "
                                              "(default ./cxr-robust-report)"),
    "cxr_baselines": ("cxr_robust_baselines", None, "comma-separated baseline CSVs (default: baselines/*.csv)"),
    "cxr_alpha": ("cxr_robust_alpha", None, "family-wise error rate of the gate per model (default 0.05)"),
    "on_bad_image": ("cxr_robust_on_bad_image", None,
                     "error (default): an unreadable image stops the run; skip: leave it out, counted in the report"),
    "cxr_compare_to": ("cxr_robust_compare_to", None,
                       "paired mode: per-query ranks of the previous model (a ranks .npz, baselines/, or a results "
                       "directory); cells are then tested with a paired exact test instead of against the table"),
    "cxr_text_policy": ("cxr_robust_text_policy", None,
                        "override every model's report text: findings_impression, impression or longest"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """The gate's options (``pytest --help``, group cxr-robust)."""
    group = parser.getgroup("cxr-robust", "chest X-ray occlusion-robustness gate")
    for dest, (ini, env, help_) in _OPTIONS.items():
        flag = "--" + dest.replace("_", "-")
        group.addoption(flag, dest=dest, default=None, help=help_ + (f" [env {env}]" if env else ""))
        parser.addini(ini, help=help_, default=None)
    group.addoption("--weights", dest="cxr_weights", action="append", default=[], metavar="MODEL=PATH",
                    help="weights file for one model (repeatable), e.g. --weights clip=~/w/ViT-B-32.pt")
    group.addoption("--require-all", action="store_true", default=False,
                    help="fail (instead of skip) cells whose model weights or data are absent (nightly jobs)")
    group.addoption("--update-baselines", action="store_true", default=False,
                    help="record the measured tables and per-query ranks in baselines/ instead of asserting")


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marks the gate uses, so ``--strict-markers`` accepts them without pytest-xdist."""
    config.addinivalue_line("markers", "robustness: a cell of the cxr-robust occlusion gate")
    if config.getoption("update_baselines", False) and getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--update-baselines writes baseline files from one process: run it without -n")
    if not config.pluginmanager.hasplugin("xdist"):
        config.addinivalue_line("markers", "xdist_group(name): keep a model's cells on one pytest-xdist worker")
    from cxr_robust.models import get_spec

    for model in _session(config).options.models:  # a typo is a usage error before anything runs
        try:
            get_spec(model)
        except KeyError as exc:
            raise pytest.UsageError(f"cxr-robust: {exc}") from None


_FIELDS = {"cxr_models": "models", "cxr_dataset": "dataset", "phantom_studies": "phantom_studies",
           "mimic_root": "mimic_root", "mimic_reports": "mimic_reports", "mimic_split": "mimic_split",
           "cxr_views": "views", "cxr_manifest": "manifest", "weights_dir": "weights_dir", "bert_vocab": "bert_vocab",
           "cxr_device": "device", "cxr_precision": "precision", "cxr_ratios": "ratios", "cxr_ks": "ks",
           "cxr_seed": "seed",
           "cxr_batch_size": "batch_size", "cxr_cache_dir": "cache_dir", "cxr_report": "report_dir",
           "cxr_baselines": "baselines", "cxr_alpha": "alpha", "on_bad_image": "on_bad_image",
           "cxr_text_policy": "text_policy", "cxr_compare_to": "compare_to"}
"""Command-line dest -> GateOptions field."""


def build_options(config: pytest.Config) -> "Any":
    """GateOptions from, in order of precedence: command line, ini file, ``[tool.cxr_robust]`` in
    pyproject.toml, ``CXR_ROBUST_*`` environment variables, defaults (see ``cxr_robust.config``)."""
    from cxr_robust.config import ConfigError, build_gate_options

    cli: dict[str, Any] = {field: config.getoption(dest) for dest, field in _FIELDS.items()}
    ini: dict[str, Any] = {field: config.getini(_OPTIONS[dest][0]) or None for dest, field in _FIELDS.items()}
    weights = {}
    for item in config.getoption("cxr_weights"):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise pytest.UsageError(f"--weights expects MODEL=PATH, got {item!r}")
        weights[name] = path
    cli.update(weights=weights or None, require_all=config.getoption("require_all") or None,
               update_baselines=config.getoption("update_baselines") or None)
    try:
        return build_gate_options(cli=cli, ini=ini, start=config.rootpath)
    except (ConfigError, ValueError) as exc:
        raise pytest.UsageError(f"cxr-robust: {exc}") from None


def _session(config: pytest.Config) -> "GateSession":
    if _SESSION_KEY not in config.stash:
        from cxr_robust.gate import GateSession

        config.stash[_SESSION_KEY] = GateSession(build_options(config), config.rootpath)
    return config.stash[_SESSION_KEY]


@dataclass(frozen=True)
class CellParam:
    """The parameter of one gate case: which model, ratio and k."""

    model: str
    ratio: float
    k: int


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that uses ``gate_cell`` with the configured model x ratio x k grid."""
    if "gate_cell" not in metafunc.fixturenames:
        return
    from cxr_robust.gate import cell_id

    options = _session(metafunc.config).options
    params = [pytest.param(CellParam(m, r, k), id=cell_id(m, r, k), marks=[pytest.mark.xdist_group(m)])
              for m in options.models for r in options.ratios for k in options.ks]
    metafunc.parametrize("gate_cell", params, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Gate cases carry the ``robustness`` marker even if their module forgot it."""
    for item in items:
        if "gate_cell" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.robustness)


class GateCell:
    """What a gate test sees: the cell's verdicts and the assertions that state them in full."""

    def __init__(self, param: CellParam, run: "ModelRun", session: "GateSession") -> None:
        self.param = param
        self.run = run
        self.session = session
        self.decision: "CellDecision" = run.decisions[(param.ratio, param.k)]

    @property
    def measured(self) -> float:
        """Measured Recall@k (fraction)."""
        return self.decision.measured

    def _numbers(self) -> str:
        d = self.decision
        base = "none" if d.baseline is None else f"{100 * d.baseline:.2f}%"
        tol = "n/a" if d.tolerance is None else f"{100 * d.tolerance:.2f} pp"
        return (f"measured Recall@{d.k} = {100 * d.measured:.2f}%, baseline {base}, tolerance {tol}, "
                f"chance {100 * d.chance:.2f}% (k/N), N = {d.n_candidates} reports, M = {d.n_queries} images")

    def check_baseline(self) -> None:
        """Fail when the measured value is significantly below its baseline under the gate rule."""
        d, o = self.decision, self.session.options
        if o.update_baselines:
            assert 0.0 <= d.measured <= 1.0, f"{self.param}: Recall@k {d.measured} outside [0, 1]"
            return
        if d.baseline is None:
            row = self.session.baseline_row(self.param.model, self.run.result)
            _skip_or_fail(f"no baseline row {row!r} for dataset {self.session.dataset_name()!r} in "
                          f"{o.baselines_dir}/*.csv; record one with --update-baselines", o.require_all)
        where = f"{self.param.model} at {100 * d.ratio:g}% occlusion regressed"
        verdict = f"Holm-adjusted p = {d.p_adjusted:.2g} < alpha {o.alpha} ({d.rule})"
        paired = d.extras.get("paired")
        if paired:
            assert d.passed, (f"{where} against the reference run {self.run.baseline_source}: {self._numbers()}; "
                              f"{paired['b']:g} queries lost the hit, {paired['c']:g} gained it; {verdict}")
        else:
            assert d.passed, (f"{where}: {self._numbers()}; difference {100 * (d.measured - d.baseline):+.2f} pp, "
                              f"{verdict}")

    def check_chance(self) -> None:
        """Fail when a clearly-above-chance cell is not clearly above chance, or any cell is clearly below."""
        d = self.decision
        if d.chance_mode == "above":
            assert d.chance_passed, (f"{self.param.model} at {100 * d.ratio:g}% occlusion is no longer clearly "
                                     f"above chance (its baseline is): {self._numbers()}; exact binomial p = "
                                     f"{d.chance_p:.2g} >= {self.session.options.alpha}")
        else:
            assert d.chance_passed, (f"{self.param.model} at {100 * d.ratio:g}% occlusion is clearly BELOW chance, "
                                     f"which means scoring or the report index is broken: {self._numbers()}; "
                                     f"Holm-adjusted p = {d.chance_p_adjusted:.2g}")


class UnavailableCell:
    """Stands in for a cell whose model cannot run under ``--require-all``: every check fails with why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def check_baseline(self) -> None:
        pytest.fail(self.reason, pytrace=False)

    check_chance = check_baseline


def _skip_or_fail(reason: str, require_all: bool) -> None:
    if require_all:
        pytest.fail(f"--require-all: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cxr_gate(request: pytest.FixtureRequest) -> "GateSession":
    """The session's gate: options, the dataset and one cached sweep per model."""
    return _session(request.config)


@pytest.fixture
def gate_cell(request: pytest.FixtureRequest, cxr_gate: "GateSession") -> GateCell:
    """One (model, ratio, k) cell of the gate; skips (or fails with --require-all) when it cannot run."""
    param: CellParam = request.param
    reason = cxr_gate.unavailable_reason(param.model)
    if reason:
        cxr_gate.skipped[param.model] = reason
        if cxr_gate.options.require_all:  # fail in the test itself (a failure, not a setup error)
            return UnavailableCell(f"--require-all: {param.model}: {reason}")  # type: ignore[return-value]
        pytest.skip(f"{param.model}: {reason}")
    run = cxr_gate.run(param.model)
    if run.error is not None:
        pytest.fail(f"{param.model}: the sweep failed: {type(run.error).__name__}: {run.error}", pytrace=False)
    cell = GateCell(param, run, cxr_gate)
    request.node.stash[_CELL_KEY] = cell
    return cell


_CELL_KEY: "pytest.StashKey[GateCell]" = pytest.StashKey()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """With pytest-html, attach the cell's numbers to its row."""
    outcome = yield
    report = outcome.get_result()
    cell = item.stash.get(_CELL_KEY, None)
    if cell is None or report.when != "call" or not item.config.pluginmanager.hasplugin("html"):
        return
    try:
        from pytest_html import extras
    except ImportError:
        return
    from html import escape

    # Inline HTML (not a text attachment) so the pytest-html file stays self-contained.
    report.extras = getattr(report, "extras", []) + [extras.html(f"<div class='cxr-robust-cell'>"
                                                                 f"{escape(cell._numbers())}</div>")]


def _parts_dir(config: pytest.Config) -> Path:
    return Path(_session(config).options.report_dir) / ".xdist-parts"


def _is_xdist_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist, the controller clears the previous run's per-worker results."""
    if _is_xdist_controller(session.config):
        import shutil

        shutil.rmtree(_parts_dir(session.config), ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the results and HTML report (and baselines with --update-baselines) once per run.

    Under pytest-xdist each worker writes its models' results to a part file and the controller merges them.
    """
    config = session.config
    from cxr_robust.atomic import atomic_write_text
    from cxr_robust.results import load_results, merge_documents

    if _is_xdist_controller(config):
        parts_dir = _parts_dir(config)
        parts = [load_results(p) for p in sorted(parts_dir.glob("*.json"))]
        if not parts:
            return
        doc = merge_documents(parts)
        paths = _session(config).write_outputs(doc)
        import shutil

        shutil.rmtree(parts_dir, ignore_errors=True)
        config.stash[_DOC_KEY] = doc
        config.stash[_PATHS_KEY] = paths
        return
    gate = config.stash.get(_SESSION_KEY, None)
    if gate is None or not (gate._runs or gate.skipped):
        return
    doc = gate.document()
    config.stash[_DOC_KEY] = doc
    if hasattr(config, "workerinput"):
        import json

        worker = config.workerinput.get("workerid", "worker")
        atomic_write_text(_parts_dir(config) / f"{worker}.json", json.dumps(doc, default=str))
        return
    paths = gate.write_outputs(doc)
    if gate.options.update_baselines:
        paths.update({f"baseline {i}": p for i, p in enumerate(gate.update_baselines(), start=1)})
    config.stash[_PATHS_KEY] = paths


_PATHS_KEY: "pytest.StashKey[dict[str, Path]]" = pytest.StashKey()
_DOC_KEY: "pytest.StashKey[dict[str, Any]]" = pytest.StashKey()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Say where the report is and which models were skipped, and how to enable them."""
    doc = config.stash.get(_DOC_KEY, None)
    if doc is None or hasattr(config, "workerinput"):
        return
    tr = terminalreporter
    tr.section("cxr-robust")
    for m in doc["models"]:
        if m["status"] == "measured":
            meta, counts = m["meta"], m["meta"]["dataset_counts"]
            failed = sum(1 for c in m["cells"] if c.get("passed") is False or not c.get("chance_passed", True))
            tr.write_line(f"{m['model']}: {len(m['cells'])} cells on {meta['dataset']} ({counts['images']} images, "
                          f"{counts['studies']} reports), {failed} failing; {meta['text_encodings']} report texts "
                          f"encoded this run; sweep {meta['timings']['total_s']:.1f}s on {meta['device']}")
        else:
            tr.write_line(f"{m['model']}: {m['status']}: {m['reason']}")
    for kind, path in config.stash.get(_PATHS_KEY, {}).items():
        tr.write_line(f"{kind}: {path}")
