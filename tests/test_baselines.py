"""The Table 1 baseline file equals the paper's table; the loader rejects malformed files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cxr_robust import PAPER_KS, PAPER_RATIOS
from cxr_robust.baselines import BaselineCell, BaselineError, BaselineTable, write_table

ROOT = Path(__file__).resolve().parents[1]
TABLE1 = ROOT / "baselines" / "table1_mimic_cxr.csv"
PAPER = Path(__file__).parent / "fixtures" / "paper_table1_recall.csv"  # verbatim copy of the paper's CSV


def test_table1_matches_the_paper_cell_by_cell() -> None:
    ours = list(csv.DictReader(TABLE1.open()))
    paper = list(csv.DictReader(PAPER.open()))
    assert len(ours) == len(paper) == 192
    for row, ref in zip(ours, paper):
        # Compared as printed strings: no rounding can hide a difference.
        assert (row["model"], row["k"], row["occlusion_pct"], row["recall_pct"]) == \
               (ref["model"], ref["k"], ref["occlusion_pct"], ref["recall_pct"])
        assert (row["dataset"], row["n_queries"], row["n_candidates"]) == ("mimic-cxr-validate", "1770", "994")
        assert "Table 1" in row["source"]


def test_lookup_every_cell() -> None:
    table = BaselineTable.load(TABLE1)
    assert table.models() == ["CLIP", "CXR-RePaiR", "CXR-CLIP", "MedCLIP"]
    for model in table.models():
        for k in PAPER_KS:
            for ratio in PAPER_RATIOS:
                assert table.get(model, k, ratio) is not None
    cell = table.get("CXR-CLIP", 10, 0.25)
    assert cell is not None and cell.recall == pytest.approx(0.2793) and cell.n_queries == 1770
    assert table.get("CXR-CLIP", 10, 0.3) is None
    assert table.get("CXR-CLIP", 7, 0.25) is None


def test_round_trip(tmp_path: Path) -> None:
    cells = [BaselineCell("m", "d", k, r, 0.1234 + k / 1000, 100, 50, "3", "test") for k in (1, 5) for r in (0, 0.0025)]
    path = write_table(cells, tmp_path / "b.csv")
    table = BaselineTable.load(path)
    assert table.get("m", 5, 0.0025).recall == pytest.approx(0.1284, abs=1e-4)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


@pytest.mark.parametrize(
    "content,match",
    [
        ("model,k\nA,5\n", "missing columns"),
        ("model,dataset,k,occlusion_pct,recall_pct,n_queries,n_candidates\nA,d,5,0,101,10,10\n", "outside"),
        ("model,dataset,k,occlusion_pct,recall_pct,n_queries,n_candidates\nA,d,5,100,1,10,10\n", "occlusion_pct"),
        ("model,dataset,k,occlusion_pct,recall_pct,n_queries,n_candidates\nA,d,11,0,1,10,10\n", "k <= n_candidates"),
        ("model,dataset,k,occlusion_pct,recall_pct,n_queries,n_candidates\nA,d,x,0,1,10,10\n", "parse"),
        ("model,dataset,k,occlusion_pct,recall_pct,n_queries,n_candidates\n"
         "A,d,5,0.00,1,10,10\nA,d,5,0,2,10,10\n", "duplicate"),
        ("model,dataset,k,occlusion_pct,recall_pct,n_queries,n_candidates\n", "no rows"),
    ],
)
def test_malformed_files_are_rejected_with_the_line(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(BaselineError, match=match) as info:
        BaselineTable.load(path)
    assert str(path) in str(info.value)


def test_perturbation_rows_round_trip_and_a_legacy_file_reads_as_occlusion(tmp_path: Path) -> None:
    from cxr_robust.perturbations import Condition

    cells = [BaselineCell("m", "d", 5, Condition("gaussian_noise", 3), 0.41, 100, 50, "0", "t"),
             BaselineCell("m", "d", 5, 0.0025, 0.52, 100, 50, "0", "t")]
    path = write_table(cells, tmp_path / "new.csv")
    assert path.read_text().splitlines()[1:] == ["m,d,gaussian_noise,3,5,41.00,100,50,0,t",
                                                 "m,d,occlusion,0.25,5,52.00,100,50,0,t"]
    table = BaselineTable.load(path)
    assert table.get("m", 5, Condition("gaussian_noise", 3)).recall == pytest.approx(0.41)
    assert table.get("m", 5, 0.0025).recall == table.get("m", 5, Condition("occlusion", 0.0025)).recall
    assert table.get("m", 5, Condition("gaussian_noise", 2)) is None
    legacy = tmp_path / "legacy.csv"
    legacy.write_text("model,dataset,k,occlusion_pct,recall_pct,n_queries,n_candidates\nm,d,5,0.25,52.00,100,50\n")
    assert BaselineTable.load(legacy).get("m", 5, Condition("occlusion", 0.0025)).recall == pytest.approx(0.52)
    bad = tmp_path / "bad.csv"
    bad.write_text("model,dataset,perturbation,severity,k,recall_pct,n_queries,n_candidates\n"
                   "m,d,gausian_noise,3,5,41,100,50\nm,d,gaussian_noise,9,5,41,100,50\n")
    with pytest.raises(BaselineError, match=r"bad.csv:2: unknown perturbation 'gausian_noise'.*did you mean"):
        BaselineTable.load(bad)
