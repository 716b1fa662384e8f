"""Layered configuration of a gate run: defaults < environment < pyproject ``[tool.cxr_robust]`` < ini < command line.

Every layer is a plain ``dict`` keyed by :class:`~cxr_robust.gate.GateOptions` field names holding *typed*
values (tuples, ints, ratios as fractions); :func:`parse_layer` turns what a person writes (``"0,1,25"``
percent, ``"clip=/w/ViT-B-32.pt"``, TOML lists and tables) into such a layer, and :func:`merge_options`
stacks layers, later ones winning. ``weights`` tables merge per model, so a command-line ``--cxr-weights clip=…``
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from cxr_robust.options import OPTIONS, by_field

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

ENV_VARS: dict[str, str] = {o.field: o.env_var for o in OPTIONS if o.env_var}
"""GateOptions field -> environment variable (declared in :mod:`cxr_robust.options`)."""


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names where it came from and the key."""


def _field_names() -> list[str]:
    return [o.field for o in OPTIONS]


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


def _weights(value: Any, where: str, base_dir: Path | None, label: str = "weights") -> dict[str, str]:
    """``{model: path}`` from a TOML table, or from ``MODEL=PATH`` strings (a list or comma-separated)."""
    pairs: list[tuple[str, Any]] = []
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        for item in _items(value, label, where):
            name, sep, path = str(item).partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ConfigError(f"{where}: {label} expects MODEL=PATH, got {item!r}")
            pairs.append((name.strip(), path.strip()))
    return {str(name): _path(path, f"weights.{name}", where, base_dir) for name, path in pairs}


def _model_options(value: Any, where: str, label: str) -> dict[str, dict[str, Any]]:
    """``{model: {key: value}}`` from a TOML table of tables, or from ``MODEL:KEY=VALUE`` strings."""
    from cxr_robust.models.options import parse_item

    out: dict[str, dict[str, Any]] = {}
    if isinstance(value, Mapping):
        for model, table in value.items():
            if not isinstance(table, Mapping):
                raise ConfigError(f"{where}: {label}.{model} must be a table of KEY = VALUE, got {table!r}")
            out[str(model)] = {str(k): v for k, v in table.items()}
        return out
    for item in _items(value, label, where):
        try:
            model, key, parsed = parse_item(str(item))
        except ValueError as exc:
            raise ConfigError(f"{where}: {label} {exc}") from None
        out.setdefault(model, {})[key] = parsed
    return out


def _check_min(value: int, key: str, label: str, where: str) -> int:
    """``value`` if it is at least ``key``'s declared minimum, else a ConfigError naming ``label``."""
    low = by_field(key).minimum
    if low is not None and value < low:
        what = "a non-negative integer" if low == 0 else f"an integer >= {low}"
        raise ConfigError(f"{where}: {label} must be {what}, got {value}")
    return value


def _alpha(value: Any, key: str, where: str) -> float:
    alpha = _number(value, float, key, where)
    if not 0 < alpha < 1:  # also refuses NaN
        raise ConfigError(f"{where}: {key} must be in (0, 1), e.g. 0.05; got {alpha:g}")
    return alpha


def _text_policy(value: Any, key: str, where: str) -> str:
    """One of the accepted report text policies (case and surrounding spaces ignored), as its canonical name."""
    from cxr_robust.data.text_policy import TextPolicy

    try:
        return TextPolicy.parse(value).value
    except ValueError:
        names = ", ".join(p.value for p in TextPolicy)
        raise ConfigError(f"{where}: {key} must be one of {names}; got {value!r}") from None


def _perturbations(value: Any, label: str, where: str) -> tuple[str, ...]:
    """Registered perturbation names (``all`` expands), or a ConfigError saying which names are close."""
    from cxr_robust.perturbations import parse_perturbations

    try:
        return parse_perturbations([str(v) for v in _items(value, label, where)])
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{where}: {label}: {str(exc).strip(chr(39))}") from None


def parse_layer(raw: Mapping[str, Any], where: str, base_dir: Path | None = None,
                labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Typed GateOptions overrides from values as a person writes them; ``None`` and ``""`` mean "not set".

    ``ratios`` are in percent (``"0,0.25,25"`` or ``[0, 0.25, 25]``) and become fractions; ``models``,
    ``ks`` and ``baselines`` take lists or comma-separated strings; ``weights`` a table or ``MODEL=PATH``
    items. Values out of range (``seed < 0``, ``batch_size < 1``, ``phantom_studies < 1``, ``alpha`` outside
    (0, 1), an unknown ``text_policy``) are refused here. ``where`` names the source in error messages;
    ``labels`` maps keys to how the source spells them (``{"seed": "--seed"}`` for a command line), so the
    message names the option as the user wrote it; ``base_dir`` resolves relative paths (files only).
    """
    known = _field_names()
    labels = labels or {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        out[key] = _parse_value(key, value, where, base_dir, labels.get(key, key))
    return out


def _choice(value: Any, key: str, label: str, where: str) -> str:
    """One of the option's declared choices (surrounding spaces ignored), else a ConfigError listing them."""
    choices = by_field(key).choices
    if not isinstance(value, str) or value.strip() not in choices:
        raise ConfigError(f"{where}: {label} must be one of {', '.join(choices)}; got {value!r}")
    return value.strip()


def _parse_value(key: str, value: Any, where: str, base_dir: Path | None, label: str) -> Any:
    """The typed value of one key, read as its declared kind (:mod:`cxr_robust.options`); ``label`` is the
    key as the user wrote it, for messages."""
    kind = by_field(key).kind
    if kind == "names":
        return tuple(str(m) for m in _items(value, label, where))
    if kind == "percent":
        pct = [_number(v, float, label, where) for v in _items(value, label, where)]
        bad = [p for p in pct if not 0 <= p < 100]
        if bad:
            raise ConfigError(f"{where}: {label} are occluded area in percent, in [0, 100); got {bad}")
        return tuple(p / 100.0 for p in pct)
    if kind == "perturbations":
        return _perturbations(value, label, where)
    if kind == "severities" and isinstance(value, Mapping):  # a TOML table: {gaussian_noise = [1, 3]}
        return ";".join(f"{name}={','.join(str(v) for v in _items(levels, label, where))}"
                        for name, levels in value.items())
    if kind == "ks":
        ks = [_number(v, int, label, where) for v in _items(value, label, where)]
        if any(k < 1 for k in ks):
            raise ConfigError(f"{where}: {label} must be positive integers, got {ks}")
        return tuple(ks)
    if kind == "alpha":
        return _alpha(value, label, where)
    if kind == "text_policy":
        return _text_policy(value, label, where)
    if kind == "choice":
        return _choice(value, key, label, where)
    if kind == "int":
        return _check_min(_number(value, int, label, where), key, label, where)
    if kind == "bool":
        return _bool(value, label, where)
    if kind == "weights":
        return _weights(value, where, base_dir, label)
    if kind == "model_options":
        return _model_options(value, where, label)
    if kind == "paths":
        return tuple(_path(v, label, where, base_dir) for v in _items(value, label, where))
    if kind == "path":
        return _path(value, label, where, base_dir)
    if not isinstance(value, str):  # "str" and "severities" written as text
        raise ConfigError(f"{where}: {label} must be a string, got {value!r}")
    return value.strip()


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
                          "--cxr-update-baselines on the command line")
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
            elif key == "model_options":  # per model, then per key: a command line changes one key only
                previous = merged.get("model_options", {})
                merged["model_options"] = {m: {**previous.get(m, {}), **value.get(m, {})}
                                           for m in {**previous, **value}}
            else:
                merged[key] = value
    try:
        return GateOptions(**merged)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def build_gate_options(cli: Mapping[str, Any] | None = None, ini: Mapping[str, Any] | None = None,
                       start: str | Path = ".", environ: Mapping[str, str] | None = None,
                       use_pyproject: bool = True, cli_labels: Mapping[str, str] | None = None) -> "GateOptions":
    """Every layer in the documented order: command line > ini > pyproject > environment > defaults.

    ``cli`` and ``ini`` hold raw values keyed by GateOptions field names (as :func:`parse_layer` reads
    them); ``start`` is where the search for ``pyproject.toml`` begins (pytest: ``config.rootpath``);
    ``cli_labels`` maps fields to their command-line flags (``{"seed": "--seed"}``) for error messages.
    """
    layers = [options_from_env(environ)]
    if use_pyproject:
        layers.append(load_pyproject_config(start))
    layers.append(parse_layer(dict(ini or {}), "ini file"))
    layers.append(parse_layer(dict(cli or {}), "command line", labels=cli_labels))
    return merge_options({}, *layers)
