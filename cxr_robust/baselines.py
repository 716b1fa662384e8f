"""Baseline tables (CSV): read, validate, look up a cell, write atomically.

A baseline file has one row per (model, dataset, perturbation, severity, k) with the columns in
:data:`COLUMNS`. Recall is a percentage as printed in the paper (two decimals); a severity is written in its
perturbation's own unit, as on the command line (occlusion: percent of the image area, like the paper's
columns; the other perturbations: level 1-5). Files written before perturbations existed (an
``occlusion_pct`` column, no ``perturbation``) read unchanged as occlusion rows. The API speaks fractions.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cxr_robust.atomic import atomic_open
from cxr_robust.perturbations.base import Condition, as_condition
from cxr_robust.perturbations.registry import get_perturbation

COLUMNS = ("model", "dataset", "perturbation", "severity", "k", "recall_pct", "n_queries", "n_candidates", "seed",
           "source")
REQUIRED = ("model", "dataset", "k", "recall_pct", "n_queries", "n_candidates")
LEGACY_SEVERITY = "occlusion_pct"
"""The severity column of files written before perturbations existed (every row is occlusion)."""


class BaselineError(ValueError):
    """A baseline file that is malformed; the message names the file, the row and what is wrong."""


@dataclass(frozen=True)
class BaselineCell:
    """One baseline value: ``recall`` is a fraction; ``condition`` a perturbation at a severity (a bare number is
    read as an occlusion ratio, for backward compatibility)."""

    model: str
    dataset: str
    k: int
    condition: Condition
    recall: float
    n_queries: int
    n_candidates: int
    seed: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "condition", as_condition(self.condition))

    @property
    def ratio(self) -> float:
        """The occlusion ratio of an occlusion cell (backward compatibility)."""
        if self.condition.perturbation != "occlusion":
            raise AttributeError(f"a {self.condition.perturbation} cell has no occlusion ratio")
        return self.condition.severity


def ratio_key(ratio: float) -> float:
    """Canonical key for an occlusion ratio (percent rounded to 4 decimals), robust to float noise."""
    return round(float(ratio) * 100.0, 4)


def cell_key(condition: Condition | float) -> Condition:
    """Lookup key of a condition (conditions round their severity, so 0.25 / 100 and 0.0025 are one cell)."""
    return as_condition(condition)


def severity_text(condition: Condition) -> str:
    """A severity as a table writes it: in its perturbation's command-line unit (occlusion: percent)."""
    if condition.perturbation == "occlusion":  # two decimals like the paper, more only where a ratio needs them
        pct = condition.severity * 100
        return f"{pct:.2f}" if round(pct, 2) == round(pct, 6) else f"{pct:.6f}".rstrip("0")
    return f"{condition.severity:g}"


class BaselineTable:
    """A validated baseline table loaded from a CSV file."""

    def __init__(self, cells: Sequence[BaselineCell], path: Path | None = None) -> None:
        self.path = path
        self.cells = list(cells)
        self._index = {(c.model, c.k, cell_key(c.condition)): c for c in self.cells}

    @classmethod
    def load(cls, path: str | Path) -> "BaselineTable":
        """Read and validate ``path``: columns, numbers, ranges and duplicate cells."""
        path = Path(path)
        if not path.exists():
            raise BaselineError(f"baseline file {path} does not exist")
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED if c not in header]
            if "severity" not in header and LEGACY_SEVERITY not in header:
                missing.append("severity")
            if missing:
                raise BaselineError(f"{path}: missing columns {missing}; present: {header}. "
                                    f"A baseline file needs {list(REQUIRED)} and 'severity' (with 'perturbation'; "
                                    f"a file without it is read as occlusion with '{LEGACY_SEVERITY}')")
            cells, seen = [], {}
            for line, row in enumerate(reader, start=2):
                cell = _parse_row(row, path, line)
                key = (cell.model, cell.dataset, cell.k, cell_key(cell.condition))
                if key in seen:
                    raise BaselineError(f"{path}:{line}: duplicate cell {cell.model} k={cell.k} {cell.condition.label} "
                                    f"on {cell.dataset} (first at line {seen[key]})")
                seen[key] = line
                cells.append(cell)
        if not cells:
            raise BaselineError(f"{path} has no rows")
        return cls(cells, path)

    def models(self) -> list[str]:
        """Model rows in file order."""
        return list(dict.fromkeys(c.model for c in self.cells))

    def for_model(self, model: str) -> list[BaselineCell]:
        """All cells of ``model``."""
        return [c for c in self.cells if c.model == model]

    def datasets(self) -> list[str]:
        """Datasets the table has rows for, in file order."""
        return list(dict.fromkeys(c.dataset for c in self.cells))

    def for_dataset(self, dataset: str) -> "BaselineTable":
        """The rows recorded on ``dataset``."""
        return BaselineTable([c for c in self.cells if c.dataset == dataset], self.path)

    def get(self, model: str, k: int, condition: Condition | float) -> BaselineCell | None:
        """The baseline for (model, k, condition), or None when the table has no such cell.

        Use :meth:`for_dataset` first when the table holds several datasets.
        """
        return self._index.get((model, int(k), cell_key(condition)))


def _parse_row(row: dict, path: Path, line: int) -> BaselineCell:
    where = f"{path}:{line}"
    name = (row.get("perturbation") or "occlusion").strip()
    column = "severity" if row.get("severity") not in (None, "") else LEGACY_SEVERITY
    severity = row.get(column)
    try:
        spec = get_perturbation(name)
    except KeyError as exc:
        raise BaselineError(f"{where}: {exc}; install the package that provides it or remove its rows") from None
    try:
        condition = Condition(spec.name, spec.parse_severity(str(severity)))
    except ValueError as exc:
        raise BaselineError(f"{where}: {column} {severity!r} is not a valid {spec.name} severity: {exc}") from None
    try:
        k = int(row["k"])
        rec = float(row["recall_pct"])
        n_q = int(row["n_queries"])
        n_c = int(row["n_candidates"])
    except (TypeError, ValueError) as exc:
        raise BaselineError(f"{where}: a numeric column does not parse ({exc})") from None
    if not row.get("model") or not row.get("dataset"):
        raise BaselineError(f"{where}: empty model or dataset")
    if not (math.isfinite(rec) and 0 <= rec <= 100):
        raise BaselineError(f"{where}: recall_pct {rec} is outside [0, 100]")
    if n_q < 1 or n_c < 1 or not 1 <= k <= n_c:
        raise BaselineError(f"{where}: need n_queries >= 1 and 1 <= k <= n_candidates (got k={k}, "
                            f"n_queries={n_q}, n_candidates={n_c})")
    return BaselineCell(model=row["model"], dataset=row["dataset"], k=k, condition=condition, recall=rec / 100.0,
                        n_queries=n_q, n_candidates=n_c, seed=row.get("seed") or "", source=row.get("source") or "")


def write_table(cells: Iterable[BaselineCell], path: str | Path) -> Path:
    """Write ``cells`` to ``path`` atomically (temporary file + rename), percentages with 2 decimals."""
    path = Path(path)
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for c in cells:
            writer.writerow([c.model, c.dataset, c.condition.perturbation, severity_text(c.condition), c.k,
                             f"{c.recall * 100:.2f}",
                             c.n_queries, c.n_candidates, c.seed, c.source])
    return path
