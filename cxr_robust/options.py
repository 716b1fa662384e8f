"""Every option of the gate, declared once.

One :class:`Option` per :class:`~cxr_robust.gate.GateOptions` field says how the field is spelled and parsed
everywhere; the front ends are derived from it and never list options themselves:

* the pytest plugin's flags ``--cxr-<name>`` (help group *cxr-robust*) and ini keys ``cxr_robust_<name>``;
* ``cxr-robust run``'s flags: the short spelling (``--models``, ``--out``) and the ``--cxr-`` one;
* the ``[tool.cxr_robust]`` keys of ``pyproject.toml`` (the field name) and the ``CXR_ROBUST_<FIELD>``
  environment variables of the options that have one;
* how :mod:`cxr_robust.config` parses a value (``kind``) and the README's option table
  (``python -m cxr_robust.options``; ``tests/test_options.py`` keeps the two equal).

Options that pytest used to accept without the ``--cxr-`` prefix keep that spelling as a deprecated alias,
which still works and warns. This module imports neither torch nor pytest.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, dataclass, fields
from typing import Any, Iterator

__all__ = ["FRONT_ENDS", "OPTIONS", "Option", "DeprecatedOptionWarning", "by_field", "for_front_end",
           "markdown_table", "default_text"]

FRONT_ENDS = ("pytest", "ini", "cli", "pyproject", "env")
"""Where an option can be set: pytest flag, pytest ini key, ``cxr-robust run`` flag, pyproject key, env var."""
_EVERYWHERE = frozenset(FRONT_ENDS) - {"env"}

KINDS = ("str", "choice", "path", "paths", "int", "bool", "names", "percent", "ks", "alpha", "weights", "model_options",
         "perturbations", "severities", "text_policy")
"""How :mod:`cxr_robust.config` reads a value (see ``config._parse_value``)."""


class DeprecatedOptionWarning(FutureWarning):
    """An option spelled the old way (without the ``--cxr-`` prefix); it still works."""


@dataclass(frozen=True)
class Option:
    """One gate option: its GateOptions field, spellings, parsing and help."""

    field: str
    """The :class:`~cxr_robust.gate.GateOptions` field, also the ``[tool.cxr_robust]`` key."""
    kind: str
    help: str
    metavar: str = "VALUE"
    name: str | None = None
    """Flag name without dashes and prefix (default: the field with ``-``): ``--cxr-<name>``."""
    short: str | None = None
    """``cxr-robust run``'s own spelling (default ``--<name>``)."""
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    env: bool = False
    """Read from ``CXR_ROBUST_<FIELD>`` too (paths and the dataset choice: what differs per machine)."""
    legacy: bool = False
    """pytest accepted ``--<name>`` (no prefix) before 0.6: kept as a deprecated alias."""
    where: frozenset[str] = _EVERYWHERE
    default: str | None = None
    """How to state the default in help when it is not simply GateOptions' value (e.g. ``cuda when present``)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.field}: unknown kind {self.kind!r}")

    @property
    def flag(self) -> str:
        """The pytest flag, also accepted by ``cxr-robust run``."""
        return "--cxr-" + (self.name or self.field.replace("_", "-"))

    @property
    def cli_flags(self) -> tuple[str, ...]:
        """``cxr-robust run``'s spellings, its own first (errors name the option that way)."""
        short = self.short or "--" + (self.name or self.field.replace("_", "-"))
        return (short, self.flag)

    @property
    def deprecated_flags(self) -> tuple[str, ...]:
        """Old pytest spellings, still accepted with a :class:`DeprecatedOptionWarning`."""
        return ("--" + (self.name or self.field.replace("_", "-")),) if self.legacy else ()

    @property
    def dest(self) -> str:
        """The argparse destination under pytest (``config.getoption(dest)``)."""
        return "cxr_" + self.field

    @property
    def ini(self) -> str:
        """The pytest ini key."""
        return "cxr_robust_" + (self.name or self.field).replace("-", "_")

    @property
    def env_var(self) -> str | None:
        """The environment variable, or None."""
        return f"CXR_ROBUST_{self.field.upper()}" if self.env else None

    @property
    def is_flag(self) -> bool:
        """A switch without a value (``--cxr-require-all``)."""
        return self.kind == "bool"

    def argparse_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``add_argument``/``addoption`` besides the flags, dest and help."""
        if self.is_flag:
            return {"action": "store_true", "default": None}
        if self.kind in ("weights", "model_options"):  # repeatable: one model per occurrence
            return {"action": "append", "default": None, "metavar": self.metavar}
        kwargs: dict[str, Any] = {"default": None, "metavar": self.metavar}
        if self.choices and self.kind == "choice":
            kwargs["choices"] = self.choices
        return kwargs

    def help_text(self, with_env: bool = True) -> str:
        """The help line: what it does, its default, and its environment variable."""
        text = self.help
        default = default_text(self)
        if default:
            text += f" (default {default})"
        if with_env and self.env_var:
            text += f" [env {self.env_var}]"
        return text


def _gate_default(field_name: str) -> Any:
    from cxr_robust.gate import GateOptions

    f = next(f for f in fields(GateOptions) if f.name == field_name)
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def default_text(option: Option) -> str | None:
    """The default as a person would write it (percent for ratios), from GateOptions itself."""
    if option.default is not None:
        return option.default
    value = _gate_default(option.field)
    if value is None or value is False or value == () or value == {}:
        return None
    if value is True:
        return "on"
    if option.kind == "percent":
        return ",".join(f"{100 * v:g}" for v in value)
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


OPTIONS: tuple[Option, ...] = (
    # ----- what is gated
    Option("models", "names", "comma-separated models: registered names or 'package.module:factory'",
           metavar="A,B", env=True),
    Option("dataset", "choice", "evaluation set: phantom, mimic (needs --cxr-mimic-root) or manifest (needs "
           "--cxr-manifest); `cxr-robust run` infers it from either path", metavar="NAME", choices=("phantom", "mimic", "manifest"), env=True),
    Option("phantom_studies", "int", "studies in the phantom eval set (smaller for smoke runs)", metavar="N",
           minimum=1, legacy=True, default="994, the paper's count"),
    Option("data_seed", "int", "seed of the phantom data set", metavar="N", minimum=0,
           where=frozenset({"pyproject"})),
    Option("mimic_root", "path", "MIMIC-CXR-JPG root directory", metavar="DIR", env=True, legacy=True),
    Option("mimic_reports", "path", "mimic-cxr-reports.zip, a files/ tree of reports, or "
           "mimic_cxr_sectioned.csv(.gz)", metavar="PATH", env=True, legacy=True),
    Option("mimic_split", "choice", "MIMIC-CXR split", metavar="SPLIT", choices=("train", "validate", "test"),
           legacy=True),
    Option("views", "str", "view filter: all, frontal, PA, AP or lateral", metavar="VIEWS"),
    Option("manifest", "path", "CSV/Parquet manifest of your own evaluation set (docs/usage.md)", metavar="CSV",
           env=True),
    # ----- the models' files
    Option("weights", "weights", "weights file of one model (repeatable), e.g. clip=~/w/ViT-B-32.pt",
           metavar="MODEL=PATH", legacy=True),
    Option("weights_dir", "path", "folder holding the published weights files", metavar="DIR", env=True,
           legacy=True),
    Option("bert_vocab", "path", "Bio_ClinicalBERT's vocab.txt or its folder", metavar="PATH", env=True,
           legacy=True),
    Option("model_options", "model_options", "an option of one model's factory (repeatable), e.g. "
           "cxr-clip-swint:pre_resize=none; `cxr-robust models` lists them", metavar="MODEL:KEY=VALUE",
           name="model-option", short="--model-option"),
    Option("text_policy", "text_policy", "override every model's report text: findings+impression (spelled with "
           "a plus), impression or longest", metavar="POLICY",
           choices=("findings+impression", "impression", "longest"), default="each model's own"),
    # ----- the grid
    Option("perturbations", "perturbations", "perturbations to measure, or all; `cxr-robust perturbations` "
           "lists them", metavar="NAME,NAME", default="occlusion, the paper's grid"),
    Option("severities", "severities", "severities per perturbation, e.g. 'gaussian_noise=1,3;occlusion=0,25' "
           "(occlusion in percent)", metavar="SPEC", default="levels 1-5; occlusion: --cxr-ratios"),
    Option("ratios", "percent", "occlusion ratios: occluded area in percent", metavar="P,P"),
    Option("ks", "ks", "retrieval depths k of Recall@k (each at most the number of reports)", metavar="K,K"),
    Option("seed", "int", "perturbation seed: boxes, noise and other random draws", metavar="N", minimum=0),
    Option("reference_model", "str", "a measured model to express every model's corruption error relative "
           "to (mCE)", metavar="MODEL"),
    # ----- clinical metrics
    Option("metrics", "names", "metrics reported per condition, or all: recall, mrr, mean_rank, median_rank, "
           "label_precision, label_hit (`cxr-robust metrics` lists them); Recall@k is always gated",
           metavar="NAME,NAME", default="all"),
    Option("labeler", "choice", "which MIMIC-CXR-JPG label file gives the findings labels (mimic-cxr-2.0.0-"
           "<labeler>.csv.gz in the MIMIC root)", metavar="NAME", choices=("chexpert", "negbio")),
    Option("label_match", "str", "when two studies' findings labels match, for label_precision/label_hit: exact "
           "(identical CheXpert label vectors) or jaccard>=T", metavar="RULE"),
    Option("uncertain_labels", "choice", "how an uncertain (-1) CheXpert label counts: positive (U-Ones) or "
           "negative", metavar="HOW", choices=("positive", "negative")),
    Option("negation", "bool", "measure and gate each model's negation confusion rate: each study's negated "
           "twin joins the candidates (docs/metrics.md)"),
    # ----- how it runs
    Option("device", "str", "cpu, cuda, cuda:1 ...", metavar="DEV", env=True, default="cuda when present"),
    Option("precision", "choice", "encoder precision: fp32, or fp16/bf16 autocast (check rank agreement "
           "first: benchmarks/precision_agreement.py)", metavar="P", choices=("fp32", "fp16", "bf16")),
    Option("draft_decode", "bool", "decode JPEGs in draft mode at the model's input scale: faster, but not the "
           "authors' pipelines (moves embeddings by up to ~5e-3; docs/models.md)"),
    Option("engine", "choice", "where images are decoded, perturbed and encoded: local (this process) or ray "
           "(Ray Data workers; pip install 'cxr-robust[ray]')", metavar="ENGINE", choices=("local", "ray")),
    Option("ray_address", "str", "the Ray cluster to join with --cxr-engine=ray", metavar="ADDR",
           default="$RAY_ADDRESS, else a local Ray"),
    Option("batch_size", "int", "images/texts per forward pass (raise it on a GPU)", metavar="N", minimum=1),
    Option("cache_dir", "path", "embedding cache", metavar="DIR", env=True, default="~/.cache/cxr_robust"),
    Option("on_bad_image", "choice", "error: an unreadable image stops the run; skip: leave it out, counted "
           "in the report", metavar="WHAT", choices=("error", "skip"), legacy=True),
    Option("refresh_cache", "bool", "recompute every embedding this run needs and overwrite its cache entry"),
    # ----- what it compares with and what it writes
    Option("baselines", "paths", "baseline CSVs", metavar="CSV,CSV",
           default="every CSV in the baselines directory"),
    Option("baselines_dir", "path", "the baselines directory (tables and ranks/), relative to the project",
           metavar="DIR"),
    Option("compare_to", "path", "paired mode: per-query ranks of the previous model (a ranks .npz, a "
           "baselines or a results directory)", metavar="PATH",
           default="the baselines directory's ranks/, where recorded"),
    Option("alpha", "alpha", "family-wise error rate of the gate per model", metavar="A"),
    Option("allow_missing_baseline", "bool", "cells without a baseline are reported as NOT COMPARED (skipped) "
           "instead of failing"),
    Option("require_all", "bool", "cells whose model weights or data are absent fail instead of being skipped "
           "(nightly jobs)", legacy=True),
    Option("update_baselines", "bool", "record the measured cells and per-query ranks in the baselines "
           "directory (merged into the existing tables) instead of asserting", legacy=True,
           # an action, not a setting: a standing value would turn every gate run into a recording
           where=frozenset({"pytest", "cli"})),
    Option("report_dir", "path", "directory for report.html, results.json, results.csv and ranks/",
           metavar="DIR", name="report", short="--out"),
    Option("summaries", "bool", "compute the per-model summaries (clean recall, AUC, relative drops)",
           where=frozenset({"pyproject"})),
)
"""Every option, in the order help and the README list them."""

_BY_FIELD = {o.field: o for o in OPTIONS}


def by_field(field_name: str) -> Option:
    """The option of a GateOptions field (KeyError if there is none)."""
    return _BY_FIELD[field_name]


def for_front_end(front_end: str) -> Iterator[Option]:
    """The options settable from ``front_end`` (one of :data:`FRONT_ENDS`), in declaration order."""
    if front_end not in FRONT_ENDS:
        raise ValueError(f"unknown front end {front_end!r}; one of {', '.join(FRONT_ENDS)}")
    for option in OPTIONS:
        if front_end == "env":
            if option.env:
                yield option
        elif front_end in option.where:
            yield option


def add_to_argparse(group: Any, front_end: str = "cli", only: set[str] | None = None,
                    dest_prefix: str = "opt_") -> None:
    """Add ``cxr-robust``'s flags for the options (of ``only`` fields) to an argparse group."""
    for option in for_front_end(front_end):
        if only is None or option.field in only:
            group.add_argument(*option.cli_flags, dest=dest_prefix + option.field, help=option.help_text(),
                               **option.argparse_kwargs())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """README's option table: one row per option, with every spelling."""
    rows = ["| pytest option | `cxr-robust run` | pyproject / ini key | meaning |", "|---|---|---|---|"]
    for o in OPTIONS:
        value = "" if o.is_flag else f"={o.metavar}"
        pytest_flag = f"`{o.flag}{value}`" if "pytest" in o.where else "—"
        if o.deprecated_flags and "pytest" in o.where:
            pytest_flag += " (was " + ", ".join(f"`{f}`" for f in o.deprecated_flags) + ")"
        cli = f"`{o.cli_flags[0]}`" if "cli" in o.where else "—"
        keys = [f"`{o.field}`" if "pyproject" in o.where else "", f"`{o.ini}`" if "ini" in o.where else ""]
        key = " / ".join(k for k in keys if k) or "— (command line only)"
        meaning = o.help_text(with_env=False) + (f"; env `{o.env_var}`" if o.env_var else "")
        rows.append(f"| {_cell(pytest_flag)} | {cli} | {key} | {_cell(meaning)} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m cxr_robust.options``: print README's option table (Markdown)."""
    parser = argparse.ArgumentParser(prog="python -m cxr_robust.options", description=main.__doc__)
    parser.parse_args(argv)
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
