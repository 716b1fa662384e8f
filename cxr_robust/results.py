"""Machine-readable results of a gate run (JSON + CSV + per-query ranks), written atomically.

``results.json`` is the single source the HTML report is rendered from, so a report can be re-rendered
later (``cxr-robust report``). It holds ids and numbers only: never report text or pixels.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cxr_robust.atomic import atomic_open, atomic_write_text, check_writable_dir
from cxr_robust.baselines import severity_text
from cxr_robust.metrics import LabelCounts, RankCounts
from cxr_robust.perturbations.base import Condition, ConditionMap, as_condition

SCHEMA = "cxr-robust/results/1"
CSV_COLUMNS = ("model", "dataset", "perturbation", "severity", "k", "recall_pct", "baseline_pct", "diff_pct",
               "tolerance_pct", "chance_pct", "n_queries", "n_candidates", "passed", "chance_mode",
               "chance_passed", "p_adjusted", "seed")
PAPER_COUNTS = {"studies": 994, "images": 1770}


@dataclass
class ModelOutcome:
    """One model's part of a run: its measured cells with verdicts, or why it was skipped."""

    model: str
    status: str  # "measured" | "skipped" | "error"
    reason: str | None = None
    baseline_row: str | None = None
    baseline_row_rule: str | None = None
    """Why the model has that row (:data:`cxr_robust.gate.BASELINE_ROW_RULES`)."""
    baseline_source: str | None = None
    text_policy: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    cells: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] | None = None
    """The model's grid test (:class:`cxr_robust.stats.GridDecision` as a dict), when it was measured."""
    mode: str | None = None
    """How its cells were compared: ``paired`` (recorded per-query ranks), ``unpaired`` (a table) or ``none``."""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """One row per condition with the reported metrics (:func:`cxr_robust.gate.metric_rows`)."""
    negation: dict[str, Any] | None = None
    """The negation test (:class:`cxr_robust.hard_negatives.NegationDecision` as a dict), when it was measured."""


def git_revision(cwd: str | Path | None = None) -> str | None:
    """The current git commit (with ``-dirty``), or None outside a repository."""
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=cwd, text=True,
                             capture_output=True, timeout=10, check=True).stdout.strip()
        return rev or None
    except (OSError, subprocess.SubprocessError):
        return None


def build_document(outcomes: Iterable[ModelOutcome], run: dict[str, Any]) -> dict[str, Any]:
    """The JSON document of a run: run metadata plus one entry per model."""
    return {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "paper_counts": PAPER_COUNTS, **run, "models": [o.__dict__ for o in outcomes]}


def merge_documents(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One document from the per-worker documents of a pytest-xdist run (models in first-seen order)."""
    if not parts:
        raise ValueError("no partial results to merge")
    merged = dict(parts[0])
    models: dict[str, dict[str, Any]] = {}
    for part in parts:
        for m in part["models"]:
            seen = models.get(m["model"])
            # a measured or errored entry beats a "skipped" one written by a worker that never ran the model
            if seen is None or seen["status"] == "skipped":
                models[m["model"]] = m
            elif seen["status"] == m["status"] == "measured":
                # Two workers swept the same model (their cache made the results identical): each embedding
                # was computed once between them, so the run's encoding counts are the sums.
                for key in ("text_encodings", "image_encodings"):
                    seen["meta"][key] = seen["meta"].get(key, 0) + m["meta"].get(key, 0)
        if part.get("dataset", {}).get("counts"):
            merged["dataset"] = part["dataset"]
    merged["models"] = list(models.values())
    from cxr_robust.summaries import add_corruption_summary  # figures across models need every worker's part

    return add_corruption_summary(merged)


def csv_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measured cell (percentages rounded to 0.01)."""
    rows = []
    for m in doc["models"]:
        for c in m["cells"]:
            pct = (lambda v: None if v is None else round(100 * v, 4))
            cond = cell_condition(c)
            rows.append({"model": m["model"], "dataset": doc.get("dataset", {}).get("name"), "k": c["k"],
                         "perturbation": cond.perturbation, "severity": severity_text(cond),
                         "recall_pct": pct(c["measured"]),
                         "baseline_pct": pct(c.get("baseline")),
                         "diff_pct": None if c.get("baseline") is None else pct(c["measured"] - c["baseline"]),
                         "tolerance_pct": pct(c.get("tolerance")), "chance_pct": pct(c["chance"]),
                         "n_queries": c["n_queries"], "n_candidates": c["n_candidates"], "passed": c.get("passed"),
                         "chance_mode": c.get("chance_mode"), "chance_passed": c.get("chance_passed"),
                         "p_adjusted": c.get("p_adjusted"), "seed": m.get("meta", {}).get("seed")})
    return rows


def write_results(directory: str | Path, doc: dict[str, Any]) -> dict[str, Path]:
    """Write ``results.json`` and ``results.csv`` into ``directory``; returns their paths.

    Raises :class:`~cxr_robust.atomic.OutputError` naming ``directory`` when it cannot hold them, before
    either file is written.
    """
    directory = Path(directory)
    check_writable_dir(directory, "results directory")
    paths = {"json": directory / "results.json", "csv": directory / "results.csv"}
    atomic_write_text(paths["json"], json.dumps(doc, indent=1, sort_keys=False, default=_jsonable))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(doc))
    atomic_write_text(paths["csv"], buf.getvalue())
    return paths


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` (or the directory holding one), checking its schema."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no results at {path}; run `pytest -m robustness` or `cxr-robust run` first") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); rerun the gate to regenerate it") from exc
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path} has schema {doc.get('schema')!r}, expected {SCHEMA!r}")
    return doc


def cell_condition(cell: dict[str, Any]) -> Condition:
    """The condition of a results cell (a cell without ``perturbation`` is an occlusion cell of an older file)."""
    if cell.get("perturbation") is None:
        return Condition("occlusion", float(cell["ratio"]))
    return Condition(str(cell["perturbation"]), float(cell["severity"]))


def _ranks_name(condition: Condition) -> str:
    # Occlusion arrays keep the names they had before perturbations existed ("above_0.25"), so recorded files
    # stay byte-compatible; other conditions are named by their key ("above_gaussian_noise@3.0").
    return repr(condition.severity) if condition.perturbation == "occlusion" else condition.key


def save_ranks(path: str | Path, counts: dict[Condition, RankCounts], image_ids: list[str],
               meta: dict[str, Any], negation: np.ndarray | None = None) -> Path:
    """Per-query rank counts of every condition (for paired comparisons), written atomically as ``.npz``.

    Per condition: ``above_<c>``, ``ties_<c>``, ``n_<c>``; with label counts also ``labelprec_<c>`` and
    ``labelhit_<c>`` ``(M, K)``, ``labelled_<c>`` ``(M,)`` and ``labelks_<c>`` ``(K,)``. With ``negation``
    (per query: 1 / 0.5 / 0 / NaN, :mod:`cxr_robust.hard_negatives`) also ``negation_confusion``.
    """
    path = Path(path)
    arrays: dict[str, Any] = {"image_ids": np.array(image_ids, dtype=str),
                              "meta": np.array(json.dumps(meta, sort_keys=True, default=_jsonable))}
    for cond, c in counts.items():
        name = _ranks_name(as_condition(cond))
        arrays[f"above_{name}"] = c.above
        arrays[f"ties_{name}"] = c.ties
        arrays[f"n_{name}"] = np.array(c.n_candidates)
        if c.label is not None:
            arrays[f"labelprec_{name}"] = c.label.precision
            arrays[f"labelhit_{name}"] = c.label.hit
            arrays[f"labelled_{name}"] = c.label.labelled
            arrays[f"labelks_{name}"] = np.array(c.label.ks, dtype=np.int64)
    if negation is not None:
        if np.shape(negation) != (len(image_ids),):
            raise ValueError(f"{np.shape(negation)} negation values for {len(image_ids)} queries")
        arrays[NEGATION_ARRAY] = np.asarray(negation, dtype=np.float64)
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


NEGATION_ARRAY = "negation_confusion"
"""The ranks file's array of per-query negation values, when the run measured the negation test."""


def load_negation(path: str | Path) -> tuple[list[str], np.ndarray] | None:
    """The image ids and per-query negation values recorded in a ranks file, or None when it holds none."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if NEGATION_ARRAY not in npz.files:
                return None
            ids, values = [str(x) for x in npz["image_ids"]], np.asarray(npz[NEGATION_ARRAY], dtype=float)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise RanksFileError(path, _load_problem(exc)) from None
    if values.shape != (len(ids),):
        raise RanksFileError(path, f"{values.shape} negation values for {len(ids)} images")
    return ids, values


class RanksFileError(ValueError):
    """A per-query ranks file (``.npz``) that cannot be read: truncated, damaged, or not written by
    :func:`save_ranks`. The message names the file and how to get a good one."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"ranks file {path} is truncated or not a ranks file ({problem}); re-record it with "
                         "--cxr-update-baselines (or rerun `cxr-robust run`), or delete it")
        self.path = Path(path)


def load_ranks(path: str | Path) -> tuple[dict[Condition, RankCounts], list[str], dict[str, Any]]:
    """Inverse of :func:`save_ranks`.

    A missing file raises ``FileNotFoundError``; a damaged one or one of another kind raises
    :class:`RanksFileError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        what = "a directory, not a file" if path.is_dir() else "missing"
        raise FileNotFoundError(f"ranks file {path} is {what}; pass a ranks .npz written by --cxr-update-baselines or "
                                "`cxr-robust run` (ranks/ of a results directory)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):  # a plain .npy: np.load returned an array, not an archive
            raise _Malformed("a single array, not an .npz archive")
        with loaded as npz:
            return _parse_ranks(npz)
    except _Malformed as exc:
        raise RanksFileError(path, str(exc)) from None
    # np.load and zipfile raise any of these for a file cut short or of another format
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise RanksFileError(path, _load_problem(exc)) from None


def _parse_ranks(npz: Any) -> tuple[dict[Condition, RankCounts], list[str], dict[str, Any]]:
    """The contents of an opened ranks ``.npz``, checked for the arrays :func:`save_ranks` writes."""
    absent = [name for name in ("image_ids", "meta") if name not in npz.files]
    if absent:
        raise _Malformed(f"no {' or '.join(repr(a) for a in absent)} array; holds {sorted(npz.files)[:6]}")
    image_ids = [str(x) for x in npz["image_ids"]]
    meta = json.loads(str(npz["meta"]))
    if not isinstance(meta, dict):
        raise _Malformed("its 'meta' is not a JSON object")
    counts = {}
    for name in npz.files:
        if name.startswith("above_"):
            r = name[len("above_"):]
            above, ties = npz[name], npz[f"ties_{r}"]
            if above.shape != (len(image_ids),) or ties.shape != (len(image_ids),):
                raise _Malformed(f"condition {r}: {above.shape[0] if above.ndim else 0} ranks for "
                                 f"{len(image_ids)} images")
            cond = Condition.from_key(r) if "@" in r else Condition("occlusion", float(r))
            counts[cond] = RankCounts(above, ties, int(npz[f"n_{r}"]), _parse_label(npz, r, len(image_ids)))
    if not counts:
        raise _Malformed("no per-condition ranks in it")
    return ConditionMap(sorted(counts.items())), image_ids, meta


def _parse_label(npz: Any, r: str, m: int) -> LabelCounts | None:
    """The label counts of condition ``r`` when the file has them (files written before them: None)."""
    names = [f"labelprec_{r}", f"labelhit_{r}", f"labelled_{r}", f"labelks_{r}"]
    present = [name in npz.files for name in names]
    if not any(present):
        return None
    if not all(present):
        raise _Malformed(f"condition {r}: label arrays {[n for n, p in zip(names, present) if not p]} are missing")
    ks = tuple(int(k) for k in np.atleast_1d(npz[names[3]]))
    labelled = npz[names[2]]
    if labelled.shape != (m,):
        raise _Malformed(f"condition {r}: label arrays for {labelled.shape[0] if labelled.ndim else 0} queries, "
                         f"{m} images")
    try:
        return LabelCounts(ks, npz[names[0]].astype(np.float64), npz[names[1]].astype(np.float64),
                           labelled.astype(bool))
    except ValueError as exc:
        raise _Malformed(f"condition {r}: {exc}") from None


def _load_problem(exc: BaseException) -> str:
    """What np.load's error means for a ranks file (never numpy's advice to unpickle an unknown file)."""
    if isinstance(exc, ValueError) and "pickle" in str(exc):
        return "not an .npz archive; reading it would need unpickling, which is refused"
    return f"{type(exc).__name__}: {exc}"


class _Malformed(ValueError):
    """What is wrong inside a ranks file; :func:`load_ranks` turns it into a RanksFileError naming the file."""


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray,)):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
