"""The HTML report in a real browser (headless Chromium): it renders without console errors, every section is
there, the verdict badge shows the run's verdict in its colour, nothing is fetched, nothing overflows a
1,280 px window, and the verdict, the model table, the grid and the compact summary come first.

The report has no JavaScript, so the checks run in a probe script appended to a *copy* of each report; it
writes what it measured into the page, and ``--dump-dom`` returns the page. Documents: a passing run of the
paper's grid (synthetic, as tests/test_report.py builds them), a failing run with every kind of model entry,
a run mixing paired and unpaired models, and a real paired run of the gate on 60 phantom studies.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from cxr_robust.report import overall_verdict, render_report
from cxr_robust.results import ModelOutcome

from tests.test_report import _cell, _doc, _measured, _paired_grid, curve_summary, example_document

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not on PATH: install it (Debian/Ubuntu: `apt-get install -y "
                             "chromium`, as .ci/run does) to run the report's browser tests")

WIDTH, HEIGHT = 1280, 900
PAPER_RATIOS = (0.0, 0.0025, 0.01, 0.04, 0.09, 0.25, 0.49, 0.81)
PAPER_KS = (5, 10, 20, 30, 50, 100)
BADGE_COLOURS = {"PASS": "rgb(27, 127, 59)", "FAIL": "rgb(198, 40, 40)"}  # .v-pass / .v-fail; others grey
GREY = "rgb(119, 119, 119)"

# Runs on load (after layout), measures, and writes JSON into <pre id=cxr-probe> for --dump-dom to return.
PROBE = """<script>
addEventListener('load', function () {
  var root = document.documentElement, all = [].slice.call(document.querySelectorAll('body *'));
  function name(e) { return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
                            (e.className && e.className.baseVal === undefined ? '.' + e.className : ''); }
  function top(sel) { var e = document.querySelector(sel); return e ? e.getBoundingClientRect().top + scrollY : null; }
  var badge = document.querySelector('.verdict'), box = badge && badge.getBoundingClientRect();
  var out = {
    innerWidth: innerWidth, clientWidth: root.clientWidth, scrollWidth: root.scrollWidth,
    beyondRight: all.filter(function (e) { return e.getBoundingClientRect().right > root.clientWidth + 1; })
                    .slice(0, 8).map(name),
    scrolling: [].filter.call(document.querySelectorAll('.scroll'), function (e) {
                 return e.scrollWidth > e.clientWidth + 1; }).map(function (e) { return name(e.firstElementChild); }),
    sections: [].map.call(document.querySelectorAll('header[id], section[id]'), function (e) { return e.id; }),
    deadLinks: [].filter.call(document.querySelectorAll('a[href^="#"]'), function (a) {
                 return !document.getElementById(a.getAttribute('href').slice(1)); }).map(function (a) {
                 return a.getAttribute('href'); }),
    badge: badge && {text: badge.textContent, colour: getComputedStyle(badge).backgroundColor,
                     top: box.top, width: box.width, height: box.height},
    tops: {models: top('#models'), grid: top('table.grid'), summary: top('table.summary')},
    summaryBottom: (function (e) { return e ? e.getBoundingClientRect().bottom + scrollY : null; })(
                     document.querySelector('table.summary')),
    svgs: document.querySelectorAll('svg').length,
    blankSvgs: [].filter.call(document.querySelectorAll('svg'), function (s) {
                 var r = s.getBoundingClientRect(); return !(r.width > 50 && r.height > 50); }).length,
    summaries: document.querySelectorAll('table.summary').length,
    rawShown: [].filter.call(document.querySelectorAll('details.raw table'), function (t) {
                 return t.checkVisibility(); }).length,  // false inside a closed <details>
    raw: document.querySelectorAll('details.raw').length,
    resources: performance.getEntriesByType('resource').map(function (e) { return e.name; }),
    images: [].map.call(document.images, function (i) { return i.currentSrc.slice(0, 22); }),
    title: document.title
  };
  var pre = document.createElement('pre'); pre.id = 'cxr-probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def browse(html: str, folder: Path, name: str, extra: str = "") -> tuple[dict[str, Any], list[str]]:
    """Open a probed copy of ``html`` (plus ``extra`` markup) in headless Chromium at 1,280 x 900: the probe's
    measures and the console's lines."""
    assert "</body>" in html and "<script" not in html  # the report itself never carries a script
    page = folder / f"{name}.html"
    page.write_text(html.replace("</body>", PROBE + extra + "</body>"), encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--window-size={WIDTH},{HEIGHT}", "--enable-logging=stderr", "--v=0",
           f"--user-data-dir={folder / f'{name}-profile'}", "--dump-dom", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    found = re.search(r'<pre id="cxr-probe">(.*?)</pre>', done.stdout, flags=re.S)
    assert found, f"Chromium returned no probed page (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(unescape(found.group(1))), console


# ----- documents ----------------------------------------------------------------------------------------------
def passing_document() -> dict:
    """The default run's shape: the paper's 8 x 6 grid passing, the four Table 1 models skipped here."""
    grid = [_cell("phantom-clip", r, k) for r in PAPER_RATIOS for k in PAPER_KS]
    model = _measured("phantom-clip", grid, mode="unpaired",
                      summary={"occlusion": curve_summary(ratios=PAPER_RATIOS, ks=PAPER_KS)})
    skipped = [ModelOutcome(name, "skipped", reason=f"weights for {name!r} not found: pass --cxr-weights "
                            f"{name}=PATH or set $CXR_ROBUST_WEIGHTS_DIR").__dict__
               for name in ("clip", "cxr-repair", "medclip-vit", "cxr-clip-swint")]
    doc = _doc([model, *skipped])
    doc["config"].update(ratios=list(PAPER_RATIOS), ks=list(PAPER_KS))
    return doc


def mixed_document() -> dict:
    """A paired model gated against another model's row (with a long dotted name), beside an unpaired one."""
    name = "mypkg.models.cxr_clip_finetuned_on_internal_data_v2_release_candidate:build"
    paired = _measured(name, _paired_grid(name, failing=(0.25, 10)), mode="paired",
                       summary={"occlusion": curve_summary()})
    paired.update(baseline_row="phantom-clip", baseline_row_rule="declared by the model's registry entry")
    unpaired = _measured("clip", [_cell("clip", r, k) for r in PAPER_RATIOS for k in PAPER_KS], mode="unpaired",
                         summary={"occlusion": curve_summary(ratios=PAPER_RATIOS, ks=PAPER_KS)})
    return _doc([paired, unpaired])


@pytest.fixture(scope="module")
def gated_document(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real document: the gate records baselines on 60 phantom studies, then gates paired against them."""
    from cxr_robust.gate import GateOptions, GateSession

    root = tmp_path_factory.mktemp("browser-gate")
    common = dict(models=("phantom-clip",), phantom_studies=60, perturbations=("occlusion", "gaussian_noise"),
                  severities="gaussian_noise=1,3", ratios=(0.0, 0.25), ks=(5, 10), device="cpu",
                  cache_dir=str(root / "cache"), report_dir=str(root / "report"))
    record = GateSession(GateOptions(**common, update_baselines=True), rootdir=root)
    assert record.run("phantom-clip").error is None
    record.update_baselines()
    gate = GateSession(GateOptions(**common), rootdir=root)
    run = gate.run("phantom-clip")
    assert run.error is None and run.mode == "paired"
    return gate.document()


@pytest.fixture
def document(request: pytest.FixtureRequest) -> dict:
    """The document named by the test's parameter."""
    if request.param == "paired":
        return request.getfixturevalue("gated_document")
    return {"passing": passing_document, "failing": example_document, "mixed": mixed_document}[request.param]()


def _expected_sections(doc: dict) -> list[str]:
    models = [m for m in doc["models"] if isinstance(m, dict)]
    measured = [re.sub(r"[^a-z0-9]+", "-", m["model"].lower()).strip("-") for m in models if m["status"] == "measured"]
    ids = ["verdict", "models", "gate-rule", "dataset"]
    ids += [f"model-{i}-{slug}" for i, slug in enumerate(measured)]  # measured models come first in these docs
    ids += ["not-measured"] if any(m["status"] != "measured" for m in models) else []
    ids += ["examples"] if doc.get("examples") else []
    return ids + ["metadata"]


# ----- the tests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("document", ["passing", "failing", "mixed", "paired"], indirect=True)
def test_report_renders_in_chromium_without_errors_or_overflow(document: dict, tmp_path: Path,
                                                               request: pytest.FixtureRequest) -> None:
    """Renders cleanly, every section and the verdict badge present, nothing fetched, no horizontal overflow at
    1,280 px, raw summaries collapsed; the verdict, the model table, the grid and the compact summary within
    the first two screens (1,280 x 900 each)."""
    html = render_report(document)
    probe, console = browse(html, tmp_path, request.node.callspec.id)
    assert not console, console  # no console message at all: the page has nothing to say
    assert probe["innerWidth"] == WIDTH  # the window size took effect, so the overflow check means something
    assert probe["scrollWidth"] <= probe["clientWidth"], f"page wider than {WIDTH} px: {probe['beyondRight']}"
    assert probe["beyondRight"] == [] and probe["scrolling"] == []  # and no table needed its own scroll bar
    assert probe["sections"] == _expected_sections(document)
    assert probe["deadLinks"] == []
    verdict = overall_verdict(document)[0]
    badge = probe["badge"]
    assert badge["text"] == verdict and badge["colour"] == BADGE_COLOURS.get(verdict, GREY)
    assert badge["width"] > 40 and badge["height"] > 20 and 0 < badge["top"] < 150  # visible, at the top
    assert probe["title"].startswith(f"cxr-robust {verdict}")
    assert probe["resources"] == [] and all(src.startswith("data:image/png;base64,") for src in probe["images"])
    assert probe["svgs"] > 0 and probe["blankSvgs"] == 0
    assert probe["raw"] == probe["summaries"] > 0 and probe["rawShown"] == 0  # raw figures collapsed
    # A release engineer sees the verdict, the model table, the grid and the compact summary in two screens.
    tops = probe["tops"]
    assert badge["top"] < tops["models"] < tops["grid"] < tops["summary"] < probe["summaryBottom"] < 2 * HEIGHT, tops
    assert tops["models"] < HEIGHT / 2, tops


def test_the_probe_sees_overflow_and_console_errors(tmp_path: Path) -> None:
    """Positive control: a page wider than the window and a console error are both reported."""
    html = render_report(passing_document()).replace(
        "</body>", "<div style='width:2000px;height:4px' id=too-wide></div></body>")
    probe, console = browse(html, tmp_path, "control", extra="<script>console.error('cxr-probe-error')</script>")
    assert probe["scrollWidth"] > WIDTH and "div#too-wide" in probe["beyondRight"]
    assert any("cxr-probe-error" in line for line in console), console
