"""pytest plugin: the robustness gate as parametrized tests over model x perturbation x severity x k.

Registered through the ``pytest11`` entry point, so any project that installs cxr-robust gets the options
and the ``gate_cell`` fixture. A test module asks for ``gate_cell`` and is parametrized with one case per
(model, condition, k); see ``tests/test_robustness.py``::

    @pytest.mark.robustness
    def test_recall_not_below_baseline(gate_cell):
        gate_cell.check_baseline()

Heavy imports (torch, open_clip) happen only when a cell is first evaluated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:
    from cxr_robust.gate import GateSession, ModelRun
    from cxr_robust.perturbations import Condition

_SESSION_KEY: "pytest.StashKey[GateSession]" = pytest.StashKey()

HELP_GROUP = "cxr-robust"
"""The heading of the gate's options in ``pytest --help`` (the options themselves: :mod:`cxr_robust.options`)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    """The gate's options (``pytest --help``, group cxr-robust) and ini keys, from :mod:`cxr_robust.options`."""
    import argparse

    from cxr_robust.options import for_front_end

    group = parser.getgroup(HELP_GROUP, f"{HELP_GROUP}: chest X-ray retrieval robustness gate")
    for option in for_front_end("pytest"):
        kwargs = option.argparse_kwargs()
        group.addoption(option.flag, dest=option.dest, help=option.help_text(), **kwargs)
        for old in option.deprecated_flags:  # hidden from --help; build_options warns when one is used
            group.addoption(old, dest="deprecated_" + option.dest, help=argparse.SUPPRESS, **kwargs)
    for option in for_front_end("ini"):
        parser.addini(option.ini, help=option.help_text(with_env=False), default=None)


def _value_options() -> list[str]:
    """The gate's command-line flags that take a value (``--cxr-cache-dir PATH`` ...), old spellings too."""
    from cxr_robust.options import for_front_end

    return [flag for o in for_front_end("pytest") if not o.is_flag for flag in (o.flag, *o.deprecated_flags)]


def check_rootdir(config: pytest.Config) -> None:
    """Stop with a usage error when a gate option's value written after a space moved pytest's rootdir.

    pytest chooses its rootdir and ini file before plugin options are known, so in ``--cxr-cache-dir /x`` it
    takes ``/x`` for a test path: ``pytest.ini`` and ``baselines/`` are then looked for around ``/x``. The
    setup is recomputed from the real positional arguments; if it differs, nothing can be trusted.
    """
    args = list(config.invocation_params.args)
    flags = set(_value_options())
    spaced = [(a, args[i + 1]) for i, a in enumerate(args[:-1]) if a in flags and not args[i + 1].startswith("-")]
    if not spaced:
        return
    try:
        from _pytest.config.findpaths import determine_setup

        rootpath, inipath, *_ = determine_setup(
            inifile=config.option.inifilename, override_ini=config.option.override_ini,
            args=list(config.option.file_or_dir or []), rootdir_cmd_arg=config.option.rootdir or None,
            invocation_dir=config.invocation_params.dir)
        moved = (Path(rootpath), inipath and Path(inipath)) != (config.rootpath, config.inipath)
    except (ImportError, TypeError):  # pytest's private API changed: assume the worst if a value is a path
        rootpath, inipath = "the project's", "its own"
        moved = any(Path(value).expanduser().exists() for _, value in spaced)
    if moved:
        fixes = " ".join(f"{flag}={value}" for flag, value in spaced)
        raise pytest.UsageError(
            f"cxr-robust: pytest read the value of {', '.join(f for f, _ in spaced)} as a test path before the "
            f"gate's options were known, and chose rootdir {config.rootpath} (ini file: "
            f"{config.inipath or 'none'}) instead of {rootpath} (ini file: {inipath or 'none'}); the gate would "
            f"not find its configuration and baselines. Write the option with '=': {fixes}")


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marks the gate uses, so ``--strict-markers`` accepts them without pytest-xdist."""
    config.addinivalue_line("markers", "robustness: a cell of the cxr-robust occlusion gate")
    check_rootdir(config)
    if _session(config).options.update_baselines and getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--cxr-update-baselines writes baseline files from one process: run it without -n")
    if not config.pluginmanager.hasplugin("xdist"):
        config.addinivalue_line("markers", "xdist_group(name): keep a model's cells on one pytest-xdist worker")
    elif getattr(config.option, "dist", None) == "load":
        # Each model's cells must share one worker: otherwise several workers sweep the same model (the cache
        # makes that correct but slow). The workers learn it through pytest_configure_node below.
        config.option.dist = "loadgroup"
    if getattr(config, "workerinput", {}).get("cxr_robust_loadgroup"):
        # A worker sets this from its own command line, which says "load": group ids are added to node ids
        # (what loadgroup scheduling groups by) only when it is set.
        config.option.loadgroup = True
    from cxr_robust.models import get_spec

    options = _session(config).options
    for model in options.models:  # a typo is a usage error before anything runs
        try:
            get_spec(model)
        except KeyError as exc:
            raise pytest.UsageError(f"cxr-robust: {exc}") from None
        problem = get_spec(model).configuration_error(options.weights.get(model), options.weights_dir,
                                                      options.bert_vocab)
        if problem:  # a path the user gave explicitly that does not exist is a mistake, not "not configured"
            raise pytest.UsageError(f"cxr-robust: {problem}")
    if options.dataset == "phantom":  # its size is known without loading it: check k <= N now
        from cxr_robust.data.phantom import SPLITS
        from cxr_robust.gate import GateUsageError

        try:
            options.check_grid(options.phantom_studies or SPLITS["eval"], _session(config).dataset_name())
        except GateUsageError as exc:
            raise pytest.UsageError(f"cxr-robust: {exc}") from None


def _command_line(config: pytest.Config) -> dict[str, Any]:
    """The gate's values given on the command line, by GateOptions field; an old spelling warns (or is a usage
    error when the new one is given too)."""
    from cxr_robust.options import DeprecatedOptionWarning, for_front_end

    cli: dict[str, Any] = {}
    for option in for_front_end("pytest"):
        value = config.getoption(option.dest)
        old_value = config.getoption("deprecated_" + option.dest, None) if option.deprecated_flags else None
        if old_value is not None:
            old = option.deprecated_flags[0]
            if value is not None:
                raise pytest.UsageError(f"cxr-robust: {old} and {option.flag} both given; keep {option.flag}")
            config.issue_config_time_warning(DeprecatedOptionWarning(
                f"cxr-robust: {old} is deprecated (it can clash with other plugins' options); write "
                f"{option.flag} instead"), stacklevel=2)
            value = old_value
        cli[option.field] = value
    return cli


def build_options(config: pytest.Config) -> "Any":
    """GateOptions from, in order of precedence: command line, ini file, ``[tool.cxr_robust]`` in
    pyproject.toml, ``CXR_ROBUST_*`` environment variables, defaults (see ``cxr_robust.config``)."""
    from cxr_robust.config import ConfigError, build_gate_options
    from cxr_robust.options import for_front_end

    cli = _command_line(config)
    ini: dict[str, Any] = {o.field: config.getini(o.ini) or None for o in for_front_end("ini")}
    labels = {o.field: o.flag for o in for_front_end("pytest")}
    try:
        return build_gate_options(cli=cli, ini=ini, start=config.rootpath, cli_labels=labels)
    except (ConfigError, ValueError) as exc:
        raise pytest.UsageError(f"cxr-robust: {exc}") from None


def _session(config: pytest.Config) -> "GateSession":
    if _SESSION_KEY not in config.stash:
        from cxr_robust.gate import GateSession

        session = GateSession(build_options(config), config.rootpath)
        session.progress = _terminal_progress(config)
        config.stash[_SESSION_KEY] = session
    return config.stash[_SESSION_KEY]


def _terminal_progress(config: pytest.Config) -> "Callable[[str], None] | None":
    """Progress lines on pytest's terminal while a sweep runs (which happens inside a test, with output
    captured); none with ``-q`` and on pytest-xdist workers (they have no terminal)."""
    if config.getoption("verbose", 0) < 0 or hasattr(config, "workerinput"):
        return None

    def say(line: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture = config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(f"cxr-robust: {line}")

    return say


@dataclass(frozen=True)
class CellParam:
    """The parameter of one gate case: which model, condition and k (both None: the model's grid test)."""

    model: str
    condition: "Condition | None"
    k: int | None

    @property
    def is_grid(self) -> bool:
        """True for the case that tests the model's grid as a whole."""
        return self.condition is None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that uses ``gate_cell`` with the configured model x condition x k grid, plus one
    ``<model>-grid`` case per model (the pooled test of the whole grid); a test that uses ``gate_negation`` gets
    one ``<model>-negation`` case per model."""
    if "gate_negation" in metafunc.fixturenames:
        models = _session(metafunc.config).options.models
        metafunc.parametrize("gate_negation", [pytest.param(m, id=f"{m}-negation", marks=[pytest.mark.xdist_group(m)])
                                               for m in models], indirect=True)
    if "gate_cell" not in metafunc.fixturenames:
        return
    from cxr_robust.gate import cell_id

    options = _session(metafunc.config).options
    params = []
    for m in options.models:
        params.append(pytest.param(CellParam(m, None, None), id=f"{m}-grid", marks=[pytest.mark.xdist_group(m)]))
        params += [pytest.param(CellParam(m, c, k), id=cell_id(m, c, k), marks=[pytest.mark.xdist_group(m)])
                   for c in options.conditions() for k in options.ks]
    metafunc.parametrize("gate_cell", params, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Gate cases carry the ``robustness`` marker even if their module forgot it."""
    for item in items:
        if {"gate_cell", "gate_negation"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.robustness)


class GateCell:
    """What a gate test sees: the cell's (or the grid's) verdicts and the assertions that state them in full."""

    def __init__(self, param: CellParam, run: "ModelRun", session: "GateSession") -> None:
        self.param = param
        self.run = run
        self.session = session
        # a CellDecision, or the model's GridDecision for the grid case
        self.decision: Any = run.grid if param.is_grid else run.decisions[(param.condition, param.k)]

    @property
    def measured(self) -> float:
        """Measured Recall@k (fraction); for the grid case, the mean over its cells."""
        return self.decision.measured

    def _numbers(self) -> str:
        d = self.decision
        base = "none" if d.baseline is None else f"{100 * d.baseline:.2f}%"
        if self.param.is_grid:
            return (f"grid-mean Recall = {100 * d.measured:.2f}% over {d.n_cells} compared cells, baseline {base}, "
                    f"chance {100 * d.chance:.2f}%, M = {d.n_queries} images")
        tol = "" if d.tolerance is None else f", tolerance {100 * d.tolerance:.2f} pp"
        return (f"measured Recall@{d.k} = {100 * d.measured:.2f}%, baseline {base}{tol}, "
                f"chance {100 * d.chance:.2f}% (k/N), N = {d.n_candidates} reports, M = {d.n_queries} images")

    def _where(self) -> str:
        if self.param.is_grid:
            return f"{self.param.model}: the grid as a whole"
        return f"{self.param.model} at {self.param.condition.label}, k = {self.param.k},"

    def check_baseline(self) -> None:
        """Fail when the value is significantly below its baseline, or when it has no baseline at all
        (unless ``--cxr-allow-missing-baseline``: then the case is skipped as NOT COMPARED)."""
        from cxr_robust import verdicts

        d, o = self.decision, self.session.options
        state = verdicts.baseline_state(d.as_dict(), o.effective())
        if state == verdicts.RECORDED:
            assert 0.0 <= d.measured <= 1.0, f"{self.param}: Recall {d.measured} outside [0, 1]"
            return
        if state in (verdicts.MISSING, verdicts.NOT_COMPARED):
            row = self.session.baseline_row(self.param.model)
            reason = (f"no baseline row {row!r} for dataset {self.session.dataset_name()!r} in "
                      f"{o.baselines_dir}/*.csv or {o.baselines_dir}/ranks/; record one with "
                      f"`pytest -m robustness --cxr-models {self.param.model} --cxr-update-baselines` (same dataset "
                      "options)")
            if state == verdicts.NOT_COMPARED:
                pytest.skip(f"NOT COMPARED (--cxr-allow-missing-baseline): {reason}")
            pytest.fail(f"{self._where()} was not compared: {reason}; or pass --cxr-allow-missing-baseline to "
                        "report such cells as NOT COMPARED", pytrace=False)
        if state != verdicts.FAIL:
            return
        verdict = f"adjusted p = {d.p_adjusted:.2g} < alpha {o.alpha} ({d.rule})"
        paired = d.extras.get("paired")
        if paired:
            why = (f"regressed against the recorded run {self.run.baseline_source}: {self._numbers()}; "
                   f"{paired['b']:g} queries lost the hit, {paired['c']:g} gained it; {verdict}")
        else:
            why = f"regressed: {self._numbers()}; difference {100 * (d.measured - d.baseline):+.2f} pp; {verdict}"
        # pytest.fail, not assert: an assertion would append pytest's dump of the decision object.
        pytest.fail(f"{self._where()} {why}", pytrace=False)

    def check_chance(self) -> None:
        """Fail when the value is clearly below chance (k/N), which means broken scoring or a broken index."""
        from cxr_robust import verdicts

        d = self.decision
        if verdicts.chance_state(d.as_dict()) == verdicts.FAIL:
            pytest.fail(f"{self._where()} is clearly BELOW chance, which means scoring or the report index is "
                        f"broken: {self._numbers()}; adjusted p = {d.chance_p_adjusted:.2g} < alpha "
                        f"{self.session.options.alpha}", pytrace=False)


class UnavailableCell:
    """Stands in for a cell whose model cannot run under ``--cxr-require-all``: every check fails with why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def check_baseline(self) -> None:
        pytest.fail(self.reason, pytrace=False)

    check_chance = check_baseline


@pytest.fixture(scope="session")
def cxr_gate(request: pytest.FixtureRequest) -> "GateSession":
    """The session's gate: options, the dataset and one cached sweep per model."""
    return _session(request.config)


@pytest.fixture
def gate_cell(request: pytest.FixtureRequest, cxr_gate: "GateSession") -> GateCell:
    """One (model, condition, k) cell of the gate; skips (or fails with --cxr-require-all) when it cannot run."""
    param: CellParam = request.param
    reason = cxr_gate.unavailable_reason(param.model)
    if reason:
        cxr_gate.skipped[param.model] = reason
        if cxr_gate.options.require_all:  # fail in the test itself (a failure, not a setup error)
            return UnavailableCell(f"--cxr-require-all: {param.model}: {reason}")  # type: ignore[return-value]
        pytest.skip(f"{param.model}: {reason}")
    from cxr_robust.gate import GateUsageError

    run = cxr_gate.run(param.model)
    if isinstance(run.error, GateUsageError):  # a configuration that cannot work: one message, not 49 errors
        pytest.exit(f"cxr-robust: {run.error}", returncode=pytest.ExitCode.USAGE_ERROR)
    if run.error is not None:
        pytest.fail(f"{param.model}: the sweep failed: {type(run.error).__name__}: {run.error}", pytrace=False)
    cell = GateCell(param, run, cxr_gate)
    request.node.stash[_CELL_KEY] = cell
    return cell


_CELL_KEY: "pytest.StashKey[GateCell]" = pytest.StashKey()


class NegationCheck:
    """What a negation test sees: the model's negation decision and the assertion that states it in full."""

    def __init__(self, model: str, run: "ModelRun", session: "GateSession") -> None:
        self.model = model
        self.run = run
        self.session = session
        self.decision = run.negation

    def _numbers(self) -> str:
        d = self.decision
        assert d is not None
        base = "none" if d.baseline is None else f"{100 * d.baseline:.1f}%"
        return (f"negation confusion rate {100 * d.rate:.1f}% (95% CI {100 * d.ci_low:.1f}-{100 * d.ci_high:.1f}%; "
                f"50% = blind), recorded {base}, {d.n_queries} queries, {d.n_twins} twins of {d.n_studies} studies "
                f"({d.method})")

    def check(self) -> None:
        """Fail when the model does not clearly read negation, when it reads it significantly worse than the
        recorded run, or when there is no recorded run (unless ``--cxr-allow-missing-baseline``)."""
        from cxr_robust import verdicts

        d, o = self.decision, self.session.options
        if d is None:
            pytest.fail(f"{self.model}: the sweep measured no negation test although --cxr-negation is on",
                        pytrace=False)
        state = verdicts.negation_state(d.as_dict(), o.effective())
        if d.n_queries == 0:
            pytest.fail(f"{self.model}: the negation test measured nothing: no study of "
                        f"{self.session.dataset_name()} has a negated twin ({d.method}); it cannot pass", pytrace=False)
        if not d.below_half:
            pytest.fail(f"{self.model} is blind to negation: {self._numbers()}; the upper end of the CI must be "
                        f"below 50% ({d.rule})", pytrace=False)
        if state in (verdicts.MISSING, verdicts.NOT_COMPARED):
            reason = (f"no recorded negation values for {self.model!r} on {self.session.dataset_name()!r} in "
                      f"{o.baselines_dir}/ranks/; record them with `pytest -m robustness --cxr-models {self.model} "
                      "--cxr-negation --cxr-update-baselines`")
            if state == verdicts.NOT_COMPARED:
                pytest.skip(f"NOT COMPARED (--cxr-allow-missing-baseline): {reason}")
            pytest.fail(f"{self.model}: the negation test was not compared: {reason}; or pass "
                        "--cxr-allow-missing-baseline to report it as NOT COMPARED", pytrace=False)
        if state == verdicts.FAIL:
            pytest.fail(f"{self.model} reads negation significantly worse than the recorded run "
                        f"{d.baseline_source}: {self._numbers()}; paired p = {d.p_value:.2g} < {d.alpha / 2:g} "
                        f"({d.rule})", pytrace=False)


@pytest.fixture
def gate_negation(request: pytest.FixtureRequest, cxr_gate: "GateSession") -> NegationCheck:
    """One model's negation test (``--cxr-negation``); skips, saying how to enable it, when the option is off."""
    model: str = request.param
    if not cxr_gate.options.negation:
        pytest.skip("the negation test is off: enable it with --cxr-negation (ini cxr_robust_negation = true, "
                    "pyproject [tool.cxr_robust] negation = true)")
    reason = cxr_gate.unavailable_reason(model)
    if reason:
        cxr_gate.skipped[model] = reason
        if cxr_gate.options.require_all:
            pytest.fail(f"--cxr-require-all: {model}: {reason}", pytrace=False)
        pytest.skip(f"{model}: {reason}")
    from cxr_robust.gate import GateUsageError

    run = cxr_gate.run(model)
    if isinstance(run.error, GateUsageError):
        pytest.exit(f"cxr-robust: {run.error}", returncode=pytest.ExitCode.USAGE_ERROR)
    if run.error is not None:
        pytest.fail(f"{model}: the sweep failed: {type(run.error).__name__}: {run.error}", pytrace=False)
    return NegationCheck(model, run, cxr_gate)


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


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, controller side: tell each worker whether loadgroup scheduling is on."""
    node.workerinput["cxr_robust_loadgroup"] = node.config.getvalue("dist") == "loadgroup"


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
    """Write the results and HTML report (and baselines with --cxr-update-baselines) once per run.

    Under pytest-xdist each worker writes its models' results to a part file (and their ranks straight into
    the report directory) and the controller merges the parts. Baselines are recorded only from a run that
    finished with every test passing; an output that cannot be written makes the run fail with one line.
    """
    config = session.config
    from cxr_robust.atomic import OutputError, atomic_write_text
    from cxr_robust.gate import BaselineUpdateRefused
    from cxr_robust.results import load_results, merge_documents

    problems: list[str] = []
    config.stash[_PROBLEMS_KEY] = problems
    gate = config.stash.get(_SESSION_KEY, None)
    try:
        if _is_xdist_controller(config):
            parts_dir = _parts_dir(config)
            parts = [load_results(p) for p in sorted(parts_dir.glob("*.json"))]
            if not parts:
                return
            doc = merge_documents(parts)
            config.stash[_DOC_KEY] = doc
            paths = _session(config).write_outputs(doc)
            import shutil

            shutil.rmtree(parts_dir, ignore_errors=True)
            config.stash[_PATHS_KEY] = paths
            return
        if gate is None or not (gate._runs or gate.skipped):
            return
        doc = gate.document()
        config.stash[_DOC_KEY] = doc
        if hasattr(config, "workerinput"):
            import json

            worker = config.workerinput.get("workerid", "worker")
            gate.save_ranks(gate.options.report_dir)
            atomic_write_text(_parts_dir(config) / f"{worker}.json", json.dumps(doc, default=str))
            return
        paths = gate.write_outputs(doc)
        config.stash[_PATHS_KEY] = paths
        if gate.options.update_baselines:
            if exitstatus != pytest.ExitCode.OK:
                raise BaselineUpdateRefused("--cxr-update-baselines: nothing recorded, because the run did not finish "
                                            f"cleanly (pytest exit status {int(exitstatus)}); fix the failures and "
                                            "record again")
            written, lines = gate.update_baselines()
            paths.update({f"baseline {i}": p for i, p in enumerate(written, start=1)})
            config.stash[_UPDATE_KEY] = lines
    except BaselineUpdateRefused as exc:
        problems.append(str(exc))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    except OutputError as exc:
        problems.append(f"cannot write the gate's outputs: {exc}")
        session.exitstatus = pytest.ExitCode.USAGE_ERROR


_PATHS_KEY: "pytest.StashKey[dict[str, Path]]" = pytest.StashKey()
_DOC_KEY: "pytest.StashKey[dict[str, Any]]" = pytest.StashKey()
_PROBLEMS_KEY: "pytest.StashKey[list[str]]" = pytest.StashKey()
_UPDATE_KEY: "pytest.StashKey[list[str]]" = pytest.StashKey()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The verdict, one line per model (compared / failed / not compared), skipped models and how to enable
    them, what a baseline update changed, and where the report is."""
    from cxr_robust import verdicts

    doc = config.stash.get(_DOC_KEY, None)
    problems = config.stash.get(_PROBLEMS_KEY, [])
    if (doc is None and not problems) or hasattr(config, "workerinput"):
        return
    tr = terminalreporter
    tr.section("cxr-robust")
    if doc is not None:
        verdict, _ = verdicts.run_verdict(doc)
        markup = {"PASS": {"green": True}, "FAIL": {"red": True}}.get(verdict, {"yellow": True})
        tr.write_line(f"gate verdict: {verdict}", bold=True, **markup)
        cfg = doc.get("config") or {}
        for m in doc["models"]:
            if m["status"] == "measured":
                meta, counts = m["meta"], m["meta"]["dataset_counts"]
                t = verdicts.model_tally(m, cfg)
                parts = [f"{t['compared']} compared", f"{t['failed'] + t['missing']} failed",
                         f"{t['not_compared']} not compared"] + ([f"{t['recorded']} recorded"] if t["recorded"] else [])
                against = {"paired": "paired against", "unpaired": "unpaired against"}.get(m.get("mode") or "")
                source = f" ({against} {m.get('baseline_source')})" if against else ""
                grid = " (grid test FAILED)" if t["grid_failed"] else ""
                tr.write_line(
                    f"{m['model']}: {verdicts.model_verdict(m, cfg)}{grid}: {t['cells']} cells on {meta['dataset']} "
                    f"({counts['images']} images, {counts['studies']} reports): {', '.join(parts)}{source}; "
                    f"{meta['text_encodings']} report texts encoded this run; sweep {meta['timings']['total_s']:.1f}s "
                    f"on {meta['device']}")
                neg = m.get("negation")
                if isinstance(neg, dict):
                    base = "" if neg.get("baseline") is None else f", recorded {100 * neg['baseline']:.1f}%"
                    tr.write_line(f"{m['model']}: negation test {verdicts.STATE_LABELS.get(neg.get('state'), '?')}: "
                                  f"confusion rate {100 * neg['rate']:.1f}% (95% CI {100 * neg['ci_low']:.1f}-"
                                  f"{100 * neg['ci_high']:.1f}%; 50% = blind){base}, {neg['n_queries']} queries")
            else:
                tr.write_line(f"{m['model']}: {m['status']}: {m['reason']}")
    for line in config.stash.get(_UPDATE_KEY, []):
        tr.write_line(line)
    for problem in problems:
        tr.write_line(problem, red=True, bold=True)
    for kind, path in config.stash.get(_PATHS_KEY, {}).items():
        tr.write_line(f"{kind}: {path}")


# ----- the "no gate test" hint (cxr_robust/plugin_hints.py) ----------------------------------------------------
# pytest takes one function per hook name from a plugin module, and this one already implements
# pytest_collection_modifyitems and pytest_terminal_summary: these carry other names and say which hook
# they implement with `specname`.
@pytest.hookimpl(tryfirst=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_count_gate_tests(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Count the tests that take ``gate_cell`` before ``-m``/``-k`` deselect any."""
    from cxr_robust.plugin_hints import count_gate_tests

    count_gate_tests(config, items)


@pytest.hookimpl(optionalhook=True, specname="pytest_xdist_node_collection_finished")
def pytest_xdist_node_collection_finished_count(node: Any, ids: list[str]) -> None:
    """pytest-xdist, controller side: count what the workers collected (the controller collects nothing)."""
    from cxr_robust.plugin_hints import note_worker_collection

    note_worker_collection(node.config, ids)


@pytest.hookimpl(specname="pytest_terminal_summary")
def pytest_terminal_summary_no_gate_hint(terminalreporter: Any, config: pytest.Config) -> None:
    """``-m robustness`` without any gate test: say how to get one instead of a bare "collected 0 items"."""
    from cxr_robust.plugin_hints import write_hint

    write_hint(terminalreporter, config)
