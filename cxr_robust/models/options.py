"""Model options: keyword arguments of a registered model's factory, settable from every front end.

A model option is written ``MODEL:KEY=VALUE`` on a command line (``--cxr-model-option
cxr-clip-swint:pre_resize=none``) or as a table in ``[tool.cxr_robust.model_options]``. Its keys are the
factory's own keyword parameters (what :func:`cxr_robust.models.load_model` passes on), except those that
have an option of their own (weights, vocabulary, device). ``cxr-robust models`` lists each model's options.
"""

from __future__ import annotations

import inspect
from typing import Any

from cxr_robust.models.registry import UnknownModelError, get_spec, resolve

RESERVED = ("weights", "weights_dir", "bert_vocab", "device")
"""Factory parameters set by their own gate options, never through a model option."""


class ModelOptionError(ValueError):
    """A model option that names no model, or a key the model's factory does not take."""


def parse_value(text: str) -> Any:
    """A model option's value from text: ``none``/``off`` → None, booleans, integers, floats, else the text."""
    low = text.strip().lower()
    if low in ("none", "off", "null"):
        return None
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no"):
        return False
    for number in (int, float):
        try:
            return number(low)
        except ValueError:
            pass
    return text.strip()


def parse_item(item: str) -> tuple[str, str, Any]:
    """``(model, key, value)`` from ``MODEL:KEY=VALUE``; ValueError saying the expected form otherwise."""
    head, sep, value = item.partition("=")
    model, colon, key = head.rpartition(":")  # the last colon: an ad-hoc model is itself "module:factory"
    if not sep or not colon or not model.strip() or not key.strip():
        raise ValueError(f"expects MODEL:KEY=VALUE (e.g. cxr-clip-swint:pre_resize=none), got {item!r}")
    return model.strip(), key.strip(), parse_value(value)


def accepted(model: str) -> dict[str, Any]:
    """``{key: default}`` of the options ``model`` takes.

    A registered model's declared :attr:`~cxr_robust.models.registry.ModelSpec.options` (no import needed);
    otherwise its factory's named keyword parameters, less :data:`RESERVED`. A factory's ``**kwargs`` accept
    nothing here: such a factory may drop a key silently, and an option that does nothing must not look set.
    """
    spec = get_spec(model)
    if spec.options:
        return dict(spec.options)
    params = inspect.signature(resolve(spec.factory)).parameters.values()
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in params
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in RESERVED}


def check_model_options(model: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` if ``model``'s factory takes every key, else :class:`ModelOptionError` naming the keys it takes."""
    if not options:
        return {}
    try:
        known = accepted(model)
    except (UnknownModelError, ImportError) as exc:
        raise ModelOptionError(f"model option for {model!r}: {exc}") from None
    unknown = sorted(k for k in options if k not in known or k in RESERVED)
    if unknown:
        offered = ", ".join(f"{k} (default {v!r})" for k, v in known.items()) or "none"
        raise ModelOptionError(f"model {model!r} has no option {', '.join(map(repr, unknown))}; its options: "
                               f"{offered} (--cxr-model-option {model}:KEY=VALUE)")
    return dict(options)
