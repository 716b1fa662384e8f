"""The gate outside pytest: which models can run, the lazily computed sweep per model, verdicts, outputs.

The pytest plugin and the CLI are thin layers over :class:`GateSession`. A model's sweep runs at most once
per session, the first time any of its cells is needed, and its whole grid is decided together (the grid is
the family of the multiple-testing correction, so a cell's verdict never depends on ``-k`` selection).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from cxr_robust import PAPER_KS, PAPER_RATIOS, verdicts
from cxr_robust.baselines import BaselineCell, BaselineError, BaselineTable, write_table
from cxr_robust.data.retrieval_set import check_on_bad
from cxr_robust.models import DEMO_MODEL, PAPER_MODELS, get_spec
from cxr_robust.models.options import check_model_options
from cxr_robust.perturbations import (DEFAULT_PERTURBATIONS, Condition, as_condition, conditions_for,
                                      parse_perturbations, parse_severities)
from cxr_robust.precision import check_precision
from cxr_robust.results import ModelOutcome, build_document, git_revision, save_ranks, write_results
from cxr_robust.stats import (CellDecision, CellInput, GateRule, GridDecision, apply_family, decide, grid_chance_p,
                              grid_test_paired, grid_test_unpaired)

if TYPE_CHECKING:
    from cxr_robust.data.retrieval_set import RetrievalSet
    from cxr_robust.engine import SweepResult
    from cxr_robust.hard_negatives import NegationDecision

log = logging.getLogger(__name__)

DEFAULT_MODELS: tuple[str, ...] = (DEMO_MODEL, *PAPER_MODELS)
RECORDED_SOURCE = "cxr-robust --update-baselines"
"""Start of the ``source`` column of baseline rows this tool measured (as opposed to published ones)."""
DATASETS = ("phantom", "mimic", "manifest")


@dataclass
class GateOptions:
    """Everything that configures a gate run (command line > ini / pyproject > environment > defaults)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    dataset: str = "phantom"
    data_seed: int = 0
    phantom_studies: int | None = None
    mimic_root: str | None = None
    mimic_reports: str | None = None
    mimic_split: str = "validate"
    views: str = "all"
    manifest: str | None = None
    weights: dict[str, str] = field(default_factory=dict)
    weights_dir: str | None = None
    bert_vocab: str | None = None
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Keyword options of a model's factory, per model: ``{"cxr-clip-swint": {"pre_resize": None}}``."""
    device: str | None = None
    precision: str = "fp32"
    draft_decode: bool = False
    """JPEG draft decoding: faster, but not the authors' pipelines (docs/models.md, "Decoding")."""
    engine: str = "local"
    ray_address: str | None = None
    perturbations: tuple[str, ...] = DEFAULT_PERTURBATIONS
    """Registered perturbation names (``all``: every one); the default is the paper's occlusion grid."""
    severities: str | None = None
    """Severities per perturbation, ``"gaussian_noise=1,3;occlusion=0,25"``; unnamed ones keep their defaults."""
    ratios: tuple[float, ...] = PAPER_RATIOS
    """The occlusion severities (fractions; ``--cxr-ratios`` in percent), unless ``severities`` names occlusion."""
    ks: tuple[int, ...] = PAPER_KS
    seed: int = 0
    batch_size: int = 64
    cache_dir: str | None = None
    report_dir: str = "cxr-robust-report"
    baselines: tuple[str, ...] = ()
    baselines_dir: str = "baselines"
    alpha: float = 0.05
    require_all: bool = False
    update_baselines: bool = False
    text_policy: str | None = None
    on_bad_image: str = "error"
    compare_to: str | None = None
    summaries: bool = True
    allow_missing_baseline: bool = False
    refresh_cache: bool = False
    reference_model: str | None = None
    """A measured model to express every model's corruption error relative to (the mCE-style figure)."""
    metrics: tuple[str, ...] = ("all",)
    """Registered metrics to report per condition (:mod:`cxr_robust.metric_registry`; ``all``: every one)."""
    labeler: str = "chexpert"
    """Which MIMIC-CXR-JPG label file gives the findings labels: ``chexpert`` or ``negbio``."""
    label_match: str = "exact"
    """When two studies' findings labels match, for the label-aware metrics (:func:`~cxr_robust.data.labels.parse_match_rule`)."""
    uncertain_labels: str = "positive"
    """How an uncertain (-1) findings label counts: ``positive`` or ``negative``."""
    negation: bool = False
    """Measure and gate each model's negation confusion rate (:mod:`cxr_robust.hard_negatives`)."""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        check_on_bad("on_bad_image", self.on_bad_image)  # here too, so a typo fails before any loading
        check_precision(self.precision)
        from cxr_robust.engine import check_engine  # numpy only at import; torch is deferred inside the engine

        check_engine(self.engine)
        for model, model_options in self.model_options.items():  # a typo must not be silently ignored
            check_model_options(model, model_options)
        if self.text_policy is not None:  # every front end, and GateOptions built in code, get the same check
            from cxr_robust.data.text_policy import TextPolicy

            try:
                self.text_policy = TextPolicy.parse(self.text_policy).value
            except ValueError:
                raise ValueError(f"text_policy must be one of {', '.join(p.value for p in TextPolicy)}; got "
                                 f"{self.text_policy!r}") from None
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.seed < 0:
            raise ValueError(f"the perturbation seed (--cxr-seed) must be >= 0, got {self.seed}")
        if len(set(self.ratios)) != len(self.ratios) or len(set(self.ks)) != len(self.ks):
            raise ValueError(f"occlusion ratios and ks must not repeat (got ratios {list(self.ratios)}, "
                             f"ks {list(self.ks)})")
        try:  # unknown names and bad severities fail here, before any loading, saying what is close
            self.perturbations = parse_perturbations(self.perturbations)
            self.conditions()
            from cxr_robust.metric_registry import parse_metrics

            self.metrics = parse_metrics(self.metrics)
        except KeyError as exc:
            raise ValueError(str(exc)) from None
        from cxr_robust.data.labels import UNCERTAIN_POLICIES, parse_match_rule

        parse_match_rule(self.label_match)
        if self.uncertain_labels not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain_labels must be one of {', '.join(UNCERTAIN_POLICIES)}; got "
                             f"{self.uncertain_labels!r}")

    def conditions(self) -> tuple[Condition, ...]:
        """The measured conditions in order: each perturbation's severities (plus the clean images)."""
        return conditions_for(parse_severities(self.severities, self.perturbations,
                                               defaults={"occlusion": tuple(self.ratios)}))

    def check_grid(self, n_candidates: int, dataset: str) -> None:
        """Raise :class:`GateUsageError` when a k exceeds the ``n_candidates`` reports of ``dataset``; the
        message names the ks to drop and the value to pass instead, ready to paste."""
        too_big = [k for k in self.ks if k > n_candidates]
        if too_big:
            # k = 1 always fits; it is offered only when no configured k does (a set that small says little)
            keep = [k for k in self.ks if k <= n_candidates] or [1]
            ks = ",".join(map(str, keep))
            drop = ", ".join(map(str, too_big))
            raise GateUsageError(f"--cxr-ks {','.join(map(str, too_big))}: dataset {dataset} has only "
                                 f"{n_candidates} reports, so Recall@k needs k <= {n_candidates}: drop k = {drop} "
                                 f"and pass --cxr-ks={ks} (cxr-robust run: --ks {ks}; pyproject.toml "
                                 f"[tool.cxr_robust]: ks = [{', '.join(map(str, keep))}]), or use a larger data set")

    def effective(self) -> dict[str, Any]:
        """The configuration as recorded in the report."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


class GateUsageError(ValueError):
    """A configuration that cannot be measured (found once the data set is known); stops the run."""


class BaselineUpdateRefused(RuntimeError):
    """``--cxr-update-baselines`` would record from a run that did not finish cleanly; nothing was written."""


@dataclass
class ModelRun:
    """A model's sweep and its verdicts (or the error that stopped it)."""

    model: str
    result: "SweepResult | None" = None
    decisions: dict[tuple[Condition, int], CellDecision] = field(default_factory=dict)
    grid: GridDecision | None = None
    mode: str = "none"
    """``paired`` (recorded per-query ranks), ``unpaired`` (a baseline table) or ``none`` (no baseline)."""
    baseline_source: str | None = None
    error: BaseException | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    negation: "NegationDecision | None" = None
    """The negation test (``--cxr-negation``), else None."""


BASELINE_ROW_RULES = {"registry": "declared by the model's registry entry",
                      "name": "the model's own name (its registry entry declares no baseline_row)"}
"""Why a model has its baseline row; shown in the report beside the row."""


def baseline_row_rule(model: str) -> tuple[str, str]:
    """The baseline row of ``model`` and why: the ``baseline_row`` its registry entry declares, else its name.

    Never an adapter's default: a model built on the demo adapter would otherwise be compared with, and
    recorded over, ``phantom-clip``'s baseline without anyone having asked for that.
    """
    declared = get_spec(model).baseline_row
    return (declared, BASELINE_ROW_RULES["registry"]) if declared else (model, BASELINE_ROW_RULES["name"])


def cell_id(model: str, condition: Condition | float, k: int) -> str:
    """Readable test id of a cell, e.g. ``cxr-clip-swint-occ25-k10`` or ``phantom-clip-gauss_noise-s3-k10``."""
    return f"{model}-{as_condition(condition).token}-k{k}"


class GateSession:
    """One gate run: options, the dataset (loaded once), and one :class:`ModelRun` per model (lazily)."""

    def __init__(self, options: GateOptions, rootdir: str | Path = ".") -> None:
        self.options = options
        self.rootdir = Path(rootdir)
        self.rule = GateRule(alpha=options.alpha)
        self._dataset: "RetrievalSet | None" = None
        self._dataset_error: BaseException | None = None
        self._runs: dict[str, ModelRun] = {}
        self._tables: list[BaselineTable] | None = None
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []
        """Things a baseline update did that the user must hear about (printed with its summary)."""
        self.progress: "Callable[[str], None] | None" = None
        """Where to say how a sweep is getting on (a line per model and condition); None: silent."""

    # ----- what can run ---------------------------------------------------------------------------------
    def dataset_name(self) -> str:
        """Name the baseline tables use for the configured dataset (without loading it)."""
        o = self.options
        if o.dataset == "phantom":
            return f"phantom-eval-s{o.data_seed}" + (f"-n{o.phantom_studies}" if o.phantom_studies else "")
        if o.dataset == "mimic":
            return f"mimic-cxr-{o.mimic_split}"
        return f"manifest-{Path(o.manifest or 'manifest').stem}"

    def baseline_tables(self) -> list[BaselineTable]:
        """Every baseline table configured (default: all CSVs in the baselines directory)."""
        if self._tables is None:
            paths = [Path(p) for p in self.options.baselines] or sorted(
                p for p in (self.rootdir / self.options.baselines_dir).glob("*.csv")
                if p.is_file() and p.name != "table1_random.csv")
            self._tables = [BaselineTable.load(p) for p in paths]
        return self._tables

    def baseline_row(self, model: str) -> str:
        """The baseline row ``model`` is compared with and recorded under (see :func:`baseline_row_rule`)."""
        return baseline_row_rule(model)[0]

    def baseline_for(self, model: str, row: str | None = None) -> tuple[BaselineTable | None, str]:
        """The table holding ``model``'s row on the configured dataset, and the row name.

        A table recorded here (``--cxr-update-baselines``) wins over a published one (the paper's Table 1), so
        once a team has measured its own reference on its own data, the gate compares against that.
        """
        row = row or self.baseline_row(model)
        found = [sub for table in self.baseline_tables()
                 if (sub := table.for_dataset(self.dataset_name())).for_model(row)]
        found.sort(key=lambda t: not all(c.source.startswith(RECORDED_SOURCE) for c in t.for_model(row)))
        return (found[0], row) if found else (None, row)

    def unavailable_reason(self, model: str) -> str | None:
        """Why ``model`` cannot run in this configuration (naming what to set), or None."""
        o = self.options
        spec = get_spec(model)
        reasons = []
        missing = spec.missing(o.weights.get(model), o.weights_dir, o.bert_vocab)
        if missing:
            reasons.append(missing)
        if o.dataset == "mimic" and not o.mimic_root:
            reasons.append("the mimic dataset needs --cxr-mimic-root PATH (or $CXR_ROBUST_MIMIC_ROOT)")
        if o.dataset == "manifest" and not o.manifest:
            reasons.append("the manifest dataset needs --cxr-manifest PATH")
        if reasons and model in PAPER_MODELS and o.dataset == "phantom":
            reasons.append("its Table 1 baseline is on MIMIC-CXR: add --cxr-dataset mimic --cxr-mimic-root PATH")
        return "; ".join(reasons) or None

    # ----- the data and the sweeps -------------------------------------------------------------------------
    def dataset(self) -> "RetrievalSet":
        """The evaluation set, loaded on first use (a load error is remembered, not retried per test)."""
        if self._dataset_error is not None:
            raise self._dataset_error
        if self._dataset is None:
            try:
                data = self._load_dataset()
                self.options.check_grid(data.num_studies, data.name)
                self._dataset = data
            except BaseException as exc:
                self._dataset_error = exc
                raise
        return self._dataset

    def _load_dataset(self) -> "RetrievalSet":
        o = self.options
        if o.dataset == "phantom":
            from cxr_robust.cache import default_cache_dir
            from cxr_robust.data.phantom import phantom

            cache = Path(o.cache_dir).expanduser() if o.cache_dir else default_cache_dir()
            data = phantom("eval", seed=o.data_seed, num_studies=o.phantom_studies, cache_dir=cache / "phantom")
            data.name = self.dataset_name()
            return data
        if o.dataset == "mimic":
            from cxr_robust.data.mimic import load_mimic

            data = load_mimic(o.mimic_root, reports=o.mimic_reports, split=o.mimic_split, views=o.views,
                              on_bad_image=o.on_bad_image, labels=o.labeler)
        else:
            from cxr_robust.data.manifest import load_manifest

            data = load_manifest(o.manifest, on_bad_image=o.on_bad_image)
        # Baseline tables refer to the dataset by the name computed from the options.
        data.name = self.dataset_name()
        return data

    def run(self, model: str) -> ModelRun:
        """The model's sweep and verdicts, computed once per session."""
        if model not in self._runs:
            self._runs[model] = self._run(model)
        return self._runs[model]

    def _run(self, model: str) -> ModelRun:
        from cxr_robust.cache import EmbeddingCache
        from cxr_robust.engine import SweepConfig, run_sweep
        from cxr_robust.models import load_model

        o = self.options
        run = ModelRun(model)
        try:
            data = self.dataset()
            spec = get_spec(model)
            net = load_model(model, weights=o.weights.get(model), weights_dir=o.weights_dir,
                             **({"bert_vocab": o.bert_vocab} if spec.needs_bert_vocab else {}),
                             **check_model_options(model, o.model_options.get(model, {})))
            config = SweepConfig(conditions=o.conditions(), ks=tuple(o.ks), seed=o.seed, batch_size=o.batch_size,
                                 device=o.device, precision=o.precision, text_policy=o.text_policy,
                                 on_bad_image=o.on_bad_image, draft_decode=o.draft_decode, engine=o.engine,
                                 ray_address=o.ray_address, negation=o.negation, label_match=o.label_match,
                                 uncertain_labels=o.uncertain_labels)
            log.info("cxr-robust: sweeping %s on %s (%d images, %d reports)", model, data.name,
                     data.num_images, data.num_studies)
            cache = EmbeddingCache(o.cache_dir, refresh=o.refresh_cache)
            # The factory's module is part of the model's code identity (a custom factory may change weights
            # or preprocessing of a built-in class).
            run.result = run_sweep(net, data, config, cache, code_modules=(spec.factory.partition(":")[0],),
                                   on_condition=self._progress_of(model, data, config.conditions))
            self._compare(run, self.baseline_row(model))
            if o.summaries:
                from cxr_robust.summaries import perturbation_summaries

                run.summary = perturbation_summaries(run.result.counts, run.result.ks, n_boot=1000, seed=o.seed)
        except Exception as exc:  # remembered and reported by every cell of the model
            run.error = exc
        return run

    def _progress_of(self, model: str, data: "RetrievalSet",
                     conditions: "Sequence[Condition]") -> "Callable[[Condition, Any], None] | None":
        """The sweep's per-condition callback that reports to :attr:`progress` (None when nobody listens)."""
        say = self.progress
        if say is None:
            return None
        import time

        say(f"{model}: sweeping {len(conditions)} conditions on {data.name} ({data.num_images} images, "
            f"{data.num_studies} reports)")
        start, done = time.perf_counter(), [0]
        k = min(self.options.ks)

        def report(condition: Condition, counts: Any) -> None:
            from cxr_robust.metrics import recall_at_k

            done[0] += 1
            say(f"{model}: [{done[0]}/{len(conditions)}] {condition.label}: Recall@{k} "
                f"{100 * recall_at_k(counts, [k])[k]:.1f}% ({time.perf_counter() - start:.0f}s)")

        return report

    # ----- comparing ---------------------------------------------------------------------------------------
    def reference_ranks(self, row: str, dataset: str, seed: int) -> Path | None:
        """Recorded per-query ranks to pair with: ``--cxr-compare-to``, else ``baselines/ranks/`` by default.

        By default the file of the run's seed is used (same random draws: only the model differs). When
        only one other seed was recorded it is used and the mismatch is stated in every verdict (the paired
        test stays valid, because each query's boxes are drawn independently per seed, but is less
        sensitive). Several other seeds and not this one is an error: pass ``--cxr-compare-to FILE``.
        """
        from cxr_robust.paired import find_reference_ranks, ranks_filename

        if self.options.compare_to:
            return find_reference_ranks(self.options.compare_to, row, dataset, seed)
        folder = self.rootdir / self.options.baselines_dir / "ranks"
        exact = folder / ranks_filename(row, dataset, seed)
        if exact.is_file():
            return exact
        stem = exact.name[:exact.name.rindex("__seed") + len("__seed")]
        others = sorted(folder.glob(stem + "*.npz")) if folder.is_dir() else []
        if len(others) > 1:
            raise FileNotFoundError(f"{folder} holds ranks of {row!r} on {dataset!r} for seeds "
                                    f"{', '.join(p.name for p in others)} but not the run's seed {seed}; run with "
                                    "one of those seeds (--cxr-seed) or pass --cxr-compare-to FILE")
        return others[0] if others else None

    def _compare(self, run: ModelRun, row: str) -> None:
        """Decide every test of ``run``: paired against recorded ranks where they exist, else unpaired against
        a baseline table, else nothing to compare (cells stay without a baseline); then the family."""
        result = run.result
        assert result is not None
        table, _ = self.baseline_for(run.model, row)
        cells = []
        for cond, by_k in result.grid().items():
            for k, measured in by_k.items():
                base = table.get(row, k, cond) if table is not None else None
                cells.append(CellInput(model=result.model, condition=cond, k=k, measured=measured,
                                       n_queries=result.n_queries, n_candidates=result.n_candidates,
                                       baseline=base.recall if base else None,
                                       baseline_n_queries=base.n_queries if base else None))
        decisions = {(d.condition, d.k): d for d in decide(cells, self.rule)}
        run.decisions = decisions
        try:
            ref_path = self.reference_ranks(row, result.dataset, result.seed)
        except FileNotFoundError as exc:  # a --cxr-compare-to path or an ambiguous recording: the user's to fix
            raise GateUsageError(str(exc)) from None
        grid = self._apply_paired(result, ref_path, decisions) if ref_path is not None else None
        if grid is not None:
            run.mode, run.baseline_source, run.grid = "paired", str(ref_path), grid
        else:
            if table is not None:
                run.mode, run.baseline_source = "unpaired", str(table.path)
            run.grid = grid_unpaired(result, decisions, self.rule)
        apply_family(list(decisions.values()), run.grid, self.options.alpha)
        if result.negation is not None:
            run.negation = self._decide_negation(result, ref_path)

    def _decide_negation(self, result: "SweepResult", ref_path: Path | None) -> "NegationDecision":
        """The negation test, paired with the per-query values recorded in ``ref_path`` when it holds them."""
        import numpy as np

        from cxr_robust.hard_negatives import decide_negation
        from cxr_robust.paired import align_ids
        from cxr_robust.results import load_negation

        assert result.negation is not None
        reference = None
        if ref_path is not None:
            try:
                recorded = load_negation(ref_path)
                if recorded is not None:
                    ref_ids, values = recorded
                    align_ids(ref_ids, result.image_ids)  # the same images, or a ValueError naming the difference
                    by_id = dict(zip(ref_ids, values.tolist()))
                    reference = np.array([by_id[i] for i in result.image_ids], dtype=float)
            except (ValueError, OSError) as exc:
                raise GateUsageError(f"cannot pair the negation test with the recorded ranks {ref_path}: {exc}") from None
        return decide_negation(result.model, result.negation, self.options.alpha, result.ks, reference,
                               str(ref_path) if reference is not None else None, seed=result.seed)

    def _apply_paired(self, result: "SweepResult", path: Path,
                      decisions: dict[tuple[Condition, int], CellDecision]) -> GridDecision | None:
        """Replace the cells' raw p-values by paired ones against ``path`` and return the paired grid test; None
        when the recording holds none of the run's conditions (its cells are then compared as if it were absent)."""
        from cxr_robust.results import load_ranks

        try:
            ref_counts, ref_ids, ref_meta = load_ranks(path)
            if not any(c in ref_counts for c in result.counts):
                return None
            return compare_paired(result, decisions, ref_counts, ref_ids, ref_meta.get("seed"), self.rule,
                                  label=path.name)
        except (ValueError, OSError) as exc:  # a damaged file, or ranks of other images / reports
            raise GateUsageError(f"cannot pair with the recorded ranks {path}: {exc}") from None

    # ----- outputs ---------------------------------------------------------------------------------------
    def outcomes(self) -> list[ModelOutcome]:
        """One entry per configured model: measured cells with verdicts, skipped, or errored."""
        out = []
        for model in self.options.models:
            if model in self._runs:
                run = self._runs[model]
                if run.error is not None:
                    out.append(ModelOutcome(model, "error", reason=f"{type(run.error).__name__}: {run.error}"))
                    continue
                assert run.result is not None
                cells = [d.as_dict() for d in run.decisions.values()]
                row, rule = baseline_row_rule(model)
                out.append(ModelOutcome(model, "measured", baseline_row=row, baseline_row_rule=rule,
                                        baseline_source=run.baseline_source, text_policy=run.result.text_policy,
                                        meta=run.result.meta, cells=cells, summary=run.summary,
                                        grid=run.grid.as_dict() if run.grid else None, mode=run.mode,
                                        metrics=metric_rows(run.result, self.options.metrics),
                                        negation=run.negation.as_dict() if run.negation else None))
            elif model in self.skipped:
                out.append(ModelOutcome(model, "skipped", reason=self.skipped[model]))
        return out

    def document(self) -> dict[str, Any]:
        """The results document (see :mod:`cxr_robust.results`)."""
        data = self._dataset
        dataset = {"name": self.dataset_name(), "kind": self.options.dataset}
        if data is not None:
            exclusions = {f"{kind}: {reason}": n for kind in ("studies", "images")
                          for reason, n in (data.meta.get(f"excluded_{kind}") or {}).items() if n}
            for model, run in self._runs.items():  # images left out at decode time (--cxr-on-bad-image skip)
                for reason, n in ((run.result.meta.get("skipped_images") or {}) if run.result else {}).items():
                    if n:
                        exclusions[f"images skipped by {model}: {reason}"] = n
            dataset.update(counts=data.counts(), credentialed=data.credentialed, exclusions=exclusions,
                           version=data.meta.get("dataset_version"), reports_source=data.meta.get("reports_source"))
        modes = sorted({r.mode for r in self._runs.values() if r.result is not None} - {"none"}) or ["unpaired"]
        rule = " | ".join(self.rule.describe(m) for m in modes)
        run = {"config": self.options.effective(), "rule": rule, "dataset": dataset, "git": git_revision(self.rootdir)}
        from cxr_robust.summaries import add_corruption_summary

        return verdicts.annotate(add_corruption_summary(build_document(self.outcomes(), run)))

    def write_outputs(self, doc: dict[str, Any] | None = None) -> dict[str, Path]:
        """Write JSON/CSV results and the HTML report (of ``doc``, default this session's) into the report dir."""
        from cxr_robust.report import write_report

        directory = Path(self.options.report_dir)
        doc = doc if doc is not None else self.document()
        paths = write_results(directory, doc)
        paths["html"] = write_report(doc, directory / "report.html")
        for i, path in enumerate(self.save_ranks(directory), start=1):
            paths[f"ranks {i}"] = path
        return paths

    def update_baselines(self) -> tuple[list[Path], list[str]]:
        """Record the measured cells (and per-query ranks) of the measured models in the baselines directory.

        Merges: only the cells measured now are added or changed, every other row of the table (other
        models, datasets, conditions, ks) is kept; each file is replaced atomically. Refuses
        (:class:`BaselineUpdateRefused`, nothing written) when a configured model errored. Returns the files
        written and one line per file saying how many cells were added, changed and kept.
        """
        errored = [m for m, r in self._runs.items() if r.error is not None]
        if errored:
            raise BaselineUpdateRefused(f"--cxr-update-baselines: nothing recorded, because the sweep of "
                                        f"{', '.join(errored)} errored; fix the error and record again")
        rows: dict[str, list[str]] = {}
        for model, run in self._runs.items():
            if run.result is not None:
                rows.setdefault(self.baseline_row(model), []).append(model)
        shared = {row: models for row, models in rows.items() if len(models) > 1}
        if shared:  # one row holds one model's numbers: the second recording would silently replace the first
            row, models = next(iter(shared.items()))
            raise BaselineUpdateRefused(f"--cxr-update-baselines: nothing recorded: {', '.join(models)} all record "
                                        f"into the baseline row {row!r} (their registry entries declare it); "
                                        "record them in separate runs")
        written, lines = [], []
        base_dir = self.rootdir / self.options.baselines_dir
        for model, run in self._runs.items():
            if run.result is None:
                continue
            res = run.result
            row = self.baseline_row(model)
            new = [BaselineCell(model=row, dataset=res.dataset, k=k, condition=c, recall=v,
                                n_queries=res.n_queries, n_candidates=res.n_candidates, seed=str(res.seed),
                                source=f"{RECORDED_SOURCE} ({res.meta.get('device')})")
                   for c, by_k in res.grid().items() for k, v in by_k.items()]
            table, _ = self.baseline_for(model, row)
            recorded = table is not None and all(c.source.startswith(RECORDED_SOURCE) for c in table.for_model(row))
            # Published numbers (the paper's Table 1) are never overwritten: a measurement goes to its own file.
            path = Path(table.path) if recorded and table.path else base_dir / f"{_slug(row)}__{res.dataset}.csv"
            try:
                old = BaselineTable.load(path).cells if path.is_file() else []
            except BaselineError as exc:  # merging into a table we cannot read would lose it
                raise BaselineUpdateRefused(f"--cxr-update-baselines: nothing recorded: {exc}; fix or move that "
                                            "file and record again") from None
            cells, counts = merge_cells(old, new)
            written.append(write_table(cells, path))
            lines.append(f"{path}: {counts['added']} cells added, {counts['changed']} changed, "
                         f"{counts['unchanged']} re-measured unchanged, {counts['kept']} other rows kept")
        written += self.save_ranks(base_dir, merge=True)
        self._tables = None  # re-read on next use
        return written, lines + self.notes

    def save_ranks(self, directory: str | Path, merge: bool = False) -> list[Path]:
        """Per-query ranks of every measured model as ``directory/ranks/<row>__<dataset>__seed<N>.npz`` (a second
        model with the same row in one run: under its own name, so neither overwrites the other).

        These are the input of paired comparisons (the default wherever they exist in ``baselines/ranks``,
        ``--cxr-compare-to``, ``cxr-robust compare``). With ``merge``, conditions recorded earlier in the same
        file for the same images and not measured now are kept.
        """
        from cxr_robust.paired import ranks_filename
        from cxr_robust.results import load_ranks

        written: list[Path] = []
        for model, run in self._runs.items():
            res = run.result
            if res is None:
                continue
            name = ranks_filename(self.baseline_row(model), res.dataset, res.seed)
            if any(p.name == name for p in written):  # another model of this run has the same row: keep both
                name = ranks_filename(model, res.dataset, res.seed)
            meta = {"model": model, "dataset": res.dataset, "seed": res.seed, "text_policy": res.text_policy,
                    "model_fingerprint": res.meta.get("model_fingerprint"),
                    "dataset_counts": res.meta.get("dataset_counts")}
            path = Path(directory) / "ranks" / name
            counts = dict(res.counts)
            if merge and path.is_file():
                try:
                    old_counts, old_ids, old_meta = load_ranks(path)
                except ValueError as exc:  # a damaged recording is replaced, and the user is told
                    self.notes.append(f"{path} could not be read and was replaced: {exc}")
                    old_counts, old_ids, old_meta = {}, list(res.image_ids), {}
                if list(old_ids) == list(res.image_ids):
                    kept = {c: v for c, v in old_counts.items() if c not in counts}
                    # compared as JSON: the recorded fingerprint was read back from JSON (lists, not tuples)
                    if kept and json.dumps(old_meta.get("model_fingerprint"), sort_keys=True, default=str) != \
                            json.dumps(meta["model_fingerprint"], sort_keys=True, default=str):
                        self.notes.append(f"{path}: kept {len(kept)} condition(s) recorded from a different model "
                                          "(its fingerprint differs); record every condition again to keep the "
                                          "reference consistent")
                    counts = {**kept, **counts}
                else:
                    log.warning("%s recorded other images than this run (%d vs %d); it is replaced", path,
                                len(old_ids), len(res.image_ids))
            negation = res.negation.confusion if res.negation is not None else None
            if negation is None and merge and path.is_file():  # a negation test recorded earlier is kept
                from cxr_robust.results import load_negation

                try:
                    old = load_negation(path)
                except ValueError:
                    old = None
                if old is not None and list(old[0]) == list(res.image_ids):
                    negation = old[1]
            written.append(save_ranks(path, dict(sorted(counts.items())), res.image_ids, meta, negation=negation))
        return written


def metric_rows(result: "SweepResult", names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per measured condition with the registered metrics ``names`` (numbers only; per-k metrics as
    ``{k: value}``); label-aware metrics appear only when the data set has findings labels."""
    rows = []
    for cond, values in result.metrics(names).items():
        rows.append({"perturbation": cond.perturbation, "severity": cond.severity, "side": cond.spec().side,
                     "label": cond.label, **{name: ({str(k): v for k, v in value.items()}
                                                    if isinstance(value, dict) else value)
                                             for name, value in values.items()}})
    return rows


def compare_paired(result: "SweepResult", decisions: dict[tuple[Condition, int], CellDecision],
                   ref_counts: dict[Condition, Any], ref_ids: list[str], ref_seed: Any, rule: GateRule,
                   label: str = "recorded ranks") -> GridDecision:
    """The gate's paired comparison (its default wherever recorded ranks exist): set each cell's raw paired
    p-value (exact McNemar / sign-flip on per-query hits) and return the paired grid test.

    Only the conditions both runs measured are paired; the family adjustment is left to
    :func:`~cxr_robust.stats.apply_family`. Queries are matched by image id.
    """
    import numpy as np

    from cxr_robust.paired import align_ids, paired_decide

    seeds = ("same perturbation seed" if ref_seed == result.seed else
             f"reference seed {ref_seed}, run seed {result.seed}: the random draws differ, so the test is valid "
             "but less sensitive; record the reference with the run's seed")
    ref_counts = {as_condition(c): v for c, v in ref_counts.items()}
    shared = [c for c in result.counts if c in ref_counts]
    ref_for = {c: ref_counts[c] for c in shared}
    text = rule.describe("paired") + f" ({label}; {seeds})"
    for p in paired_decide(ref_for, {r: result.counts[r] for r in shared}, ref_ids, result.image_ids,
                           result.ks, alpha=rule.alpha, seed=result.seed):
        d = decisions[(p.condition, p.k)]
        d.baseline, d.baseline_n_queries = p.reference, p.n_queries
        d.p_value, d.tolerance, d.se = p.p_value, None, None
        d.rule = text
        d.extras["paired"] = {**p.as_dict(), "reference_seed": ref_seed, "run_seed": result.seed}
    index = align_ids(ref_ids, result.image_ids)
    keys = [(r, k) for r in shared for k in result.ks]
    ref_hits = np.stack([ref_for[r].hits(k, result.tie_policy) for r, k in keys], axis=1)
    cand = np.stack([result.hits(r, k) for r, k in keys], axis=1)
    cand = cand if index is None else cand[index]
    p_grid, numbers = grid_test_paired(ref_hits, cand)
    chances = np.array([k / result.n_candidates for _, k in keys])
    return GridDecision(model=result.model, mode="paired", measured=float(cand.mean()),
                        baseline=float(ref_hits.mean()), chance=float(chances.mean()), n_cells=len(keys),
                        n_queries=result.n_queries, p_value=p_grid, chance_p=grid_chance_p(cand, chances),
                        rule=text, extras={**numbers, "reference_seed": ref_seed, "run_seed": result.seed})


def grid_unpaired(result: "SweepResult", decisions: dict[tuple[Condition, int], CellDecision],
                  rule: GateRule) -> GridDecision:
    """The grid test against the cells that have a table baseline (a z-test), or, when none has, only the
    grid's chance test. The family adjustment is left to :func:`~cxr_robust.stats.apply_family`."""
    import numpy as np

    keys = list(decisions)
    hits = np.stack([result.hits(r, k) for r, k in keys], axis=1)
    chances = np.array([k / result.n_candidates for _, k in keys])
    compared = [i for i, key in enumerate(keys) if decisions[key].baseline is not None]
    grid = GridDecision(model=result.model, mode="unpaired" if compared else "none",
                        measured=float(hits[:, compared].mean()) if compared else float(hits.mean()),
                        baseline=None, chance=float(chances.mean()), n_cells=len(compared),
                        n_queries=result.n_queries, chance_p=grid_chance_p(hits, chances),
                        rule=rule.describe("unpaired"))
    if compared:
        base = [decisions[keys[i]] for i in compared]
        grid.baseline = float(np.mean([d.baseline for d in base]))
        n_base = min(d.baseline_n_queries or result.n_queries for d in base)
        grid.p_value, grid.extras = grid_test_unpaired(hits[:, compared], grid.baseline, n_base)
    return grid


def merge_cells(old: list[BaselineCell], new: list[BaselineCell]) -> tuple[list[BaselineCell], dict[str, int]]:
    """``old`` with the cells of ``new`` added or replaced (same model, dataset, k and condition), in stable
    order."""

    def key(c: BaselineCell) -> tuple:
        return (c.model, c.dataset, c.k, c.condition)

    fresh = {key(c): c for c in new}
    counts = {"added": 0, "changed": 0, "unchanged": 0, "kept": 0}
    out = []
    for c in old:
        if key(c) in fresh:
            n = fresh.pop(key(c))
            counts["changed" if (round(n.recall * 100, 2), n.n_queries, n.n_candidates) !=
                   (round(c.recall * 100, 2), c.n_queries, c.n_candidates) else "unchanged"] += 1
            out.append(n)
        else:
            counts["kept"] += 1
            out.append(c)
    counts["added"] = len(fresh)
    return out + list(fresh.values()), counts


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
