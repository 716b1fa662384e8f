"""``cxr-robust init``: scaffold a project that gates its own model on its own data.

It writes, into a project folder, what a user of the installed plugin needs and nothing else:

* ``tests/test_robustness.py``: the gate's two checks (the plugin parametrizes them per model x condition x k);
* ``conftest.py``: puts the project folder on ``sys.path`` so ``my_model:build`` imports under pytest;
* ``my_model.py``: a :class:`~cxr_robust.models.base.RetrievalModel` stub and its ``build`` factory;
* ``data/manifest.csv`` and ``data/README.md``: a manifest template and how to fill it in;
* ``baselines/README.md``: where ``--cxr-update-baselines`` records the reference run;
* a ``[tool.cxr_robust]`` table appended to ``pyproject.toml`` (or a new one).

Nothing is ever overwritten: an existing file is reported as skipped, and an existing ``[tool.cxr_robust]``
table (or a ``pyproject.toml`` that is not valid TOML) leaves ``pyproject.toml`` untouched. New files appear
whole or not at all (written to a temporary file, then linked into place, which fails if the name exists).

The gate tests are copied rather than shipped inside the plugin; docs/usage.md ("Getting started") says why.
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cxr_robust.atomic import OutputError, atomic_write_text, check_writable_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 without tomli: pyproject.toml is then left alone
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None  # type: ignore[assignment]

__all__ = ["EPILOG", "FileOutcome", "ScaffoldResult", "cmd_init", "commands", "scaffold"]

MODEL_TARGET = "my_model:build"
"""The ad-hoc model the scaffolded table names (module ``my_model`` in the project folder)."""

TEST_MODULE = '''\
"""The cxr-robust gate (written by `cxr-robust init`).

The cxr-robust pytest plugin parametrizes each test below with one case per (model, perturbation level, k)
of the configured grid, plus one `<model>-grid` case per model (the pooled test of the whole grid). Options
come from [tool.cxr_robust] in pyproject.toml, or the command line (`pytest --help`, group cxr-robust).

    pytest -m robustness
"""

import pytest

pytestmark = pytest.mark.robustness


def test_recall_not_below_baseline(gate_cell):
    """Recall@k is not significantly below the recorded baseline; a cell without a baseline fails."""
    gate_cell.check_baseline()


def test_recall_vs_chance(gate_cell):
    """No cell is clearly below chance (k/N): that would mean broken scoring or a broken report index."""
    gate_cell.check_chance()
'''

CONFTEST = '''\
"""pytest wiring of the cxr-robust gate (written by `cxr-robust init`).

[tool.cxr_robust] names the model as "my_model:build", imported from this folder: put the folder on
sys.path whatever pytest's import mode (the cxr-robust plugin itself comes from its pytest11 entry point).
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
'''

MODEL_STUB = '''\
"""Your model behind the cxr-robust gate (written by `cxr-robust init`): fill in every TODO.

The gate calls `build(weights=<Path or None>, **options)` ("my_model:build" in [tool.cxr_robust] models)
and gets a RetrievalModel (cxr_robust/models/base.py). A complete, tested example of the same protocol is
examples/custom_model/model.py in the cxr-robust repository. Until the TODOs are done, building the model
raises NotImplementedError, so the gate fails loudly instead of measuring nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_robust.data.text_policy import TextPolicy
from cxr_robust.models.base import RetrievalModel, l2_normalise  # noqa: F401 - for the TODO examples

if TYPE_CHECKING:
    import torch
    from PIL import Image

INPUT_SIZE = 224
# Bump whenever preprocessing or text handling changes: the fingerprint keys the embedding cache, so
# embeddings computed by an older version are then never reused.
VERSION = 1


class MyModel(RetrievalModel):
    """Your image and report encoders, split the way the gate perturbs images (see each method)."""

    input_size = INPUT_SIZE
    input_channels = 3
    default_text_policy = TextPolicy.FINDINGS_IMPRESSION  # or IMPRESSION / LONGEST: what it was trained on
    # Its baseline row is its name as given to --cxr-models, "my_model:build" (docs/usage.md, "Adding a model").

    def __init__(self, weights: Path | None) -> None:
        # TODO: build the network and load `weights` strictly (a missing key must fail here, not give a
        # silently random model); keep it in self.network and set self.embed_dim.
        raise NotImplementedError("my_model.py: load your checkpoint in MyModel.__init__ and fill in the other "
                                  "TODOs of my_model.py (example: examples/custom_model/model.py of cxr-robust)")

    def preprocess(self, image: "Image.Image") -> np.ndarray:
        """Mode-L PIL image -> uint8 (3, INPUT_SIZE, INPUT_SIZE): resize / crop / pad only.

        No intensity normalisation here: the gate perturbs these pixels (occlusion is raw value 0).
        """
        # TODO, e.g.: plane = np.asarray(image.resize((INPUT_SIZE, INPUT_SIZE)), dtype=np.uint8)
        #             return np.repeat(plane[None], 3, axis=0)
        raise NotImplementedError("my_model.py: MyModel.preprocess")

    def encode_images(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """uint8 (B, 3, S, S) -> L2-normalised float (B, D); normalise intensities here."""
        # TODO, e.g.: x = (pixels.to(self.device).float() / 255 - MEAN) / STD
        #             return l2_normalise(self.network.encode_image(x))
        raise NotImplementedError("my_model.py: MyModel.encode_images")

    def encode_texts(self, texts: list[str]) -> "torch.Tensor":
        """Report texts -> L2-normalised float (B, D), independent of what else is in the batch."""
        # TODO, e.g.: return l2_normalise(self.network.encode_text(self.tokenizer(texts).to(self.device)))
        raise NotImplementedError("my_model.py: MyModel.encode_texts")

    def fingerprint(self) -> dict[str, Any]:
        """JSON dict of everything that changes an embedding: it keys the embedding cache."""
        # TODO: add the weights' SHA-256 (cxr_robust.models.checkpoints.sha256_file), the geometry and the
        # normalisation constants, the tokenizer and its context length.
        return {"adapter": f"{__name__}.{type(self).__name__}", "version": VERSION, "input_size": INPUT_SIZE}

    def torch_modules(self) -> list["torch.nn.Module"]:
        """The torch modules, so the engine can move them to the device and call eval()."""
        return [self.network]


def build(weights: str | Path | None = None, **options: Any) -> MyModel:
    """The factory the gate calls. Weights: --cxr-weights my_model:build=PATH, or in [tool.cxr_robust]
    weights = { "my_model:build" = "path/to/weights" } (relative to pyproject.toml)."""
    return MyModel(Path(weights) if weights else None)
'''

MANIFEST_CSV = '''\
image_path,study_id,report,view
images/s0001/frontal.png,s0001,"Heart size is normal. The lungs are clear. No pleural effusion.",PA
images/s0001/lateral.png,s0001,"Heart size is normal. The lungs are clear. No pleural effusion.",LATERAL
images/s0002/frontal.png,s0002,"Small left pleural effusion. No pneumothorax.",AP
'''

DATA_README = '''\
# The evaluation manifest (written by `cxr-robust init`)

`manifest.csv` lists your evaluation set, one row per image; its three example rows are placeholders
(their images do not exist): replace them. The full format is in docs/usage.md of cxr-robust ("The
manifest format"); in short:

| column | required | what it holds |
|---|---|---|
| `image_path` | yes | the image file; a relative path is resolved against this folder (the manifest's) |
| `study_id` | yes | the study (report) the image belongs to; every row of a study carries the same report |
| `report` | yes, or `findings` and/or `impression` instead | the report text (one of the two forms, not both) |
| `image_id` | no | a unique id per image (default: `image_path` as written) |
| `view` | no | `PA`, `AP`, `LATERAL`, ... (default `UNKNOWN`) |

The candidates of the retrieval are the reports: one per study. Recall@k needs k <= the number of studies,
so drop the `ks` in `[tool.cxr_robust]` that are larger than your set.

Check it the way the gate will load it (counts, views, exclusions, every image header read):

    cxr-robust check-data --manifest data/manifest.csv

then gate on it: in `[tool.cxr_robust]` of `pyproject.toml`, set `dataset = "manifest"` and
`manifest = "data/manifest.csv"`. The data set is treated as credentialed: results, reports and error
messages carry ids and numbers, never report text.
'''

BASELINES_README = '''\
# Baselines (written by `cxr-robust init`)

`pytest -m robustness --cxr-update-baselines` records the measured cells here (`<row>__<dataset>.csv`) and
the per-query ranks in `ranks/`, which make every later comparison paired. Commit both. Until a model has a
baseline on the configured data set, its gate cells fail as "not compared": the gate never passes without
comparing.
'''

PYPROJECT_TABLE = '''\
[tool.cxr_robust]
# Written by `cxr-robust init`; every key is described in docs/usage.md of cxr-robust ("Configuration").
# The model to gate: the factory in my_model.py ("module:function", importable from this folder).
models = ["{model}"]
# weights = {{ "{model}" = "weights/my-model.pt" }}   # passed to build(weights=...); relative to this file
# The evaluation set: the shipped synthetic phantom films, until data/manifest.csv lists your own images.
dataset = "phantom"
# dataset = "manifest"
# manifest = "data/manifest.csv"
# Recall@k needs k <= the number of reports in the data set: drop the ks that are larger.
ks = [5, 10, 20, 30, 50, 100]
report_dir = "cxr-robust-report"
'''

FILES: dict[str, str] = {
    "tests/test_robustness.py": TEST_MODULE,
    "conftest.py": CONFTEST,
    "my_model.py": MODEL_STUB,
    "data/manifest.csv": MANIFEST_CSV,
    "data/README.md": DATA_README,
    "baselines/README.md": BASELINES_README,
}
"""Project-relative path -> content of every file the scaffold creates (pyproject.toml aside)."""

_SKIP_NOTES = {
    "conftest.py": "it must leave the project folder importable for my_model:build (pytest's default "
                   "import mode does that for a conftest.py there)",
    "tests/test_robustness.py": "a test module with the gate_cell fixture is all the gate needs",
}
"""Why it matters that a file was skipped, where it does."""


@dataclass(frozen=True)
class FileOutcome:
    """What the scaffold did with one path: ``created``, ``appended`` or ``skipped`` (with the reason)."""

    path: Path
    action: str
    reason: str = ""


@dataclass
class ScaffoldResult:
    """Everything one scaffold did, and the commands of the next steps (argv lists, run from ``root``)."""

    root: Path
    outcomes: list[FileOutcome] = field(default_factory=list)
    commands: dict[str, list[str]] = field(default_factory=dict)

    def lines(self, cwd: Path | None = None) -> list[str]:
        """The report printed by ``cxr-robust init``: each file and what happened, then the next steps."""
        out = [f"{o.action:<8} {o.path.relative_to(self.root)}" + (f": {o.reason}" if o.reason else "")
               for o in self.outcomes]
        if not any(o.action != "skipped" for o in self.outcomes):
            out.append("nothing written: the project is already scaffolded")
        out += ["", *next_steps(self, cwd or Path.cwd())]
        return out


# ----- writing ------------------------------------------------------------------------------------------------
def _create_new(path: Path, text: str) -> bool:
    """Write ``path`` whole, only if it does not exist; False (nothing written) when it does.

    The text goes to a temporary file in the same folder, which is then hard-linked to ``path``: the link
    fails when the name exists, even if it appeared a moment ago, so nothing is ever overwritten. File
    systems without hard links fall back to a checked atomic rename.
    """
    if path.exists() or path.is_symlink():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are the user's project files
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if path.exists():
                return False
            atomic_write_text(path, text)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _write_file(root: Path, rel: str, text: str) -> FileOutcome:
    path = root / rel
    try:
        created = _create_new(path, text)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"cxr-robust init: cannot write {path} ({exc.strerror or exc}); check the folder's "
                          "permissions, or choose another DIR", path) from None
    if created:
        return FileOutcome(path, "created")
    note = _SKIP_NOTES.get(rel)
    return FileOutcome(path, "skipped", "exists, left as it is" + (f"; {note}" if note else ""))


def _pyproject(root: Path) -> FileOutcome:
    """Append ``[tool.cxr_robust]`` to ``pyproject.toml`` (or create it), unless the table is already there."""
    path = root / "pyproject.toml"
    table = PYPROJECT_TABLE.format(model=MODEL_TARGET)
    if not path.exists():
        return _write_file(root, "pyproject.toml", table)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return FileOutcome(path, "skipped", f"cannot be read ({type(exc).__name__}); add the [tool.cxr_robust] "
                                            "table by hand (docs/usage.md)")
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        return FileOutcome(path, "skipped", "reading TOML needs Python 3.11 or `pip install tomli`; add the "
                                            "[tool.cxr_robust] table by hand (docs/usage.md)")
    try:
        tool = tomllib.loads(text).get("tool", {})
    except tomllib.TOMLDecodeError as exc:
        return FileOutcome(path, "skipped", f"not valid TOML ({exc}); fix it, then run `cxr-robust init` again")
    if isinstance(tool, dict) and "cxr_robust" in tool:
        return FileOutcome(path, "skipped", "it already has a [tool.cxr_robust] table, left as it is (compare it "
                                            "with docs/usage.md, 'Configuration')")
    new = text + ("" if not text or text.endswith("\n") else "\n") + ("\n" if text.strip() else "") + table
    try:  # e.g. `tool = {...}` as an inline table cannot be extended by a [tool.cxr_robust] header
        tomllib.loads(new)
    except tomllib.TOMLDecodeError:
        return FileOutcome(path, "skipped", "its `tool` key cannot take a [tool.cxr_robust] table (an inline "
                                            "table or a value?); add the keys by hand (docs/usage.md)")
    try:
        atomic_write_text(path, new)
    except OutputError as exc:
        raise OutputError(f"cxr-robust init: {exc}", path) from None
    return FileOutcome(path, "appended", "[tool.cxr_robust] table added at the end")


def scaffold(root: str | Path = ".") -> ScaffoldResult:
    """Scaffold the gate in ``root`` (created if needed); never overwrites. :class:`OutputError` when
    ``root`` is a file or cannot be written."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise OutputError(f"cxr-robust init: {root} is a file; pass the project folder (default: the current "
                          "one)", root)
    check_writable_dir(root, "cxr-robust init: project folder")
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    result = ScaffoldResult(root)
    result.outcomes = [_write_file(root, rel, text) for rel, text in FILES.items()]
    result.outcomes.insert(0, _pyproject(root))
    result.commands = commands()
    return result


# ----- next steps ---------------------------------------------------------------------------------------------
def commands() -> dict[str, list[str]]:
    """The next steps' commands as argv lists, run from the project folder (flags from :mod:`cxr_robust.options`)."""
    from cxr_robust.options import by_field

    demo = ["pytest", "-m", "robustness", f"{by_field('models').flag}=phantom-clip",
            f"{by_field('phantom_studies').flag}=60", f"{by_field('ratios').flag}=0,25", f"{by_field('ks').flag}=5,10"]
    record = by_field("update_baselines").flag
    return {"demo": demo, "demo_record": [*demo, record], "check_data": ["cxr-robust", "check-data"],
            "record": ["pytest", "-m", "robustness", record], "gate": ["pytest", "-m", "robustness"]}


def next_steps(result: ScaffoldResult, cwd: Path) -> list[str]:
    """What to do now, numbered, with the exact commands."""
    c = {k: shlex.join(v) for k, v in result.commands.items()}
    try:
        where = result.root.relative_to(cwd.resolve())
    except ValueError:
        where = result.root
    cd = [] if str(where) == "." else [f"  cd {shlex.quote(str(where))}"]
    return [
        "next steps:", *cd,
        "  1. check the wiring on the shipped demo model (no data or weights needed; a small grid):",
        f"       {c['demo']}",
        "     It FAILS: no baseline is recorded yet, and the gate never passes without comparing.",
        "     Record one, then run the first command again: it passes.",
        f"       {c['demo_record']}",
        "  2. fill in my_model.py (the RetrievalModel protocol; until then the gate fails with",
        "     NotImplementedError) and, for its weights, `weights` in [tool.cxr_robust] of pyproject.toml.",
        "  3. list your images and reports in data/manifest.csv (data/README.md), check the set with",
        f"       {c['check_data']} --manifest data/manifest.csv",
        "     and set dataset = \"manifest\" and manifest = \"data/manifest.csv\" in [tool.cxr_robust].",
        "  4. record your model's baseline on that data once, and commit baselines/:",
        f"       {c['record']}",
        "  5. gate every new checkpoint (in CI too):",
        f"       {c['gate']}",
    ]


# ----- the subcommand -----------------------------------------------------------------------------------------
EPILOG = """\
Writes tests/test_robustness.py, conftest.py, my_model.py (a model stub), data/manifest.csv with
data/README.md, baselines/README.md, and a [tool.cxr_robust] table appended to pyproject.toml (or a new
one). Existing files are never overwritten (each is reported as skipped), nor an existing
[tool.cxr_robust] table. Then it prints the next steps.

examples:
  cxr-robust init               # the current folder
  cxr-robust init my-gate       # a new folder
"""


def cmd_init(args: argparse.Namespace) -> int:
    """``cxr-robust init [DIR]``: scaffold, then print what was written and the next steps."""
    result = scaffold(args.directory)
    for line in result.lines():
        print(line, flush=True)
    return 0
