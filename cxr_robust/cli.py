"""``cxr-robust``: the gate outside pytest (run a sweep, render a report, compare runs, list models, check data).

Each subcommand is one small function over the library (:class:`~cxr_robust.gate.GateSession`,
:mod:`cxr_robust.results`, :mod:`cxr_robust.report`); options come from the same layers as the pytest plugin
(:mod:`cxr_robust.config`): command line > ``pyproject.toml [tool.cxr_robust]`` > ``CXR_ROBUST_*`` > defaults.

Exit codes are defined once in :mod:`cxr_robust.exit_codes` (0 OK, 1 a cell failed, 2 usage error, 3 a model
could not run, 4 a sweep errored; the largest applies). Every user mistake (a bad option value, a path that
does not exist or cannot be written, runs that cannot be compared) is one line on stderr naming the option or
file and what to do, exit 2, checked before any model work where possible.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import importlib.util
import json
import logging
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Sequence

from cxr_robust import __version__
from cxr_robust.atomic import OutputError, atomic_open, check_writable_dir, check_writable_file
from cxr_robust.baselines import severity_text
from cxr_robust.exit_codes import EXIT_ERROR, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, SUMMARY, help_text

if TYPE_CHECKING:
    from cxr_robust.gate import GateOptions
    from cxr_robust.perturbations import Condition

__all__ = ["EXIT_ERROR", "EXIT_FAILED", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "build_parser",
           "compare_documents", "compare_paired", "find_ranks", "main", "weights_status"]


class UsageProblem(Exception):
    """A problem with what the user asked for: printed without a traceback, exit code 2."""


def _say(*parts: Any) -> None:
    print(*parts, flush=True)


def _err(message: str) -> None:
    print(f"cxr-robust: error: {message}", file=sys.stderr, flush=True)


# ----- shared option handling ---------------------------------------------------------------------------------
# The flags come from cxr_robust.options (declared once for every front end); each has a short spelling
# (--models, --out) and the pytest plugin's --cxr- one.
def _flag_labels() -> dict[str, str]:
    """GateOptions field -> its command-line flag, so configuration errors name the option as typed."""
    from cxr_robust.options import for_front_end

    return {o.field: o.cli_flags[0] for o in for_front_end("cli")}


def _add_project_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", metavar="DIR", default=".",
                   help="project root: where pyproject.toml is searched from and baselines/ lives (default .)")
    p.add_argument("--no-pyproject", action="store_true", help="ignore [tool.cxr_robust] in pyproject.toml")


def _add_gate_args(p: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    from cxr_robust.options import add_to_argparse

    group = p.add_argument_group("gate options (as the pytest plugin's; also settable in [tool.cxr_robust])")
    add_to_argparse(group, "cli", only)


def _gate_options(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> "GateOptions":
    """GateOptions from the command line over pyproject and environment (config errors -> UsageProblem)."""
    from cxr_robust.config import ConfigError, build_gate_options

    cli = {k[len("opt_"):]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    cli.update(extra or {})
    try:
        return build_gate_options(cli=cli, start=args.project, use_pyproject=not args.no_pyproject,
                                  cli_labels=_flag_labels())
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None


def _check_models(models: Sequence[str], project: str) -> None:
    """Unknown names are usage errors; ad-hoc 'module:factory' targets import from the project like pytest's."""
    from cxr_robust.models import get_spec

    if any(":" in m for m in models):
        # A console script does not put the working directory on sys.path (pytest does, via the rootdir
        # conftest); without this `--models mypkg.model:build` would work under pytest but not here.
        for folder in (str(Path(project).resolve()), str(Path.cwd())):
            if folder not in sys.path:
                sys.path.insert(0, folder)
    from cxr_robust.models.registry import resolve

    for model in models:
        try:
            spec = get_spec(model)
            if ":" in model and spec.factory == model:  # ad hoc: a typo in the target is a usage error too
                resolve(spec.factory)
        except KeyError as exc:
            raise UsageProblem(str(exc)) from None
        except (ImportError, ValueError) as exc:
            raise UsageProblem(f"--models {model}: {exc}; check the module path (importable from --project) "
                               "and the factory's name") from None


def _check_weights_flags(args: argparse.Namespace, models: Sequence[str]) -> None:
    """A ``--weights NAME=PATH`` for a model that is not registered is a typo, not something to ignore."""
    from cxr_robust.models import available

    known = set(available()) | set(models)
    for item in args.opt_weights or ():
        name = item.partition("=")[0].strip()
        if name and name not in known and ":" not in name:
            close = difflib.get_close_matches(name, sorted(known), n=2, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UsageProblem(f"--weights {item}: no model named {name!r}{hint} (see `cxr-robust models`)")


def _check_model_paths(options: "GateOptions") -> None:
    """Weights, weights directory or vocabulary paths that were given but do not exist: stop, naming them."""
    from cxr_robust.models import get_spec

    problems = []
    for model in options.models:
        spec = get_spec(model)
        problem = spec.configuration_error(options.weights.get(model), options.weights_dir,
                                           options.bert_vocab if spec.needs_bert_vocab else None)
        if problem and problem not in problems:  # a bad --weights-dir is named once, not per model
            problems.append(problem)
    if problems:
        raise UsageProblem("; ".join(problems))


# ----- run ------------------------------------------------------------------------------------------------------
def _failing(run: Any, options: "GateOptions") -> list[Any]:
    """The cells (and the grid test) of a measured model that fail the gate, decided by :mod:`verdicts` exactly
    as the pytest cases and the report decide them."""
    from cxr_robust import verdicts

    config = options.effective()
    cells = [d for d in run.decisions.values() if verdicts.cell_state(d.as_dict(), config) in verdicts.FAILING_STATES]
    grid = [run.grid] if run.grid is not None and verdicts.grid_fails(run.grid.as_dict(), config) else []
    return cells + grid


def _describe_cell(d: Any, options: "GateOptions") -> str:
    """One line with the numbers and every check the cell (or grid test) failed, as :mod:`verdicts` states them."""
    from cxr_robust import verdicts

    cell, config = d.as_dict(), options.effective()
    base = "no baseline" if d.baseline is None else f"baseline {100 * d.baseline:.2f}%"
    why = []
    state = verdicts.baseline_state(cell, config)
    if state == verdicts.FAIL:
        why.append(f"regressed, adjusted p = {d.p_adjusted:.2g}")
    elif state == verdicts.MISSING:
        why.append("no baseline: record one with --update-baselines, or pass --allow-missing-baseline")
    if verdicts.chance_state(cell) == verdicts.FAIL:
        why.append("clearly BELOW chance: scoring or the report index is broken")
    where = "grid (all cells pooled)" if not hasattr(d, "condition") else f"{d.condition.token} k{d.k}"
    return (f"{where}: measured {100 * d.measured:.2f}%, {base}, chance {100 * d.chance:.2f}%: {'; '.join(why)}")


_SOURCES = {"mimic": ("mimic_root", "mimic_reports"), "manifest": ("manifest",)}
"""Dataset -> the GateOptions fields that only it reads (a given one implies that dataset)."""


def _dataset_from_flags(args: argparse.Namespace) -> str | None:
    """The dataset named or implied on the command line, or None (then the configured one applies).

    ``--mimic-root`` / ``--mimic-reports`` imply ``--dataset mimic`` and ``--manifest`` implies
    ``--dataset manifest``; flags of both, or of another dataset than ``--dataset`` names, are refused
    rather than silently ignored.
    """
    labels = _flag_labels()
    given = {kind: [labels[f] for f in fields if getattr(args, f"opt_{f}", None)]
             for kind, fields in _SOURCES.items()}
    implied = [kind for kind, flags in given.items() if flags]
    chosen = args.opt_dataset
    if chosen is None and len(implied) > 1:
        flags = " and ".join(", ".join(given[kind]) for kind in implied)
        raise UsageProblem(f"{flags} name two datasets; pass --dataset mimic or --dataset manifest (and drop the "
                           "other's options)")
    if chosen is None:
        return implied[0] if implied else None
    stray = [flag for kind in implied if kind != chosen for flag in given[kind]]
    if stray:
        raise UsageProblem(f"{', '.join(stray)} {'is' if len(stray) == 1 else 'are'} not used with --dataset "
                           f"{chosen}; drop {'it' if len(stray) == 1 else 'them'}, or pass --dataset "
                           f"{next(k for k in implied if k != chosen)}")
    return chosen


def _check_dataset_source(options: "GateOptions") -> None:
    """A mimic or manifest dataset without its path: a usage error, not a run that measures nothing."""
    if options.dataset == "mimic" and not options.mimic_root:
        raise UsageProblem("the mimic dataset needs --mimic-root DIR (or mimic_root in [tool.cxr_robust], or "
                           "$CXR_ROBUST_MIMIC_ROOT)")
    if options.dataset == "manifest" and not options.manifest:
        raise UsageProblem("the manifest dataset needs --manifest CSV (or manifest in [tool.cxr_robust], or "
                           "$CXR_ROBUST_MANIFEST)")


def _check_inputs(options: "GateOptions") -> None:
    """Input files that were named but do not exist (checked before any model work)."""
    for path in options.baselines:
        if not Path(path).is_file():
            raise UsageProblem(f"--baselines {path}: no such file; pass existing baseline CSVs, or drop --baselines "
                               f"to use every CSV in {options.baselines_dir}/")
    if options.compare_to and not Path(options.compare_to).exists():
        raise UsageProblem(f"--compare-to {options.compare_to}: no such file or directory; pass a ranks .npz, a "
                           "baselines directory or a results directory holding ranks/")


def _check_outputs(options: "GateOptions", project: str) -> None:
    """Where the run will write must be writable before anything is measured (OutputError otherwise)."""
    check_writable_dir(options.report_dir, "--out")
    if options.update_baselines:
        check_writable_dir(Path(project) / options.baselines_dir, "--baselines-dir")


def _record_baselines(session: Any) -> dict[str, Path]:
    """``--update-baselines``: record the measured models; a refusal (a sweep errored) is said, not raised."""
    from cxr_robust.gate import BaselineUpdateRefused

    try:
        written, lines = session.update_baselines()
    except BaselineUpdateRefused as exc:  # the sweep error already set the exit code
        _say(str(exc))
        return {}
    for line in lines:
        _say(line)
    return {f"baseline {i}": p for i, p in enumerate(written, 1)}


def cmd_run(args: argparse.Namespace) -> int:
    """Run the gate's sweeps outside pytest and write the results directory."""
    from cxr_robust.gate import GateSession, GateUsageError

    extra: dict[str, Any] = {}
    dataset = _dataset_from_flags(args)
    if dataset is not None and args.opt_dataset is None:
        extra["dataset"] = dataset
        flags = [_flag_labels()[f] for f in _SOURCES[dataset] if getattr(args, f"opt_{f}")]
        _say(f"dataset {dataset} (implied by {', '.join(flags)})")
    options = _gate_options(args, extra)
    # Every check that needs no model work comes first: a mistake costs seconds, not a sweep.
    _check_models(options.models, args.project)
    _check_weights_flags(args, options.models)
    _check_model_paths(options)
    _check_dataset_source(options)
    _check_inputs(options)
    _check_outputs(options, args.project)
    session = GateSession(options, rootdir=args.project)
    # Progress goes to stderr, so stdout stays the run's summary (and scripts can parse it).
    session.progress = lambda line: print(f"cxr-robust: {line}", file=sys.stderr, flush=True)
    runnable = []
    for model in options.models:
        reason = session.unavailable_reason(model)
        if reason:
            session.skipped[model] = reason
            _say(f"{model}: {'UNAVAILABLE' if options.require_all else 'skipped'}: {reason}")
        else:
            runnable.append(model)
    if runnable:
        try:  # data that cannot be loaded is a configuration problem, reported once rather than per model
            data = session.dataset()
        except GateUsageError as exc:  # the data loaded but the grid does not fit it (k > N)
            raise UsageProblem(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - any loader error is shown to the user with its type
            raise UsageProblem(f"cannot load the {options.dataset} dataset: {type(exc).__name__}: {exc}") from None
        _say(f"dataset {data.name}: {data.num_studies} reports, {data.num_images} images")
    codes = [EXIT_UNAVAILABLE] if options.require_all and session.skipped else []
    cells = not_compared = 0
    for model in runnable:
        run = session.run(model)
        if isinstance(run.error, GateUsageError):  # e.g. a damaged --compare-to file: the user's to fix
            raise UsageProblem(str(run.error))
        if run.error is not None:
            _say(f"{model}: ERROR: {type(run.error).__name__}: {run.error}")
            codes.append(EXIT_ERROR)
            continue
        meta = run.result.meta
        failing = _failing(run, options)
        cells_failing = sum(1 for d in failing if d is not run.grid)
        grid = "; grid test FAILED" if any(d is run.grid for d in failing) else ""
        no_base = sum(1 for d in run.decisions.values() if d.baseline is None)
        cells += len(run.decisions)
        not_compared += no_base if options.allow_missing_baseline else 0
        state = "NOT COMPARED" if no_base and options.allow_missing_baseline and not failing else ""
        _say(f"{model}: {len(run.decisions)} cells, {cells_failing} failing{grid}, {no_base} without baseline "
             f"({run.mode}: {run.baseline_source or 'no baseline'}){' ' + state if state else ''}; sweep "
             f"{meta['timings']['total_s']:.1f}s on {meta['device']}")
        for d in failing:
            _say(f"  FAIL {_describe_cell(d, options)}")
        if failing:
            codes.append(EXIT_FAILED)
    if session._runs or session.skipped:  # a run that only skipped still leaves a report saying why
        paths = session.write_outputs()
        if options.update_baselines and max(codes, default=EXIT_OK) != EXIT_OK:
            _say("--update-baselines: nothing recorded, because the run did not finish cleanly (see above)")
        elif options.update_baselines:
            paths.update(_record_baselines(session))
        for kind, path in paths.items():
            _say(f"{kind}: {path}")
    if not session._runs:
        _say("no model was measured" + (" (see the reasons above)" if session.skipped else ""))
        codes.append(EXIT_UNAVAILABLE)  # nothing was checked, so the gate cannot have passed
    code = max(codes, default=EXIT_OK)
    if code == EXIT_OK and not_compared:  # exit 0 was asked for, but "passed" would be a false green
        _say(f"exit 0: NOT COMPARED: no cell failed, but {not_compared} of {cells} cells had no baseline "
             "(--allow-missing-baseline)")
    else:
        _say(f"exit {code}: {SUMMARY[code]}")
    return code


# ----- report ---------------------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    """Render report.html from a results directory or results.json."""
    from cxr_robust.report import write_report

    src = Path(args.results)
    out = Path(args.output) if args.output else (src if src.is_dir() else src.parent) / "report.html"
    check_writable_file(out, "-o" if args.output else "report")
    doc = _load(args.results)
    _say(f"html: {write_report(doc, out)}")
    return EXIT_OK


def _load(path: str) -> dict[str, Any]:
    from cxr_robust.results import load_results

    try:
        return load_results(path)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise UsageProblem(str(exc)) from None


# ----- compare --------------------------------------------------------------------------------------------------
def find_ranks(results_dir: Path, model: str) -> Path | None:
    """The ranks file a run wrote for ``model`` (``<dir>/ranks/*.npz`` whose metadata names it), if any.

    A damaged file there raises :class:`~cxr_robust.results.RanksFileError`: it may be the one asked for,
    so falling back to an unpaired comparison without saying so would hide it.
    """
    from cxr_robust.results import load_ranks

    folder = results_dir / "ranks"
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.npz")):
        if load_ranks(path)[2].get("model") == model:
            return path
    return None


def compare_paired(ranks_a: Path, ranks_b: Path, ks: Sequence[int],
                   alpha: float) -> dict[tuple[Condition, int], dict] | None:
    """Paired per-cell decisions (B against A) from two ranks files via ``cxr_robust.paired.paired_decide``.

    Returns ``{(condition, k): decision dict}`` (Holm-adjusted over the model's grid), or None when
    that module is not installed or the runs cannot be paired (other images or report set): the caller
    then falls back to unpaired differences.
    """
    if importlib.util.find_spec("cxr_robust.paired") is None:
        return None
    from cxr_robust.paired import paired_decide
    from cxr_robust.results import load_ranks

    ca, ids_a, _ = load_ranks(ranks_a)
    cb, ids_b, _ = load_ranks(ranks_b)
    shared = sorted(set(ca) & set(cb))
    try:
        decisions = paired_decide({r: ca[r] for r in shared}, {r: cb[r] for r in shared}, ids_a, ids_b,
                                  ks=list(ks), alpha=alpha)
    except (ValueError, TypeError) as exc:  # not the same queries/reports: an unpaired comparison still works
        logging.getLogger(__name__).warning("cannot pair %s with %s (%s); comparing unpaired", ranks_a, ranks_b, exc)
        return None
    out = {}
    for d in decisions:
        row = d.as_dict() if hasattr(d, "as_dict") else asdict(d) if is_dataclass(d) else dict(d)
        out[(d.condition, int(d.k))] = row
    return out


def _cells(doc: dict) -> dict[tuple[str, Condition, int], dict]:
    from cxr_robust.results import cell_condition

    return {(m["model"], cell_condition(c), int(c["k"])): c for m in doc["models"] if m.get("status") == "measured"
            for c in m["cells"]}


def compare_documents(doc_a: dict, doc_b: dict, dir_a: Path | None = None, dir_b: Path | None = None,
                      alpha: float = 0.05) -> list[dict[str, Any]]:
    """One row per cell measured in both runs: values, difference (B - A) and the test used.

    Paired (``cxr_robust.paired``) where both runs left per-query ranks of the model; otherwise an unpaired,
    unadjusted normal interval on the difference of two proportions.
    """
    a, b = _cells(doc_a), _cells(doc_b)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    paired: dict[str, dict | None] = {}
    rows = []
    for key in sorted(set(a) & set(b)):
        model, cond, k = key
        ca, cb = a[key], b[key]
        if model not in paired:
            ra = find_ranks(dir_a, model) if dir_a else None
            rb = find_ranks(dir_b, model) if dir_b else None
            ks = sorted({kk for (m, _, kk) in a if m == model})
            paired[model] = compare_paired(ra, rb, ks, alpha) if ra and rb else None
        va, vb = float(ca["measured"]), float(cb["measured"])
        row = {"model": model, "perturbation": cond.perturbation, "severity": severity_text(cond), "k": k,
               "a_pct": 100 * va, "b_pct": 100 * vb, "diff_pp": 100 * (vb - va)}
        decision = (paired[model] or {}).get((cond, k))
        if decision is not None:
            row.update(test="paired", p=decision.get("p_adjusted"), method=decision.get("method"),
                       verdict="worse" if decision.get("passed") is False else "")
        else:
            se = (va * (1 - va) / max(int(ca["n_queries"]), 1) + vb * (1 - vb) / max(int(cb["n_queries"]), 1)) ** 0.5
            lo, hi = vb - va - z * se, vb - va + z * se
            row.update(test="unpaired", p=None, ci_pp=(100 * lo, 100 * hi),
                       verdict="worse" if hi < 0 else "better" if lo > 0 else "")
        rows.append(row)
    return rows


def _data_size(doc: dict) -> tuple[Any, Any] | None:
    """``(studies, images)`` of a results document's dataset, or None when it does not record them."""
    counts = (doc.get("dataset") or {}).get("counts") or {}
    return (counts["studies"], counts["images"]) if "studies" in counts and "images" in counts else None


def _data_label(doc: dict) -> str:
    """``name (S studies / I images)`` of a results document's dataset, as far as it is recorded."""
    size = _data_size(doc)
    name = (doc.get("dataset") or {}).get("name") or "an unnamed dataset"
    return f"{name} ({size[0]} studies / {size[1]} images)" if size else name


def check_comparable(doc_a: dict, doc_b: dict, a: str, b: str) -> None:
    """Refuse (UsageProblem) two runs measured on different data: their differences would mean nothing.

    Compares the dataset names and sizes where both documents record them, and the number of candidate
    reports of every cell they share (which also sets the chance level).
    """
    name_a, name_b = ((d.get("dataset") or {}).get("name") for d in (doc_a, doc_b))
    size_a, size_b = _data_size(doc_a), _data_size(doc_b)
    ca, cb = _cells(doc_a), _cells(doc_b)
    n_cand = [(ca[key].get("n_candidates"), cb[key].get("n_candidates")) for key in set(ca) & set(cb)]
    if ((name_a and name_b and name_a != name_b) or (size_a and size_b and size_a != size_b)
            or any(na is not None and nb is not None and int(na) != int(nb) for na, nb in n_cand)):
        raise UsageProblem(f"cannot compare: A ({a}) was measured on {_data_label(doc_a)} and B ({b}) on "
                           f"{_data_label(doc_b)}; compare runs of the same dataset and size (same --dataset, "
                           "--phantom-studies, --mimic-split and --views)")


def cmd_compare(args: argparse.Namespace) -> int:
    """Per-cell differences between two results directories (B minus A)."""
    from cxr_robust.results import RanksFileError

    if not 0 < args.alpha < 1:  # also refuses NaN
        raise UsageProblem(f"--alpha must be in (0, 1), e.g. 0.05; got {args.alpha:g}")
    if args.csv:
        check_writable_file(args.csv, "--csv")
    doc_a, doc_b = _load(args.a), _load(args.b)
    check_comparable(doc_a, doc_b, args.a, args.b)
    dir_a = Path(args.a) if Path(args.a).is_dir() else Path(args.a).parent
    dir_b = Path(args.b) if Path(args.b).is_dir() else Path(args.b).parent
    try:
        rows = compare_documents(doc_a, doc_b, dir_a, dir_b, alpha=args.alpha)
    except RanksFileError as exc:
        raise UsageProblem(str(exc)) from None
    only_a = set(_cells(doc_a)) - set(_cells(doc_b))
    only_b = set(_cells(doc_b)) - set(_cells(doc_a))
    if not rows:
        raise UsageProblem(f"{args.a} and {args.b} have no measured cell in common (same model, perturbation, severity, k)")
    _print_comparison(args, rows, only_a, only_b)
    if args.csv:
        _write_comparison_csv(args.csv, rows)
        _say(f"csv: {args.csv}")
    worse = [r for r in rows if r["verdict"] == "worse"]
    return EXIT_FAILED if worse and args.fail_on_regression else EXIT_OK


def _print_comparison(args: argparse.Namespace, rows: list[dict[str, Any]], only_a: set, only_b: set) -> None:
    """The comparison table and its summary lines on stdout."""
    _say(f"A = {args.a}\nB = {args.b}\n")
    header = (f"{'model':<24} {'condition':<18} {'k':>4} {'A %':>8} {'B %':>8} {'B-A pp':>8}  {'test':<8} "
              f"{'detail':<26} verdict")
    _say(header)
    _say("-" * len(header))
    for r in rows:
        detail = (f"Holm p = {r['p']:.2g}" if r.get("p") is not None else "") if r["test"] == "paired" else \
            f"95% CI [{r['ci_pp'][0]:+.2f}, {r['ci_pp'][1]:+.2f}]" if "ci_pp" in r else ""
        cond = f"{r['perturbation']} {r['severity']}"
        _say(f"{r['model']:<24} {cond:<18} {r['k']:>4} {r['a_pct']:>8.2f} {r['b_pct']:>8.2f} "
             f"{r['diff_pp']:>+8.2f}  {r['test']:<8} {detail:<26} {r['verdict']}")
    worse = [r for r in rows if r["verdict"] == "worse"]
    tests = sorted({r["test"] for r in rows})
    _say(f"\n{len(rows)} cells compared ({', '.join(tests)}); {len(worse)} significantly worse in B"
         + (f"; {len(only_a)} cells only in A, {len(only_b)} only in B" if only_a or only_b else ""))
    if "unpaired" in tests:
        _say("unpaired: normal interval on the difference of two proportions, not adjusted for multiple cells; "
             "runs that left ranks/ (cxr-robust run) on the same images are compared paired when "
             "cxr_robust.paired is installed")


def _write_comparison_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """The comparison rows as CSV, written atomically (OutputError naming ``--csv`` otherwise)."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["model", "perturbation", "severity", "k", "a_pct", "b_pct", "diff_pp", "test",
                                           "p", "method", "ci_pp", "verdict"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


# ----- models ---------------------------------------------------------------------------------------------------
def weights_status(name: str, options: "GateOptions") -> dict[str, Any]:
    """Whether ``name``'s weights are found here and from where, or the reason they are not."""
    import os

    from cxr_robust.models import DEMO_MODEL, WEIGHTS_DIR_ENV, get_spec

    spec = get_spec(name)
    explicit = options.weights.get(name)
    error = spec.configuration_error(explicit, options.weights_dir, options.bert_vocab if spec.needs_bert_vocab
                                     else None)
    missing = error or spec.missing(explicit, options.weights_dir, options.bert_vocab)
    status: dict[str, Any] = {"available": missing is None, "path": None, "source": None, "reason": missing,
                              "configuration_error": error, "weight_files": list(spec.weight_files),
                              "weights_env": spec.weights_env, "source_url": spec.source_url or None,
                              "weights_missing": False, "vocab_missing": False}
    if error:  # a given path that does not exist: nothing more to look up
        return status
    if missing:  # which of the two things a model can lack, so `models` can say where each goes
        status["weights_missing"] = not spec.builtin_weights and spec.locate_weights(explicit,
                                                                                     options.weights_dir) is None
        status["vocab_missing"] = spec.needs_bert_vocab and _vocab_missing(options.bert_vocab, name)
    path = spec.locate_weights(explicit, options.weights_dir)
    if path is not None:
        if explicit:
            source = "--weights / [tool.cxr_robust] weights"
        elif spec.weights_env and os.environ.get(spec.weights_env):
            source = f"${spec.weights_env}"
        else:
            source = f"weights dir {options.weights_dir or os.environ.get(WEIGHTS_DIR_ENV)}"
        status.update(path=str(path), source=source)
    elif spec.builtin_weights and name == DEMO_MODEL:
        from cxr_robust.models.demo import WEIGHTS_FILE

        status.update(path=str(WEIGHTS_FILE), source="shipped in the cxr-robust package")
        if not WEIGHTS_FILE.is_file():  # the spec cannot know that a packaged file went missing
            status.update(available=False, reason=f"{WEIGHTS_FILE} is missing; reinstall cxr-robust or run "
                                                  "`python -m cxr_robust.train_demo`")
    elif spec.builtin_weights:
        status.update(source="built in (the model's own package provides them)")
    if spec.needs_bert_vocab and status["available"]:
        from cxr_robust.models.bert import find_bert_vocab

        status["bert_vocab"] = str(find_bert_vocab(options.bert_vocab, model_name=repr(name)))
    return status


def _vocab_missing(bert_vocab: str | None, name: str) -> bool:
    """True when Bio_ClinicalBERT's vocab.txt is not found (option, ``$CXR_ROBUST_BERT_VOCAB`` or HF cache)."""
    from cxr_robust.models.bert import find_bert_vocab
    from cxr_robust.models.registry import MissingWeightsError

    try:
        find_bert_vocab(bert_vocab, model_name=repr(name))
    except MissingWeightsError:
        return True
    return False


def cmd_perturbations(args: argparse.Namespace) -> int:
    """List registered perturbations: name, test-id token, group, the parameter per level and its source."""
    from cxr_robust.perturbations import available, get_perturbation

    rows = []
    for name in available():
        p = get_perturbation(name)
        levels = ", ".join(f"{p.format_severity(s)}={p.parameter(s)!r}" for s in p.default_severities if s)
        rows.append({"name": p.name, "id": p.id_token(p.default_severities[-1]), "group": p.group,
                     "parameter": p.parameter_name, "levels": levels, "source": p.source,
                     "description": p.description})
    if args.json:
        _say(json.dumps(rows, indent=1))
        return EXIT_OK
    for r in rows:
        _say(f"{r['name']:<16} {r['group']:<10} e.g. {r['id']}\n    {r['description']}\n"
             f"    {r['parameter']}: {r['levels']}\n    source: {r['source']}")
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    """List registered metrics: name, what it measures, how it aggregates and how a paired comparison tests it."""
    from cxr_robust.metric_registry import available_metrics, get_metric

    rows = []
    for name in available_metrics():
        m = get_metric(name)
        rows.append({"name": m.name, "label": m.label, "per_k": m.per_k, "higher_is_better": m.higher_is_better,
                     "aggregate": m.aggregate, "unit": m.unit, "paired_test": m.paired_test,
                     "description": m.description})
    if args.json:
        _say(json.dumps(rows, indent=1))
        return EXIT_OK
    for r in rows:
        better = "higher is better" if r["higher_is_better"] else "lower is better"
        _say(f"{r['name']:<16} {r['label']} ({r['aggregate']} over queries, {better})\n    {r['description']}\n"
             f"    paired test: {r['paired_test']}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    """List registered models with baseline row, default text policy and where their weights are."""
    from cxr_robust.models import available, get_spec

    options = _gate_options(args)
    _check_weights_flags(args, ())
    rows = []
    for name in available():
        spec = get_spec(name)
        rows.append({"name": name, "baseline_row": spec.baseline_row, "text_policy": spec.default_text_policy.value,
                     "description": spec.description,
                     "options": {**spec.options, **options.model_options.get(name, {})},
                     **weights_status(name, options)})
    errors = list(dict.fromkeys(r["configuration_error"] for r in rows if r["configuration_error"]))
    if args.json:
        _say(json.dumps(rows, indent=1))
    else:
        _print_models(rows)
    if errors:  # listed above too; the exit code makes a wrong path in CI fail here, not at the gate
        raise UsageProblem("; ".join(errors))
    return EXIT_OK


_VOCAB_URL = "https://huggingface.co/emilyalsentzer/Bio_ClinicalBERT/resolve/main/vocab.txt"


def _print_models(rows: list[dict[str, Any]]) -> None:
    """The ``cxr-robust models`` table: one line per model (name, baseline row, text policy, found or not),
    then indented lines saying where its weights are or where to put them, all within the terminal's width
    (72 to 100 columns). ``--json`` has every field in full."""
    import shutil

    width = max(72, min(shutil.get_terminal_size((100, 24)).columns, 100))  # 72: the row's own columns
    _say(f"{'model':<16} {'baseline row':<15} {'text policy':<20} weights")
    for r in rows:
        state = "found" if r["available"] else "WRONG PATH" if r["configuration_error"] else "NOT FOUND"
        # With no declared row the gate files the model's baseline under its own name.
        for line in _wrapped(f"{r['name']:<16} {r['baseline_row'] or r['name']:<15} {r['text_policy']:<20} "
                             f"{state}", width, indent=""):
            _say(line)
        for detail in _model_details(r):
            for line in _wrapped(detail, width):
                _say(line)
        if r.get("options"):  # what --cxr-model-option can change, as this run would build the model
            settings = ", ".join(f"{k}={'none' if v is None else v}" for k, v in r["options"].items())
            for line in _wrapped(f"options: {settings} (--cxr-model-option {r['name']}:KEY=VALUE)", width):
                _say(line)
    notes = []
    if any(r.get("vocab_missing") for r in rows):
        notes.append(f"Bio_ClinicalBERT's vocab.txt (MedCLIP, CXR-CLIP): pass --cxr-bert-vocab PATH (the file or its "
                     f"folder) or set $CXR_ROBUST_BERT_VOCAB; download it from {_VOCAB_URL}")
    notes.append("ad-hoc models: pass 'package.module:factory' to --cxr-models; register one by name with the "
                 "'cxr_robust.models' entry point group (docs/usage.md); every detail: cxr-robust models --json")
    for note in notes:
        _say("")
        for line in _wrapped(note, width, indent="", subsequent="    "):
            _say(line)


def _model_details(r: dict[str, Any]) -> list[str]:
    """The indented lines under a model's row: its weights' path, or what is wrong and where files go."""
    if r["available"]:
        return [f"{r['path']} ({r['source']})" if r["path"] else r["source"] or "built in",
                *([f"vocab: {r['bert_vocab']}"] if r.get("bert_vocab") else [])]
    if r["configuration_error"]:
        return [r["configuration_error"]]
    details = []
    if r["weights_missing"]:
        files = " or ".join(r["weight_files"]) or "the weights file"
        env = f", or set ${r['weights_env']}" if r["weights_env"] else ""
        details.append(f"put {files} in --cxr-weights-dir DIR (or $CXR_ROBUST_WEIGHTS_DIR), or pass "
                       f"--cxr-weights {r['name']}=PATH{env}")
        if r["source_url"]:
            details.append(f"published at {r['source_url']}")
    if r["vocab_missing"]:
        details.append("and Bio_ClinicalBERT's vocab.txt (below)")
    return details or [r["reason"]]  # any other reason (a shipped file gone missing): as the registry says it


def _wrapped(text: str, width: int, indent: str = "    ", subsequent: str | None = None) -> list[str]:
    """``text`` wrapped to ``width``; an address too long for one line is not broken but referred to --json."""
    import textwrap

    sub = indent if subsequent is None else subsequent
    lines = textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=sub, break_long_words=False,
                          break_on_hyphens=False)
    if all(len(line) <= width for line in lines):
        return lines
    if "://" in text:  # a URL cut in two cannot be pasted: point at where it is whole
        short = " ".join(w if "://" not in w or len(sub) + len(w) <= width else "(address: docs/models.md, or --json)"
                         for w in text.split(" "))
        return _wrapped(short, width, indent, subsequent)
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=sub, break_on_hyphens=False)


# ----- check-data -----------------------------------------------------------------------------------------------
def _counts_line(counts: dict[str, Any]) -> str:
    from cxr_robust.results import PAPER_COUNTS

    s, i = counts["studies"], counts["images"]
    return (f"{s:,} studies / {i:,} images   (paper: {PAPER_COUNTS['studies']:,} / {PAPER_COUNTS['images']:,}; "
            f"difference {s - PAPER_COUNTS['studies']:+,} / {i - PAPER_COUNTS['images']:+,})")


def _by_reason(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items() if v) or "none"


def cmd_check_data(args: argparse.Namespace) -> int:
    """Load a MIMIC-CXR root or a manifest the way the gate would and print what it yields."""
    from cxr_robust.results import PAPER_COUNTS

    options = _gate_options(args)
    # What was named on the command line wins; otherwise the configured dataset decides.
    use_manifest = bool(args.opt_manifest) or (not args.opt_mimic_root and options.dataset == "manifest")
    manifest = options.manifest if use_manifest else None
    mimic_root = None if use_manifest else options.mimic_root
    if not mimic_root and not manifest and options.manifest:
        manifest = options.manifest
    if not mimic_root and not manifest:
        raise UsageProblem("nothing to check: pass --mimic-root DIR (MIMIC-CXR-JPG) or --manifest CSV, or set "
                           "mimic_root / manifest in [tool.cxr_robust] or $CXR_ROBUST_MIMIC_ROOT")
    on_bad = "skip" if args.skip_bad else "error"
    try:
        if mimic_root:
            from cxr_robust.data.mimic import load_mimic

            data = load_mimic(mimic_root, reports=options.mimic_reports, split=options.mimic_split,
                              views=options.views, on_bad_image=on_bad, on_bad_report=on_bad)
        else:
            from cxr_robust.data.manifest import load_manifest

            data = load_manifest(manifest, on_bad_image=on_bad, on_empty_report=on_bad)
    except (ValueError, OSError) as exc:
        _err(f"{type(exc).__name__}: {exc}")
        return EXIT_USAGE
    from cxr_robust.data.images import find_unusable_images

    # Headers only (no pixel decoded): what the sweep would refuse that loading cannot see (corrupt headers,
    # images too large once decoded).
    unusable = find_unusable_images(data)
    if unusable and not args.skip_bad:
        first = unusable[min(unusable)]
        _err(f"BadImageError: {len(unusable)} of {data.num_images} images would be refused by the sweep; first: "
             f"{first}")
        return EXIT_USAGE
    meta, counts = data.meta, data.counts()
    # Named as the gate names it (GateSession.dataset_name), so the warning reads like the gate's own error.
    label = f"mimic-cxr-{options.mimic_split}" if mimic_root else f"manifest-{Path(manifest).stem}"
    ks_warning = _ks_warning(options, data.num_studies, label)
    summary = {"dataset": data.name, "source": meta.get("source"), "counts": counts,
               "view_groups": meta.get("counts", {}).get("view_groups"),
               "excluded_studies": meta.get("excluded_studies", {}), "excluded_images": meta.get("excluded_images", {}),
               "paper_reference": dict(PAPER_COUNTS),
               "unusable_images": _count_reasons(unusable), "ks": list(options.ks), "ks_warning": ks_warning}
    if mimic_root:
        summary.update(version=meta.get("dataset_version"), split=meta.get("split"), views=meta.get("views"),
                       reports_source=meta.get("reports_source"), split_counts=meta.get("split_counts"))
    if args.json:
        _say(json.dumps(summary, indent=1))
        return EXIT_OK
    if mimic_root:
        rs = meta["reports_source"]
        _say(f"MIMIC-CXR-JPG {meta['dataset_version']} at {meta['root']} (reports: {rs['kind']} {rs['path']})")
        _say(f"split {meta['split']} ({meta['split_counts']['studies']:,} studies / "
             f"{meta['split_counts']['images']:,} images), views {meta['views']}, sections required: "
             f"{', '.join(meta['require_sections'])}")
    else:
        _say(f"manifest {meta['path']} (text columns: {meta['text_columns']})")
    _say(f"evaluation set: {_counts_line(counts)}")
    _say(f"views: {_by_reason(counts['views'])}")
    if summary["view_groups"]:
        _say(f"view groups: {_by_reason(summary['view_groups'])}")
    _say(f"excluded studies: {_by_reason(summary['excluded_studies'])}")
    _say(f"excluded images: {_by_reason(summary['excluded_images'])}")
    if unusable:
        _say(f"images the sweep will skip (--skip-bad; on_bad_image='skip'): {_by_reason(summary['unusable_images'])}")
    if ks_warning:
        _say(f"warning: {ks_warning}")
    return EXIT_OK


def _ks_warning(options: "GateOptions", n_reports: int, dataset: str) -> str | None:
    """The gate's k <= N check on this set, as a warning: which ks it would refuse and what to pass instead.

    The ks are the configured ones ([tool.cxr_robust], else the paper's 5-100): with fewer than 100 reports
    the default grid would stop the gate right after loading the data.
    """
    from cxr_robust.gate import GateUsageError

    try:
        options.check_grid(n_reports, dataset)
    except GateUsageError as exc:
        return f"the gate would stop after loading this set: {exc}"
    return None


def _count_reasons(errors: dict[int, Any]) -> dict[str, int]:
    """``{reason: count}`` of image errors."""
    out: dict[str, int] = {}
    for exc in errors.values():
        out[exc.reason] = out.get(exc.reason, 0) + 1
    return out


# ----- parser ---------------------------------------------------------------------------------------------------
_EPILOG_MAIN = """\
examples:
  cxr-robust run --models phantom-clip --phantom-studies 120
  cxr-robust run --dataset mimic --mimic-root /data/mimic-cxr-jpg --weights-dir /data/weights --require-all
  cxr-robust report cxr-robust-report/
  cxr-robust compare runs/v1 runs/v2 --fail-on-regression
  cxr-robust models --weights-dir /data/weights
  cxr-robust check-data --mimic-root /data/mimic-cxr-jpg

Options not given on the command line come from [tool.cxr_robust] in the nearest pyproject.toml, then the
CXR_ROBUST_* environment variables, then the defaults (docs/usage.md).
"""
_EPILOG_RUN = help_text() + """

examples:
  cxr-robust run --models phantom-clip --phantom-studies 120 --ratios 0,25,81 --ks 5,10
  cxr-robust run --models clip,cxr-repair --dataset mimic --mimic-root /data/mimic-cxr-jpg \\
      --mimic-reports /data/mimic-cxr-reports.zip --weights-dir /data/weights --require-all --out runs/nightly
  cxr-robust run --models mypkg.model:build --phantom-studies 200 --update-baselines
"""
_EPILOG_REPORT = """\
examples:
  cxr-robust report cxr-robust-report/            # rewrites cxr-robust-report/report.html
  cxr-robust report runs/v2/results.json -o /tmp/v2.html
""" + f"exit codes: {EXIT_OK} written; {EXIT_USAGE} no or invalid results.json, or the output cannot be written.\n"
_EPILOG_COMPARE = """\
Differences are B minus A, per (model, perturbation, severity, k) cell measured in both. Where both directories hold the
model's per-query ranks (ranks/*.npz, written by `cxr-robust run`) and cxr_robust.paired is installed, the
test is paired (same images and reports required); otherwise an unpaired, unadjusted interval is
shown.

Runs measured on different datasets or sizes are refused, as is a damaged ranks file.

examples:
  cxr-robust compare runs/v1 runs/v2
  cxr-robust compare runs/v1/results.json runs/v2/results.json --csv diff.csv --fail-on-regression
""" + (f"exit codes: {EXIT_OK} compared; {EXIT_FAILED} with --fail-on-regression, a cell is significantly worse in "
          f"B; {EXIT_USAGE} bad input\n(unreadable results or ranks, runs on different data, --alpha outside (0, 1), "
          "--csv not writable).\n")
_EPILOG_MODELS = """\
examples:
  cxr-robust models
  cxr-robust models --weights-dir /data/weights --bert-vocab /data/Bio_ClinicalBERT --json
""" + (f"exit codes: {EXIT_OK} listed; {EXIT_USAGE} a path that was given (--weights, --weights-dir, --bert-vocab) "
          "does not exist.\n")
_EPILOG_CHECK = """\
Loads the evaluation set exactly as the gate would (nothing is copied; no report text is printed) and prints
its counts, views and exclusions by reason beside the paper's 994 studies / 1,770 images.

examples:
  cxr-robust check-data --mimic-root /data/mimic-cxr-jpg --mimic-reports /data/mimic-cxr-reports.zip
  cxr-robust check-data --mimic-root /data/mimic-cxr-jpg --views frontal --skip-bad
  cxr-robust check-data --manifest data/my_eval.csv
""" + f"exit codes: {EXIT_OK} the set loads; {EXIT_USAGE} it does not (the message names the file and what is wrong).\n"


def build_parser() -> argparse.ArgumentParser:
    """The ``cxr-robust`` argument parser (one subparser per subcommand)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="cxr-robust", description="Occlusion-robustness gate for chest X-ray "
                                     "image->report retrieval, outside pytest.", epilog=_EPILOG_MAIN,
                                     formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the gate's sweeps and write JSON/CSV/HTML results", epilog=_EPILOG_RUN,
                       formatter_class=fmt, description="Run the gate outside pytest, with the plugin's options.")
    _add_gate_args(p)
    _add_project_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="render report.html from results.json", epilog=_EPILOG_REPORT,
                       formatter_class=fmt, description="Render the HTML report of a finished run.")
    p.add_argument("results", help="results directory or results.json")
    p.add_argument("-o", "--output", metavar="HTML", help="output file (default: report.html beside results.json)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="per-cell differences between two runs", epilog=_EPILOG_COMPARE,
                       formatter_class=fmt, description="Compare two results directories cell by cell.")
    p.add_argument("a", help="results directory (or results.json) of the reference run")
    p.add_argument("b", help="results directory (or results.json) of the candidate run")
    p.add_argument("--alpha", type=float, default=0.05, help="test level, in (0, 1) (default 0.05)")
    p.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    p.add_argument("--fail-on-regression", action="store_true",
                   help=f"exit {EXIT_FAILED} when a cell is significantly worse")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("models", help="registered models and whether their weights are found here",
                       epilog=_EPILOG_MODELS, formatter_class=fmt,
                       description="List registered models: baseline row, default text policy, weights.")
    _add_gate_args(p, only={"weights", "weights_dir", "bert_vocab", "model_options"})
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_project_args(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("perturbations", help="registered perturbations, their levels and sources",
                       formatter_class=fmt,
                       description="List the perturbations --perturbations accepts, with the parameter of each "
                                   "severity and where it comes from (docs/perturbations.md).")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_perturbations)

    p = sub.add_parser("metrics", help="registered metrics, how they aggregate and how they are tested",
                       formatter_class=fmt,
                       description="List the metrics --metrics accepts (docs/metrics.md). Recall@k is the gated "
                                   "metric; --negation adds the negation test.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("check-data", help="validate a MIMIC-CXR root or a manifest and print its counts",
                       epilog=_EPILOG_CHECK, formatter_class=fmt,
                       description="Validate an evaluation set and print its counts beside the paper's.")
    _add_gate_args(p, only={"mimic_root", "mimic_reports", "mimic_split", "views", "manifest"})
    p.add_argument("--skip-bad", action="store_true",
                   help="count missing images / unreadable reports as exclusions instead of failing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_project_args(p)
    p.set_defaults(func=cmd_check_data)

    from cxr_robust import scaffold  # light (no torch); its logic lives there, the subcommand is thin

    p = sub.add_parser("init", help="scaffold a gate for your own model and data in DIR", epilog=scaffold.EPILOG,
                       formatter_class=fmt, description="Write a gate test module, a model stub, a manifest "
                       "template, baselines/ and a [tool.cxr_robust] table, never overwriting anything.")
    p.add_argument("directory", nargs="?", default=".", metavar="DIR", help="project folder (default: the current "
                   "one; created if needed)")
    p.set_defaults(func=scaffold.cmd_init)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cxr-robust`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (UsageProblem, OutputError) as exc:  # the user's to fix: one line, no traceback
        _err(str(exc))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
