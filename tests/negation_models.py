"""Ad-hoc models for the negation gate's tests: the demo model made (partly) blind to negation on purpose.

Usable wherever a model name is accepted, as ``tests.negation_models:blind`` or ``tests.negation_models:partly_blind``
(the registry's ``module:factory`` form). Their text tower never reads a sentence that states a finding, so a
report and its negated twin (which differ only in such sentences) embed identically: every twin ties.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

ALL_FINDINGS = ("effusion", "pneumothorax", "consolidation", "nodule", "cardiomegaly", "heart", "lungs",
                "clear", "acute", "devices")
"""Words of phantom sentences that state a finding, present or absent (and "Devices in place.", which a normal
impression adds)."""
EFFUSION_ONLY = ("effusion",)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _blinded(words: Sequence[str]) -> Any:
    def strip(texts: Sequence[str]) -> list[str]:
        return [" ".join(s for s in _sentences(t) if not any(w in s.lower() for w in words)) for t in texts]

    return strip


def _build(name: str, words: Sequence[str], baseline_row: str | None) -> Any:
    from cxr_robust.models.demo import load_phantom_clip

    model = load_phantom_clip()
    strip, encode = _blinded(words), model.encode_texts
    model.encode_texts = lambda texts: encode(strip(texts))  # type: ignore[method-assign]
    model.name, model.baseline_row = name, baseline_row
    return model


def blind(weights: Any = None, **_: Any) -> Any:
    """phantom-clip that never reads a sentence stating any finding: blind to negation (and to findings)."""
    return _build("negation-blind-demo", ALL_FINDINGS, None)


def partly_blind(weights: Any = None, **_: Any) -> Any:
    """phantom-clip that never reads a sentence about an effusion, compared with phantom-clip's recording."""
    return _build("effusion-blind-demo", EFFUSION_ONLY, "phantom-clip")
