"""The gate outside pytest: which models can run, the lazily computed sweep per model, verdicts, outputs.

The pytest plugin and the CLI are thin layers over :class:`GateSession`. A model's sweep runs at most once
per session, the first time any of its cells is needed, and its whole grid is decided together (the grid is
the family of the multiple-testing correction, so a cell's verdict never depends on ``-k`` selection).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_robust import PAPER_KS, PAPER_RATIOS
from cxr_robust.baselines import BaselineCell, BaselineTable, write_table
from cxr_robust.data.retrieval_set import check_on_bad
from cxr_robust.models import DEMO_MODEL, PAPER_MODELS, get_spec
from cxr_robust.precision import check_precision
from cxr_robust.results import ModelOutcome, build_document, git_revision, save_ranks, write_results
from cxr_robust.stats import CellDecision, CellInput, GateRule, decide

if TYPE_CHECKING:
    from cxr_robust.data.retrieval_set import RetrievalSet
    from cxr_robust.engine import SweepResult

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
    device: str | None = None
    precision: str = "fp32"
    ratios: tuple[float, ...] = PAPER_RATIOS
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

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        check_on_bad("on_bad_image", self.on_bad_image)  # here too, so a typo fails before any loading
        check_precision(self.precision)
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    def effective(self) -> dict[str, Any]:
        """The configuration as recorded in the report."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class ModelRun:
    """A model's sweep and its verdicts (or the error that stopped it)."""

    model: str
    result: "SweepResult | None" = None
    decisions: dict[tuple[float, int], CellDecision] = field(default_factory=dict)
    baseline_source: str | None = None
    error: BaseException | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def cell_id(model: str, ratio: float, k: int) -> str:
    """Readable test id of a cell, e.g. ``cxr-clip-swint-occ25-k10`` or ``clip-occ0.25-k5``."""
    pct = f"{ratio * 100:.4f}".rstrip("0").rstrip(".")
    return f"{model}-occ{pct}-k{k}"


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
                p for p in (self.rootdir / self.options.baselines_dir).glob("*.csv") if p.name != "table1_random.csv")
            self._tables = [BaselineTable.load(p) for p in paths]
        return self._tables

    def baseline_row(self, model: str, result: "SweepResult | None" = None) -> str:
        """The baseline row of ``model``: its registry spec's, else the built model's, else its name."""
        return get_spec(model).baseline_row or (result.baseline_row if result else None) or model

    def baseline_for(self, model: str, row: str | None = None) -> tuple[BaselineTable | None, str]:
        """The table holding ``model``'s row on the configured dataset, and the row name.

        A table recorded here (``--update-baselines``) wins over a published one (the paper's Table 1), so
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
            reasons.append("the mimic dataset needs --mimic-root PATH (or $CXR_ROBUST_MIMIC_ROOT)")
        if o.dataset == "manifest" and not o.manifest:
            reasons.append("the manifest dataset needs --cxr-manifest PATH")
        if reasons and model in PAPER_MODELS and o.dataset == "phantom":
            reasons.append("its Table 1 baseline is on MIMIC-CXR: add --cxr-dataset mimic --mimic-root PATH")
        return "; ".join(reasons) or None

    # ----- the data and the sweeps -------------------------------------------------------------------------
    def dataset(self) -> "RetrievalSet":
        """The evaluation set, loaded on first use (a load error is remembered, not retried per test)."""
        if self._dataset_error is not None:
            raise self._dataset_error
        if self._dataset is None:
            try:
                self._dataset = self._load_dataset()
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
                              on_bad_image=o.on_bad_image)
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
            net = load_model(model, weights=o.weights.get(model), weights_dir=o.weights_dir,
                             **({"bert_vocab": o.bert_vocab} if get_spec(model).needs_bert_vocab else {}))
            config = SweepConfig(ratios=tuple(o.ratios), ks=tuple(o.ks), seed=o.seed, batch_size=o.batch_size,
                                 device=o.device, precision=o.precision, text_policy=o.text_policy,
                                 on_bad_image=o.on_bad_image)
            log.info("cxr-robust: sweeping %s on %s (%d images, %d reports)", model, data.name,
                     data.num_images, data.num_studies)
            run.result = run_sweep(net, data, config, EmbeddingCache(o.cache_dir))
            table, row = self.baseline_for(model, self.baseline_row(model, run.result))
            run.baseline_source = str(table.path) if table is not None else None
            run.decisions = self._decide(run.result, table, row)
            if o.compare_to:
                run.baseline_source = str(self._apply_paired(run.result, row, run.decisions))
            if o.summaries:
                from cxr_robust.summaries import robustness_summary

                run.summary = robustness_summary(run.result.counts, run.result.ks, n_boot=1000, seed=o.seed)
        except Exception as exc:  # remembered and reported by every cell of the model
            run.error = exc
        return run

    def _apply_paired(self, result: "SweepResult", row: str,
                      decisions: dict[tuple[float, int], CellDecision]) -> Path:
        """Replace the unpaired baseline verdicts by paired ones against a recorded run's per-query ranks."""
        from cxr_robust.paired import find_reference_ranks, paired_decide
        from cxr_robust.results import load_ranks

        assert self.options.compare_to is not None
        path = find_reference_ranks(self.options.compare_to, row, result.dataset, result.seed)
        ref_counts, ref_ids, _ = load_ranks(path)
        for p in paired_decide(ref_counts, result.counts, ref_ids, result.image_ids, result.ks,
                               alpha=self.options.alpha, seed=self.options.seed):
            d = decisions[(p.ratio, p.k)]
            d.baseline, d.baseline_n_queries = p.reference, p.n_queries
            d.p_value, d.p_adjusted, d.passed, d.tolerance, d.se = p.p_value, p.p_adjusted, p.passed, None, None
            d.rule = (f"paired {p.method} on per-query hits against {path.name}, one-sided, Holm-adjusted over "
                      f"the model's grid, fail if adjusted p < alpha={self.options.alpha}")
            d.extras["paired"] = p.as_dict()
        return path

    def _decide(self, result: "SweepResult", table: BaselineTable | None,
                row: str) -> dict[tuple[float, int], CellDecision]:
        cells = []
        grid = result.grid()
        for ratio, by_k in grid.items():
            for k, measured in by_k.items():
                base = table.get(row, k, ratio) if table is not None else None
                cells.append(CellInput(model=result.model, ratio=ratio, k=k, measured=measured,
                                       n_queries=result.n_queries, n_candidates=result.n_candidates,
                                       baseline=base.recall if base else None,
                                       baseline_n_queries=base.n_queries if base else None))
        return {(d.ratio, d.k): d for d in decide(cells, self.rule)}

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
                out.append(ModelOutcome(model, "measured", baseline_row=run.result.baseline_row,
                                        baseline_source=run.baseline_source, text_policy=run.result.text_policy,
                                        meta=run.result.meta, cells=cells, summary=run.summary))
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
            for model, run in self._runs.items():  # images left out at decode time (--on-bad-image skip)
                for reason, n in ((run.result.meta.get("skipped_images") or {}) if run.result else {}).items():
                    if n:
                        exclusions[f"images skipped by {model}: {reason}"] = n
            dataset.update(counts=data.counts(), credentialed=data.credentialed, exclusions=exclusions,
                           version=data.meta.get("dataset_version"), reports_source=data.meta.get("reports_source"))
        run = {"config": self.options.effective(), "rule": self.rule.describe(), "dataset": dataset,
               "git": git_revision(self.rootdir)}
        return build_document(self.outcomes(), run)

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

    def update_baselines(self) -> list[Path]:
        """Write measured tables (and per-query ranks) of the measured models into the baselines directory."""
        written = []
        base_dir = self.rootdir / self.options.baselines_dir
        for model, run in self._runs.items():
            if run.result is None:
                continue
            res = run.result
            row = self.baseline_row(model, res)
            new = [BaselineCell(model=row, dataset=res.dataset, k=k, ratio=r, recall=v, n_queries=res.n_queries,
                                n_candidates=res.n_candidates, seed=str(res.seed),
                                source=f"{RECORDED_SOURCE} ({res.meta.get('device')})")
                   for r, by_k in res.grid().items() for k, v in by_k.items()]
            table, _ = self.baseline_for(model, row)
            recorded = table is not None and all(c.source.startswith(RECORDED_SOURCE) for c in table.for_model(row))
            # Published numbers (the paper's Table 1) are never overwritten: a measurement goes to its own file.
            path = Path(table.path) if recorded and table.path else base_dir / f"{_slug(row)}__{res.dataset}.csv"
            keep = []
            if path.exists():
                keep = [c for c in BaselineTable.load(path).cells if not (c.model == row and c.dataset == res.dataset)]
            written.append(write_table(keep + new, path))
        written += self.save_ranks(base_dir)
        self._tables = None  # re-read on next use
        return written

    def save_ranks(self, directory: str | Path) -> list[Path]:
        """Per-query ranks of every measured model as ``directory/ranks/<row>__<dataset>__seed<N>.npz``.

        These are the input of paired comparisons (``--cxr-paired``, ``cxr-robust compare``).
        """
        written = []
        for model, run in self._runs.items():
            res = run.result
            if res is None:
                continue
            meta = {"model": model, "dataset": res.dataset, "seed": res.seed, "text_policy": res.text_policy,
                    "model_fingerprint": res.meta.get("model_fingerprint"),
                    "dataset_counts": res.meta.get("dataset_counts")}
            name = f"{_slug(self.baseline_row(model, res))}__{res.dataset}__seed{res.seed}.npz"
            written.append(save_ranks(Path(directory) / "ranks" / name, res.counts, res.image_ids, meta))
        return written


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
