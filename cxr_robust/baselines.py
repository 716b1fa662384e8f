"""Baseline tables (CSV): read, validate, look up a cell, write atomically.

A baseline file has one row per (model, dataset, k, occlusion ratio) with the columns in
:data:`COLUMNS`. Recall and occlusion are percentages as printed in the paper (two decimals); the API
speaks fractions.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cxr_robust.atomic import atomic_open

COLUMNS = ("model", "dataset", "k", "occlusion_pct", "recall_pct", "n_queries", "n_candidates", "seed", "source")
REQUIRED = ("model", "dataset", "k", "occlusion_pct", "recall_pct", "n_queries", "n_candidates")


class BaselineError(ValueError):
    """A baseline file that is malformed; the message names the file, the row and what is wrong."""


@dataclass(frozen=True)
class BaselineCell:
    """One baseline value; ``recall`` and ``ratio`` are fractions."""

    model: str
    dataset: str
    k: int
    ratio: float
    recall: float
    n_queries: int
    n_candidates: int
    seed: str = ""
    source: str = ""


def ratio_key(ratio: float) -> float:
    """Canonical key for an occlusion ratio (percent rounded to 4 decimals), robust to float noise."""
    return round(float(ratio) * 100.0, 4)


class BaselineTable:
    """A validated baseline table loaded from a CSV file."""

    def __init__(self, cells: Sequence[BaselineCell], path: Path | None = None) -> None:
        self.path = path
        self.cells = list(cells)
        self._index = {(c.model, c.k, ratio_key(c.ratio)): c for c in self.cells}

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
            if missing:
                raise BaselineError(f"{path}: missing columns {missing}; present: {header}. "
                                    f"A baseline file needs {list(REQUIRED)}")
            cells, seen = [], {}
            for line, row in enumerate(reader, start=2):
                cell = _parse_row(row, path, line)
                key = (cell.model, cell.dataset, cell.k, ratio_key(cell.ratio))
                if key in seen:
                    raise BaselineError(f"{path}:{line}: duplicate cell {key} (first at line {seen[key]})")
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

    def get(self, model: str, k: int, ratio: float) -> BaselineCell | None:
        """The baseline for (model, k, ratio), or None when the table has no such cell.

        Use :meth:`for_dataset` first when the table holds several datasets.
        """
        return self._index.get((model, int(k), ratio_key(ratio)))


def _parse_row(row: dict, path: Path, line: int) -> BaselineCell:
    where = f"{path}:{line}"
    try:
        k = int(row["k"])
        occ = float(row["occlusion_pct"])
        rec = float(row["recall_pct"])
        n_q = int(row["n_queries"])
        n_c = int(row["n_candidates"])
    except (TypeError, ValueError) as exc:
        raise BaselineError(f"{where}: a numeric column does not parse ({exc})") from None
    if not row.get("model") or not row.get("dataset"):
        raise BaselineError(f"{where}: empty model or dataset")
    if not (math.isfinite(occ) and 0 <= occ < 100):
        raise BaselineError(f"{where}: occlusion_pct {occ} is outside [0, 100)")
    if not (math.isfinite(rec) and 0 <= rec <= 100):
        raise BaselineError(f"{where}: recall_pct {rec} is outside [0, 100]")
    if n_q < 1 or n_c < 1 or not 1 <= k <= n_c:
        raise BaselineError(f"{where}: need n_queries >= 1 and 1 <= k <= n_candidates (got k={k}, "
                            f"n_queries={n_q}, n_candidates={n_c})")
    return BaselineCell(model=row["model"], dataset=row["dataset"], k=k, ratio=occ / 100.0, recall=rec / 100.0,
                        n_queries=n_q, n_candidates=n_c, seed=row.get("seed") or "", source=row.get("source") or "")


def write_table(cells: Iterable[BaselineCell], path: str | Path) -> Path:
    """Write ``cells`` to ``path`` atomically (temporary file + rename), percentages with 2 decimals."""
    path = Path(path)
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for c in cells:
            writer.writerow([c.model, c.dataset, c.k, f"{c.ratio * 100:.2f}", f"{c.recall * 100:.2f}",
                             c.n_queries, c.n_candidates, c.seed, c.source])
    return path
