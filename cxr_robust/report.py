"""The HTML report of a gate run: one self-contained file rendered from the results document.

The report is what a release engineer reads to decide whether a checkpoint ships, so it leads with the
verdict, then shows each model's Table-1-shaped grid (measured vs baseline, coloured by the gate's verdict)
and a plot, then why models were skipped or failed to run, then the metadata needed to reproduce the run.

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
h1{font-size:1.5em;margin:.2em 0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.4em 0}th,td{border:1px solid #ccc;padding:3px 7px;vertical-align:top}
th{background:#f4f4f4;text-align:left}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{display:inline-block;font-weight:700;font-size:1.6em;padding:.15em .7em;border-radius:6px;color:#fff}
.v-pass{background:#1b7f3b}.v-fail{background:#c62828}.v-none{background:#777}
.notes li{margin:.1em 0}
table.grid td{min-width:6.5em;text-align:right;font-variant-numeric:tabular-nums}
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
.big{font-size:1.15em;font-weight:700}
details>summary{cursor:pointer}details>summary h4{display:inline;margin:0}
.skip{border-left:4px solid #999;padding:.3em .8em;background:#fafafa;margin:.4em 0}
.err{border-left:4px solid #c62828;padding:.3em .8em;background:#fff5f5;margin:.4em 0}
.err pre,.skip pre{white-space:pre-wrap;margin:.2em 0}
figure{display:inline-block;width:200px;margin:.4em;vertical-align:top}figure img{width:200px;height:auto}
figcaption{font-size:.8em;color:#333;max-height:9em;overflow:auto}
svg text{font-family:system-ui,sans-serif}
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
    """A difference of fractions in percentage points, signed."""
    return f"{100 * diff:+.2f} pp" if _is_num(diff) else "—"


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
    verdict, why = overall_verdict(doc)
    cls = {"PASS": "v-pass", "FAIL": "v-fail"}.get(verdict, "v-none")  # NOT COMPARED is never green
    config = _dict(doc.get("config"))
    notes = "".join(f"<li>{_e(w)}</li>" for w in why)
    extra = ""
    if config.get("update_baselines"):
        extra = "<p class=muted>This run recorded new baselines (--update-baselines): verdicts are informational.</p>"
    return (f"<header><h1>cxr-robust robustness gate</h1>"
            f"<p><span class='verdict {cls}'>{_e(verdict)}</span> "
            f"<span class=muted>created {_e(doc.get('created', '?'))} · "
            f"git {_e(doc.get('git') or 'unknown')}</span></p>"
            f"{f'<ul class=notes>{notes}</ul>' if notes else ''}{extra}"
            f"{_overview(doc)}{_dataset(doc)}"
            f"<h3>Gate rule</h3><p class=mono>{_e(doc.get('rule') or 'not recorded')}</p></header>")


def _overview(doc: dict) -> str:
    """One row per model: status and counts of passed / failed / uncompared cells."""
    rows = []
    for i, m in enumerate(_models(doc)):
        status = m.get("status", "?")
        if status == "measured":
            t = model_tally(m, _dict(doc.get("config")))
            verdict = m.get("verdict") or verdicts.model_verdict(m, _dict(doc.get("config")))
            nums = (f"<td class=num>{t['cells']}</td><td class=num>{t['passed']}</td>"
                    f"<td class=num>{t['failed'] + t['missing']}</td><td class=num>{t['not_compared']}</td>"
                    f"<td class=num>{t['chance_failed']}</td><td>{_e(_grid_word(m))}</td>")
        else:
            verdict = "FAIL" if status == "error" else "—"
            nums = "<td class=num>—</td>" * 5 + "<td>—</td>"
        cls = {"PASS": "pass", "FAIL": "fail"}.get(verdict, "nobase")
        rows.append(f"<tr><td><a href='#{_anchor(m, i)}'>{_e(m.get('model', '?'))}</a></td><td>{_e(status)}</td>"
                    f"{nums}<td class={cls}>{_e(verdict)}</td></tr>")
    if not rows:
        return "<p class=muted>No model in this run.</p>"
    return ("<h3>Models</h3><table><tr><th>model</th><th>status</th><th class=num>cells</th>"
            "<th class=num>passed</th><th class=num>failed</th><th class=num>not compared</th>"
            "<th class=num>chance check failed</th><th>grid test</th><th>verdict</th></tr>" + "".join(rows)
            + "</table>")


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
    parts = [f"<h3>Dataset: {_e(ds.get('name', 'unknown'))} "
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


def _cell_title(c: dict) -> str:
    """Tooltip: every number behind the cell's verdict."""
    tol = c.get("tolerance")
    paired = _dict(_dict(c.get("extras")).get("paired"))
    test = (f"paired: {_num(paired.get('b'))} queries lost the hit, {_num(paired.get('c'))} gained it"
            if paired else f"tolerance {'±' + format(100 * tol, '.2f') + ' pp' if _is_num(tol) else '—'}")
    name, sev = _condition(c)
    parts = [f"Recall@{c.get('k')} at {name} {_severity_label(name, sev)}",
             f"measured {_pct(c.get('measured'))}, baseline {_pct(c.get('baseline'))}", test,
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
    return (f"<table class=grid><caption>Recall@k (%) by {_e(perturbation)} severity — measured, baseline, "
            f"difference</caption><tr><th>k \\ {_e(perturbation)}</th>{head}</tr>{rows}</table>"
            "<p class=legend><span class=pass>pass</span><span class=fail>fail</span>"
            "<span class=nobase>not compared</span><span class=badge>chance</span> chance check failed · "
            "hover a cell for tolerance, adjusted p, chance level, N and M</p>")


def _summary(summary: dict, credentialed: bool) -> str:
    """One perturbation's robustness summary (AUC, relative drop...) rendered generically; empty when none."""
    if not summary:
        return ""
    # Collapsed: with every perturbation measured there are nineteen of these, each a page long.
    return (f"<div><details><summary><h4>Summary</h4> (AUC, relative drops, 95 % CIs)</summary>"
            f"{_kv_table(summary, credentialed, cls='kv summary')}</details></div>")


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


def plot_svg(model: dict, plot_id: str, perturbation: str = "occlusion") -> str:
    """Recall@k vs one perturbation's severity: solid measured, dashed baseline, dotted chance (k/N), one colour
    per k. A perturbation measured without its own severity 0 starts from the run's clean cells.

    The x axis is categorical (evenly spaced) because occlusion severities crowd near 0 (0, 0.25, 1, 4 %...).
    """
    every = [c for c in model.get("cells") or [] if isinstance(c, dict)]
    cells = _of(every, perturbation)
    if not any(_condition(c)[1] == 0 for c in cells):  # every severity 0 is the same clean pass
        clean = {c.get("k"): c for c in every if _condition(c)[1] == 0}
        cells = [{**c, "perturbation": perturbation, "severity": 0.0} for c in clean.values()] + cells
    severities, ks = _axes(cells)
    if not severities or not ks:
        return ""
    by = {(_condition(c)[1], c.get("k")): c for c in cells}
    width, height, left, right, top, bottom = 760, 380, 60, 170, 20, 60
    pw, ph = width - left - right, height - top - bottom
    xs = {r: left + pw * (i + 0.5) / len(severities) for i, r in enumerate(severities)}

    def y(v: float) -> float:
        return top + ph * (1 - min(max(v, 0.0), 1.0))

    name = str(model.get("model", "model"))
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' role='img' aria-labelledby='{plot_id}-t {plot_id}-d' "
           "font-family='system-ui, sans-serif' "
           f"width='{width}' height='{height}' viewBox='0 0 {width} {height}'>",
           f"<title id='{plot_id}-t'>Recall@k of {_e(name)} versus {_e(perturbation)} severity</title>",
           f"<desc id='{plot_id}-d'>Solid lines: measured Recall@k; dashed: baseline; dotted: chance level k/N; "
           f"one colour per k ({_e(', '.join(str(k) for k in ks))}).</desc>",
           f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='#fff' stroke='#999'/>"]
    for tick in range(0, 101, 20):
        ty = y(tick / 100)
        out.append(f"<line x1='{left}' x2='{left + pw}' y1='{ty:.1f}' y2='{ty:.1f}' stroke='#e3e3e3'/>"
                   f"<text x='{left - 6}' y='{ty + 4:.1f}' font-size='11' text-anchor='end'>{tick}</text>")
    for r, x in xs.items():
        out.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{top + ph}' y2='{top + ph + 4}' stroke='#555'/>"
                   f"<text x='{x:.1f}' y='{top + ph + 17}' font-size='11' text-anchor='middle'>"
                   f"{_e(_severity_label(perturbation, r))}</text>")
    axis = ("occlusion ratio (% of image area; evenly spaced categories)" if perturbation == "occlusion"
            else f"{perturbation} severity level (0 = clean)")
    out.append(f"<text x='{left + pw / 2:.1f}' y='{height - 18}' font-size='12' text-anchor='middle'>"
               f"{_e(axis)}</text>"
               f"<text x='16' y='{top + ph / 2:.1f}' font-size='12' text-anchor='middle' "
               f"transform='rotate(-90 16 {top + ph / 2:.1f})'>Recall@k (%)</text>")
    for i, k in enumerate(ks):
        out.extend(_k_series(k, K_COLOURS[i % len(K_COLOURS)], severities, xs, by, y, left, pw, perturbation))
    out.extend(_plot_legend(ks, left + pw + 14, top))
    out.append("</svg>")
    return "".join(out)


def _k_series(k: int, colour: str, severities: list, xs: dict, by: dict, y: Any, left: float, pw: float,
              perturbation: str = "occlusion") -> list[str]:
    """Chance line, baseline (dashed), measured (solid) with markers, failing points ringed in red."""
    cells = [by.get((r, k)) for r in severities]
    out = []
    chance = next((c.get("chance") for c in cells if c and _is_num(c.get("chance"))), None)
    if chance is not None:
        out.append(f"<line x1='{left}' x2='{left + pw}' y1='{y(chance):.1f}' y2='{y(chance):.1f}' "
                   f"stroke='{colour}' stroke-width='1.2' stroke-dasharray='1 3'/>")
    base = [(xs[r], y(c["baseline"]) if c and _is_num(c.get("baseline")) else None) for r, c in zip(severities, cells)]
    meas = [(xs[r], y(c["measured"]) if c and _is_num(c.get("measured")) else None) for r, c in zip(severities, cells)]
    out.extend(_polyline(s, colour, "6 4", 1.5) for s in _segments(base))
    out.extend(_polyline(s, colour, None, 2.2) for s in _segments(meas))
    for r, c in zip(severities, cells):
        if not c or not _is_num(c.get("measured")):
            continue
        cx, cy = xs[r], y(c["measured"])
        tip = (f"k={k}, {_severity_label(perturbation, r)}: {_pct(c['measured'])} (baseline "
               f"{_pct(c.get('baseline'))}, "
               f"{cell_state(c)})")
        out.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='3' fill='{colour}'><title>{_e(tip)}</title></circle>")
        if cell_state(c) in verdicts.FAILING_STATES:
            out.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='7' fill='none' stroke='#c62828' stroke-width='2'/>")
    return out


def _plot_legend(ks: list, x: float, top: float) -> list[str]:
    out = []
    row = top + 8
    for i, k in enumerate(ks):
        colour = K_COLOURS[i % len(K_COLOURS)]
        out.append(f"<line x1='{x}' x2='{x + 26}' y1='{row}' y2='{row}' stroke='{colour}' stroke-width='2.2'/>"
                   f"<text x='{x + 32}' y='{row + 4}' font-size='12'>k = {_e(k)}</text>")
        row += 18
    row += 8
    for dash, label in ((None, "measured"), ("6 4", "baseline"), ("1 3", "chance k/N")):
        dash_attr = f" stroke-dasharray='{dash}'" if dash else ""
        out.append(f"<line x1='{x}' x2='{x + 26}' y1='{row}' y2='{row}' stroke='#333' stroke-width='1.8'"
                   f"{dash_attr}/><text x='{x + 32}' y='{row + 4}' font-size='12'>{label}</text>")
        row += 18
    out.append(f"<circle cx='{x + 13}' cy='{row}' r='6' fill='none' stroke='#c62828' stroke-width='2'/>"
               f"<text x='{x + 32}' y='{row + 4}' font-size='12'>failing cell</text>")
    return out


def _encodings(meta: dict) -> str:
    """The cache proof: how many report texts and images were encoded by this run (0 = all from cache)."""
    texts, images = meta.get("text_encodings"), meta.get("image_encodings")
    if texts is None and images is None:
        return ""
    note = " (all from the embedding cache)" if texts == 0 else ""
    return (f"<p class=big>report texts encoded this run: {_e(_num(texts))}{_e(note)} · "
            f"image embeddings computed this run: {_e(_num(images))}</p>")


def _model_section(model: dict, index: int, credentialed: bool) -> str:
    """A measured model: verdict counts, cache proof, grid with summary beside it, plot."""
    meta = _dict(model.get("meta"))
    t = model_tally(model)
    head = (f"<h2 id='{_anchor(model, index)}'>{_e(model.get('model', '?'))}</h2>"
            f"<p><b>{t['passed']}</b> passed · <b>{t['failed'] + t['missing']}</b> failed "
            f"({t['missing']} of them without a baseline) · <b>{t['not_compared']}</b> NOT COMPARED · "
            f"{t['chance_failed']} chance check(s) failed, of {t['cells']} cells. {_e(_grid_sentence(model))} "
            f"Baseline row <span class=mono>{_e(model.get('baseline_row') or '—')}</span> from "
            f"<span class=mono>{_e(model.get('baseline_source') or 'no baseline')}</span>; "
            f"text policy <span class=mono>{_e(model.get('text_policy') or meta.get('text_policy') or '—')}"
            "</span>.</p>")
    if not t["cells"]:
        return head + "<p class=muted>No cells were recorded for this model.</p>" + _encodings(meta)
    cells = [c for c in model.get("cells") or [] if isinstance(c, dict)]
    names = _perturbations(cells)
    body = [_across(model, names)]
    summaries = _dict(model.get("summary"))
    for j, name in enumerate(names):
        title = f"<h3>{_e(name)}</h3>" if len(names) > 1 or name != "occlusion" else ""
        # Documents written before perturbations existed hold one summary, not one per perturbation.
        summary = _dict(summaries.get(name)) if name in summaries or len(names) > 1 else summaries
        body.append(f"{title}<div class=row><div>{_grid(model, name)}</div>{_summary(summary, credentialed)}</div>"
                    + plot_svg(model, f"plot-{index}-{j}", name))
    return head + _encodings(meta) + "".join(body)


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
    rows.append(f"<tr><th>mean over perturbations</th>{mean}</tr>")
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
    return ("<table class=grid><caption>Across perturbations: mean relative drop of Recall@k over each "
            f"perturbation's severities, 1 − R(s)/R(clean).{_e(ce)}</caption>"
            f"<tr><th>perturbation</th>{head}</tr>{''.join(rows)}</table>")


# ----- skipped / errored, examples, metadata ----------------------------------------------------------------
def _not_measured(models: list[dict]) -> str:
    skipped = [(i, m) for i, m in enumerate(models) if m.get("status") == "skipped"]
    errored = [(i, m) for i, m in enumerate(models) if m.get("status") not in ("measured", "skipped")]
    if not skipped and not errored:
        return ""
    parts = ["<h2>Models not measured</h2>"]
    for i, m in errored:
        parts.append(f"<div class=err id='{_anchor(m, i)}'><b>{_e(m.get('model', '?'))}</b>: "
                     f"{_e(m.get('status', 'unknown status'))}"
                     f"<pre>{_e(m.get('reason') or 'no error recorded')}</pre></div>")
    for i, m in skipped:
        parts.append(f"<div class=skip id='{_anchor(m, i)}'><b>{_e(m.get('model', '?'))}</b>: skipped — to run it:"
                     f"<pre>{_e(m.get('reason') or 'no reason recorded')}</pre></div>")
    return "".join(parts)


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
    return "<h2>Examples</h2><div>" + "".join(figs) + "</div>"


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
    facts = {"seed": meta.get("seed"), "device": meta.get("device"), "precision": meta.get("precision"),
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
    parts = ["<h2>Metadata</h2>", _kv_table(run, credentialed)]
    parts.extend(_model_metadata(m, credentialed) for m in models if m.get("status") == "measured")
    parts.append(f"<h3>Effective configuration</h3>{_kv_table(_dict(doc.get('config')), credentialed)}")
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
    body = [_safe(_header, doc)]
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
