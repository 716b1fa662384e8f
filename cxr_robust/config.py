"""Layered configuration of a gate run: defaults < environment < pyproject ``[tool.cxr_robust]`` < ini < command line.

Every layer is a plain ``dict`` keyed by :class:`~cxr_robust.gate.GateOptions` field names holding *typed*
values (tuples, ints, ratios as fractions); :func:`parse_layer` turns what a person writes (``"0,1,25"``
percent, ``"clip=/w/ViT-B-32.pt"``, TOML lists and tables) into such a layer, and :func:`merge_options`
stacks layers, later ones winning. ``weights`` tables merge per model, so a command-line ``--weights clip=…``
does not throw away the other models' paths from ``pyproject.toml``.

Example ``pyproject.toml``::

    [tool.cxr_robust]
    models = ["phantom-clip", "clip"]
    dataset = "mimic"
    mimic_root = "/data/mimic-cxr-jpg"
    weights_dir = "~/weights"
    ratios = [0, 1, 25, 81]          # percent, like --cxr-ratios
    ks = [5, 10]
    weights = { clip = "weights/ViT-B-32.pt" }

Relative paths in ``pyproject.toml`` are resolved against the file's folder, so the configuration means the
same thing from any working directory. This module imports neither torch nor pytest.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is its backport when installed
    try:
        import tomli as tomllib
    except ImportError:  # the [tool.cxr_robust] table is then simply unavailable
        tomllib = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from cxr_robust.gate import GateOptions

__all__ = ["ConfigError", "ENV_VARS", "PRECEDENCE", "find_pyproject", "load_pyproject_config", "options_from_env",
           "parse_layer", "merge_options", "build_gate_options"]

PRECEDENCE = ("command line", "pytest ini keys (cxr_robust_*)", "pyproject.toml [tool.cxr_robust]",
              "environment variables (CXR_ROBUST_*)", "defaults")
"""Highest first; documented in docs/usage.md."""

ENV_VARS: dict[str, str] = {
    "models": "CXR_ROBUST_MODELS",
    "dataset": "CXR_ROBUST_DATASET",
    "mimic_root": "CXR_ROBUST_MIMIC_ROOT",
    "mimic_reports": "CXR_ROBUST_MIMIC_REPORTS",
    "manifest": "CXR_ROBUST_MANIFEST",
    "weights_dir": "CXR_ROBUST_WEIGHTS_DIR",
    "bert_vocab": "CXR_ROBUST_BERT_VOCAB",
    "device": "CXR_ROBUST_DEVICE",
    "cache_dir": "CXR_ROBUST_CACHE_DIR",
}
"""GateOptions field -> environment variable (the same names the pytest plugin documents)."""

_STR = {"dataset", "mimic_split", "views", "device", "precision", "text_policy", "on_bad_image"}
_PATH = {"mimic_root", "mimic_reports", "manifest", "weights_dir", "bert_vocab", "cache_dir", "report_dir",
         "baselines_dir", "compare_to"}
_INT = {"phantom_studies", "seed", "batch_size", "data_seed"}
_BOOL = {"require_all", "update_baselines", "summaries"}


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names where it came from and the key."""


def _field_names() -> list[str]:
    from cxr_robust.gate import GateOptions

    return [f.name for f in fields(GateOptions)]


# ----- parsing one layer -------------------------------------------------------------------------------------
def _items(value: Any, key: str, where: str) -> list[Any]:
    """A comma-separated string or a list, as a list of non-empty items."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [v.strip() if isinstance(v, str) else v for v in value if not (isinstance(v, str) and not v.strip())]
    raise ConfigError(f"{where}: {key} must be a list or a comma-separated string, got {value!r}")


def _number(value: Any, cast: type, key: str, where: str) -> Any:
    # bool is an int subclass: `seed = true` in TOML is a mistake, not 1
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    try:
        if cast is int and isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            return int(value)
        return cast(value)
    except ValueError:
        raise ConfigError(f"{where}: {key} must be {'an integer' if cast is int else 'a number'}, "
                          f"got {value!r}") from None


def _bool(value: Any, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")


def _path(value: Any, key: str, where: str, base_dir: Path | None) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ConfigError(f"{where}: {key} must be a path, got {value!r}")
    p = Path(str(value).strip()).expanduser()
    # Only files resolve relative paths against their own folder; CLI and env values stay relative to the cwd.
    return str(base_dir / p) if base_dir is not None and not p.is_absolute() else str(p)


def _weights(value: Any, where: str, base_dir: Path | None) -> dict[str, str]:
    """``{model: path}`` from a TOML table, or from ``MODEL=PATH`` strings (a list or comma-separated)."""
    pairs: list[tuple[str, Any]] = []
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        for item in _items(value, "weights", where):
            name, sep, path = str(item).partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ConfigError(f"{where}: weights expects MODEL=PATH, got {item!r}")
            pairs.append((name.strip(), path.strip()))
    return {str(name): _path(path, f"weights.{name}", where, base_dir) for name, path in pairs}


def parse_layer(raw: Mapping[str, Any], where: str, base_dir: Path | None = None) -> dict[str, Any]:
    """Typed GateOptions overrides from values as a person writes them; ``None`` and ``""`` mean "not set".

    ``ratios`` are in percent (``"0,0.25,25"`` or ``[0, 0.25, 25]``) and become fractions; ``models``,
    ``ks`` and ``baselines`` take lists or comma-separated strings; ``weights`` a table or ``MODEL=PATH``
    items. ``where`` names the source in error messages; ``base_dir`` resolves relative paths (files only).
    """
    known = _field_names()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if key == "models":
            out[key] = tuple(str(m) for m in _items(value, key, where))
        elif key == "ratios":
            pct = [_number(v, float, key, where) for v in _items(value, key, where)]
            bad = [p for p in pct if not 0 <= p < 100]
            if bad:
                raise ConfigError(f"{where}: ratios are occluded area in percent, in [0, 100); got {bad}")
            out[key] = tuple(p / 100.0 for p in pct)
        elif key == "ks":
            ks = [_number(v, int, key, where) for v in _items(value, key, where)]
            if any(k < 1 for k in ks):
                raise ConfigError(f"{where}: ks must be positive integers, got {ks}")
            out[key] = tuple(ks)
        elif key == "alpha":
            out[key] = _number(value, float, key, where)
        elif key in _INT:
            out[key] = _number(value, int, key, where)
        elif key in _BOOL:
            out[key] = _bool(value, key, where)
        elif key == "weights":
            out[key] = _weights(value, where, base_dir)
        elif key == "baselines":
            out[key] = tuple(_path(v, key, where, base_dir) for v in _items(value, key, where))
        elif key in _PATH:
            out[key] = _path(value, key, where, base_dir)
        elif key in _STR:
            if not isinstance(value, str):
                raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
            out[key] = value.strip()
        else:  # a GateOptions field this module has not been taught about: pass it through unchanged
            out[key] = value
    return out


# ----- the layers ---------------------------------------------------------------------------------------------
def find_pyproject(start: str | Path) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` (a folder or a file in it), or None."""
    here = Path(start).expanduser().resolve()
    if here.is_file():
        here = here.parent
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_pyproject_config(start: str | Path) -> dict[str, Any]:
    """GateOptions overrides from ``[tool.cxr_robust]`` of the nearest ``pyproject.toml`` ({} when none).

    The search stops at the nearest ``pyproject.toml`` (it marks the project), whether or not it has the
    table. Relative paths are resolved against that file's folder.
    """
    path = find_pyproject(start)
    if path is None:
        return {}
    if tomllib is None:  # pragma: no cover - only on Python 3.10 without tomli
        logging.getLogger(__name__).warning("%s: [tool.cxr_robust] ignored: reading TOML on Python 3.10 needs "
                                            "`pip install tomli`", path)
        return {}
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    table = doc.get("tool", {}).get("cxr_robust")
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.cxr_robust] must be a table")
    if "update_baselines" in table:  # a standing setting would silently turn every gate run into a recording
        raise ConfigError(f"{path} [tool.cxr_robust]: update_baselines is an action, not a setting; pass "
                          "--update-baselines on the command line")
    return parse_layer(table, f"{path} [tool.cxr_robust]", base_dir=path.parent)


def options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """GateOptions overrides from the ``CXR_ROBUST_*`` environment variables (see :data:`ENV_VARS`)."""
    environ = os.environ if environ is None else environ
    raw = {field_name: environ.get(var) for field_name, var in ENV_VARS.items()}
    # Name the variable in errors: the layer is parsed key by key so the message can point at it.
    out: dict[str, Any] = {}
    for field_name, value in raw.items():
        out.update(parse_layer({field_name: value}, f"${ENV_VARS[field_name]}"))
    return out


def merge_options(base: Mapping[str, Any], *layers: Mapping[str, Any]) -> "GateOptions":
    """GateOptions from ``base`` overlaid with ``layers`` (lowest first; a later layer wins).

    Values are typed (see :func:`parse_layer`); ``None`` means "not set here". ``weights`` merge per model.
    Invalid combinations (unknown dataset, alpha outside (0, 1)) raise :class:`ConfigError`.
    """
    from cxr_robust.gate import GateOptions

    known = set(_field_names())
    merged: dict[str, Any] = {}
    for layer in (base, *layers):
        for key, value in layer.items():
            if key not in known:
                raise ConfigError(f"unknown GateOptions field {key!r}")
            if value is None:
                continue
            if key == "weights":
                merged["weights"] = {**merged.get("weights", {}), **value}
            else:
                merged[key] = value
    try:
        return GateOptions(**merged)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def build_gate_options(cli: Mapping[str, Any] | None = None, ini: Mapping[str, Any] | None = None,
                       start: str | Path = ".", environ: Mapping[str, str] | None = None,
                       use_pyproject: bool = True) -> "GateOptions":
    """Every layer in the documented order: command line > ini > pyproject > environment > defaults.

    ``cli`` and ``ini`` hold raw values keyed by GateOptions field names (as :func:`parse_layer` reads
    them); ``start`` is where the search for ``pyproject.toml`` begins (pytest: ``config.rootpath``).
    """
    layers = [options_from_env(environ)]
    if use_pyproject:
        layers.append(load_pyproject_config(start))
    layers.append(parse_layer(dict(ini or {}), "ini file"))
    layers.append(parse_layer(dict(cli or {}), "command line"))
    return merge_options({}, *layers)
