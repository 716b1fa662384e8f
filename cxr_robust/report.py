"""The HTML report of a gate run: one self-contained file rendered from the results document.

The report is what a release engineer reads to decide whether a checkpoint ships, so it leads with the
verdict, the per-model table and the gate rule that was applied, then shows for each model and perturbation
the Table-1-shaped grid (measured vs baseline, coloured by the gate's verdict), a compact robustness summary
(clean recall, AUC, relative drops with CIs, in the grid's units) beside small-multiple plots, then why models
were skipped or failed to run, then the metadata needed to reproduce the run. Verdicts are only displayed
here: they come from :mod:`cxr_robust.verdicts`.

It is pure string building (no template engine, no plotting library, no JavaScript, no external resource):
the file must open offline, be attachable to a CI run, and render the same years later. Every string from
the document goes through :func:`html.escape`. For a credentialed dataset (MIMIC-CXR) the report holds ids
and numbers only: fields that could carry report text are never rendered, whatever the document contains.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

from cxr_robust import verdicts
from cxr_robust.atomic import atomic_write_text
from cxr_robust.results import PAPER_COUNTS

# Okabe-Ito: distinguishable with the common colour-vision deficiencies; one colour per k.
K_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
# Field names that could carry report text: never rendered for credentialed data.
PRIVATE_NAMES = frozenset({"findings", "impression", "impressions", "text", "texts", "report", "reports",
                           "report_text", "report_texts", "examples", "example"})
PRIVATE_PARTS = ("findings", "impression", "report_text", "example")
MAX_EXAMPLES = 12
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1200px;
 color:#222;padding:0 1em}
h1{font-size:1.5em;margin:.2em 0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.3em}
h3{margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.4em 0}th,td{border:1px solid #ccc;padding:3px 7px;vertical-align:top}
th{background:#f4f4f4;text-align:left}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{display:inline-block;font-weight:700;font-size:1.6em;padding:.15em .7em;border-radius:6px;color:#fff}
.v-pass{background:#1b7f3b}.v-fail{background:#c62828}.v-none{background:#777}
.notes li{margin:.1em 0}
table.grid td{min-width:6.5em;text-align:right;font-variant-numeric:tabular-nums;line-height:1.25}
table.grid th{text-align:center}
.pass{background:#dff3e4}.fail{background:#fbd3d3;outline:2px solid #c62828;outline-offset:-2px}
.nobase{background:#ececec;color:#555}.missing{background:#fff}
.meas{font-weight:700;font-size:1.05em}.base,.diff{font-size:.85em;color:#444}
.badge{display:inline-block;font-size:.72em;font-weight:700;padding:0 .35em;border-radius:3px;margin-left:.3em;
 background:#6a1b9a;color:#fff}
.legend span{display:inline-block;padding:1px 8px;margin-right:6px;border:1px solid #ccc}
.row{display:flex;flex-wrap:wrap;align-items:flex-start}.row>*{margin:0 1.5em .5em 0}
.kv th{width:16em}.muted{color:#666}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;
 word-break:break-all}
.big{font-weight:700}
details>summary{cursor:pointer}details>summary h4,details.metrics>summary h3{display:inline;margin:0}
.skip{border-left:4px solid #999;padding:.3em .8em;background:#fafafa;margin:.4em 0}
.err{border-left:4px solid #c62828;padding:.3em .8em;background:#fff5f5;margin:.4em 0}
.err pre,.skip pre{white-space:pre-wrap;margin:.2em 0}
.gallery figure{display:inline-block;width:200px;margin:.4em;vertical-align:top}
.gallery figure img{width:200px;height:auto}
.gallery figcaption{font-size:.8em;color:#333;max-height:9em;overflow:auto}
svg text{font-family:system-ui,sans-serif}
.scroll{overflow-x:auto;max-width:100%}
caption{caption-side:top;text-align:left;font-size:.85em;color:#333;padding:.2em 0;contain:inline-size}
.note{border-left:4px solid #E69F00;background:#fff8e6;padding:.3em .8em;margin:.4em 0}
table.summary td,table.metrics td{text-align:right;font-variant-numeric:tabular-nums;min-width:4.8em;padding:2px 6px}
table.summary th,table.metrics th{text-align:center}
table.summary tbody th,table.metrics tbody th{text-align:left;white-space:nowrap}
.ci{display:block;font-size:.78em;color:#555}
.multiples{display:flex;flex-wrap:wrap;gap:2px 8px;align-items:flex-start}
.keyline{font-size:.85em;color:#333;margin:.1em 0 .6em;contain:inline-size}
.nowrap{white-space:nowrap}td.name{overflow-wrap:anywhere;min-width:7em}
h1,h2,h3,p,li{overflow-wrap:break-word}
.swatch{display:inline-block;width:24px;height:0;vertical-align:middle;margin:0 4px 0 12px}
.ring{display:inline-block;width:9px;height:9px;border:2px solid #c62828;border-radius:50%;vertical-align:middle;
 margin:0 4px 0 12px}
details.raw{margin:.3em 0 1em}details.raw table{font-size:.9em}
"""


# ----- small formatting helpers ------------------------------------------------------------------------------
def _e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return escape("" if value is None else str(value), quote=True)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pct(fraction: Any, digits: int = 2) -> str:
    """A fraction as a percentage, or a dash when absent."""
    return f"{100 * fraction:.{digits}f} %" if _is_num(fraction) else "—"


def _pp(diff: Any) -> str:
    """A difference of fractions in percentage points, signed (never ``-0.00``: rounding noise of a table)."""
    if not _is_num(diff):
        return "—"
    return "+0.00 pp" if round(100 * diff, 2) == 0 else f"{100 * diff:+.2f} pp"


def _num(value: Any) -> str:
    """A scalar for a table: floats to 4 significant digits, everything else as text."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _severity_label(perturbation: str, severity: Any) -> str:
    """A severity as its perturbation prints it: occlusion in % of the area (``0.25 %``, as Table 1), levels as
    ``s3``; a perturbation that is not installed here prints the raw number."""
    from cxr_robust.perturbations import get_perturbation

    if not _is_num(severity):
        return str(severity)
    try:
        text = get_perturbation(perturbation).format_severity(float(severity))
    except KeyError:
        return f"{severity:g}"
    return text.replace("%", " %")


def _condition(c: dict) -> tuple[str, float | None]:
    """``(perturbation, severity)`` of a results cell (older files: occlusion at ``ratio``)."""
    if c.get("perturbation") is None:
        return "occlusion", c.get("ratio") if _is_num(c.get("ratio")) else None
    return str(c["perturbation"]), c.get("severity") if _is_num(c.get("severity")) else None


def _perturbations(cells: Sequence[dict]) -> list[str]:
    """The perturbations of a model's cells, in measurement order."""
    return list(dict.fromkeys(_condition(c)[0] for c in cells))


def _dict(value: Any) -> dict:
    """``value`` if it is a dict, else an empty one (partial documents may hold None or junk)."""
    return value if isinstance(value, dict) else {}


def _private(name: Any) -> bool:
    """Whether a field name looks like it could carry report text."""
    low = str(name).lower()
    return low in PRIVATE_NAMES or any(part in low for part in PRIVATE_PARTS)


# ----- generic tables ---------------------------------------------------------------------------------------
def _value_html(value: Any, credentialed: bool) -> str:
    """A value of a metadata dict: scalars escaped, lists joined, dicts as nested tables."""
    if isinstance(value, dict):
        if "value" in value and not isinstance(value["value"], (dict, list)):
            return _estimate_html(value, credentialed)
        return _kv_table(value, credentialed)
    if isinstance(value, (list, tuple)):
        return _e(", ".join(_num(v) for v in value))
    return _e(_num(value))


def _estimate_html(est: dict, credentialed: bool) -> str:
    """A summary estimate ``{"value": v, "ci": [lo, hi], ...}`` on one line: ``v [lo, hi] (other=...)``."""
    out = _e(_num(est["value"]))
    ci = est.get("ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        out += f" <span class=muted>[{_e(_num(ci[0]))}, {_e(_num(ci[1]))}]</span>"
    rest = [f"{_e(k)}={_value_html(v, credentialed)}" for k, v in est.items()
            if k not in ("value", "ci") and not (credentialed and _private(k))]
    if rest:
        out += f" <span class=muted>({'; '.join(rest)})</span>"
    return out


def _kv_table(items: dict, credentialed: bool, cls: str = "kv") -> str:
    """A two-column table of a dict; for credentialed data, fields that could hold text are left out."""
    rows = [f"<tr><th>{_e(k)}</th><td class=mono>{_value_html(v, credentialed)}</td></tr>"
            for k, v in items.items() if not (credentialed and _private(k))]
    if not rows:
        return "<span class=muted>none</span>"
    return f"<table class='{cls}'>{''.join(rows)}</table>"


# ----- cells and verdicts -----------------------------------------------------------------------------------
_CSS_CLASS = {verdicts.PASS: "pass", verdicts.FAIL: "fail", verdicts.MISSING: "fail",
              verdicts.NOT_COMPARED: "nobase", verdicts.RECORDED: "nobase"}


def cell_state(cell: dict, config: dict | None = None) -> str:
    """The state the run recorded for ``cell`` (``results.json``), else decided now by :mod:`verdicts`."""
    return cell.get("state") or verdicts.cell_state(cell, config or {})


def model_tally(model: dict, config: dict | None = None) -> dict[str, int]:
    """Counts of a model's cells by state (see :func:`cxr_robust.verdicts.model_tally`)."""
    return model.get("tally") or verdicts.model_tally(model, config or {})


def _annotated(doc: dict) -> dict:
    """``doc`` with every verdict written in (a copy, for documents that predate recorded states)."""
    if doc.get("verdict"):
        return doc
    import copy

    return verdicts.annotate(copy.deepcopy(doc))


def overall_verdict(doc: dict) -> tuple[str, list[str]]:
    """The run's verdict and its reasons, as the run recorded them (or decided now for older documents)."""
    if doc.get("verdict"):
        return doc["verdict"], list(doc.get("verdict_reasons") or [])
    return verdicts.run_verdict(doc)


def _grid_word(model: dict) -> str:
    grid = _dict(model.get("grid"))
    if not grid:
        return "—"
    return verdicts.STATE_LABELS.get(grid.get("state") or "", "—")


def _grid_sentence(model: dict) -> str:
    """One sentence on the pooled test of the model's whole grid."""
    grid = _dict(model.get("grid"))
    if not grid or not grid.get("n_cells"):
        return "Grid test: nothing to compare."
    return (f"Grid test ({grid.get('mode')}): mean Recall over {grid.get('n_cells')} cells "
            f"{_pct(grid.get('measured'))} vs baseline {_pct(grid.get('baseline'))}, adjusted p = "
            f"{_num(grid.get('p_adjusted'))}: {verdicts.STATE_LABELS.get(grid.get('state') or '', '?')}.")


# ----- header -----------------------------------------------------------------------------------------------
def _header(doc: dict) -> str:
    """Title, the verdict badge and one line per model that explains it."""
    verdict, why = overall_verdict(doc)
    cls = {"PASS": "v-pass", "FAIL": "v-fail"}.get(verdict, "v-none")  # NOT COMPARED is never green
    config = _dict(doc.get("config"))
    notes = "".join(f"<li>{_e(w)}</li>" for w in why)
    extra = ""
    if config.get("update_baselines"):
        extra = ("<p class=muted>This run recorded new baselines (--cxr-update-baselines): verdicts are "
                 "informational.</p>")
    return (f"<header id=verdict><h1>cxr-robust robustness gate</h1>"
            f"<p><span class='verdict {cls}'>{_e(verdict)}</span> "
            f"<span class=muted>created {_e(doc.get('created', '?'))} · "
            f"git {_e(doc.get('git') or 'unknown')}</span></p>"
            f"{f'<ul class=notes>{notes}</ul>' if notes else ''}{extra}</header>")


# How a model's cells were compared (results.json ``mode``), in words.
_MODE_WORDS = {"paired": "paired: the same queries against recorded per-query ranks",
               "unpaired": "unpaired: against a baseline table (aggregate recalls)",
               "none": "nothing compared (no baseline)"}


def _mode(model: dict) -> str | None:
    """``paired``/``unpaired``/``none`` as the run recorded it (older documents: from the grid or the cells)."""
    mode = model.get("mode") or _dict(model.get("grid")).get("mode")
    if mode:
        return str(mode)
    cells = [c for c in model.get("cells") or [] if isinstance(c, dict)]
    if any(_dict(c.get("extras")).get("paired") for c in cells):
        return "paired"
    return None


def _comparison(model: dict) -> str:
    """The overview's comparison column: the mode, and the baseline row when it is not the model's name."""
    row = model.get("baseline_row")
    text = _e(_mode(model) or "—")
    if row and str(row) != str(model.get("model")):
        text += f" · <span class=mono>row {_e(row)}</span>"
    return text


def _overview(doc: dict) -> str:
    """One row per model: status, counts of passed / failed / uncompared cells, how it was compared."""
    rows = []
    for i, m in enumerate(_models(doc)):
        status = m.get("status", "?")
        if status == "measured":
            t = model_tally(m, _dict(doc.get("config")))
            verdict = m.get("verdict") or verdicts.model_verdict(m, _dict(doc.get("config")))
            nums = (f"<td class=num>{t['cells']}</td><td class=num>{t['passed']}</td>"
                    f"<td class=num>{t['failed'] + t['missing']}</td><td class=num>{t['not_compared']}</td>"
                    f"<td class=num>{t['chance_failed']}</td><td>{_e(_grid_word(m))}</td><td>{_comparison(m)}</td>")
        else:
            verdict = m.get("verdict") or verdicts.model_verdict(m, _dict(doc.get("config")))
            nums = "<td class=num>—</td>" * 5 + "<td>—</td><td>—</td>"
        cls = {"PASS": "pass", "FAIL": "fail"}.get(verdict, "nobase")
        rows.append(f"<tr><td class=name><a href='#{_anchor(m, i)}'>{_e(m.get('model', '?'))}</a></td>"
                    f"<td>{_e(status)}</td>{nums}<td class={cls}>{_e(verdict)}</td></tr>")
    if not rows:
        return "<section id=models><h3>Models</h3><p class=muted>No model in this run.</p></section>"
    return ("<section id=models><h3>Models</h3><div class=scroll><table><tr><th>model</th><th>status</th>"
            "<th class=num>cells</th><th class=num>passed</th><th class=num>failed</th>"
            "<th class=num>not compared</th><th class=num>chance check failed</th><th>grid test</th>"
            "<th>comparison</th><th>verdict</th></tr>" + "".join(rows) + "</table></div></section>")


def _applied_rules(model: dict) -> dict[str, list[str]]:
    """The rules the run decided this model's compared cells and grid test by: rule text -> what it decided.

    Read from the cells (each records its rule), not the run's summary line: a run can mix paired and
    unpaired models, and cells without a baseline were decided by no comparison rule at all.
    """
    counts: dict[str, int] = {}
    for c in model.get("cells") or []:
        if isinstance(c, dict) and c.get("baseline") is not None and c.get("rule"):
            counts[str(c["rule"])] = counts.get(str(c["rule"]), 0) + 1
    out = {rule: [f"{n} cell{'s' if n != 1 else ''}"] for rule, n in counts.items()}
    grid = _dict(model.get("grid"))
    if grid.get("rule") and grid.get("baseline") is not None and grid.get("n_cells"):
        out.setdefault(str(grid["rule"]), []).append("grid test")
    return out


def _rules(doc: dict) -> str:
    """The gate rule that was actually applied, per model when the models were compared differently."""
    applied: dict[str, list[str]] = {}
    for i, m in enumerate(_models(doc)):
        if m.get("status") != "measured":
            continue
        for rule, what in _applied_rules(m).items():
            mode = _mode(m)
            applied.setdefault(rule, []).append(
                f"<a href='#{_anchor(m, i)}'>{_e(m.get('model', '?'))}</a> ({_e(mode + ', ' if mode else '')}"
                f"{_e(', '.join(what))})")
    head = "<section id=gate-rule><h3>Gate rule</h3>"
    if not applied:  # nothing compared, or a document older than per-cell rules: the run's own line
        recorded = doc.get("rule")
        note = "<p class=muted>No cell was compared with a baseline in this run.</p>" if recorded else ""
        return f"{head}<p class=mono>{_e(recorded or 'not recorded')}</p>{note}</section>"
    if len(applied) == 1:
        ((rule, who),) = applied.items()
        return f"{head}<p class=mono>{_e(rule)}</p><p class=muted>Applied to {'; '.join(who)}.</p></section>"
    rows = "".join(f"<tr><td>{'<br/>'.join(who)}</td><td class=mono>{_e(rule)}</td></tr>"
                   for rule, who in applied.items())
    return (f"{head}<p>The models were compared under different rules:</p><table><tr><th>applied to</th>"
            f"<th>rule</th></tr>{rows}</table></section>")


def _anchor(model: dict, index: int) -> str:
    """A fragment id for a model: only [a-z0-9-] so it needs no escaping; the index keeps it unique."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(model.get("model", "model")).lower()).strip("-")
    return f"model-{index}-{slug}".rstrip("-")


def _dataset(doc: dict) -> str:
    """Dataset name and counts beside the paper's, per-view counts and exclusions by reason."""
    ds = _dict(doc.get("dataset"))
    cred = bool(ds.get("credentialed"))
    paper = _dict(doc.get("paper_counts")) or PAPER_COUNTS
    counts = _dict(ds.get("counts")) or _first_meta(doc, "dataset_counts")
    rows = []
    for key, label in (("studies", "studies (reports)"), ("images", "images (queries)")):
        ours, theirs = counts.get(key), paper.get(key)
        diff = f"{ours - theirs:+,}" if _is_num(ours) and _is_num(theirs) else "—"
        rows.append(f"<tr><th>{label}</th><td class=num>{_e(_num(ours))}</td><td class=num>{_e(_num(theirs))}</td>"
                    f"<td class=num>{_e(diff)}</td></tr>")
    table = ("<table><tr><th></th><th class=num>this run</th><th class=num>paper</th><th class=num>difference</th></tr>"
             + "".join(rows) + "</table>")
    parts = [f"<section id=dataset><h3>Dataset: {_e(ds.get('name', 'unknown'))} "
             f"<span class=muted>({_e(ds.get('kind', '?'))}{', credentialed' if cred else ''})</span></h3>",
             f"<div class=row><div>{table}</div>"]
    views = _dict(counts.get("views"))
    if views:
        parts.append(f"<div><b>Images per view</b>{_kv_table(views, cred)}</div>")
    exclusions = _exclusions(doc, ds)
    if exclusions:
        parts.append(f"<div><b>Exclusions by reason</b>{_kv_table(exclusions, cred)}</div>")
    parts.append("</div>")
    if not counts:
        parts.append("<p class=muted>The dataset was not loaded in this run (no counts).</p>")
    parts.append("</section>")
    return "".join(parts)


def _exclusions(doc: dict, ds: dict) -> dict:
    """Exclusions recorded with the dataset, else those the loaders record in the sweep's dataset_meta."""
    if _dict(ds.get("exclusions")):
        return ds["exclusions"]
    meta = _first_meta(doc, "dataset_meta")
    found = {k: meta[k] for k in ("excluded_studies", "excluded_images") if _dict(meta.get(k))}
    return found


def _models(doc: dict) -> list[dict]:
    """The document's model entries (anything that is not a dict is ignored, so indices stay consistent)."""
    models = doc.get("models")
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


def _first_meta(doc: dict, key: str) -> dict:
    """``meta[key]`` of the first measured model that has it (dataset facts are the same for all)."""
    for m in _models(doc):
        if _dict(_dict(m.get("meta")).get(key)):
            return m["meta"][key]
    return {}


# ----- per-model grid, summary and plot ---------------------------------------------------------------------
def _axes(cells: Sequence[dict]) -> tuple[list, list]:
    """Sorted distinct severities and ks of one perturbation's cells."""
    severities = sorted({_condition(c)[1] for c in cells if _condition(c)[1] is not None})
    ks = sorted({c.get("k") for c in cells if _is_num(c.get("k"))})
    return severities, ks


def _of(cells: Sequence[dict], perturbation: str) -> list[dict]:
    return [c for c in cells if _condition(c)[0] == perturbation]


def _test_words(c: dict) -> str:
    """What the cell's comparison rests on: the paired test's lost/gained queries and exact p, else the tolerance."""
    paired = _dict(_dict(c.get("extras")).get("paired"))
    if paired:
        p = paired.get("p_value", c.get("p_value"))
        method = f" ({paired['method']})" if paired.get("method") else ""
        return (f"paired on the same queries: {_num(paired.get('b'))} queries lost the hit (b), "
                f"{_num(paired.get('c'))} gained it (c); exact test{method} one-sided p = {_num(p)}")
    tol = c.get("tolerance")
    return f"tolerance {'±' + format(100 * tol, '.2f') + ' pp' if _is_num(tol) else '—'}"


def _cell_title(c: dict) -> str:
    """Tooltip: every number behind the cell's verdict."""
    name, sev = _condition(c)
    parts = [f"Recall@{c.get('k')} at {name} {_severity_label(name, sev)}",
             f"measured {_pct(c.get('measured'))}, baseline {_pct(c.get('baseline'))}", _test_words(c),
             f"family-adjusted p = {_num(c.get('p_adjusted'))}",
             f"chance k/N = {_pct(c.get('chance'), 3)} (adjusted p = {_num(c.get('chance_p_adjusted'))}, "
             f"{'passed' if c.get('chance_passed', True) else 'FAILED'})",
             f"N = {_num(c.get('n_candidates'))} candidate reports, M = {_num(c.get('n_queries'))} query images"]
    return "; ".join(parts)


def _grid_cell(c: dict | None) -> str:
    if c is None:
        return "<td class=missing><span class=muted>not run</span></td>"
    state = cell_state(c)
    css = _CSS_CLASS.get(state, "nobase")
    base = c.get("baseline")
    diff = c["measured"] - base if _is_num(base) and _is_num(c.get("measured")) else None
    badge = ""
    if c.get("chance_passed") is False:
        badge = "<span class=badge>below chance</span>"
    verdict = verdicts.STATE_LABELS.get(state, state)
    return (f"<td class={css} title='{_e(verdict + ': ' + _cell_title(c))}'>"
            f"<div class=meas>{_e(_pct(c.get('measured')))}{badge}</div>"
            f"<div class=base>base {_e(_pct(base))}</div><div class=diff>{_e(_pp(diff))}</div></td>")


def _grid(model: dict, perturbation: str = "occlusion") -> str:
    """Table 1's shape for one perturbation: rows k, columns severity (occlusion: ratio in %)."""
    cells = _of([c for c in model.get("cells") or [] if isinstance(c, dict)], perturbation)
    severities, ks = _axes(cells)
    by = {(_condition(c)[1], c.get("k")): c for c in cells}
    head = "".join(f"<th>{_e(_severity_label(perturbation, r))}</th>" for r in severities)
    rows = "".join(f"<tr><th>k = {_e(k)}</th>{''.join(_grid_cell(by.get((r, k))) for r in severities)}</tr>"
                   for k in ks)
    paired = any(_dict(_dict(c.get("extras")).get("paired")) for c in cells)
    hover = "the queries that lost / gained the hit, the exact test's p" if paired else "the tolerance"
    return (f"<div class=scroll><table class=grid><caption>Recall@k (%) by {_e(perturbation)} severity — "
            f"measured, baseline, difference</caption><tr><th>k \\ {_e(perturbation)}</th>{head}</tr>{rows}"
            "</table></div><p class=legend><span class=pass>pass</span><span class=fail>fail</span>"
            "<span class=nobase>not compared</span><span class=badge>chance</span> chance check failed · "
            f"hover a cell for {hover}, adjusted p, chance k/N, N and M</p>")


# ----- the robustness summary of one perturbation (summaries.robustness_summary) ----------------------------
_CURVE_KEY = re.compile(r"^(clean|auc|auc_rel|drop)@(\d+)$")
# Relative drop shading: the colour deepens with the share of clean recall lost (magnitude only, no verdict).
_DROP_RGB = "213,94,0"


def _summary_ks(summary: dict) -> list[int]:
    """The depths k a curve summary holds (its ``clean@k`` ... keys), sorted."""
    return sorted({int(m.group(2)) for key in summary if (m := _CURVE_KEY.match(str(key)))})


def _estimate(entry: Any) -> tuple[float | None, float | None, float | None]:
    """``(value, lo, hi)`` of a summary entry ``{"value": v, "ci": [lo, hi]}``; None for what is absent."""
    est = _dict(entry)
    ci = est.get("ci")
    lo, hi = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)

    def number(v: Any) -> float | None:
        return float(v) if _is_num(v) else None

    return number(est.get("value")), number(lo), number(hi)


def _drops(summary: dict, k: int) -> dict[float, dict]:
    """``drop@k`` by severity (its keys are ``repr(float)`` strings; anything else is skipped)."""
    out = {}
    for key, entry in _dict(summary.get(f"drop@{k}")).items():
        try:
            out[float(key)] = _dict(entry)
        except ValueError:
            continue
    return out


def _ci_text(lo: float | None, hi: float | None, digits: int) -> str:
    return f"[{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]" if lo is not None and hi is not None else ""


def _estimate_td(entry: Any, digits: int, shade: bool = False) -> str:
    """A table cell: the estimate in % and its CI below it; drops are shaded by their size."""
    value, lo, hi = _estimate(entry)
    if value is None:
        return "<td class=muted>—</td>"
    style = ""
    if shade:
        style = f" style='background:rgba({_DROP_RGB},{0.45 * min(max(value, 0.0), 1.0):.2f})'"
    ci = _ci_text(lo, hi, digits)
    return f"<td{style}>{_e(_pct(value, digits))}{f'<span class=ci>{_e(ci)}</span>' if ci else ''}</td>"


def _auc_words(perturbation: str, severities: list[float]) -> str:
    """How the AUC is normalised, for the summary's caption (see :mod:`cxr_robust.summaries`)."""
    top = _severity_label(perturbation, severities[-1]) if severities else "the largest severity"
    if perturbation == "occlusion":
        return (f"AUC: area under Recall@k over the occluded area 0 to {top}, divided by that range (trapezoid "
                "rule), i.e. the mean Recall@k along the area axis (linear: large occlusions weigh most).")
    return (f"AUC: area under Recall@k over the severity levels clean (0) to {top}, evenly spaced, divided by "
            "that range (trapezoid rule), i.e. the mean Recall@k over the levels.")


def _compact_summary(summary: dict, perturbation: str) -> str:
    """Rows k; columns clean Recall@k, AUC, AUC ÷ clean and the relative drop at each severity, all in %
    with their bootstrap CIs; empty for a summary of another shape."""
    ks = _summary_ks(summary)
    if not ks:
        return ""
    severities = sorted({s for k in ks for s in _drops(summary, k)})
    rows = []
    for k in ks:
        drops = _drops(summary, k)
        rows.append(f"<tr><th>k = {_e(k)}</th>{_estimate_td(summary.get(f'clean@{k}'), 2)}"
                    f"{_estimate_td(summary.get(f'auc@{k}'), 2)}{_estimate_td(summary.get(f'auc_rel@{k}'), 1)}"
                    + "".join(_estimate_td(drops.get(s), 1, shade=True) for s in severities) + "</tr>")
    conf = summary.get("confidence")
    boot = (f"[{_pct(conf, 0)} bootstrap CI over {_num(summary.get('n_queries'))} queries, "
            f"{_num(summary.get('n_boot'))} resamples]" if _is_num(conf) else "[CI]")
    caption = (f"Robustness summary of {perturbation}, in % {boot}. {_auc_words(perturbation, severities)} "
               "AUC ÷ clean: share of the clean Recall@k kept. Drop: share of the clean Recall@k lost at "
               "severity s (0 % unchanged, 100 % nothing left, below 0 better than clean).")
    return (f"<div class=scroll><table class=summary><caption>{_e(caption)}</caption>"
            f"<thead>{_summary_head(perturbation, severities)}</thead><tbody>{''.join(rows)}</tbody></table></div>")


def _summary_head(perturbation: str, severities: list[float]) -> str:
    """The compact summary's header: the severities under one "relative drop" heading, labelled as the grid."""
    if not severities:
        return "<tr><th>k</th><th>clean<br/>Recall@k</th><th>AUC</th><th>AUC ÷<br/>clean</th></tr>"
    labels = "".join(f"<th>{_e(_severity_label(perturbation, s))}</th>" for s in severities)
    return ("<tr><th rowspan=2>k</th><th rowspan=2>clean<br/>Recall@k</th><th rowspan=2>AUC</th>"
            f"<th rowspan=2>AUC ÷<br/>clean</th><th colspan={len(severities)}>relative drop 1 − R(s) / R(clean) "
            f"at severity s</th></tr><tr>{labels}</tr>")


def _raw_rows(key: str, value: Any, perturbation: str, credentialed: bool) -> list[str]:
    """Rows of the raw summary table for one key: estimates in %, severities as the grid labels them."""
    match = _CURVE_KEY.match(key)
    if match and match.group(1) == "drop":
        return [row for sev, entry in sorted(_drops({key: value}, int(match.group(2))).items())
                for row in _raw_rows(f"{key} at {_severity_label(perturbation, sev)}", entry, perturbation,
                                     credentialed)]
    if match or key.startswith("drop@"):  # an estimate (``drop@k at s`` from the branch above, too)
        v, lo, hi = _estimate(value)
        return [f"<tr><th>{_e(key)}</th><td class=num>{_e(_pct(v))}</td>"
                f"<td class=num>{_e(_ci_text(lo, hi, 2))}</td></tr>"]
    if key == "ratios" and isinstance(value, list):
        text = ", ".join(_severity_label(perturbation, v) for v in value)
        return [f"<tr><th>severities</th><td colspan=2>{_e(text)}</td></tr>"]
    if key == "confidence" and _is_num(value):
        return [f"<tr><th>confidence</th><td colspan=2>{_e(_pct(value, 0))}</td></tr>"]
    return [f"<tr><th>{_e(key)}</th><td class=mono colspan=2>{_value_html(value, credentialed)}</td></tr>"]


def _raw_summary(summary: dict, perturbation: str, credentialed: bool) -> str:
    """Every figure of the summary, collapsed: with all perturbations measured there are nineteen of these."""
    rows = [row for key, value in summary.items() if not (credentialed and _private(key))
            for row in _raw_rows(str(key), value, perturbation, credentialed)]
    if not rows:
        return ""
    return (f"<details class=raw><summary>All summary figures of {_e(perturbation)} (raw; estimates in %, "
            "CIs in brackets)</summary><table class=kv><tr><th>figure</th><th>estimate</th><th>CI</th></tr>"
            f"{''.join(rows)}</table></details>")


# ----- small multiples: one panel per k ----------------------------------------------------------------------
PANEL_W, PANEL_H = 180, 160
MEASURED_COLOUR, BASELINE_COLOUR, CHANCE_COLOUR, FAIL_COLOUR = "#0072B2", "#E69F00", "#777777", "#c62828"


def _segments(points: Iterable[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """Split a polyline at missing values, so a gap is not drawn as a straight line across it."""
    out: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None:
            if out[-1]:
                out.append([])
        else:
            out[-1].append((x, y))
    return [s for s in out if s]


def _polyline(points: list[tuple[float, float]], colour: str, dash: str | None, width: float) -> str:
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dash_attr = f" stroke-dasharray='{dash}'" if dash else ""
    return (f"<polyline points='{pts}' fill='none' stroke='{colour}' stroke-width='{width}'"
            f"{dash_attr} stroke-linejoin='round'/>")


def _plot_cells(model: dict, perturbation: str) -> list[dict]:
    """One perturbation's cells; measured without its own severity 0, it starts from the run's clean cells."""
    every = [c for c in model.get("cells") or [] if isinstance(c, dict)]
    cells = _of(every, perturbation)
    if not any(_condition(c)[1] == 0 for c in cells):  # every severity 0 is the same clean pass
        clean = {c.get("k"): c for c in every if _condition(c)[1] == 0}
        cells = [{**c, "perturbation": perturbation, "severity": 0.0} for c in clean.values()] + cells
    return cells


def small_multiples(model: dict, plot_id: str, perturbation: str = "occlusion") -> str:
    """Recall@k against one perturbation's severity, one small inline SVG panel per k: measured (solid),
    baseline (dashed), chance k/N (dotted), failing cells ringed; empty when there is nothing to draw.

    One panel per k (not one plot with a colour per k) keeps every curve readable at six depths, and the
    same 0-100 % y axis in every panel keeps them comparable. The x axis is categorical (evenly spaced)
    because occlusion severities crowd near 0 (0, 0.25, 1, 4 %...).
    """
    cells = _plot_cells(model, perturbation)
    severities, ks = _axes(cells)
    if not severities or not ks:
        return ""
    by = {(_condition(c)[1], c.get("k")): c for c in cells}
    name = str(model.get("model", "model"))
    panels = "".join(_panel(name, perturbation, k, severities, by, f"{plot_id}-k{k}") for k in ks)
    axis = ("x: occluded area, evenly spaced categories" if perturbation == "occlusion"
            else f"x: {perturbation} severity level (s0 = clean)")
    key = (f"<p class=keyline>Recall@k (%) against {_e(perturbation)} severity, one panel per k ({_e(axis)}; "
           f"y: 0–100 %): <span class=nowrap><span class=swatch style='border-top:2.5px solid {MEASURED_COLOUR}'>"
           f"</span>measured</span> <span class=nowrap><span class=swatch style='border-top:2px dashed "
           f"{BASELINE_COLOUR}'></span>baseline</span> <span class=nowrap><span class=swatch "
           f"style='border-top:2px dotted {CHANCE_COLOUR}'></span>chance k/N</span> <span class=nowrap>"
           "<span class=ring></span>failing cell</span></p>")
    return f"<div class=multiples>{panels}</div>{key}"


def _panel(name: str, perturbation: str, k: Any, severities: list, by: dict, pid: str) -> str:
    """One k's panel of :func:`small_multiples`."""
    left, right, top = 30, 8, 20
    pw = PANEL_W - left - right
    labels = [_severity_label(perturbation, r) for r in severities]
    # Long tick labels side by side (``0.25 %`` x 8) would overlap: turn them (about 5.5 px per character).
    rotate = len(labels) * max(map(len, labels)) * 5.5 > pw
    bottom = 40 if rotate else 22
    ph = PANEL_H - top - bottom
    xs = {r: left + pw * (i + 0.5) / len(severities) for i, r in enumerate(severities)}

    def y(v: float) -> float:
        return top + ph * (1 - min(max(v, 0.0), 1.0))

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' role='img' aria-labelledby='{pid}-t {pid}-d' "
           f"font-family='system-ui, sans-serif' width='{PANEL_W}' height='{PANEL_H}' "
           f"viewBox='0 0 {PANEL_W} {PANEL_H}'>",
           f"<title id='{pid}-t'>Recall@{_e(k)} of {_e(name)} versus {_e(perturbation)} severity</title>",
           f"<desc id='{pid}-d'>Solid: measured Recall@{_e(k)}; dashed: baseline; dotted: chance level k/N; "
           "red rings: failing cells.</desc>",
           f"<text x='{left}' y='13' font-size='12' font-weight='700'>k = {_e(k)}</text>",
           f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='#fff' stroke='#999'/>"]
    for tick in (0, 50, 100):
        ty = y(tick / 100)
        out.append(f"<line x1='{left}' x2='{left + pw}' y1='{ty:.1f}' y2='{ty:.1f}' stroke='#e3e3e3'/>"
                   f"<text x='{left - 4}' y='{ty + 3.5:.1f}' font-size='10' text-anchor='end'>{tick}</text>")
    for (r, x), text in zip(xs.items(), labels):
        label, ty = _e(text), top + ph + 12
        turn = f" transform='rotate(-40 {x:.1f} {ty})'" if rotate else ""
        out.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{top + ph}' y2='{top + ph + 3}' stroke='#555'/>"
                   f"<text x='{x:.1f}' y='{ty}' font-size='9' text-anchor='{'end' if rotate else 'middle'}'"
                   f"{turn}>{label}</text>")
    out.extend(_series(k, perturbation, severities, xs, by, y, left, pw))
    out.append("</svg>")
    return "".join(out)


def _series(k: Any, perturbation: str, severities: list, xs: dict, by: dict, y: Any, left: float,
            pw: float) -> list[str]:
    """Chance (dotted), baseline (dashed), measured (solid, with markers); failing points ringed."""
    cells = [by.get((r, k)) for r in severities]
    out = []
    chance = next((c.get("chance") for c in cells if c and _is_num(c.get("chance"))), None)
    if chance is not None:
        out.append(f"<line x1='{left}' x2='{left + pw}' y1='{y(chance):.1f}' y2='{y(chance):.1f}' "
                   f"stroke='{CHANCE_COLOUR}' stroke-width='1.4' stroke-dasharray='1 3'/>")
    base = [(xs[r], y(c["baseline"]) if c and _is_num(c.get("baseline")) else None) for r, c in zip(severities, cells)]
    meas = [(xs[r], y(c["measured"]) if c and _is_num(c.get("measured")) else None) for r, c in zip(severities, cells)]
    out.extend(_polyline(s, BASELINE_COLOUR, "5 3", 1.8) for s in _segments(base))
    out.extend(_polyline(s, MEASURED_COLOUR, None, 2.0) for s in _segments(meas))
    for r, c in zip(severities, cells):
        if not c or not _is_num(c.get("measured")):
            continue
        cx, cy = xs[r], y(c["measured"])
        state = cell_state(c)
        tip = (f"k={k}, {_severity_label(perturbation, r)}: {_pct(c['measured'])} (baseline "
               f"{_pct(c.get('baseline'))}, {verdicts.STATE_LABELS.get(state, state)})")
        out.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='2.6' fill='{MEASURED_COLOUR}'>"
                   f"<title>{_e(tip)}</title></circle>")
        if state in verdicts.FAILING_STATES:
            out.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='6' fill='none' stroke='{FAIL_COLOUR}' "
                       "stroke-width='2'/>")
    return out


def _encodings(meta: dict) -> str:
    """The cache proof: how many report texts and images were encoded by this run (0 = all from cache)."""
    texts, images = meta.get("text_encodings"), meta.get("image_encodings")
    if texts is None and images is None:
        return ""
    note = " (all from the embedding cache)" if texts == 0 else ""
    return (f"<p class=big>report texts encoded this run: {_e(_num(texts))}{_e(note)} · "
            f"image embeddings computed this run: {_e(_num(images))}</p>")


def _baseline_line(model: dict) -> str:
    """Which baseline the model was compared with, why that row, and how; set apart when the row is not
    the model's own name (a model gated against another model's numbers must be visible at a glance)."""
    name, row, source = model.get("model", "?"), model.get("baseline_row"), model.get("baseline_source")
    why = model.get("baseline_row_rule")
    why_html = f" ({_e(why)})" if why else ""
    src = f" from <span class=mono>{_e(source)}</span>" if source else ", but no baseline was found"
    mode = _MODE_WORDS.get(_mode(model) or "", "")
    policy = _e(model.get("text_policy") or _dict(model.get("meta")).get("text_policy") or "—")
    tail = f"{'; compared ' + _e(mode) if mode else ''}; text policy <span class=mono>{policy}</span>."
    if not row:
        return f"<p>No baseline row{why_html}{tail}</p>"
    if str(row) != str(name):
        return (f"<p class=note>Compared with the baseline row of <b class=mono>{_e(row)}</b>{why_html}, not a row "
                f"named <span class=mono>{_e(name)}</span>{src}{tail}</p>")
    return f"<p>Baseline row <span class=mono>{_e(row)}</span>{why_html}{src}{tail}</p>"


def _model_section(model: dict, index: int, credentialed: bool) -> str:
    """A measured model: verdict counts, its baseline, cache proof, then per perturbation the grid, the
    compact summary and small multiples (the raw summary collapsed)."""
    meta = _dict(model.get("meta"))
    t = model_tally(model)
    head = (f"<section id='{_anchor(model, index)}'><h2>{_e(model.get('model', '?'))}</h2>"
            f"<p><b>{t['passed']}</b> passed · <b>{t['failed'] + t['missing']}</b> failed "
            f"({t['missing']} of them without a baseline) · <b>{t['not_compared']}</b> NOT COMPARED · "
            f"{t['chance_failed']} chance check(s) failed, of {t['cells']} cells. {_e(_grid_sentence(model))}</p>"
            f"{_baseline_line(model)}")
    if not t["cells"]:
        return head + "<p class=muted>No cells were recorded for this model.</p>" + _encodings(meta) + "</section>"
    cells = [c for c in model.get("cells") or [] if isinstance(c, dict)]
    names = _perturbations(cells)
    body = [_across(model, names)]
    summaries = _dict(model.get("summary"))
    for j, name in enumerate(names):
        title = f"<h3>{_e(name)}</h3>" if len(names) > 1 or name != "occlusion" else ""
        # Documents written before perturbations existed hold one summary, not one per perturbation.
        summary = _dict(summaries.get(name)) if name in summaries or len(names) > 1 else summaries
        body.append(f"{title}{_grid(model, name)}<div class=row><div>{_compact_summary(summary, name)}</div>"
                    f"<div>{small_multiples(model, f'plot-{index}-{j}', name)}</div></div>"
                    f"{_raw_summary(summary, name, credentialed)}")
    body.append(_safe(_negation, model))
    body.append(_safe(_metrics, model))
    return head + _encodings(meta) + "".join(body) + "</section>"


METRICS_ROWS_SHOWN = 24
"""Up to this many conditions the metrics table is shown open; a longer one is collapsed under its heading."""
_METRIC_COLUMNS = (("recall", "Recall@{k}", True), ("label_precision", "label P@{k}", True),
                   ("label_hit", "label hit@{k}", True), ("mrr", "MRR", False), ("median_rank", "median rank", False),
                   ("mean_rank", "mean rank", False))
"""The metrics table's columns (metric, heading, given per k); a metric the run did not report is left out."""


def _metric_value(row: dict, name: str, per_k: bool, k: str) -> str:
    value = _dict(row.get(name)).get(k) if per_k else row.get(name)
    if not _is_num(value):
        return "—"
    if per_k:
        return _pct(value, 1)
    return f"{value:.3f}" if name == "mrr" else f"{value:.1f}"


def _metrics(model: dict) -> str:
    """Every reported metric per condition (image- then report-side), at one k, with the label rule."""
    rows = [r for r in model.get("metrics") or [] if isinstance(r, dict)]
    if not rows:
        return ""
    ks = sorted({k for r in rows for k in _dict(r.get("recall"))}, key=lambda k: int(k) if str(k).isdigit() else 0)
    k = "10" if "10" in ks else (ks[0] if ks else "")
    cols = [(n, h, per_k) for n, h, per_k in _METRIC_COLUMNS if any(n in r for r in rows)]
    head = "".join(f"<th>{_e(h.format(k=k))}</th>" for _, h, _ in cols)
    body = []
    for side in ("image", "report"):
        for r in (r for r in rows if r.get("side", "image") == side):
            cond = f"{r.get('perturbation')} {_severity_label(str(r.get('perturbation')), r.get('severity'))}"
            body.append(f"<tr><th class=nowrap>{_e(cond)}{' (report)' if side == 'report' else ''}</th>"
                        + "".join(f"<td class=num>{_e(_metric_value(r, n, per_k, k))}</td>" for n, _, per_k in cols)
                        + "</tr>")
    labels = _dict(_dict(model.get("meta")).get("labels"))
    if labels.get("source"):
        rule = (f" A retrieved report counts for label P@k / hit@k when its study's findings labels match the "
                f"query's: {labels.get('match', '?')}; {labels.get('labelled_studies', '?')} of "
                f"{_num(labels.get('labelled_studies', 0) + labels.get('unlabelled_studies', 0))} studies "
                f"labelled ({labels.get('source')}).")
    else:
        rule = " The data set has no findings labels, so the label-aware metrics are not reported."
    caption = (f"Metrics per condition at k = {k} from the same per-query ranks (report-side conditions: clean "
               "images against perturbed reports). Only Recall@k is gated; the others are reported. Ties count "
               f"in expectation.{rule}")
    table = (f"<div class=scroll><table class=metrics><caption>{_e(caption)}</caption>"
             f"<thead><tr><th>condition</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
    if len(body) > METRICS_ROWS_SHOWN:  # a long sweep's table is one click away, not pages of scrolling
        return (f"<details class=metrics><summary><h3>Metrics</h3> ({len(body)} conditions: MRR, ranks, label "
                f"P@{_e(k)} and hit@{_e(k)})</summary>{table}</details>")
    return f"<h3>Metrics</h3>{table}"


def _negation(model: dict) -> str:
    """The negation test: confusion rate with CI against 50 % and the recorded run, and how the twins came."""
    neg = _dict(model.get("negation"))
    if not neg:
        return ""
    state = neg.get("state") or verdicts.negation_state(neg, {})
    cls = "pass" if state in (verdicts.PASS, verdicts.RECORDED) else (
        "fail" if state in verdicts.FAILING_STATES else "nobase")
    base = "none recorded" if neg.get("baseline") is None else _pct(neg.get("baseline"), 1)
    p = "—" if neg.get("p_value") is None else f"{neg['p_value']:.2g}"
    findings = ", ".join(f"{name} {n}" for name, n in sorted(_dict(neg.get("by_finding")).items()))
    pool = _dict(neg.get("pool_recall"))
    pool_text = ", ".join(f"R@{k} {_pct(v, 1)}" for k, v in pool.items())
    rows = {"verdict": verdicts.STATE_LABELS.get(state, str(state)),
            "confusion rate": f"{_pct(neg.get('rate'), 1)} (95 % CI {_pct(neg.get('ci_low'), 1)} – "
                              f"{_pct(neg.get('ci_high'), 1)}); 50 % = blind to negation",
            "recorded run": f"{base}; paired p = {p}",
            "queries": _num(neg.get("n_queries")),
            "twins": f"{_num(neg.get('n_twins'))} of {_num(neg.get('n_studies'))} studies "
                     f"({_pct(neg.get('coverage'), 1)}), {neg.get('method', '?')}",
            "flipped findings": findings or "—",
            "Recall@k with twins in the pool": pool_text or "—"}
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows.items())
    return (f"<h3>Negation</h3><table class='kv {cls}'><caption>Share of queries whose report's negated twin "
            "(one finding's presence flipped) scores above the true report. Rule: "
            f"{_e(neg.get('rule', ''))}.</caption>{table}</table>")


def _across(model: dict, names: list[str]) -> str:
    """The summary across perturbations: mean relative drop per perturbation and k, and the mCE-style figure
    when the run names a reference model; empty for a run of one perturbation."""
    corruption = _dict(model.get("corruption"))
    if len(names) < 2 or not corruption:
        return ""
    ks = list(corruption)
    rows = []
    for name in names:
        drops = [_dict(_dict(_dict(corruption[k]).get("per_perturbation")).get(name)).get("mean_relative_drop")
                 for k in ks]
        ce = [_dict(_dict(corruption[k]).get("mce")).get("ce", {}).get(name) for k in ks]
        cols = "".join(f"<td>{_e(_pct(d))}{'' if c is None else f' · CE {c:.2f}'}</td>" for d, c in zip(drops, ce))
        rows.append(f"<tr><th>{_e(name)}</th>{cols}</tr>")
    mean = "".join(f"<td><b>{_e(_pct(_dict(corruption[k]).get('mean_relative_drop')))}</b></td>" for k in ks)
    report_side = any("report_mean_relative_drop" in _dict(corruption[k]) for k in ks)
    rows.append(f"<tr><th>mean over {'image ' if report_side else ''}perturbations</th>{mean}</tr>")
    if report_side:  # rewordings of the reports are averaged apart from corruptions of the films
        mean = "".join(f"<td><b>{_e(_pct(_dict(corruption[k]).get('report_mean_relative_drop')))}</b></td>"
                       for k in ks)
        rows.append(f"<tr><th>mean over report-side perturbations</th>{mean}</tr>")
    mce_row = [_dict(_dict(corruption[k]).get("mce")) for k in ks]
    if any(m.get("mce") is not None for m in mce_row):
        ref = next(m.get("reference") for m in mce_row if m.get("reference"))
        rows.append(f"<tr><th>mCE vs {_e(ref)}</th>"
                    + "".join(f"<td><b>{'—' if m.get('mce') is None else format(m['mce'], '.3f')}</b></td>"
                              for m in mce_row) + "</tr>")
    head = "".join(f"<th>k = {_e(k)}</th>" for k in ks)
    ce = (" CE = Σ(1 − R) over the severities relative to the reference model's (below 1: more robust)."
          if any(m.get("mce") is not None for m in mce_row) else
          " Name a reference model (--cxr-reference-model) for the mCE-style figure.")
    return ("<div class=scroll><table class=grid><caption>Across perturbations: mean relative drop of Recall@k "
            f"over each perturbation's severities, 1 − R(s)/R(clean).{_e(ce)}</caption>"
            f"<tr><th>perturbation</th>{head}</tr>{''.join(rows)}</table></div>")


# ----- skipped / errored, examples, metadata ----------------------------------------------------------------
def _not_measured(models: list[dict]) -> str:
    skipped = [(i, m) for i, m in enumerate(models) if m.get("status") == "skipped"]
    errored = [(i, m) for i, m in enumerate(models) if m.get("status") not in ("measured", "skipped")]
    if not skipped and not errored:
        return ""
    parts = ["<section id=not-measured><h2>Models not measured</h2>"]
    for i, m in errored:
        parts.append(f"<div class=err id='{_anchor(m, i)}'><b>{_e(m.get('model', '?'))}</b>: "
                     f"{_e(m.get('status', 'unknown status'))}"
                     f"<pre>{_e(m.get('reason') or 'no error recorded')}</pre></div>")
    for i, m in skipped:
        parts.append(f"<div class=skip id='{_anchor(m, i)}'><b>{_e(m.get('model', '?'))}</b>: skipped — to run it:"
                     f"<pre>{_e(m.get('reason') or 'no reason recorded')}</pre></div>")
    return "".join(parts) + "</section>"


def _examples(doc: dict) -> str:
    """A small gallery of example queries and reports; only ever for non-credentialed (e.g. phantom) data."""
    if _dict(doc.get("dataset")).get("credentialed"):
        return ""
    examples = [x for x in doc.get("examples") or [] if isinstance(x, dict)][:MAX_EXAMPLES]
    if not examples:
        return ""
    figs = []
    for x in examples:
        img = _png_data_uri(x.get("image_png_base64"))
        pic = f"<img src='{img}' alt='{_e(x.get('image_id', 'image'))}'/>" if img else "<p class=muted>no image</p>"
        figs.append(f"<figure>{pic}<figcaption><b>{_e(x.get('image_id', '?'))}</b><br/>{_e(x.get('report', ''))}"
                    "</figcaption></figure>")
    return "<section id=examples><h2>Examples</h2><div class=gallery>" + "".join(figs) + "</div></section>"


def _png_data_uri(b64: Any) -> str | None:
    """A ``data:`` URI for base64 PNG data, or None when it is not valid base64 (never an outside URL)."""
    if not isinstance(b64, str):
        return None
    compact = "".join(b64.split())
    if not compact or not _BASE64.match(compact):
        return None
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None
    return f"data:image/png;base64,{compact}"


def _weights_hashes(fingerprint: dict) -> dict:
    """Fingerprint fields that identify the weights (``weights_sha256`` and the like)."""
    return {k: v for k, v in fingerprint.items() if any(s in str(k).lower() for s in ("sha", "hash", "digest"))}


def _model_metadata(model: dict, credentialed: bool) -> str:
    meta = _dict(model.get("meta"))
    fingerprint = _dict(meta.get("model_fingerprint"))
    draft = meta.get("draft_decode")
    facts = {"seed": meta.get("seed"), "device": meta.get("device"), "precision": meta.get("precision"),
             "engine": meta.get("engine"),
             # the speed option is named for what it gives up: a reader comparing with a paper must see it
             "JPEG decoding": None if draft is None else
             "draft (faster; not the authors' pipelines)" if draft else "full (the authors' pipelines)",
             "text policy": model.get("text_policy") or meta.get("text_policy"),
             "tie policy": meta.get("tie_policy"), "batch size": meta.get("batch_size"),
             "report texts encoded this run": meta.get("text_encodings"),
             "image embeddings computed this run": meta.get("image_encodings"),
             "cache directory": meta.get("cache_dir")}
    facts = {k: v for k, v in facts.items() if v is not None}
    hashes = _weights_hashes(fingerprint)
    return (f"<h3>{_e(model.get('model', '?'))}</h3><div class=row>"
            f"<div><b>Run</b>{_kv_table(facts, credentialed)}</div>"
            f"<div><b>Weights hashes</b>"
            f"{_kv_table(hashes, credentialed) if hashes else '<p class=muted>none recorded</p>'}"
            f"<b>Model fingerprint</b>{_kv_table(fingerprint, credentialed)}</div>"
            f"<div><b>Timings (s)</b>{_kv_table(_dict(meta.get('timings')), credentialed)}</div>"
            f"<div><b>Package versions</b>{_kv_table(_dict(meta.get('versions')), credentialed)}</div></div>")


def _metadata(doc: dict, models: list[dict], credentialed: bool) -> str:
    run = {"schema": doc.get("schema"), "created": doc.get("created"), "git revision": doc.get("git") or "unknown"}
    parts = ["<section id=metadata><h2>Metadata</h2>", _kv_table(run, credentialed)]
    parts.extend(_model_metadata(m, credentialed) for m in models if m.get("status") == "measured")
    parts.append(f"<h3>Effective configuration</h3>{_kv_table(_dict(doc.get('config')), credentialed)}</section>")
    return "".join(parts)


# ----- the document -----------------------------------------------------------------------------------------
def _safe(render: Any, *args: Any) -> str:
    """Run one section's renderer; a malformed part of the document costs that section, not the report.

    The report is written at the end of a gate run: failing to write it would hide verdicts already computed.
    """
    try:
        return render(*args)
    except Exception as exc:  # noqa: BLE001 - reported inside the page instead
        return (f"<div class=err><b>This section could not be rendered</b> ({_e(type(exc).__name__)}: {_e(exc)}); "
                "see results.json</div>")


def render_report(doc: dict) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no script, no outside resource)."""
    doc = _dict(doc)
    try:
        doc = _annotated(doc)
    except Exception:  # noqa: BLE001 - a damaged document still renders; each part falls back on its own
        pass
    credentialed = bool(_dict(doc.get("dataset")).get("credentialed"))
    models = _models(doc)
    verdict, _ = overall_verdict(doc)
    body = [_safe(_header, doc), _safe(_overview, doc), _safe(_rules, doc), _safe(_dataset, doc)]
    body.extend(_safe(_model_section, m, i, credentialed)
                for i, m in enumerate(models) if m.get("status") == "measured")
    body.append(_safe(_not_measured, models))
    body.append(_safe(_examples, doc))
    body.append(_safe(_metadata, doc, models, credentialed))
    title = f"cxr-robust {verdict} — {_dict(doc.get('dataset')).get('name', 'unknown dataset')}"
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'/>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'/>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(doc: dict, path: str | Path) -> Path:
    """Render ``doc`` and write it to ``path`` atomically (readers never see a half-written report)."""
    path = Path(path)
    atomic_write_text(path, render_report(doc))
    return path
