"""The perturbation registry: built-ins, the ``cxr_robust.perturbations`` entry-point group, and parsing of
``--cxr-perturbations`` / ``--cxr-severities`` into the sweep's conditions."""

from __future__ import annotations

import difflib
from typing import Iterable

from cxr_robust.perturbations.base import Condition, Perturbation

ENTRY_POINT_GROUP = "cxr_robust.perturbations"
DEFAULT_PERTURBATIONS: tuple[str, ...] = ("occlusion",)
"""What the gate measures unless told otherwise: the paper's occlusion grid."""

_REGISTRY: dict[str, Perturbation] = {}
_BUILTINS_LOADED = False
_ENTRY_POINTS_LOADED = False


class UnknownPerturbationError(KeyError):
    """A perturbation name that is not registered; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def register(perturbation: Perturbation | type[Perturbation], *, replace: bool = False) -> Perturbation:
    """Add ``perturbation`` (an instance or a class) to the registry; ``replace=True`` overrides a name."""
    instance = perturbation() if isinstance(perturbation, type) else perturbation
    if not isinstance(instance, Perturbation):
        raise TypeError(f"{perturbation!r} is not a cxr_robust.perturbations.Perturbation")
    if not instance.name or not instance.name.replace("_", "").isalnum() or instance.name != instance.name.lower():
        raise ValueError(f"perturbation name {instance.name!r} must be lower-case letters, digits and '_'")
    short = instance.short or instance.name
    if not short.replace("_", "").isalnum():
        raise ValueError(f"perturbation {instance.name!r}: short id {short!r} must be letters, digits and '_'")
    if instance.name in _REGISTRY and not replace:
        raise ValueError(f"perturbation {instance.name!r} is already registered")
    clash = [p.name for p in _REGISTRY.values() if (p.short or p.name) == short and p.name != instance.name]
    if clash:
        raise ValueError(f"perturbation {instance.name!r}: short id {short!r} is already used by {clash[0]!r}")
    _REGISTRY[instance.name] = instance
    return instance


def _load() -> None:
    global _BUILTINS_LOADED, _ENTRY_POINTS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from cxr_robust.perturbations import builtin  # noqa: F401  (registers the built-in suite)
    if not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            found = ep.load()
            found = found() if callable(found) and not isinstance(found, type) else found
            for item in found if isinstance(found, (list, tuple)) else [found]:
                register(item, replace=True)


def available() -> list[str]:
    """Registered perturbation names (built-in first, in suite order, then third-party)."""
    _load()
    return list(_REGISTRY)


def get_perturbation(name: str) -> Perturbation:
    """The registered perturbation ``name`` (its short id works too); unknown names say what is close."""
    _load()
    if name in _REGISTRY:
        return _REGISTRY[name]
    for p in _REGISTRY.values():
        if p.short == name:
            return p
    close = difflib.get_close_matches(name, [*_REGISTRY, *(p.short for p in _REGISTRY.values() if p.short)],
                                      n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownPerturbationError(f"unknown perturbation {name!r}{hint} Registered: {', '.join(_REGISTRY)}. "
                                   f"Add one with the '{ENTRY_POINT_GROUP}' entry point group "
                                   "(docs/perturbations.md, 'Adding a perturbation').")


def parse_perturbations(names: str | Iterable[str]) -> tuple[str, ...]:
    """``"occlusion,gaussian_noise"`` or ``["all"]`` -> registered names in the order given (``all``: every one)."""
    parts = [names] if isinstance(names, str) else list(names)
    items = [item.strip() for part in parts for item in str(part).split(",") if item.strip()]
    if not items:
        raise ValueError("no perturbation named; use e.g. 'occlusion' or 'all'")
    out: list[str] = []
    for item in items:
        for name in (available() if item == "all" else [get_perturbation(item).name]):
            if name not in out:
                out.append(name)
    return tuple(out)


def parse_severities(text: str | dict[str, Iterable[float]] | None, perturbations: Iterable[str],
                     defaults: dict[str, tuple[float, ...]] | None = None) -> dict[str, tuple[float, ...]]:
    """Severities per perturbation from ``"gaussian_noise=1,3;occlusion=0,25"`` (occlusion in percent) or a
    mapping; perturbations not named keep ``defaults`` or their own defaults. Each perturbation validates its
    severities."""
    names = list(perturbations)
    defaults = defaults or {}
    out = {n: tuple(defaults.get(n, get_perturbation(n).default_severities)) for n in names}
    if not text:
        return out
    items = text.items() if isinstance(text, dict) else (
        part.split("=", 1) if "=" in part else ("", part) for part in str(text).split(";") if part.strip())
    for name, values in items:
        name = str(name).strip()
        if not name:
            raise ValueError(f"severities {text!r}: write '<perturbation>=<levels>', e.g. 'gaussian_noise=1,3,5'")
        spec = get_perturbation(name)
        if spec.name not in out:
            raise ValueError(f"severities given for {spec.name!r}, which is not among the measured perturbations "
                             f"({', '.join(names)}); add it to --cxr-perturbations")
        raw = values.split(",") if isinstance(values, str) else list(values)
        levels = tuple(spec.parse_severity(str(v)) for v in raw if str(v).strip())
        if not levels or len(set(levels)) != len(levels):
            raise ValueError(f"severities of {spec.name!r} must be a non-empty list without repeats, got {values!r}")
        out[spec.name] = levels
    return out


def conditions_for(severities: dict[str, tuple[float, ...]]) -> tuple[Condition, ...]:
    """The sweep's conditions in order: each perturbation's severities, plus the clean images (the first
    perturbation's severity 0, so curves and relative drops have their reference) when the list has levelled
    perturbations and no severity 0. An occlusion-only list is measured exactly as given, as the paper's grid
    always was (``--cxr-ratios 25`` is one column)."""
    conds = [Condition(name, sev) for name, sevs in severities.items() for sev in sevs]
    levelled = any(name != "occlusion" for name in severities)
    if conds and levelled and not any(c.is_clean for c in conds):
        conds.insert(0, Condition(next(iter(severities)), 0.0))
    return tuple(conds)
