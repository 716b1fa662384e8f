"""The HTML report: verdicts, numbers, privacy, well-formedness, self-containment and atomic writing."""

from __future__ import annotations

import base64
import os
import re
import xml.etree.ElementTree as ET
from html import escape, unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxr_robust.metrics import RankCounts
from cxr_robust.report import cell_state, overall_verdict, render_report, write_report
from cxr_robust.results import PAPER_COUNTS, SCHEMA, ModelOutcome
from cxr_robust.stats import CellDecision, GateRule
from cxr_robust.summaries import robustness_summary

RATIOS = (0.0, 0.0025, 0.25)
KS = (5, 10)
N_CANDIDATES, N_QUERIES = 994, 1770
RULE = GateRule().describe("unpaired")
PAIRED_RULE = GateRule().describe("paired") + " (phantom-clip__phantom-eval-s0__seed0.npz; same perturbation seed)"
SECRET = "SECRET-REPORT-TEXT-42"
# A 1x1 PNG, as a phantom example image would be embedded.
PNG_1X1 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")
VOID = {"meta", "br", "img", "input", "hr", "link", "col", "area", "base", "wbr", "source", "track", "embed"}


# ----- synthetic documents ----------------------------------------------------------------------------------
def _recall(ratio: float, k: int) -> float:
    """A plausible Recall@k grid: rises with k, falls with occlusion."""
    return round(0.1 + 0.004 * k - 0.3 * ratio, 4)


def _cell(model: str, ratio: float, k: int, *, shift: float = 0.0, baseline: bool = True,
          passed: bool | None = True, chance_passed: bool = True, **extra: Any) -> dict:
    """One cell as the gate stores it (``CellDecision.as_dict()``), so the schema stays in step."""
    base = _recall(ratio, k) if baseline else None
    d = CellDecision(model=model, condition=ratio, k=k, measured=_recall(ratio, k) + shift, n_queries=N_QUERIES,
                     n_candidates=N_CANDIDATES, chance=k / N_CANDIDATES, baseline=base,
                     se=0.01 if baseline else None, tolerance=0.0231 if baseline else None,
                     p_value=0.4 if baseline else None, p_adjusted=(0.8 if passed else 0.001) if baseline else None,
                     passed=passed if baseline else None, chance_mode="above" if baseline else "not-below",
                     chance_passed=chance_passed, rule=RULE, extras=dict(extra))
    return d.as_dict()


def _meta(model: str, **overrides: Any) -> dict:
    meta = {"model": model, "model_fingerprint": {"adapter": "OpenClipAdapter", "name": model, "input_size": 224,
                                                  "weights_sha256": "ab12cd34" * 8},
            "dataset": "phantom-eval-s0", "dataset_counts": {"studies": 400, "images": 720,
                                                             "views": {"AP": 300, "LATERAL": 120, "PA": 300}},
            "device": "cpu", "seed": 0, "text_policy": "findings+impression", "tie_policy": "optimistic",
            "text_encodings": 0, "image_encodings": 2160, "cache_dir": "/tmp/cache",
            "timings": {"texts_s": 0.012, "ratio_0_s": 1.5, "total_s": 4.25},
            "versions": {"cxr_robust": "0.1.0", "python": "3.11.9", "torch": "2.14.1", "numpy": "2.1.0"}}
    meta.update(overrides)
    return meta


def _measured(model: str, cells: list[dict], **kw: Any) -> dict:
    return ModelOutcome(model, "measured", baseline_row=model, baseline_source="baselines/phantom.csv",
                        text_policy="findings+impression", meta=_meta(model), cells=cells, **kw).__dict__


def _grid(model: str, **kw: Any) -> list[dict]:
    return [_cell(model, r, k, **kw) for r in RATIOS for k in KS]


def _doc(models: list[dict], *, credentialed: bool = False, **extra: Any) -> dict:
    doc = {"schema": SCHEMA, "created": "2025-01-01T00:00:00+00:00", "paper_counts": dict(PAPER_COUNTS),
           "config": {"models": [m["model"] for m in models], "dataset": "phantom", "seed": 0, "alpha": 0.05,
                      "require_all": False, "update_baselines": False, "ks": list(KS), "ratios": list(RATIOS)},
           "rule": RULE,
           "dataset": {"name": "phantom-eval-s0", "kind": "phantom", "credentialed": credentialed,
                       "counts": {"studies": 400, "images": 720, "views": {"AP": 300, "LATERAL": 120, "PA": 300}},
                       "exclusions": {}},
           "git": "7a796e1abcde-dirty", "models": models}
    doc.update(extra)
    return doc


def _failing_grid(model: str) -> list[dict]:
    """A grid whose (25 %, k=10) cell regressed by 5 pp."""
    cells = _grid(model)
    bad = next(i for i, c in enumerate(cells) if c["ratio"] == 0.25 and c["k"] == 10)
    cells[bad] = _cell(model, 0.25, 10, shift=-0.05, passed=False)
    return cells


def _paired_grid(model: str, lost: int = 12, gained: int = 3, p: float = 0.018,
                 failing: tuple[float, int] | None = None) -> list[dict]:
    """A grid compared on the same queries against recorded ranks, as ``gate.compare_paired`` stores it; the
    ``failing`` (ratio, k) cell lost 5 pp."""
    cells = []
    for r in RATIOS:
        for k in KS:
            bad = (r, k) == failing
            c = _cell(model, r, k, shift=-0.05 if bad else 0.0, passed=not bad)
            c.update(rule=PAIRED_RULE, tolerance=None, se=None, p_value=p, baseline_n_queries=N_QUERIES,
                     extras={"paired": {"b": float(lost), "c": float(gained), "p_value": p, "method": "mcnemar-exact",
                                        "n_queries": N_QUERIES, "reference_seed": 0, "run_seed": 0}})
            cells.append(c)
    return cells


def curve_summary(ratios: tuple[float, ...] = RATIOS, ks: tuple[int, ...] = KS, seed: int = 0) -> dict:
    """A real :func:`robustness_summary` (ranks that worsen with severity), so the shape stays in step."""
    rng = np.random.default_rng(seed)
    m = 300
    counts = {float(r): RankCounts(rng.integers(0, 40 + 150 * i, m), np.zeros(m, dtype=np.int64), N_CANDIDATES)
              for i, r in enumerate(ratios)}
    return robustness_summary(counts, ks, n_boot=200, seed=seed)


def _rows(table_html: str) -> list[list[str]]:
    """A table's rows as lists of cell texts (tags stripped, spaces collapsed)."""
    return [[unescape(re.sub(r"\s+([),.;])", r"\1", re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", cell))).strip())
             for cell in re.findall(r"<t[hd]\b[^>]*>(.*?)</t[hd]>", row, flags=re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", table_html, flags=re.S)]


def _summary_table(html: str, n: int = 0) -> str:
    return re.findall(r"<table class=summary>.*?</table>", html, flags=re.S)[n]


def _section(html: str, section_id: str) -> str:
    return re.search(rf"<section id={section_id}>(.*?)</section>", html, flags=re.S).group(1)


def example_document() -> dict:
    """A document with every kind of model entry (also used to render /tmp/cxr_report_example.html)."""
    ok = _measured("phantom-clip", _grid("phantom-clip"), summary={"occlusion": curve_summary()})
    bad = _measured("cxr-clip-swint", _failing_grid("cxr-clip-swint"))
    bad["cells"][0] = _cell("cxr-clip-swint", 0.0, 5, chance_passed=False)
    nobase = _measured("biovil", _grid("biovil", baseline=False))
    skipped = ModelOutcome("medclip", "skipped", reason="weights missing: set --cxr-weights medclip=PATH "
                                                          "(or $CXR_ROBUST_WEIGHTS_DIR)").__dict__
    errored = ModelOutcome("cxr-repair", "error", reason="RuntimeError: CUDA out of memory").__dict__
    examples = [{"image_id": "ph-0001", "report": "No acute <cardiopulmonary> process.", "image_png_base64": PNG_1X1}]
    return _doc([ok, bad, nobase, skipped, errored], examples=examples)


# ----- checkers ---------------------------------------------------------------------------------------------
class _Balance(HTMLParser):
    """Collects tags and attributes; fails on a closing tag that does not match the open one."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend((tag, k, v) for k, v in attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend((tag, k, v) for k, v in attrs)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()


def _parse(html: str) -> _Balance:
    parser = _Balance()
    parser.feed(html)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert not parser.stack, f"unclosed: {parser.stack}"
    return parser


def _svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(s) for s in re.findall(r"<svg\b.*?</svg>", html, flags=re.S)]


def _cell_classes(html: str) -> list[str]:
    return re.findall(r"<td class=(pass|fail|nobase|missing) title=", html)


def _visible_text(html: str) -> str:
    """The page's text without tags, to test what a reader sees."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# ----- verdicts and numbers ---------------------------------------------------------------------------------
def test_passing_model_shows_pass_and_its_numbers() -> None:
    html = render_report(_doc([_measured("phantom-clip", _grid("phantom-clip"))]))
    assert "verdict v-pass'>PASS<" in html
    assert _cell_classes(html) == ["pass"] * len(RATIOS) * len(KS)
    # (25 %, k=10): 0.1 + 0.04 - 0.075 = 6.50 %; baseline identical; difference +0.00 pp.
    assert "6.50 %" in html and "base 6.50 %" in html and "+0.00 pp" in html
    assert "<b>6</b> passed · <b>0</b> failed" in html
    assert "0.25 %</th>" in html and "25 %</th>" in html and "k = 10</th>" in html


def test_failing_cell_fails_the_report_and_is_marked() -> None:
    html = render_report(_doc([_measured("cxr-clip-swint", _failing_grid("cxr-clip-swint"))]))
    assert "verdict v-fail'>FAIL<" in html
    assert _cell_classes(html).count("fail") == 1
    assert "-5.00 pp" in html and "1.50 %" in html  # 6.50 % - 5 pp
    assert "cxr-clip-swint: 1 of 6 cells failing" in html
    tooltip = re.search(r"<td class=fail title='([^']*)'", html).group(1)
    for fragment in ("tolerance ±2.31 pp", "family-adjusted p = 0.001", "chance k/N = 1.006 %",
                     "N = 994 candidate reports", "M = 1,770 query images"):
        assert fragment in tooltip
    ring = "stroke='#c62828' stroke-width='2'/>"
    panels = re.findall(r"<svg\b.*?</svg>", html, flags=re.S)
    assert [ring in svg for svg in panels] == [False, True]  # ringed in the k = 10 panel only


def test_chance_failure_gets_a_badge_and_fails() -> None:
    cells = _grid("m")
    cells[0] = _cell("m", 0.0, 5, chance_passed=False)
    html = render_report(_doc([_measured("m", cells)]))
    assert "<span class=badge>below chance</span>" in html
    assert cell_state(cells[0]) == "fail"
    assert overall_verdict(_doc([_measured("m", cells)]))[0] == "FAIL"


def test_model_without_baselines_fails_unless_explicitly_allowed_and_is_never_green() -> None:
    """A cell without a baseline compares nothing: a failure by default, NOT COMPARED (never PASS) when allowed."""
    doc = _doc([_measured("biovil", _grid("biovil", baseline=False))])
    html = render_report(doc)
    assert _cell_classes(html) == ["fail"] * 6
    assert "verdict v-fail'>FAIL<" in html and "6 cells have no baseline (a failure" in html
    doc["config"]["allow_missing_baseline"] = True
    html = render_report(doc)
    assert _cell_classes(html) == ["nobase"] * 6
    assert "base —" in html and "verdict v-none'>NOT COMPARED<" in html and "class='verdict v-pass'" not in html
    assert "6 cells NOT COMPARED" in html


def test_skipped_and_errored_models_show_their_reasons() -> None:
    reason = "weights missing: set --cxr-weights medclip=PATH (or $CXR_ROBUST_WEIGHTS_DIR)"
    doc = _doc([ModelOutcome("medclip", "skipped", reason=reason).__dict__,
                ModelOutcome("cxr-repair", "error", reason="RuntimeError: CUDA out of memory").__dict__])
    html = render_report(doc)
    assert escape(reason) in html and "skipped — to run it" in html
    assert "RuntimeError: CUDA out of memory" in html
    assert "verdict v-fail'>FAIL<" in html  # an error fails every cell of the model
    only_skipped = render_report(_doc([ModelOutcome("medclip", "skipped", reason=reason).__dict__]))
    assert "NOTHING MEASURED" in only_skipped


def test_compact_summary_is_in_the_grids_units_with_cis() -> None:
    """Rows k; clean Recall@k, AUC, AUC ÷ clean and the drop at each severity, all in %, labelled as the grid."""
    summary = curve_summary()
    html = render_report(_doc([_measured("m", _grid("m"), summary={"occlusion": summary})]))
    rows = _rows(_summary_table(html))
    assert rows[0][:4] == ["k", "clean Recall@k", "AUC", "AUC ÷ clean"]
    assert rows[1] == ["0.25 %", "25 %"]  # the grid's column headers, severity 0 is the clean column
    grid_head = re.search(r"<table class=grid>.*?</tr>", html, flags=re.S).group(0)
    assert all(f"<th>{label}</th>" in grid_head for label in rows[1])
    k10 = rows[3]
    assert k10[0] == "k = 10"

    def shown(entry: dict, digits: int) -> str:
        lo, hi = entry["ci"]
        return f"{100 * entry['value']:.{digits}f} % [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"

    assert k10[1] == shown(summary["clean@10"], 2) and k10[2] == shown(summary["auc@10"], 2)
    assert k10[3] == shown(summary["auc_rel@10"], 1)
    assert k10[4:] == [shown(summary["drop@10"][repr(r)], 1) for r in RATIOS[1:]]
    assert float(k10[5].split()[0]) > 20  # the synthetic ranks worsen: a real drop, not a fraction printed
    caption = re.search(r"<table class=summary><caption>(.*?)</caption>", html, flags=re.S).group(1)
    assert "divided by that range (trapezoid rule)" in caption and "occluded area 0 to 25 %" in caption
    assert "[95 % bootstrap CI over 300 queries, 200 resamples]" in caption
    no_drops = {k: v for k, v in summary.items() if not k.startswith("drop@")}
    html = render_report(_doc([_measured("m", _grid("m"), summary={"occlusion": no_drops})]))
    assert [len(row) for row in _rows(_summary_table(html))] == [4, 4, 4]  # one header row, a row per k


def test_raw_summary_figures_are_collapsed_and_in_percent() -> None:
    summary = curve_summary()
    html = render_report(_doc([_measured("m", _grid("m"), summary={"occlusion": summary})]))
    before, details = html.split("<details class=raw>", 1)
    details = details.split("</details>", 1)[0]
    assert "drop@" not in before and "auc_rel@" not in before  # the raw key names only inside the collapsed part
    drop = summary["drop@5"][repr(0.25)]
    assert (f"<tr><th>drop@5 at 25 %</th><td class=num>{100 * drop['value']:.2f} %</td>"
            f"<td class=num>[{100 * drop['ci'][0]:.2f}, {100 * drop['ci'][1]:.2f}]</td></tr>") in details
    assert "<th>severities</th><td colspan=2>0 %, 0.25 %, 25 %</td>" in details
    assert "<th>confidence</th><td colspan=2>95 %</td>" in details and "<th>n_boot</th>" in details


def test_levelled_perturbation_summary_uses_level_labels() -> None:
    cells = _grid("m") + [{**_cell("m", 0.0, k), "perturbation": "gaussian_noise", "severity": float(s),
                           "ratio": None} for s in (1, 3) for k in KS]
    summary = {"occlusion": curve_summary(), "gaussian_noise": curve_summary(ratios=(0.0, 1.0, 3.0))}
    html = render_report(_doc([_measured("m", cells, summary=summary)]))
    rows = _rows(_summary_table(html, 1))
    assert rows[1] == ["s1", "s3"]
    caption = re.findall(r"<table class=summary><caption>(.*?)</caption>", html, flags=re.S)[1]
    assert "severity levels clean (0) to s3, evenly spaced" in caption


def test_old_document_with_one_summary_and_no_perturbation_key_renders() -> None:
    """results.json written before perturbations existed: cells carry ``ratio`` only, one summary."""
    cells = [{k: v for k, v in c.items() if k not in ("perturbation", "severity")} for c in _grid("m")]
    model = _measured("m", cells, summary=curve_summary())
    del model["mode"]
    html = render_report(_doc([model]))
    _parse(html)
    assert "could not be rendered" not in html
    assert _rows(_summary_table(html))[1] == ["0.25 %", "25 %"]
    assert _cell_classes(html) == ["pass"] * 6 and len(_svgs(html)) == len(KS)


def test_summary_of_another_shape_is_only_listed_raw() -> None:
    model = _measured("m", _grid("m"), summary={"auc": {"value": 0.4123, "ci": [0.4, 0.425]},
                                                  "relative_drop": {"value": 0.12, "ci": [0.1, 0.14]}, "n": 3})
    html = render_report(_doc([model]))
    assert "<table class=summary>" not in html
    details = html.split("<details class=raw>", 1)[1].split("</details>", 1)[0]
    assert "<th>auc</th>" in details and "0.4123 <span class=muted>[0.4, 0.425]</span>" in details
    assert "<th>relative_drop</th>" in details and "<th>n</th>" in details
    assert "<details class=raw>" not in render_report(_doc([_measured("m", _grid("m"))]))


# ----- gate rule, paired tooltips, baseline row -------------------------------------------------------------
def test_paired_run_shows_the_paired_rule_and_lost_gained_queries() -> None:
    model = _measured("phantom-clip", _paired_grid("phantom-clip", failing=(0.25, 10)), mode="paired")
    html = render_report(_doc([model]))  # the document's run-level rule is the stale unpaired line
    rule = _section(html, "gate-rule")
    assert escape(PAIRED_RULE) in rule and "z-test" not in rule and "McNemar" in rule
    assert "Applied to <a href='#model-0-phantom-clip'>phantom-clip</a> (paired, 6 cells)." in rule
    tips = re.findall(r"<td class=(?:pass|fail) title='([^']*)'", html)
    assert len(tips) == 6 and all("tolerance" not in t for t in tips)
    assert all("12 queries lost the hit (b), 3 gained it (c); exact test (mcnemar-exact) one-sided p = 0.018" in t
               for t in tips)
    assert "hover a cell for the queries that lost / gained the hit, the exact test's p, adjusted p" in html
    assert ">paired<" in _section(html, "models")


def test_models_compared_differently_each_get_their_rule() -> None:
    paired = _measured("phantom-clip", _paired_grid("phantom-clip"), mode="paired")
    unpaired = _measured("clip", _grid("clip"), mode="unpaired")
    rule = _section(render_report(_doc([paired, unpaired])), "gate-rule")
    rows = _rows(rule)
    assert rows[0] == ["applied to", "rule"]
    by_rule = {r[1]: r[0] for r in rows[1:]}
    assert by_rule == {PAIRED_RULE: "phantom-clip (paired, 6 cells)", RULE: "clip (unpaired, 6 cells)"}


def test_rule_falls_back_to_the_runs_line_when_nothing_was_compared() -> None:
    rule = _section(render_report(_doc([_measured("m", _grid("m", baseline=False))])), "gate-rule")
    assert escape(RULE) in rule and "No cell was compared with a baseline in this run." in rule


def test_baseline_row_of_another_model_is_set_apart_with_its_rule() -> None:
    model = _measured("my-finetune", _paired_grid("my-finetune"), mode="paired")
    model.update(baseline_row="phantom-clip", baseline_row_rule="declared by the model's registry entry")
    html = render_report(_doc([model]))
    assert ("<p class=note>Compared with the baseline row of <b class=mono>phantom-clip</b> (declared by the "
            "model&#x27;s registry entry), not a row named <span class=mono>my-finetune</span> from "
            "<span class=mono>baselines/phantom.csv</span>; compared paired: the same queries against recorded "
            "per-query ranks;") in html
    assert "paired · <span class=mono>row phantom-clip</span>" in _section(html, "models")
    own = {**_measured("phantom-clip", _grid("phantom-clip"), mode="unpaired"), "baseline_row_rule": "the model's name"}
    html = render_report(_doc([own]))
    assert ("<p>Baseline row <span class=mono>phantom-clip</span> (the model&#x27;s name) from "
            "<span class=mono>baselines/phantom.csv</span>; compared unpaired") in html
    assert "class=note" not in html and "row phantom-clip</span>" not in _section(html, "models")
    html = render_report(_doc([_measured("phantom-clip", _grid("phantom-clip"))]))  # no baseline_row_rule recorded
    assert "<p>Baseline row <span class=mono>phantom-clip</span> from" in html


def test_header_dataset_counts_beside_paper_and_exclusions() -> None:
    doc = _doc([_measured("m", _grid("m"))])
    doc["dataset"]["exclusions"] = {"missing_report": 3, "view_filter": 11}
    html = render_report(doc)
    assert "phantom-eval-s0" in html
    assert "<td class=num>400</td><td class=num>994</td><td class=num>-594</td>" in html
    assert "<td class=num>720</td><td class=num>1,770</td><td class=num>-1,050</td>" in html
    assert "<th>LATERAL</th><td class=mono>120</td>" in html
    assert "<th>view_filter</th><td class=mono>11</td>" in html
    assert escape(RULE) in html


def test_exclusions_fall_back_to_the_loaders_dataset_meta() -> None:
    model = _measured("m", _grid("m"))
    model["meta"]["dataset_meta"] = {"excluded_studies": {"missing_report": 2}, "excluded_images": {"missing_image": 5}}
    html = render_report(_doc([model]))
    assert "<th>missing_report</th><td class=mono>2</td>" in html and "<th>missing_image</th>" in html


def test_metadata_and_cache_proof() -> None:
    html = render_report(_doc([_measured("m", _grid("m"))]))
    assert "report texts encoded this run: 0 (all from the embedding cache)" in html
    assert "image embeddings computed this run: 2,160" in html
    assert "ab12cd34" * 8 in html and "<th>weights_sha256</th>" in html
    assert "<th>torch</th><td class=mono>2.14.1</td>" in html
    assert "<th>total_s</th><td class=mono>4.25</td>" in html
    assert "<th>device</th><td class=mono>cpu</td>" in html and "<th>seed</th><td class=mono>0</td>" in html
    assert "7a796e1abcde-dirty" in html and "<h3>Effective configuration</h3>" in html
    assert "<th>alpha</th><td class=mono>0.05</td>" in html


# ----- the plot ---------------------------------------------------------------------------------------------
def test_small_multiples_one_valid_svg_panel_per_k() -> None:
    html = render_report(_doc([_measured("m", _failing_grid("m"))]))
    svgs = _svgs(html)
    assert len(svgs) == len(KS)
    ns = "{http://www.w3.org/2000/svg}"
    for k, svg in zip(KS, svgs):
        assert svg.find(f"{ns}title").text == f"Recall@{k} of m versus occlusion severity"
        lines = svg.findall(f"{ns}polyline")
        assert [p.get("stroke-dasharray") for p in lines] == ["5 3", None]  # baseline, then measured
        chance = [ln for ln in svg.findall(f"{ns}line") if ln.get("stroke-dasharray") == "1 3"]
        y_chance = float(chance[0].get("y1"))
        # Evenly spaced categorical x axis, whatever the ratio values; the chance line sits at k/N on 0-100 %.
        dots = [c for c in svg.findall(f"{ns}circle") if c.get("r") == "2.6"]
        xs = [float(c.get("cx")) for c in dots]
        assert len(xs) == len(RATIOS) and len({round(b - a, 1) for a, b in zip(xs, xs[1:])}) == 1
        ticks = {t.text: float(t.get("y")) - 3.5 for t in svg.iter(f"{ns}text") if t.text in ("100", "0")}
        assert y_chance == pytest.approx(ticks["0"] + (ticks["100"] - ticks["0"]) * k / N_CANDIDATES, abs=0.1)
        assert "k = {}".format(k) in [t.text for t in svg.iter(f"{ns}text")]
        labels = [t.text for t in svg.iter(f"{ns}text")]
        assert all(label in labels for label in ("0 %", "0.25 %", "25 %"))
        tips = [c.find(f"{ns}title").text for c in dots]
        assert tips[-1].startswith(f"k={k}, 25 %: ")
    assert "FAIL" in [c.find(f"{ns}title").text for c in svgs[1].iter(f"{ns}circle")
                      if c.find(f"{ns}title") is not None][-1]
    assert "measured</span>" in html and "baseline</span>" in html and "chance k/N</span>" in html


# ----- privacy and escaping ---------------------------------------------------------------------------------
def test_credentialed_report_holds_no_text_fields() -> None:
    model = _measured("cxr-clip", [_cell("cxr-clip", r, k, findings=SECRET) for r in RATIOS for k in KS],
                      summary={"auc": {"value": 0.5, "ci": [0.4, 0.6]}, "impression": SECRET})
    model["meta"]["findings"] = SECRET
    model["meta"]["model_fingerprint"]["report_text"] = SECRET
    model["meta"]["versions"]["examples"] = SECRET
    doc = _doc([model], credentialed=True,
               examples=[{"image_id": "s1", "report": SECRET, "image_png_base64": PNG_1X1}])
    doc["dataset"]["findings"] = SECRET
    doc["dataset"]["exclusions"] = {"missing_report": 1, "findings_text": SECRET}
    doc["config"]["text"] = SECRET
    html = render_report(doc)
    assert SECRET not in html
    for name in ("findings", "impression", "report_text", "examples", "text", "findings_text"):
        assert f"<th>{name}</th>" not in html
    assert "data:image/png" not in html and "<h2>Examples</h2>" not in html
    assert "<th>missing_report</th>" in html and "<th>auc</th>" in html  # ids and numbers still there
    _parse(html)


def test_phantom_examples_gallery_is_embedded_and_escaped() -> None:
    doc = _doc([_measured("m", _grid("m"))], examples=[
        {"image_id": "ph-1", "report": "No <b>acute</b> process.", "image_png_base64": PNG_1X1},
        {"image_id": "ph-2", "report": "x", "image_png_base64": "x' onerror='alert(1)"}])
    html = render_report(doc)
    assert "<h2>Examples</h2>" in html
    assert f"src='data:image/png;base64,{PNG_1X1}'" in html
    assert "No &lt;b&gt;acute&lt;/b&gt; process." in html
    assert "onerror" not in html  # invalid image data is dropped, not embedded
    assert base64.b64decode(PNG_1X1).startswith(b"\x89PNG")


def test_model_name_with_markup_is_escaped() -> None:
    name = "evil<script>alert('x')</script>\"&"
    doc = _doc([{**_measured(name, _grid(name)), "baseline_row": "<i>row</i>", "baseline_row_rule": "<u>why</u>"},
                ModelOutcome("<b>skip</b>", "skipped", reason="set <PATH> & retry").__dict__])
    html = render_report(doc)
    assert "<script" not in html and "<b>skip</b>" not in html and "<i>" not in html and "<u>" not in html
    assert "row of <b class=mono>&lt;i&gt;row&lt;/i&gt;</b> (&lt;u&gt;why&lt;/u&gt;)" in html
    assert "evil&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&quot;&amp;" in html
    assert "set &lt;PATH&gt; &amp; retry" in html
    _parse(html)
    _svgs(html)


# ----- structure --------------------------------------------------------------------------------------------
def test_example_document_is_well_formed_and_self_contained() -> None:
    html = render_report(example_document())
    parser = _parse(html)
    assert len(_svgs(html)) == 3 * len(KS)  # three measured models, one panel per k
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    for tag, name, value in parser.attrs:
        if name in ("src", "href", "xlink:href", "action", "poster"):
            assert value and (value.startswith("#") or value.startswith("data:image/png;base64,")), (tag, value)
        assert not name.startswith("on"), (tag, name)
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    assert "url(" not in style and "@import" not in style
    # The only http(s) string is the SVG namespace name, which is never fetched.
    assert set(re.findall(r"https?://[^\s'\"]*", html)) == {"http://www.w3.org/2000/svg"}
    text = _visible_text(html)
    assert "medclip: skipped" in text and "cxr-repair: error" in text
    assert "below chance" in text


@pytest.mark.parametrize("doc", [
    {},
    {"models": None, "dataset": None, "config": None},
    {"models": "nonsense"},
    {"models": [{"model": "x", "status": "error"}]},
    {"models": [{"model": "x", "status": "measured"}]},
    {"models": [{"model": "x", "status": "measured", "meta": None, "cells": [{"k": 5}, {"ratio": 0.0}, None]}]},
    {"models": [{"model": "x", "status": "measured", "cells": [{"ratio": 0.0, "k": 5, "measured": 0.2}]}],
     "dataset": {"name": "d", "counts": {"studies": 10}}},
    {"models": [{"model": "x", "status": "weird", "reason": None}], "paper_counts": None},
])
def test_partial_documents_render(doc: dict) -> None:
    html = render_report(doc)
    _parse(html)
    for svg in _svgs(html):
        assert svg is not None
    assert "could not be rendered" not in html  # no section needed the safety net


def test_nothing_measured_verdict() -> None:
    html = render_report({"models": []})
    assert "NOTHING MEASURED" in html and "no model was configured" in html


# ----- writing ----------------------------------------------------------------------------------------------
def test_write_report_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    assert write_report(_doc([_measured("first-model", _grid("first-model"))]), str(target)) == target
    assert "first-model" in target.read_text(encoding="utf-8")
    write_report(_doc([_measured("second-model", _grid("second-model"))]), target)
    content = target.read_text(encoding="utf-8")
    assert "second-model" in content and "first-model" not in content
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_failed_write_keeps_the_old_report_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.html"
    write_report(_doc([]), target)
    before = target.read_text(encoding="utf-8")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(example_document(), target)
    assert target.read_text(encoding="utf-8") == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
