"""Negated twins of reports: each study's report with exactly one finding's presence flipped.

A twin is a hard negative for image->report retrieval: it differs from the true report only in whether one
finding is there, so a model that ranks it as high as the true report does not read negation.

* Phantom sets (``meta["generator"] == "cxr_robust.data.phantom"``) get **exact** twins from the generator
  (:func:`cxr_robust.data.phantom.twin_report`): the description is flipped and the report re-rendered with
  the same wording, so the twin's labels are known to differ in exactly the flipped finding.
* Every other set (MIMIC-CXR, manifests) gets twins from :func:`flip_report`, a **rule-based flipper** of
  report sentences (``exact=False``).

The flipper, per sentence of the findings and impression sections:

* a negated mention of a finding becomes affirmative: "No pleural effusion." -> "Pleural effusion is
  present."; "No effusion or pneumothorax." -> "No pneumothorax. Effusion is present."; "... without
  consolidation." -> "... with consolidation."; "Pneumothorax is not seen." -> "Pneumothorax is seen.";
  "negative for X" -> "positive for X"; "The lungs are free of X" -> "The lungs show X"; "Heart size is
  normal." -> "Cardiomegaly is present.";
* a plain affirmative mention is negated: "There is a small left pleural effusion." -> "No pleural
  effusion."; "Left pneumothorax noted." -> "No pneumothorax."; an item of a list of findings ("Cardiomegaly,
  left effusion, nodules.") is removed from the list and "No pleural effusion." follows the sentence.

A finding is *eligible* only when every one of its mentions in both sections can be flipped and all agree
(all negated or all affirmative); the flipped finding is a seeded draw per study id among the eligible ones,
and all its mentions are flipped. Everything else stays byte-identical.

Limits (what it does not flip: the finding is then not eligible, and a study with no eligible finding gets
no twin):

* hedged mentions ("possible", "may represent", "cannot be excluded", "likely", "versus", "suggest",
  "consistent with", "borderline", ...) and any sentence mentioning a finding with words outside a small
  vocabulary of sizes, sides, zones and framing ("There is", "noted", "is present") -- change over time
  ("new", "increased", "resolved", "unchanged", "stable"), comparisons, causes ("due to", "with adjacent"),
  a sentence naming two findings in one phrase ("atelectasis or pneumonia");
* a finding with a misspelt mention (a word one typo away from one of its head words, e.g. "effsuion"):
  the flipper cannot see that mention, so the finding is not eligible; other typos are harmless or make the
  mention's sentence unparseable (not eligible either);
* findings mentioned only implicitly ("Lungs are clear." names no finding, so it is left as is, and a
  finding mentioned nowhere else is not eligible); Support Devices, Pleural Other, No Finding;
* a sentence that affirms one finding and negates another ("Mild cardiomegaly without edema.") flips
  neither;
* a global normal statement ("No acute cardiopulmonary process.") is kept, so a twin that makes a finding
  present may still carry it.

Its coverage (the share of studies with a twin) on real MIMIC-CXR reports is **unmeasured here**: no MIMIC
data is available to this project's tests. A user measures it on their data: :func:`negation_twins` returns
``coverage`` and ``by_finding`` (numbers and label names only), and a run reports them. On the phantom
evaluation reports the flipper's coverage and correctness are measured by ``benchmarks/negation_flipper.py``
(``docs/negation_flipper.json``).

Nothing here logs or raises report text (MIMIC-CXR is credentialed): :class:`NegationTwins` hides its texts
from ``repr``.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field

from cxr_robust.data.phantom import TwinReport, study_text, twin_report
from cxr_robust.data.retrieval_set import RetrievalSet

__all__ = ["FLIP_FINDINGS", "NegationTwins", "TwinReport", "eligible_findings", "flip_report", "negation_twins"]

PHANTOM_GENERATOR = "cxr_robust.data.phantom"
EXACT_METHOD, RULE_METHOD = "phantom generator (exact)", "rule-based flipper"

# CheXpert label -> its mention heads (whole words, lower case). Modifiers ("pleural", "pulmonary", sides,
# sizes) live in _MODIFIERS, so "small left pleural effusion" is modifiers + head.
_HEADS: dict[str, str] = {
    "Atelectasis": r"atelectas[ie]s",
    "Cardiomegaly": r"cardiomegaly|cardiac enlargement|enlargement of the cardiac silhouette|enlarged heart"
                    r"|(?:heart|cardiac) size|cardiac silhouette|heart",
    "Consolidation": r"consolidations?|consolidative opacit(?:y|ies)",
    "Edema": r"o?edema",
    "Enlarged Cardiomediastinum": r"cardiomediastinal silhouette|mediastinum|mediastinal (?:contours?|silhouette)",
    "Fracture": r"fractures?",
    "Lung Lesion": r"nodules?|nodular opacit(?:y|ies)|mass(?:es)?|lesions?",
    "Lung Opacity": r"(?<!consolidative )(?<!nodular )(?:opacit(?:y|ies)|opacification)",
    "Pleural Effusion": r"(?<!pericardial )(?:pleural )?effusions?|pleural fluid(?: collections?)?",
    "Pneumonia": r"pneumonias?",
    "Pneumothorax": r"pneumothora(?:x|ces)|ptx",
}
FLIP_FINDINGS: tuple[str, ...] = tuple(_HEADS)
"""CheXpert labels the rule-based flipper can flip, in CheXpert order."""

_CANONICAL = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
              "Edema": "pulmonary edema", "Enlarged Cardiomediastinum": "mediastinal widening",
              "Fracture": "fracture", "Lung Lesion": "nodule", "Lung Opacity": "opacity",
              "Pleural Effusion": "pleural effusion", "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax"}
"""What "No ..." names when an affirmative mention is negated."""

_HEAD_RE = {f: re.compile(rf"\b(?:{h})\b", re.I) for f, h in _HEADS.items()}

_MODIFIERS = frozenset("""
a an the of in at both
small tiny trace minimal mild mildly moderate moderately large severe severely marked markedly massive slight
slightly to moderate-to-large small-to-moderate mild-to-moderate moderate-to-severe
left right bilateral bilaterally bibasilar basilar basal bibasal apical biapical upper lower mid middle zone
zones lobe lobes lung lungs base bases apex apices lingula lingular retrocardiac perihilar hilar lateral
medial posterior anterior peripheral subpleural hemithorax costophrenic left-sided right-sided
focal patchy airspace air-space multifocal diffuse layering loculated dependent pleural pulmonary interstitial
alveolar acute rib ribs mm cm x
""".split())
"""Words an item of a finding may hold besides its head (sizes, sides, zones, character). Anything else makes
the mention unflippable: change over time, causes and comparisons change what a negation would mean."""

_HEDGE = re.compile(
    r"\b(?:possibl[ey]|probabl[ey]|may|might|could|cannot|can not|likely|unlikely|versus|vs|suspicious|suspect"
    r"|suspected|suggest\w*|question\w*|questionable|concern\w*|consider\w*|differential|equivocal|presum\w*"
    r"|indeterminate|excluded|exclude|ruled out|rule out|either|consistent with|compatible with|represent\w*"
    r"|worrisome|borderline|not definite|apparent|subtle|perhaps|favor\w*)\b", re.I)
_UNCERTAIN_ITEM = re.compile(r"\bborderline\b", re.I)  # marks only its own item uncertain in a list
_NEG_PREFIX = re.compile(r"^(?P<cue>(?:there (?:is|are) )?no (?:(?:radiographic |definite |convincing )?"
                         r"(?:evidence|signs?) (?:of|for) )?(?:definite |convincing |)|negative for |without )",
                         re.I)
_NEG_EMBEDDED = re.compile(r"(?P<pre>.*?\S)\s+(?P<cue>without|with no|and no|negative for|(?:is|are) free of)"
                           r"\s+(?P<rest>.+)$", re.I | re.S)
_SEEN = r"(?:seen|identified|present|appreciated|visualized|demonstrated|evident|detected|noted)"
_NEG_SUFFIX = re.compile(rf"\s+(?P<verb>is|are|was|were)\s+(?P<neg>not\s+{_SEEN}|absent)$", re.I)
_SEEN_SUFFIX = re.compile(rf"\s+(?:is|are|was|were)\s+{_SEEN}$", re.I)
_AFF_PREFIX = re.compile(r"^there (?:is|are) ", re.I)
_AFF_SUFFIX = re.compile(rf"(?:\s+(?:is|are)(?:\s+again)?\s+{_SEEN}|\s+(?:again\s+)?(?:noted|seen|present))$", re.I)
_SPLIT = re.compile(r"\s*,\s*(?:(?:and|or|nor)\s+)?|\s+(?:and|or|nor)\s+", re.I)
_NUMBER = re.compile(r"^\d+(?:\.\d+)?(?:mm|cm)?$")
_WORD = re.compile(r"[a-z0-9][a-z0-9.\-]*", re.I)
_BREAK = re.compile(r"[;()\[\]/]|\b(?:but|however|although|though|which|that|except|while|whereas|if)\b", re.I)
_NORMAL = re.compile(r"^(?P<subj>(?:the )?(?:heart size|heart|cardiac size|cardiac silhouette|size of the heart"
                     r"|cardiomediastinal silhouette|mediastinal contours?|mediastinum))"
                     r" (?P<verb>is|are|remains) (?P<state>normal|within normal limits|normal in size|unremarkable)$",
                     re.I)
_ENLARGED = re.compile(r"^(?P<subj>(?:the )?(?:heart size|heart|cardiac size|cardiac silhouette|size of the heart"
                       r"|cardiomediastinal silhouette|mediastinum))"
                       r" (?P<verb>is|are|remains) (?:mildly |moderately |severely |markedly |slightly )?"
                       r"(?P<state>enlarged|widened)$", re.I)
_NOT_A_NOUN = re.compile(
    r"\b(?:before|prior|previous\w*|unchanged|stable|again|since|compared|comparison|interval|larger|smaller"
    r"|increas\w*|decreas\w*|improv\w*|wors\w*|resolv\w*|chang\w*|seen|noted|present|identified|as|than|on"
    r"|to|from|for|is|are|was|were|has|have|been|now|today|still|otherwise)\b", re.I)
"""Words that make an item of a negated list something other than one more negated finding."""
_SENTENCE = re.compile(r"\S.*?(?:[.!?](?=\s|$)|$)", re.S)


_HEAD_WORDS: dict[str, frozenset[str]] = {
    "Atelectasis": frozenset({"atelectasis", "atelectases"}),
    "Cardiomegaly": frozenset({"cardiomegaly", "heart", "cardiac", "enlargement"}),
    "Consolidation": frozenset({"consolidation", "consolidations", "consolidative"}),
    "Edema": frozenset({"edema", "oedema"}),
    "Enlarged Cardiomediastinum": frozenset({"cardiomediastinal", "mediastinum", "mediastinal"}),
    "Fracture": frozenset({"fracture", "fractures"}),
    "Lung Lesion": frozenset({"nodule", "nodules", "nodular", "mass", "masses", "lesion", "lesions"}),
    "Lung Opacity": frozenset({"opacity", "opacities", "opacification"}),
    "Pleural Effusion": frozenset({"effusion", "effusions", "fluid"}),
    "Pneumonia": frozenset({"pneumonia", "pneumonias"}),
    "Pneumothorax": frozenset({"pneumothorax", "pneumothoraces"}),
}
"""The words of each finding's heads: a word one typo away from one of them is a mention the flipper cannot
see, so that finding is not eligible (flipping its other mentions would leave the misspelt one as it was)."""
_ALL_HEAD_WORDS = frozenset().union(*_HEAD_WORDS.values())


def _one_typo(w: str, h: str) -> bool:
    """``w`` is ``h`` with two adjacent letters swapped, or (``h`` of 6+ letters) one letter changed, added or
    dropped."""
    if len(w) == len(h):
        diff = [i for i in range(len(w)) if w[i] != h[i]]
        if len(diff) == 2 and diff[1] == diff[0] + 1 and w[diff[0]] == h[diff[1]] and w[diff[1]] == h[diff[0]]:
            return True
        return len(diff) == 1 and len(h) >= 6
    if abs(len(w) - len(h)) != 1 or len(h) < 6:
        return False
    short, long_ = (w, h) if len(w) < len(h) else (h, w)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def _misspelt(text: str) -> set[str]:
    """Findings with a word one typo away from one of their head words (:data:`_HEAD_WORDS`)."""
    out = set()
    for w in {w.lower() for w in re.findall(r"[A-Za-z]{4,}", text)} - _ALL_HEAD_WORDS:
        out |= {f for f, heads in _HEAD_WORDS.items() if f not in out and any(_one_typo(w, h) for h in heads)}
    return out


def _mentions(text: str) -> set[str]:
    return {f for f, rx in _HEAD_RE.items() if rx.search(text)}


def _item_finding(item: str) -> tuple[str | None, bool]:
    """(the one finding an item names, or None; whether every other word is a modifier, for that finding)."""
    found = [(f, m) for f, rx in _HEAD_RE.items() for m in rx.finditer(item)]
    names = {f for f, _ in found}
    if "Cardiomegaly" in names and "Enlarged Cardiomediastinum" in names:
        return None, False
    if len(names) != 1:
        return (None, _only_modifiers(item)) if not names else ("", False)
    rest = item
    for _, m in sorted(found, key=lambda fm: -fm[1].start()):
        rest = rest[:m.start()] + " " + rest[m.end():]
    finding = names.pop()
    clean = _only_modifiers(rest) and (finding != "Cardiomegaly" or bool(re.search(
        r"\b(?:cardiomegaly|enlarged heart|cardiac enlargement|enlargement of the cardiac silhouette)\b", item,
        re.I)))  # "heart size" alone says nothing
    return finding, clean


def _only_modifiers(text: str) -> bool:
    words = _WORD.findall(text)
    if re.sub(r"[\w.\-:]", "", text).strip():  # punctuation other than ':' inside an item
        return False
    return all(w.lower() in _MODIFIERS or _NUMBER.match(w) for w in words)


@dataclass
class _Item:
    text: str
    finding: str | None  # None: no finding ("other" or modifiers only); "": two findings
    clean: bool


def _items(scope: str) -> list[_Item] | None:
    """The list items of ``scope``; modifier-only items join the next item naming a finding (or the last),
    keeping the words between them as written ("17 mm right mid and 10 mm left mid nodules" is one item)."""
    scope = scope.strip()
    if _BREAK.search(scope):
        return None
    bounds, at = [], 0
    for sep in _SPLIT.finditer(scope):
        bounds.append((at, sep.start()))
        at = sep.end()
    bounds.append((at, len(scope)))
    if any(a0 >= a1 for a0, a1 in bounds):
        return None
    groups: list[tuple[int, int, str | None, bool]] = []
    pending: int | None = None  # start of modifier-only items waiting for their finding
    for a0, a1 in bounds:
        finding, clean = _item_finding(scope[a0:a1])
        if finding is None and clean:  # modifiers only ("17 mm right mid" before "and 9 mm ... nodules")
            pending = a0 if pending is None else pending
            continue
        if pending is not None:
            if finding is None or re.search(r"\b(?:or|nor)\b", scope[pending:a0], re.I):
                return None  # an "other" item takes no modifiers; "left or right effusion" is no one finding
            a0, pending = pending, None
        groups.append((a0, a1, finding, clean))
    if pending is not None:
        if not groups or groups[-1][2] is None:
            return None
        a0, _, finding, clean = groups[-1]
        groups[-1] = (a0, len(scope), finding, clean)
    return [_Item(scope[a0:a1], finding, clean) for a0, a1, finding, clean in groups]


def _join(items: list[str], conj: str, oxford: bool) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + ("," if oxford and len(items) > 2 else "") + f" {conj} " + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _is_plural(item: str) -> bool:
    return bool(re.search(r"(?:effusions|nodules|opacities|masses|fractures|consolidations|lesions|pneumothoraces"
                          r"|pneumonias|collections)$", item, re.I))


def _present(item: str) -> str:
    """"No X." made affirmative as a sentence of its own: "X is present." / "Xs are present."."""
    return f"{_cap(item)} {'are' if _is_plural(item) else 'is'} present."


@dataclass
class _Parse:
    """How one sentence mentions findings: their polarity, and how to rewrite it with one of them flipped."""

    polarity: dict[str, bool] = field(default_factory=dict)  # finding -> mentioned present?
    rewrite: dict[str, object] = field(default_factory=dict)  # finding -> callable() -> new sentence text


def _list_form(body: str, conj_default: str) -> tuple[list[_Item], str, bool] | None:
    items = _items(body)
    if items is None:
        return None
    seps = _SPLIT.findall(body)
    words = [w for s in seps for w in re.findall(r"and|or|nor", s, re.I)]
    conj = words[-1].lower() if words else conj_default
    oxford = bool(seps) and "," in seps[-1] and bool(re.search(r"and|or|nor", seps[-1], re.I))
    return items, conj, oxford


def _parse_sentence(sentence: str) -> _Parse | None:
    """The flippable mentions of ``sentence`` (None: it names a finding but cannot be parsed)."""
    text = " ".join(sentence.split())
    end = text[-1] if text[-1:] in ".!?" else ""
    core = text[:-1].rstrip() if end else text
    mentioned = _mentions(core)
    if not mentioned:
        return _Parse()
    if _HEDGE.search(re.sub(r"(?i)\bborderline\b", "", core)):
        return None
    out = _Parse()
    stop = end or "."

    if re.fullmatch(r"normal (?:heart size|cardiac size|cardiac silhouette|heart)", core, re.I):
        out.polarity["Cardiomegaly"] = False
        out.rewrite["Cardiomegaly"] = lambda: "Cardiomegaly is present" + stop
        return out
    m = _NORMAL.match(core)
    if m:  # "Heart size is normal." -> "Cardiomegaly is present."; "... silhouette is normal" -> "... enlarged"
        f = "Enlarged Cardiomediastinum" if re.search(r"mediast", m["subj"], re.I) else "Cardiomegaly"
        if mentioned != {f}:
            return None
        out.polarity[f] = False
        if f == "Cardiomegaly":  # "heart size is enlarged" is read as cardiomegaly by fewer labelers
            out.rewrite[f] = lambda: "Cardiomegaly is present" + stop
        else:
            new_state = "widened" if "mediastinum" in m["subj"].lower() else "enlarged"
            out.rewrite[f] = lambda: core[:m.start("state")] + new_state + stop
        return out
    m = _ENLARGED.match(core)
    if m:
        f = "Enlarged Cardiomediastinum" if re.search(r"mediast", m["subj"], re.I) else "Cardiomegaly"
        if mentioned != {f}:
            return None
        out.polarity[f] = True
        normal = " normal in size" if m["subj"].lower().endswith("heart") else " normal"
        out.rewrite[f] = lambda: core[:m.start("verb")] + m["verb"] + normal + stop
        return out

    neg = _negative(core, stop)
    if neg is not None:
        return neg
    return _affirmative(core, stop, mentioned)


def _negative(core: str, stop: str) -> _Parse | None:
    """Sentences whose mentions are negated: "No X, Y or Z [is seen]", "X is not seen", "... without X"."""
    pre, cue, post_neg = "", "", None
    m = _NEG_PREFIX.match(core)
    if m and m["cue"].strip():
        cue, start, stop_at = m["cue"], m.end(), len(core)
        s = _SEEN_SUFFIX.search(core, start)
        if s:
            stop_at = s.start()
    else:
        post_neg = _NEG_SUFFIX.search(core)
        if post_neg is not None:
            start, stop_at = 0, post_neg.start()
        else:
            m3 = _NEG_EMBEDDED.match(core)
            if not m3 or _mentions(m3["pre"]):
                return None
            pre, cue, start, stop_at = m3["pre"], m3["cue"], m3.start("rest"), len(core)
    scope, head, tail = core[start:stop_at], core[:start], core[stop_at:]
    form = _list_form(scope, "or")
    if form is None:
        return None
    items, conj, oxford = form
    if any(it.finding == "" or (it.finding and not it.clean) for it in items):
        return None
    if re.search(r"\band\b", " ".join(_SPLIT.findall(scope)), re.I):
        return None  # "No pleural effusion and small pneumothorax": is the pneumothorax negated? Unclear.
    if any(it.finding is None and _NOT_A_NOUN.search(it.text) for it in items):
        return None  # "No pleural effusion, as before": the rest of the list is not a negated finding
    out = _Parse()
    for f in {it.finding for it in items if it.finding}:
        mine = [it for it in items if it.finding == f]
        others = [it.text for it in items if it.finding != f]
        affirmed = " ".join(_present(it.text) for it in mine)
        out.polarity[f] = False

        def rewrite(others=others, affirmed=affirmed) -> str | None:
            if others:  # drop the item from the negated list; affirm it in a sentence of its own
                rest, end = _join(others, conj, oxford), tail
                if post_neg is not None:
                    rest = _cap(rest) if core[:1].isupper() else rest
                    if len(others) == 1 and not _is_plural(others[0]):
                        verb = post_neg["verb"]
                        end = end.replace(verb, {"are": "is", "were": "was"}.get(verb.lower(), verb), 1)
                return f"{head}{rest}{end}{stop} {affirmed}"
            if post_neg is not None:  # "X is not seen" -> "X is seen", "X is absent" -> "X is present"
                flipped = re.sub(r"(?i)^not\s+", "", post_neg["neg"])
                flipped = "present" if flipped.lower() == "absent" else flipped
                return f"{scope} {post_neg['verb']} {flipped}{stop}"
            c = " ".join(cue.lower().split())
            if pre:
                new = {"without": "with", "with no": "with", "and no": "and", "negative for": "positive for",
                       "are free of": "show", "is free of": "shows"}.get(c)
                return None if new is None else f"{pre} {new} {scope}{stop}"
            if c.startswith("negative for"):
                return f"{'Positive' if core[:1].isupper() else 'positive'} for {scope}{stop}"
            if tail:  # "No X is seen." -> "X is seen."
                return f"{_cap(scope)}{tail}{stop}"
            return affirmed

        if rewrite() is None:
            return None
        out.rewrite[f] = rewrite
    return out


def _affirmative(core: str, stop: str, mentioned: set[str]) -> _Parse | None:
    """Plain affirmative mentions: "[There is] [a] small left pleural effusion [is present|noted]", a list of
    such items ("Cardiomegaly, left effusion, nodules."), or "Nodules: 20 mm right mid and 9 mm left lower."."""
    if re.search(r"\b(?:no|not|without|negative|free|absent|clear|normal)\b", core, re.I):
        return None
    body, prefix = core, ""
    m = _AFF_PREFIX.match(body)
    if m:
        prefix, body = body[:m.end()], body[m.end():]
    suffix = ""
    s = _AFF_SUFFIX.search(body)
    if s:
        body, suffix = body[:s.start()], body[s.start():]
    colon = re.match(r"^(?P<head>[^:,]+):\s*(?P<rest>[^:]+)$", body)
    if colon:  # "Nodules: 20 mm right mid and 9 mm left lower"
        f, clean = _item_finding(colon["head"])
        if not f or not clean or _mentions(colon["rest"]) or not _only_modifiers(_SPLIT.sub(" ", colon["rest"])):
            return None
        items, conj, oxford = [_Item(body, f, True)], "and", False
    else:
        form = _list_form(body, "and")
        if form is None:
            return None
        items, conj, oxford = form
        if any(it.finding is None for it in items):
            return None  # "Small left effusion, unchanged": a word that is no finding may qualify one
    out = _Parse()
    for f in mentioned:
        mine = [it for it in items if it.finding == f]
        if not mine or any(not it.clean or _UNCERTAIN_ITEM.search(it.text) for it in mine):
            continue  # a finding in an unparseable item: not flippable here (the caller sees it unparsed)
        if any(it.finding == "" and _HEAD_RE[f].search(it.text) for it in items):
            continue
        others = [it.text for it in items if it.finding != f]
        out.polarity[f] = True

        def rewrite(f=f, others=others, mine=mine) -> str:
            noun = _CANONICAL[f]
            if f == "Lung Lesion":
                head = re.search(r"\b(mass|lesion)", " ".join(it.text for it in mine), re.I)
                noun = head[1].lower() if head else noun
            no = f"No {noun}{stop}"
            if not others:
                return no
            rest = _join(others, conj, oxford)
            return f"{_cap(rest) if core[:1].isupper() else rest}{suffix}{stop} {no}"

        out.rewrite[f] = rewrite
    return out


def _sentences(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _SENTENCE.finditer(text)]


def _analyse(text: str) -> tuple[list[tuple[int, int]], list[_Parse | None], list[set[str]]]:
    spans = _sentences(text)
    parses = [_parse_sentence(text[a:b]) for a, b in spans]
    mentions = [_mentions(text[a:b]) for a, b in spans]
    return spans, parses, mentions


def _flip_section(text: str, analysis, finding: str) -> str:
    spans, parses, mentions = analysis
    out, last = [], 0
    for (a, b), p, men in zip(spans, parses, mentions):
        if finding in men:
            assert p is not None
            new = p.rewrite[finding]()
            out.append(text[last:a] + new)
            last = b
    out.append(text[last:])
    return "".join(out)


def _draw(study_id: str, seed: int, n: int) -> int:
    h = hashlib.blake2b(f"negation-flip\0{seed}\0{study_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % n


def eligible_findings(findings: str, impression: str) -> dict[str, bool]:
    """Finding -> its polarity (mentioned present?) for every finding whose mentions can all be flipped."""
    result: dict[str, bool] = {}
    blocked: set[str] = _misspelt(findings or "") | _misspelt(impression or "")
    for text in (findings or "", impression or ""):
        _, parses, mentions = _analyse(text)
        for p, men in zip(parses, mentions):
            for f in men & set(FLIP_FINDINGS):
                if p is None or f not in p.polarity or f not in p.rewrite:
                    blocked.add(f)
                    continue
                pol = p.polarity[f]
                if result.setdefault(f, pol) != pol:
                    blocked.add(f)
    return {f: pol for f, pol in result.items() if f not in blocked}


def flip_report(findings: str, impression: str, study_id: str, seed: int = 0) -> TwinReport | None:
    """The report with one seeded finding's presence flipped in every mention, or None when none can flip.

    The finding is drawn per ``study_id`` (and ``seed``) among the findings whose every mention in both
    sections can be flipped consistently (see the module docstring). ``exact`` is False.
    """
    findings, impression = findings or "", impression or ""
    eligible = eligible_findings(findings, impression)
    if not eligible:
        return None
    names = [f for f in FLIP_FINDINGS if f in eligible]
    finding = names[_draw(study_id, seed, len(names))]
    new = []
    for text in (findings, impression):
        new.append(_flip_section(text, _analyse(text), finding))
    if new == [findings, impression]:
        return None
    return TwinReport(new[0], new[1], finding, not eligible[finding], exact=False)


_PHANTOM_ID = re.compile(r"^ph-(?P<split>[a-z]+)-s(?P<seed>\d+)-(?P<index>\d{6,})$")


@dataclass
class NegationTwins:
    """Negated twins of a set's reports, one slot per study (None: that study has no twin)."""

    findings: list[str | None] = field(repr=False)
    impressions: list[str | None] = field(repr=False)
    finding: list[str | None]
    present: list[bool | None]
    method: str
    coverage: float
    by_finding: dict[str, int]

    @property
    def twin_studies(self) -> list[int]:
        """Indices of the studies that have a twin."""
        return [i for i, f in enumerate(self.finding) if f is not None]

    def summary(self) -> dict[str, object]:
        """Numbers and label names only: what a run records."""
        directions = Counter(f"{f}: {'absent -> present' if p else 'present -> absent'}"
                             for f, p in zip(self.finding, self.present) if f is not None)
        return {"method": self.method, "studies": len(self.finding), "twins": len(self.twin_studies),
                "coverage": self.coverage, "by_finding": dict(self.by_finding),
                "by_direction": dict(sorted(directions.items()))}


def _phantom_twins(data: RetrievalSet) -> list[TwinReport] | None:
    """Exact twins when every study of ``data`` is the generator's study of its id (None otherwise)."""
    split, seed = data.meta.get("split"), data.meta.get("seed")
    twins = []
    for sid, f, i in zip(data.study_ids, data.findings, data.impressions):
        m = _PHANTOM_ID.match(sid)
        if not m or m["split"] != split or int(m["seed"]) != seed:
            return None
        index = int(m["index"])
        if study_text(split, seed, index)[1:] != (f, i):
            return None
        twins.append(twin_report(split, seed, index))
    return twins


def negation_twins(data: RetrievalSet, seed: int = 0) -> NegationTwins:
    """A negated twin per study of ``data``: exact from the phantom generator for phantom sets (whose texts
    match the generator), from :func:`flip_report` for every other set (``seed`` picks its findings)."""
    twins: list[TwinReport | None] | None = None
    method = RULE_METHOD
    if data.meta.get("generator") == PHANTOM_GENERATOR:
        twins = _phantom_twins(data)
        method = EXACT_METHOD if twins is not None else RULE_METHOD
    if twins is None:
        twins = [flip_report(f, i, sid, seed) for sid, f, i in zip(data.study_ids, data.findings, data.impressions)]
    n = len(twins)
    made = [t for t in twins if t is not None]
    return NegationTwins(
        findings=[t.findings if t else None for t in twins], impressions=[t.impression if t else None for t in twins],
        finding=[t.finding if t else None for t in twins], present=[t.present if t else None for t in twins],
        method=method, coverage=len(made) / n if n else 0.0,
        by_finding=dict(sorted(Counter(t.finding for t in made).items())))
