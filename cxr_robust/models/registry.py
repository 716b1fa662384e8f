"""Registered models: lazy ``module:attr`` factories, weights lookup and "did you mean" errors.

Nothing heavy is imported here, so the pytest plugin can list models and decide what to skip without
importing torch.
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cxr_robust.data.text_policy import TextPolicy

if TYPE_CHECKING:
    from cxr_robust.models.base import RetrievalModel


class UnknownModelError(KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class MissingWeightsError(FileNotFoundError):
    """A model whose weights (or tokenizer vocabulary) are not on this machine."""


class ModelFactoryError(TypeError):
    """A model factory that returned something that is not a :class:`~cxr_robust.models.base.RetrievalModel`."""


WEIGHTS_DIR_ENV = "CXR_ROBUST_WEIGHTS_DIR"
BERT_VOCAB_ENV = "CXR_ROBUST_BERT_VOCAB"


@dataclass(frozen=True)
class ModelSpec:
    """How to find and build one registered model.

    ``factory`` is a ``"module:attr"`` string imported on first use; it is called as
    ``factory(weights=<Path or None>, **options)`` and returns a :class:`~cxr_robust.models.base.RetrievalModel`.
    ``weight_files`` are the published file names looked up in the weights directory, in order.
    """

    name: str
    factory: str
    description: str
    baseline_row: str | None = None
    default_text_policy: TextPolicy = TextPolicy.FINDINGS_IMPRESSION
    weight_files: tuple[str, ...] = ()
    weights_env: str | None = None
    source_url: str = ""
    needs_bert_vocab: bool = False
    builtin_weights: bool = False
    builtin_file: str | None = None
    """For built-in weights: the file's path inside the ``cxr_robust`` package."""
    options: dict[str, Any] = field(default_factory=dict)

    def locate_weights(self, explicit: str | Path | None = None, weights_dir: str | Path | None = None) -> Path | None:
        """The weights file to use: explicit path, then ``$weights_env``, then a file in the weights directory."""
        if explicit:
            return Path(explicit).expanduser()
        if self.weights_env and os.environ.get(self.weights_env):
            return Path(os.environ[self.weights_env]).expanduser()
        root = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
        if root:
            for fname in self.weight_files:
                candidate = Path(root).expanduser() / fname
                if candidate.exists():
                    return candidate
        return None

    def configuration_error(self, explicit: str | Path | None = None, weights_dir: str | Path | None = None,
                            bert_vocab: str | Path | None = None) -> str | None:
        """What is wrong with a path that was *given* for this model, or None.

        A weights file passed explicitly (``--cxr-weights NAME=PATH``, ``weights`` in ``[tool.cxr_robust]``, or
        ``$<weights_env>``), a weights directory (``--cxr-weights-dir`` / ``$CXR_ROBUST_WEIGHTS_DIR``) this model
        would be looked up in, or a ``bert_vocab`` that does not exist is a user mistake: callers should stop
        with this message (exit 2) rather than skip the model. Check it before :meth:`missing`, which
        reports such paths too, as a reason to skip.
        """
        problems = []
        if explicit:
            path = Path(explicit).expanduser()
            if not path.exists():  # a directory can be valid weights (an unpacked MedCLIP download)
                fallback = "use the built-in weights" if self.builtin_weights else "look in --cxr-weights-dir"
                problems.append(f"weights for {self.name!r}: {path} does not exist (given as --cxr-weights "
                                f"{self.name}=PATH or weights.{self.name} in [tool.cxr_robust]); fix the path, or "
                                f"remove it to {fallback}")
        elif self.weights_env and os.environ.get(self.weights_env):
            path = Path(os.environ[self.weights_env]).expanduser()
            if not path.exists():
                problems.append(f"weights for {self.name!r}: ${self.weights_env}={path} does not exist; fix or unset "
                                f"${self.weights_env}")
        elif not self.builtin_weights and self.weight_files:  # only models looked up in the weights directory
            problems += _weights_dir_problem(weights_dir)
        if self.needs_bert_vocab and (bert_vocab or os.environ.get(BERT_VOCAB_ENV)):
            from cxr_robust.models.bert import find_bert_vocab  # light: no torch/transformers import

            try:  # with a value given, find_bert_vocab never falls back to another source
                find_bert_vocab(bert_vocab, model_name=repr(self.name))
            except MissingWeightsError as exc:
                problems.append(f"{exc} (set by --cxr-bert-vocab / bert_vocab, or ${BERT_VOCAB_ENV})")
        return "; ".join(problems) or None

    def missing(self, explicit: str | Path | None = None, weights_dir: str | Path | None = None,
                bert_vocab: str | Path | None = None) -> str | None:
        """Why this model cannot run here (naming exactly what to set), or None when it can.

        This includes the paths :meth:`configuration_error` reports; callers that skip a model on this
        reason should call that first, so a typo in a given path is an error and not a skip.
        """
        problems = []
        if self.builtin_weights and self.builtin_file and not self.locate_weights(explicit, weights_dir):
            shipped = Path(__file__).resolve().parent.parent / self.builtin_file
            if not shipped.is_file():
                problems.append(f"the weights shipped with cxr-robust for {self.name!r} are missing ({shipped}); "
                                f"reinstall the package, or pass --cxr-weights {self.name}=PATH")
        if not self.builtin_weights:
            path = self.locate_weights(explicit, weights_dir)
            how = (f"pass --cxr-weights {self.name}=PATH, set {self.weights_env or WEIGHTS_DIR_ENV}, or put "
                   f"{' or '.join(self.weight_files) or 'the weights file'} in --cxr-weights-dir / ${WEIGHTS_DIR_ENV}")
            if path is None:
                problems.append(f"weights for {self.name!r} not found ({how}; published at {self.source_url})")
            elif not path.exists():
                problems.append(f"weights file {path} for {self.name!r} does not exist ({how})")
        if self.needs_bert_vocab:
            from cxr_robust.models.bert import find_bert_vocab  # light: no torch/transformers import

            try:  # explicit value, then $CXR_ROBUST_BERT_VOCAB, then an existing Hugging Face cache
                find_bert_vocab(bert_vocab, model_name=repr(self.name))
            except MissingWeightsError as exc:
                problems.append(str(exc))
        return "; ".join(problems) or None


def _weights_dir_problem(weights_dir: str | Path | None) -> list[str]:
    """A weights directory that was given (option or ``$CXR_ROBUST_WEIGHTS_DIR``) but is not a directory."""
    given, label = (weights_dir, "--cxr-weights-dir") if weights_dir else (os.environ.get(WEIGHTS_DIR_ENV),
                                                                      f"${WEIGHTS_DIR_ENV}")
    if not given:
        return []
    root = Path(given).expanduser()
    if root.is_dir():
        return []
    what = "is a file, not a directory" if root.exists() else "does not exist"
    return [f"{label} {root} {what}; point it at the folder holding the published weights files"]


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add ``spec`` to the registry (``replace=True`` to override an existing name)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"model {spec.name!r} is already registered (target {_REGISTRY[spec.name].factory})")
    _REGISTRY[spec.name] = spec
    return spec


def available() -> list[str]:
    """Registered model names, built-in and from installed entry points."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; an unknown name raises with the closest registered names."""
    _load_entry_points()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:  # ad-hoc "module:factory" model
        return ModelSpec(name=name, factory=name, description=f"ad-hoc model {name}", builtin_weights=True)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} Registered: {', '.join(sorted(_REGISTRY))}. "
                            "Add one with the 'cxr_robust.models' entry point group or pass 'module:factory'.")


def resolve(target: str) -> Callable[..., Any]:
    """Import ``"module:attr"`` and return the attribute."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model target {target!r} must look like 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import {module_name!r} for model target {target!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r} (model target {target!r})") from None


def load_model(name: str, weights: str | Path | None = None, weights_dir: str | Path | None = None,
               **options: Any) -> "RetrievalModel":
    """Build registered model ``name`` with its weights.

    Raises :class:`MissingWeightsError` if they are absent (or a given path does not exist) and
    :class:`ModelFactoryError` if the factory returns something that is not a model.
    """
    spec = get_spec(name)
    reason = spec.configuration_error(weights, weights_dir, options.get("bert_vocab")) or \
        spec.missing(weights, weights_dir, options.get("bert_vocab"))
    if reason:
        raise MissingWeightsError(reason)
    path = spec.locate_weights(weights, weights_dir)  # None for built-in weights unless overridden
    factory = resolve(spec.factory)
    model = factory(weights=path, **{**spec.options, **options})
    check_model(model, name, spec.factory)
    if not getattr(model, "name", ""):
        model.name = name
    return model


_PROTOCOL = ("preprocess", "encode_images", "encode_texts", "fingerprint")
"""The abstract methods of RetrievalModel: an object with all of them is accepted as a model."""


def check_model(model: Any, name: str, target: str) -> None:
    """Raise :class:`ModelFactoryError` unless ``model`` is a RetrievalModel (or has its methods)."""
    from cxr_robust.models.base import RetrievalModel  # numpy only; torch is imported by adapters

    if isinstance(model, RetrievalModel):
        return
    lacking = [m for m in _PROTOCOL if not callable(getattr(model, m, None))]
    if lacking:
        raise ModelFactoryError(
            f"model {name!r}: its factory {target} returned a {type(model).__module__}.{type(model).__qualname__}, "
            f"not a RetrievalModel (no {', '.join(lacking)}); make the factory return an instance of a "
            "cxr_robust.models.base.RetrievalModel subclass (docs/usage.md, 'Adding a model')")


_ENTRY_POINTS_LOADED = False


def _load_entry_points() -> None:
    """Register models that installed packages declare in the ``cxr_robust.models`` group.

    Each entry point names a callable returning a :class:`ModelSpec` (or a list of them).
    """
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="cxr_robust.models"):
        specs = ep.load()()
        for spec in specs if isinstance(specs, (list, tuple)) else [specs]:
            register(spec, replace=True)
