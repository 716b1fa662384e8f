"""Nothing in a weights file runs: TorchScript archives are read as data, pickles weights-only, for every loader.

Each malicious file carries a payload that creates or overwrites a canary file; each test checks that
loading fails with a :class:`CheckpointError` naming the file **and** that the canary is untouched.

Covered elsewhere and not repeated here (``tests/test_models_checkpoints.py``):

- ``test_malicious_pickles_are_refused_without_running``: ``os.system`` / ``builtins.open`` payloads in a raw
  pickle (protocols 2 and 4), a ``torch.save`` zip (``.pt`` and ``.bin``), a MedCLIP zip member, a TorchScript
  archive whose whole ``data.pkl`` is the payload, and a CXR-CLIP ``config``; every registered paper model;
- ``test_refusal_names_the_global_and_says_nothing_ran`` and ``test_unknown_omegaconf_class_is_refused``.

The benign OpenAI-format archive loading with unchanged embeddings is ``tests/test_models_clip.py``.
"""

from __future__ import annotations

import ast
import collections
import io
import os
import pickle
import tarfile
import warnings
from pathlib import Path
from typing import Any, Tuple

import pytest
import torch

from cxr_robust.models import load_model
from cxr_robust.models.checkpoints import (
    CheckpointError,
    load_torch_file,
    read_torchscript_state,
    read_training_checkpoint,
)
from cxr_robust.models.clip_family import read_openai_format_state

from tests import model_fixtures as mf

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*entries, not Bio_ClinicalBERT:UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # torch.jit is deprecated; the tests still build archives
]

PAPER_VARIANTS = ["clip", "cxr-repair", "medclip-vit", "medclip-resnet", "cxr-clip-swint", "cxr-clip-r50"]
CANARY_BYTES = b"canary: untouched\n"  # 18 bytes; the payloads map and overwrite the first 16


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mf.write_vocab(tmp_path_factory.mktemp("vocab"))


def _jit_load_state(path: Path) -> dict[str, torch.Tensor]:
    """The oracle: torch's own reader, used only on archives these tests built themselves."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").state_dict()


def _bits(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor's values (bit-for-bit comparison: -0.0, NaN payloads...)."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Same keys in the same order, and every tensor equal in dtype, shape and bits."""
    assert list(got) == list(want)
    for key, expected in want.items():
        actual = got[key]
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), key
        assert torch.equal(actual, expected), key
        assert _bits(actual) == _bits(expected), key


def _load(entry: str, path: Path, vocab_dir: Path) -> Any:
    """Load ``path`` through one of the package's entry points (a model name or a reader function)."""
    if entry == "load_torch_file":
        return load_torch_file(path, model_name="clip")
    if entry == "read_training_checkpoint":
        return read_training_checkpoint(path, model_name="cxr-clip-swint")
    if entry == "read_openai_format_state":
        return read_openai_format_state(path, model_name="clip")
    return load_model(entry, weights=path, bert_vocab=vocab_dir)


def _fresh_canary(path: Path, existing: bool) -> Path:
    path.unlink(missing_ok=True)
    if existing:
        path.write_bytes(CANARY_BYTES)
    return path


def _assert_untouched(canary: Path, existing: bool) -> None:
    if existing:
        assert canary.read_bytes() == CANARY_BYTES, "the payload ran: the canary was overwritten"
    else:
        assert not canary.exists(), "the payload ran: the canary was created"


def _expect_refusal(entry: str, path: Path, vocab_dir: Path, canary: Path, *, existing: bool = False) -> str:
    """Loading fails with a CheckpointError naming the file (and model), and the payload did not run."""
    try:
        with pytest.raises(CheckpointError) as info:
            _load(entry, path, vocab_dir)
    finally:
        _assert_untouched(canary, existing)  # checked whatever happened: it is the point of these tests
    message = str(info.value)
    assert path.name in message, message
    if entry in PAPER_VARIANTS:
        assert entry in message, message
    return message


# --------------------------------------------------------------------------------------------------
# The reader gives torch.jit.load's state dict, key for key and bit for bit

def test_reader_equals_torch_jit_load_on_the_openai_format_archive(tmp_path: Path) -> None:
    # every key of OpenAI's ViT-B-32.pt, with small shapes (the names and nesting are what matter here)
    gen = torch.Generator().manual_seed(3)
    state = {k: torch.randn(tuple(min(d, 3) for d in shape), generator=gen)
             for k, shape in mf.manifest("clip_vit_b32_openai_state_dict").items()}
    path = mf.write_openai_torchscript(state, tmp_path / "ViT-B-32.pt")
    got = read_torchscript_state(path, model_name="clip", advice="re-download it")
    _assert_same_state(got, _jit_load_state(path))
    assert got["visual.proj"].dtype == torch.float16 and got["vocab_size"].dtype == torch.int64


class _TracedBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(8, 2)
        self.ln = torch.nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x + self.attn(x, x, x, need_weights=False)[0])


class _TracedModel(torch.nn.Module):
    """Traced like OpenAI's archive; tied weights, views into one storage and assorted dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([_TracedBlock(), _TracedBlock()])
        self.blocks[1].ln.weight = self.blocks[0].ln.weight  # one storage under two keys
        self.proj = torch.nn.Parameter(torch.randn(8, 4).half())
        base = torch.randn(3, 8)
        self.register_buffer("rows", base[1:])   # a view at an offset ...
        self.register_buffer("cols", base.t())   # ... and a non-contiguous view of the same storage
        for dtype in (torch.bfloat16, torch.float64, torch.int32, torch.int64, torch.uint8, torch.int8, torch.bool):
            self.register_buffer(f"b_{str(dtype)[6:]}", (torch.arange(6) % 3).to(dtype).reshape(2, 3))
        self.register_buffer("empty", torch.zeros(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x @ self.proj.float() + self.rows.sum() + self.cols.sum()


def test_reader_equals_torch_jit_load_on_a_traced_module(tmp_path: Path) -> None:
    torch.manual_seed(4)
    path = tmp_path / "traced.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(_TracedModel().eval(), torch.randn(5, 1, 8), check_trace=False), str(path))
    got = read_torchscript_state(path, model_name="clip", advice="re-download it")
    _assert_same_state(got, _jit_load_state(path))
    assert got["blocks.0.ln.weight"].data_ptr() == got["blocks.1.ln.weight"].data_ptr()  # still shared


def test_the_archive_code_is_never_read(tmp_path: Path) -> None:
    """Garbling every TorchScript source file changes nothing: only data.pkl and data/ are read."""
    path = mf.write_openai_torchscript({"visual.proj": torch.randn(4, 3)}, tmp_path / "ViT-B-32.pt")
    garbled = mf.copy_zip_with(path, tmp_path / "garbled.pt",
                               lambda name, data: b"raise SystemExit(1)\n" if "/code/" in name else data)
    want = read_torchscript_state(path, model_name="clip", advice="x")
    _assert_same_state(read_torchscript_state(garbled, model_name="clip", advice="x"), want)


def test_damaged_archive_is_reported_not_half_read(tmp_path: Path) -> None:
    path = mf.write_openai_torchscript({"visual.proj": torch.randn(4, 3)}, tmp_path / "ViT-B-32.pt")
    cut = mf.copy_zip_with(path, tmp_path / "cut.pt",
                           lambda name, data: data[: len(data) // 2] if name.endswith("/data/0") else data)
    with pytest.raises(CheckpointError, match=r"cut\.pt looks like a TorchScript archive but cannot be read"):
        load_torch_file(cut, model_name="clip")


# --------------------------------------------------------------------------------------------------
# TorchScript payloads: code in the archive that torch.jit.load would run

class SetstateModule(torch.nn.Module):
    """A module whose TorchScript ``__setstate__`` maps a file and writes into it (``torch.from_file``)."""

    def __init__(self, canary: str) -> None:
        super().__init__()
        self.canary = canary
        self.weight = torch.nn.Parameter(torch.zeros(2))
        self.mapped = torch.zeros(0, dtype=torch.uint8)

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, torch.Tensor, bool]:
        return (self.canary, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, torch.Tensor, bool]) -> None:
        self.canary = state[0]
        self.weight = state[1]
        self.training = state[2]
        # stored in an attribute so the TorchScript compiler cannot drop the call as dead code
        self.mapped = torch.from_file(state[0], True, 16, dtype=torch.uint8).fill_(33)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class SetstateBox:
    """A TorchScript class (not a module) with the same kind of ``__setstate__``."""

    def __init__(self, canary: str) -> None:
        self.canary = canary
        self.mapped = torch.zeros(0, dtype=torch.uint8)

    def __getstate__(self) -> Tuple[str, int]:
        return (self.canary, 0)

    def __setstate__(self, state: Tuple[str, int]) -> None:
        self.canary = state[0]
        self.mapped = torch.from_file(state[0], True, 16, dtype=torch.uint8).fill_(33)


class _Visual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Parameter(torch.zeros(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.proj


class BoxHolder(torch.nn.Module):
    """An OpenAI-looking module (``visual.proj``, ``logit_scale``) that carries a :class:`SetstateBox`."""

    def __init__(self, canary: str) -> None:
        super().__init__()
        self.visual = _Visual()
        self.logit_scale = torch.nn.Parameter(torch.ones(()))
        self.box = SetstateBox(canary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x) * self.logit_scale


def _write_payload_archive(kind: str, path: Path, canary: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "module-setstate":
            scripted = torch.jit.script(SetstateModule(str(canary)))
        else:
            torch.jit.script(SetstateBox)  # compile the class before an instance is made
            scripted = torch.jit.script(BoxHolder(str(canary)))
        torch.jit.save(scripted, str(path))
    return path


PAYLOADS = {"module-setstate": False, "class-setstate": True}  # kind -> the canary exists beforehand


@pytest.fixture(scope="module")
def script_payloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """kind -> (archive, canary it targets); built once for the module."""
    tmp = tmp_path_factory.mktemp("script_payloads")
    return {kind: (_write_payload_archive(kind, tmp / f"ViT-B-32-{kind}.pt", tmp / f"canary-{kind}"),
                   tmp / f"canary-{kind}") for kind in PAYLOADS}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_the_script_payloads_are_live(kind: str, tmp_path: Path) -> None:
    """Sanity check of the test itself: torch.jit.load (the old reader) does run the payload."""
    canary = _fresh_canary(tmp_path / "canary", PAYLOADS[kind])
    path = _write_payload_archive(kind, tmp_path / "live.pt", canary)
    _assert_untouched(canary, PAYLOADS[kind])  # saving ran nothing
    _jit_load_state(path)
    assert canary.exists() and canary.read_bytes()[:16] == b"!" * 16


@pytest.mark.parametrize("entry", [*PAPER_VARIANTS, "load_torch_file", "read_training_checkpoint",
                                   "read_openai_format_state"])
@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_torchscript_setstate_payload_is_refused_without_running(
        kind: str, entry: str, vocab_dir: Path, script_payloads: dict[str, tuple[Path, Path]]) -> None:
    path, canary = script_payloads[kind]
    _fresh_canary(canary, PAYLOADS[kind])
    message = _expect_refusal(entry, path, vocab_dir, canary, existing=PAYLOADS[kind])
    assert "refused to read the TorchScript archive" in message and "__setstate__" in message
    assert "Nothing in it was executed" in message
    assert "torch.save(torch.jit.load(" in message  # the one-line conversion for a file the user trusts


@pytest.mark.parametrize("model", ["medclip-vit", "medclip-resnet"])
@pytest.mark.parametrize("layout", ["directory", "zip"])
def test_torchscript_payload_as_medclip_member(model: str, layout: str, tmp_path: Path, vocab_dir: Path,
                                               script_payloads: dict[str, tuple[Path, Path]]) -> None:
    """MedCLIP accepts a directory or a zip holding ``pytorch_model.bin``: a TorchScript payload there too."""
    archive, canary = script_payloads["module-setstate"]
    _fresh_canary(canary, existing=False)
    if layout == "directory":
        (tmp_path / "medclip").mkdir()
        (tmp_path / "medclip" / "pytorch_model.bin").write_bytes(archive.read_bytes())
        path = tmp_path / "medclip"
    else:
        path = mf.write_zip(tmp_path / "medclip-pretrained.zip", {"medclip/pytorch_model.bin": archive})
    _expect_refusal(model, path, vocab_dir, canary)


# --------------------------------------------------------------------------------------------------
# Hand-edited data.pkl: globals outside the allow-list

def _injections(canary: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (opcodes an ordinary unpickler would call, the global the reader must name as refused).

    The first three create ``canary`` when run; ``torch.load`` stands for "a torch function that is not one
    of the allowed names".
    """
    return {
        "os.system": (mf.pickle_call("os", "system", f"touch '{canary}'"), "os.system"),
        "builtins.eval": (mf.pickle_call("builtins", "eval", f"open({str(canary)!r}, 'w')"), "builtins.eval"),
        "torch.from_file": (mf.pickle_call("torch", "from_file", str(canary), True, 16), "torch.from_file"),
        # a real torch function next to the allowed one: only the listed names are accepted
        "torch.load": (mf.pickle_call("torch", "load", str(canary)), "torch.load"),
    }


def test_the_injected_opcodes_are_live(tmp_path: Path) -> None:
    """Sanity check of the test itself: an ordinary unpickler runs each injected call."""
    for name in ("os.system", "builtins.eval", "torch.from_file"):
        canary = tmp_path / f"canary-{name}"
        opcodes, _ = _injections(canary)[name]
        pickle.loads(b"\x80\x02" + opcodes + b"N.")
        assert canary.exists(), name


@pytest.mark.parametrize("entry", ["clip", "cxr-clip-r50", "load_torch_file"])
@pytest.mark.parametrize("injection", ["os.system", "builtins.eval", "torch.from_file", "torch.load"])
def test_injected_global_in_data_pkl_is_refused(injection: str, entry: str, tmp_path: Path, vocab_dir: Path) -> None:
    canary = tmp_path / "canary"
    opcodes, refused = _injections(canary)[injection]
    genuine = mf.write_openai_torchscript({"visual.proj": torch.randn(4, 3)}, tmp_path / "genuine.pt")
    path = mf.copy_zip_with(genuine, tmp_path / "ViT-B-32.pt", lambda name, data: (
        mf.splice_after_proto(data, opcodes) if name.endswith("/data.pkl") else data))
    message = _expect_refusal(entry, path, vocab_dir, canary)
    assert "refused to read the TorchScript archive" in message
    assert f"references the Python global {refused}" in message and "Nothing in it was executed" in message


def test_torch_prefixed_name_cannot_smuggle_a_call(tmp_path: Path) -> None:
    """``__torch__.*`` names become inert records; calling one with arguments is malformed, not an import."""
    canary = tmp_path / "canary"
    genuine = mf.write_openai_torchscript({"visual.proj": torch.randn(4, 3)}, tmp_path / "genuine.pt")
    path = mf.copy_zip_with(genuine, tmp_path / "ViT-B-32.pt", lambda name, data: (
        mf.splice_after_proto(data, mf.pickle_call("__torch__.os", "system", f"touch '{canary}'"))
        if name.endswith("/data.pkl") else data))
    with pytest.raises(CheckpointError, match=r"ViT-B-32\.pt looks like a TorchScript archive but cannot be read"):
        load_torch_file(path, model_name="clip")
    assert not canary.exists()


def test_stand_in_records_refuse_to_be_rebuilt(tmp_path: Path) -> None:
    """BUILD on a tensor record would reach torch's Tensor.__setstate__; the reader's records refuse it."""
    genuine = mf.write_openai_torchscript({"visual.proj": torch.randn(4, 3)}, tmp_path / "genuine.pt")

    def build_on_first_tensor(name: str, data: bytes) -> bytes:
        if not name.endswith("/data.pkl"):
            return data
        # the first tensor's REDUCE ("tR" closing its argument tuple) is followed by BINPUT; BUILD it with None
        at = data.index(b"tR") + 2
        return data[:at] + b"Nb" + data[at:]

    path = mf.copy_zip_with(genuine, tmp_path / "ViT-B-32.pt", build_on_first_tensor)
    with pytest.raises(CheckpointError, match="cannot be read .*tries to set the state of a _TensorRecord"):
        load_torch_file(path, model_name="clip")


# --------------------------------------------------------------------------------------------------
# Pickle payloads in the torch.save formats not covered by test_models_checkpoints

def _plain_payloads(tmp: Path, canary: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for suffix in ("pt", "bin"):
        # torch.save's pre-1.6 (non-zip) format: magic number, protocol, sys info, then the pickle
        files[f"legacy-{suffix}"] = tmp / f"evil_legacy.{suffix}"
        torch.save({"visual.proj": torch.zeros(2), "x": mf.EvilShell(canary)}, files[f"legacy-{suffix}"],
                   _use_new_zipfile_serialization=False)
    # torch's oldest (tar) format: storages / tensors / pickle members
    files["legacy-tar"] = tmp / "evil_legacy.tar"
    with tarfile.open(files["legacy-tar"], "w", format=tarfile.PAX_FORMAT) as tar:
        for member in ("storages", "tensors", "pickle"):
            blob = pickle.dumps(mf.EvilShell(canary), protocol=2)
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    # a directory holding pytorch_model.bin (MedCLIP's unpacked download)
    (tmp / "medclip-dir").mkdir()
    torch.save({"x": mf.EvilOpen(canary)}, tmp / "medclip-dir" / "pytorch_model.bin")
    files["directory"] = tmp / "medclip-dir"
    return files


def test_the_plain_payloads_are_live(tmp_path: Path) -> None:
    """Sanity check of the test itself: torch.load without weights_only runs the legacy-format payload."""
    canary = tmp_path / "canary"
    path = _plain_payloads(tmp_path, canary)["legacy-pt"]
    try:
        torch.load(path, weights_only=False)
    except Exception:  # the payload's return value stands where a tensor was expected; it ran all the same
        pass
    assert canary.exists()


@pytest.mark.parametrize("model", PAPER_VARIANTS)
def test_legacy_tar_and_directory_payloads_are_refused(model: str, tmp_path: Path, vocab_dir: Path) -> None:
    canary = tmp_path / "canary"
    for kind, path in _plain_payloads(tmp_path, canary).items():
        if kind == "directory" and not model.startswith("medclip"):
            continue  # only MedCLIP looks for pytorch_model.bin inside a directory
        message = _expect_refusal(model, path, vocab_dir, canary)
        assert "nothing in it was executed" in message.lower(), (kind, message)


# --------------------------------------------------------------------------------------------------
# CXR-CLIP's config: the OmegaConf stand-ins open no other door

@pytest.mark.parametrize("hidden", ["in-a-dictconfig", "as-a-defaultdict-factory", "as-a-type-annotation"])
def test_cxrclip_config_stand_ins_refuse_other_globals(hidden: str, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    if hidden == "in-a-dictconfig":
        config: Any = mf.DictConfig({"_metadata": None, "_parent": None, "_content": {"x": mf.EvilOpen(canary)}})
    elif hidden == "as-a-defaultdict-factory":
        config = {"resolver_cache": collections.defaultdict(os.system)}
    else:
        config = mf.DictConfig({"_metadata": mf.Metadata({"ref_type": os.system}), "_parent": None, "_content": {}})
    path = mf.write_cxrclip_tar({"logit_scale": torch.zeros(())}, tmp_path / "swint_mcc.tar", config=None,
                                extra={"config": config})
    with pytest.raises(CheckpointError, match=r"swint_mcc\.tar.*(posix\.system|os\.system|io\.open|builtins\.open)"
                                              r".*Nothing in it was executed"):
        read_training_checkpoint(path, model_name="cxr-clip-swint")
    assert not canary.exists()


def _dotted(node: ast.AST) -> str:
    """The dotted name of a call target (``torch.jit.load``); empty for anything but names and attributes."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


UNSAFE_SUFFIXES = ("jit.load", "pickle.load", "pickle.loads", "pickle.Unpickler", "marshal.loads")
UNSAFE_BUILTINS = ("eval", "exec", "__import__")


def _unsafe_call(node: ast.Call) -> str | None:
    """Why this call could run a file's code, or None."""
    name = _dotted(node.func)
    keywords = {k.arg: k.value for k in node.keywords}
    if name in UNSAFE_BUILTINS or any(name == s or name.endswith("." + s) for s in UNSAFE_SUFFIXES):
        return name
    if name.endswith("torch.load"):
        flag = keywords.get("weights_only")
        if not (isinstance(flag, ast.Constant) and flag.value is True):
            return "torch.load without weights_only=True"
    allow = keywords.get("allow_pickle")
    if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
        return f"{name}(allow_pickle=...)"
    return None


def test_every_loader_goes_through_the_safe_readers() -> None:
    """No call in the package runs a file's code: no torch.jit.load, plain unpickling, eval/exec, torch.load
    without ``weights_only=True`` or numpy ``allow_pickle`` (strings and docstrings may mention them)."""
    root = Path(__file__).resolve().parent.parent / "cxr_robust"
    offenders = [f"{source.relative_to(root.parent)}:{node.lineno}: {why}"
                 for source in sorted(root.rglob("*.py"))
                 for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
                 if isinstance(node, ast.Call) and (why := _unsafe_call(node))]
    assert not offenders, offenders
