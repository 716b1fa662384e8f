"""Reading checkpoint files safely and loading them strictly.

Every published key must be consumed: a checkpoint that leaves parameters at their random initialisation
would make a benchmark silently measure noise. Nothing here unpickles arbitrary objects:

- plain ``torch.save`` files (``.pt``, ``.bin``, CXR-CLIP's ``.tar``) go through torch's weights-only
  unpickler, which only rebuilds tensors and plain containers and refuses any other Python global;
- TorchScript archives (OpenAI's ``ViT-B-32.pt``) are read as data, never with ``torch.jit.load`` (which
  compiles and runs the archive's code, e.g. a class ``__setstate__``): an allow-list unpickler reads
  ``data.pkl`` with inert stand-ins for the module objects (:func:`read_torchscript_state`), and the
  TorchScript source in ``code/`` is neither read nor run;
- CXR-CLIP's ``config`` holds OmegaConf objects. Rather than importing omegaconf and letting the pickle
  build them, the omegaconf names are mapped to inert stand-in classes (:data:`OMEGACONF_STANDINS`) that
  only record their pickled state, which :func:`omegaconf_to_plain` then turns into plain dicts and lists.

Errors name the file, the model and what to do.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for a model (wrong file, missing or unexpected keys, unsafe)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (identifies weights in cache keys and reports)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file, computed once per (path, size, mtime) in this process.

    Hashing a 600 MB checkpoint takes a second or two; models are rebuilt often (one per test module, one
    per worker), so the digest is memoised on what would change if the file were replaced.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(p)
    return _SHA_CACHE[key]


def read_safetensors(path: str | Path, *, model_name: str) -> dict[str, "torch.Tensor"]:
    """All tensors of a safetensors file; a truncated or foreign file raises :class:`CheckpointError`."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{model_name}: weights file {path} does not exist")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a bad header / short file
        raise CheckpointError(f"{model_name}: {path} is not a readable safetensors file ({exc}); "
                              "re-download or re-export it") from exc


# --------------------------------------------------------------------------------------------------
# Recognising what a file is (for "wrong file" messages)

_FORMAT_SIGNATURES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # (key that only this format has, description, registered models that take it)
    ("visual.conv1.weight", "an OpenAI-format CLIP ViT state dict (ViT-B-32.pt / CXR-RePaiR)", ("clip", "cxr-repair")),
    ("vision_model.projection_head.weight", "a MedCLIP (Swin-T) pytorch_model.bin", ("medclip-vit",)),
    ("vision_model.model.fc.weight", "a MedCLIP (ResNet-50) pytorch_model.bin", ("medclip-resnet",)),
    ("image_encoder.image_encoder.embeddings.patch_embeddings.projection.weight",
     "a CXR-CLIP Swin-T checkpoint (swint_*.tar)", ("cxr-clip-swint",)),
    ("image_encoder.resnet.conv1.weight", "a CXR-CLIP ResNet-50 checkpoint (r50_*.tar)", ("cxr-clip-r50",)),
)


def _match_format(keys: Iterable[str]) -> tuple[str, tuple[str, ...]] | None:
    keys = {k[len("module."):] if k.startswith("module.") else k for k in keys}
    for marker, description, models in _FORMAT_SIGNATURES:
        if marker in keys:
            return description, models
    return None


def guess_checkpoint_format(keys: Iterable[str]) -> str | None:
    """A phrase naming the published format whose keys these are (and which model takes it), or None."""
    found = _match_format(keys)
    if found is None:
        return None
    description, models = found
    return f"{description}, which model {' or '.join(repr(m) for m in models)} loads"


def check_checkpoint_family(keys: Iterable[str], *, model_name: str, source: str | Path, advice: str) -> None:
    """Raise early (before building a large model) when ``keys`` are recognisably another model's checkpoint."""
    found = _match_format(keys)
    if found is not None and model_name not in found[1]:
        description, models = found
        raise CheckpointError(f"{model_name}: {source} is {description}, not a checkpoint for {model_name!r}. "
                              f"Use it with model {' or '.join(repr(m) for m in models)}; for {model_name!r}, "
                              f"{advice}.")


# --------------------------------------------------------------------------------------------------
# Reading files without executing code

def _refused_global(exc: BaseException) -> str | None:
    """The Python global (or call) a weights-only unpickler refused, if that is why it failed."""
    text = str(exc)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return f"the Python global {match.group(1)}"
    match = re.search(r"(unrecognized function [^\n]+|Can only (?:build|create) [^\n]+)", text)
    return match.group(1).strip() if match else None


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception message (library messages go on for paragraphs)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else type(exc).__name__


def _torch_load(source: Any, *, label: str, model_name: str, advice: str, mmap: bool,
                safe_globals: Iterable[Any] = ()) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a :class:`CheckpointError`."""
    import torch

    globals_list = list(safe_globals)
    try:
        with warnings.catch_warnings():
            # "pickle protocol N was not the default" is noise here: a refusal is reported below
            warnings.simplefilter("ignore", UserWarning)
            if globals_list:
                with torch.serialization.safe_globals(globals_list):
                    return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
            return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(exc)
        if refused:
            raise CheckpointError(
                f"{model_name}: refused to unpickle {label}: it is not a plain tensor checkpoint (it references "
                f"{refused}). Nothing in it was executed. It is not the published checkpoint or has been "
                f"tampered with; {advice}.") from None
        reason = re.sub(r"\s+", " ", str(exc).split("WeightsUnpickler error:")[-1]).strip()[:200]
        raise CheckpointError(
            f"{model_name}: {label} is not a readable PyTorch checkpoint ({reason or _first_line(exc)}); nothing "
            f"in it was executed. It may be truncated (an interrupted download) or a different kind of file; "
            f"{advice}.") from None
    except Exception as exc:  # zip reader, EOF, storage size mismatch...: a damaged or foreign file
        size = os.path.getsize(source) if isinstance(source, str) else None
        size_note = f" ({size:,} bytes)" if size is not None else ""
        raise CheckpointError(
            f"{model_name}: {label}{size_note} is not a readable PyTorch checkpoint ({_first_line(exc)}); nothing "
            f"in it was executed. It may be truncated (an interrupted download) or a different kind of file; "
            f"{advice}.") from None


def _zip_names(path: Path) -> list[str] | None:
    """Member names if ``path`` is a readable zip file, else None."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _is_torchscript(names: list[str]) -> bool:
    # torch.load's own test (a constants.pkl record); such an archive is never handed to torch.load
    return any(n.endswith("/constants.pkl") for n in names)


def _is_torch_zip(names: list[str]) -> bool:
    return any(n.endswith("/data.pkl") or n == "data.pkl" for n in names)


# --------------------------------------------------------------------------------------------------
# TorchScript archives, read as data
#
# A TorchScript ``.pt`` is a zip with one top folder ``<archive>/``: ``data.pkl`` pickles the module tree
# (each module is a ``__torch__.*`` class built by NEWOBJ and given its attributes by BUILD; a tensor is a
# ``torch._utils._rebuild_tensor_v2`` call whose storage is a persistent id naming the raw record
# ``data/<key>``), ``constants.pkl`` and ``code/`` hold the compiled program. ``torch.jit.load`` runs that
# program while loading, so only data.pkl is read, by an unpickler that knows the few names below.

_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}

# a TorchScript class name: __torch__ followed by identifiers (mangled names such as ___torch_mangle_3 too)
_SCRIPT_CLASS_NAME = re.compile(r"__torch__(\.[A-Za-z_]\w*)+")
_MAX_MODULE_DEPTH = 100


class _RefusedGlobal(pickle.UnpicklingError):
    """data.pkl names a Python global outside the allow-list."""

    def __init__(self, name: str) -> None:
        super().__init__(f"refused global {name[:200]}")
        self.name = name[:200]  # the name comes from the file: keep messages bounded


class _CustomScriptState(pickle.UnpicklingError):
    """An object whose state only its own TorchScript code (``__setstate__``) could interpret."""


class ScriptObjectStandIn:
    """Inert record of one TorchScript object in ``data.pkl``: its class name and pickled state.

    The unpickler creates it with ``cls.__new__(cls)`` and hands BUILD's state to :meth:`__setstate__`,
    which only stores it; the archive's own ``__setstate__`` (TorchScript code) is never looked at.
    """

    qualified_name = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualified_name} stand-in>"


class _Inert:
    """Base of the reader's own records. The pickle may BUILD any object it holds; these refuse it, so no
    state of theirs (and no method of a torch object) can be reached from the archive."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"data.pkl tries to set the state of a {type(self).__name__}")


class _StorageType(_Inert):
    """What ``torch.FloatStorage`` (etc.) stands for in a persistent id: just the element type."""

    __slots__ = ("dtype_name",)

    def __init__(self, storage_name: str) -> None:
        self.dtype_name = _STORAGE_DTYPES[storage_name]


class _StorageRecord(_Inert):
    """One ``data/<key>`` record as a flat tensor."""

    __slots__ = ("flat",)

    def __init__(self, flat: "torch.Tensor") -> None:
        self.flat = flat


class _TensorRecord(_Inert):
    """A tensor of the archive, kept wrapped until the module tree is walked."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: "torch.Tensor") -> None:
        self.tensor = tensor


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _ts_rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, metadata: Any = None) -> _TensorRecord:
    """Stands in for ``torch._utils._rebuild_tensor_v2``: a strided view of a storage read from the archive."""
    import torch

    if not (isinstance(storage, _StorageRecord) and isinstance(storage_offset, int) and _is_int_tuple(size)
            and _is_int_tuple(stride) and len(size) == len(stride) and isinstance(requires_grad, bool)):
        raise pickle.UnpicklingError("malformed tensor record")
    if metadata:  # e.g. a conjugate bit: ignoring it would give wrong values
        raise pickle.UnpicklingError("a tensor carries metadata this reader does not interpret")
    # as_strided checks the view against the storage's bounds
    return _TensorRecord(torch.as_strided(storage.flat, size, stride, storage_offset))


def _ts_rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> _TensorRecord:
    """Stands in for ``torch._utils._rebuild_parameter``: the tensor itself (a state dict holds plain tensors)."""
    if not isinstance(data, _TensorRecord):
        raise pickle.UnpicklingError("malformed parameter record")
    return data


def _ts_empty_hooks() -> dict:
    """Stands in for ``collections.OrderedDict()`` (a tensor's always-empty backward hooks)."""
    return {}


def _ts_type_tag(value: Any, type_str: Any) -> Any:
    """Stands in for ``torch.jit._pickle.restore_type_tag``: the TorchScript type tag is dropped."""
    return value


def _ts_plain_list(data: Any) -> Any:
    """Stands in for ``torch.jit._pickle.build_*list`` (legacy typed lists): the list itself."""
    return data


_TS_CALLABLES: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": _ts_rebuild_tensor,
    "torch._utils._rebuild_parameter": _ts_rebuild_parameter,
    "collections.OrderedDict": _ts_empty_hooks,
    "torch.jit._pickle.restore_type_tag": _ts_type_tag,
    **{f"torch.jit._pickle.build_{kind}list": _ts_plain_list for kind in ("int", "double", "bool", "tensor")},
}
"""The only callables data.pkl may name, each mapped to an inert function of ours (never torch's own)."""


class _TorchScriptUnpickler(pickle.Unpickler):
    """Reads a TorchScript ``data.pkl`` with an explicit allow-list; every other global is refused.

    ``read_record(name)`` returns the bytes of ``<archive>/<name>`` (tensor storages live in ``data/<key>``).
    """

    def __init__(self, data: bytes, read_record: Any) -> None:
        super().__init__(io.BytesIO(data))
        self._read_record = read_record
        self._storages: dict[str, _StorageRecord] = {}
        self._classes: dict[str, type[ScriptObjectStandIn]] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified in _TS_CALLABLES:
            return _TS_CALLABLES[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module.split(".", 1)[0] == "__torch__" and _SCRIPT_CLASS_NAME.fullmatch(qualified):
            return self._stand_in_class(qualified)
        raise _RefusedGlobal(qualified)

    def _stand_in_class(self, qualified: str) -> type[ScriptObjectStandIn]:
        # one subclass per TorchScript class, so error messages can name it; nothing is imported
        if qualified not in self._classes:
            self._classes[qualified] = type("ScriptObject", (ScriptObjectStandIn,), {"qualified_name": qualified})
        return self._classes[qualified]

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and re.fullmatch(r"\w{1,64}", pid[2]) and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, storage_type, numel)
        storage = self._storages[key]
        if str(storage.flat.dtype) != f"torch.{storage_type.dtype_name}":
            raise pickle.UnpicklingError(f"record data/{key} is used with two element types")
        return storage

    def _read_storage(self, key: str, storage_type: _StorageType, numel: int) -> _StorageRecord:
        """The record ``data/<key>`` as a flat tensor (the location it was saved from is ignored: CPU)."""
        import torch

        dtype = getattr(torch, storage_type.dtype_name)
        need = numel * torch.empty((), dtype=dtype).element_size()
        raw = self._read_record(f"data/{key}")
        if len(raw) < need:
            raise pickle.UnpicklingError(f"record data/{key} holds {len(raw)} bytes, {need} expected (truncated?)")
        if need == 0:
            return _StorageRecord(torch.empty(0, dtype=dtype))
        return _StorageRecord(torch.frombuffer(bytearray(memoryview(raw)[:need]), dtype=dtype))  # a writable copy


def _describe_script_object(obj: Any) -> str:
    return obj.qualified_name if isinstance(obj, ScriptObjectStandIn) else type(obj).__name__


def _is_script_module(obj: Any) -> bool:
    """A module's pickled state is its attribute dict, which always holds the ``training`` flag."""
    return (isinstance(obj, ScriptObjectStandIn) and isinstance(obj.state, dict)
            and all(isinstance(k, str) for k in obj.state) and isinstance(obj.state.get("training"), bool))


def _check_plain_state(obj: Any, where: str) -> None:
    # a non-dict state comes from a custom __getstate__: only the archive's __setstate__ knows its meaning
    if isinstance(obj, ScriptObjectStandIn) and not isinstance(obj.state, dict):
        raise _CustomScriptState(f"{where} ({obj.qualified_name}) is restored by its own TorchScript "
                                 "__setstate__ code, which is never run here")


def script_module_state_dict(root: Any) -> dict[str, "torch.Tensor"]:
    """The flat state dict of a module tree read by :class:`_TorchScriptUnpickler`.

    Keys are as ``torch.jit.load(...).state_dict()`` gives them: each module's tensor attributes
    (parameters and buffers) in attribute order, then its submodules, joined with dots. A plain tensor
    attribute that TorchScript declares as neither parameter nor buffer cannot be told apart without
    reading ``code/``; it is kept, so strict loading reports it as an unexpected key rather than
    dropping anything silently.
    """
    _check_plain_state(root, "the archive's top-level object")
    if not _is_script_module(root):
        raise _CustomScriptState(f"its top-level object ({_describe_script_object(root)}) is not a module")
    out: dict[str, "torch.Tensor"] = {}
    on_path: set[int] = set()

    def visit(module: ScriptObjectStandIn, prefix: str, depth: int) -> None:
        if depth > _MAX_MODULE_DEPTH or id(module) in on_path:
            raise pickle.UnpicklingError(f"module tree at {prefix or 'the root'} is cyclic or too deep")
        on_path.add(id(module))
        attrs: dict[str, Any] = module.state
        for name, value in attrs.items():
            if isinstance(value, _TensorRecord):
                out[prefix + name] = value.tensor
            else:
                _check_plain_state(value, f"attribute {prefix + name}")
        for name, value in attrs.items():
            if _is_script_module(value):
                visit(value, f"{prefix}{name}.", depth + 1)
        on_path.discard(id(module))

    visit(root, "", 0)
    return out


def _torchscript_prefix(names: list[str]) -> str:
    """The archive's top folder (``ViT-B-32`` for OpenAI's file), from its single ``<top>/data.pkl``."""
    tops = [n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(tops) != 1:
        raise pickle.UnpicklingError(f"expected one <archive>/data.pkl record, found {len(tops)}")
    return tops[0]


def _conversion_hint(path: Path) -> str:
    out = path.with_name(path.stem + ".state_dict.pt").name
    return (f"If you built this archive yourself and trust it, convert it once to a plain state dict, in its "
            f"folder: python -c \"import torch; torch.save(torch.jit.load('{path.name}').state_dict(), '{out}')\" "
            f"and pass {out} instead")


def read_torchscript_state(path: str | Path, *, model_name: str, advice: str) -> dict[str, "torch.Tensor"]:
    """The state dict of a TorchScript archive, read without running anything in it.

    Tensors come back in their stored dtype, on the CPU. A global outside the allow-list, or an object
    that needs its own ``__setstate__``, raises :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            prefix = _torchscript_prefix(zf.namelist())
            # raw records are in the writer's byte order; archives older than the "byteorder" record are little
            stored = (zf.read(f"{prefix}/byteorder").strip().decode("ascii", "replace")
                      if f"{prefix}/byteorder" in zf.namelist() else "little")
            if stored != sys.byteorder:
                raise pickle.UnpicklingError(f"the archive stores {stored[:20]}-endian tensors; this machine is "
                                             f"{sys.byteorder}-endian")
            unpickler = _TorchScriptUnpickler(zf.read(f"{prefix}/data.pkl"),
                                              lambda name: zf.read(f"{prefix}/{name}"))
            return script_module_state_dict(unpickler.load())
    except _RefusedGlobal as exc:
        raise CheckpointError(
            f"{model_name}: refused to read the TorchScript archive {path}: its data.pkl references the Python "
            f"global {exc.name}, which a weights file never needs. Nothing in it was executed. It is not the "
            f"published checkpoint or has been tampered with; {advice}. {_conversion_hint(path)}.") from None
    except _CustomScriptState as exc:
        raise CheckpointError(
            f"{model_name}: refused to read the TorchScript archive {path}: {exc}. Nothing in it was executed. "
            f"It is not the published checkpoint; {advice}. {_conversion_hint(path)}.") from None
    except Exception as exc:  # zip damage, missing record, malformed pickle or tensor record
        raise CheckpointError(
            f"{model_name}: {path} looks like a TorchScript archive but cannot be read ({_first_line(exc)}); "
            f"nothing in it was executed. It may be truncated (an interrupted download) or a different kind "
            f"of file; {advice}.") from None


def load_torch_file(path: str | Path, *, model_name: str, advice: str = "re-download it",
                    member_suffix: str = "pytorch_model.bin", safe_globals: Iterable[Any] = ()) -> Any:
    """Read a checkpoint file without executing code.

    Accepts a ``torch.save`` file (zip or legacy format; read weights-only), a TorchScript archive (its
    state dict, read by :func:`read_torchscript_state` without running it), a plain zip holding one
    ``*member_suffix`` (MedCLIP's download) or a directory holding ``member_suffix``. ``safe_globals`` are
    extra (stand-in, name) pairs for the weights-only unpickler.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = sorted(path.rglob(member_suffix))
        if len(candidates) != 1:
            raise CheckpointError(f"{model_name}: directory {path} holds {len(candidates)} files named "
                                  f"{member_suffix!r}; pass the file itself")
        path = candidates[0]
    if not path.is_file():
        raise CheckpointError(f"{model_name}: weights file {path} does not exist; {advice}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{model_name}: weights file {path} is empty (an interrupted download?); {advice}")
    names = _zip_names(path)
    if names is not None and _is_torchscript(names):
        return read_torchscript_state(path, model_name=model_name, advice=advice)
    if names is not None and not _is_torch_zip(names):
        members = [n for n in names if n.endswith(member_suffix)]
        if len(members) != 1:
            raise CheckpointError(f"{model_name}: zip file {path} holds {len(members)} members named "
                                  f"*{member_suffix} (expected exactly one); {advice}")
        with zipfile.ZipFile(path) as zf:
            try:
                data = zf.read(members[0])
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise CheckpointError(f"{model_name}: cannot read {members[0]} from {path} ({exc}); it may be "
                                      f"truncated; {advice}") from None
        return _torch_load(io.BytesIO(data), label=f"{path}!{members[0]}", model_name=model_name, advice=advice,
                           mmap=False, safe_globals=safe_globals)
    # mmap avoids a second in-memory copy of a 600 MB file; it only works on the zip format
    return _torch_load(str(path), label=str(path), model_name=model_name, advice=advice,
                       mmap=names is not None, safe_globals=safe_globals)


def _is_tensor_mapping(obj: Any) -> bool:
    import torch

    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def unwrap_state_dict(obj: Any, *, model_name: str, source: str | Path,
                      wrappers: tuple[str, ...] = ("state_dict", "model", "model_state_dict")) -> dict[str, "torch.Tensor"]:
    """A flat ``{name: tensor}`` state dict from a loaded checkpoint.

    Accepts the state dict itself or a training dict holding it under one of ``wrappers``; a
    ``module.`` prefix (DataParallel) is stripped when every key has it.
    """
    state: Any = obj
    if not _is_tensor_mapping(state) and isinstance(obj, Mapping):
        for key in wrappers:
            if key in obj and _is_tensor_mapping(obj[key]):
                state = obj[key]
                break
    if not _is_tensor_mapping(state):
        what = (f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping)
                else f"a {type(obj).__name__}")
        raise CheckpointError(f"{model_name}: {source} holds {what}, not a state dict of tensors. "
                              "Is this the right file for this model?")
    state = dict(state)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# --------------------------------------------------------------------------------------------------
# OmegaConf stand-ins (CXR-CLIP's config)

class _OmegaStandIn:
    """Inert stand-in for an omegaconf object in a pickle: it records the pickled state and does nothing else.

    The weights-only unpickler creates it with ``cls.__new__(cls)`` and then calls :meth:`__setstate__`;
    no omegaconf code (and no other code) runs.
    """

    _state: Any = None
    omegaconf_name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # reached only via a REDUCE; keep nothing
        self._state = None

    def __setstate__(self, state: Any) -> None:
        self._state = state


class _DictConfig(_OmegaStandIn):
    omegaconf_name = "omegaconf.dictconfig.DictConfig"


class _ListConfig(_OmegaStandIn):
    omegaconf_name = "omegaconf.listconfig.ListConfig"


class _ValueNode(_OmegaStandIn):
    omegaconf_name = "omegaconf.nodes.ValueNode"


class _Metadata(_OmegaStandIn):
    omegaconf_name = "omegaconf.base.Metadata"


class _TypeRef:
    """A type annotation named in OmegaConf metadata (``typing.Any``, ``builtins.int``...); not callable."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<type ref {self.name}>"


def _empty_resolver_cache(*_args: Any) -> dict:
    """Stands in for ``collections.defaultdict(dict)`` (OmegaConf's resolver cache): an empty plain dict."""
    return {}


_VALUE_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode",
                "InterpolationResultNode")
_TYPE_NAMES = ("typing.Any", "typing.Dict", "typing.List", "typing.Optional", "builtins.dict", "builtins.list",
               "builtins.int", "builtins.float", "builtins.str", "builtins.bool", "builtins.bytes",
               "builtins.object", "builtins.NoneType")

OMEGACONF_STANDINS: tuple[tuple[Any, str], ...] = (
    (_DictConfig, "omegaconf.dictconfig.DictConfig"),
    (_ListConfig, "omegaconf.listconfig.ListConfig"),
    (_Metadata, "omegaconf.base.Metadata"),
    (_Metadata, "omegaconf.base.ContainerMetadata"),
    *((_ValueNode, f"omegaconf.nodes.{n}") for n in _VALUE_NODES),
    *((_TypeRef(n), n) for n in _TYPE_NAMES),
    (_empty_resolver_cache, "collections.defaultdict"),
)
"""(stand-in, pickled global name) pairs for the weights-only unpickler.

Only names that OmegaConf 2.x writes for YAML-built configs are listed. Enum nodes, structured-config
dataclasses and anything else stay refused, so a file using them is rejected rather than half-read.
"""


def omegaconf_to_plain(obj: Any, _depth: int = 0) -> Any:
    """Turn a config unpickled with :data:`OMEGACONF_STANDINS` into plain dicts, lists and scalars."""
    if _depth > 200:
        raise CheckpointError("config nests deeper than 200 levels; refusing to convert it")
    if isinstance(obj, (_DictConfig, _ListConfig, _ValueNode)):
        state = obj._state if isinstance(obj._state, dict) else {}
        inner = state.get("_val") if isinstance(obj, _ValueNode) else state.get("_content")
        return omegaconf_to_plain(inner, _depth + 1)  # a None or "???"/"${...}" container stays as is
    if isinstance(obj, (_Metadata, _TypeRef)):
        return None
    if isinstance(obj, dict):
        return {k: omegaconf_to_plain(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(omegaconf_to_plain(v, _depth + 1) for v in obj)
    return obj


def read_training_checkpoint(path: str | Path, *, model_name: str,
                             advice: str = "re-download it") -> tuple[dict[str, "torch.Tensor"], dict | None]:
    """``(state_dict, config)`` of a training checkpoint such as CXR-CLIP's ``.tar``.

    The file is a ``torch.save`` dict with ``model`` (the state dict) and ``config`` (OmegaConf objects,
    read through inert stand-ins and returned as plain Python); optimizer and scheduler states are read the
    same safe way and dropped. A bare state dict is accepted too (config None).
    """
    obj = load_torch_file(path, model_name=model_name, advice=advice, safe_globals=OMEGACONF_STANDINS)
    if isinstance(obj, Mapping) and "model" in obj:
        state = unwrap_state_dict(obj["model"], model_name=model_name, source=path, wrappers=())
        config = omegaconf_to_plain(obj.get("config"))
        return state, config if isinstance(config, dict) else None
    if _is_tensor_mapping(obj):
        return unwrap_state_dict(obj, model_name=model_name, source=path), None
    what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
    raise CheckpointError(f"{model_name}: {path} holds {what}, not a training checkpoint with a 'model' entry; "
                          f"{advice}")


# --------------------------------------------------------------------------------------------------
# Key names that changed between library versions

# transformers 4.x -> 5.x names inside one Swin block, matched at the start of the block-relative name, so
# "attention.output.dense" can never be caught by the "output.dense" rule.
SWIN_V4_TO_V5: tuple[tuple[str, str], ...] = (
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.self.relative_position_index", "attention.relative_position_bias.relative_position_index"),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)

_SWIN_BLOCK = r"encoder\.layers\.\d+\.blocks\.\d+\."


def swin_key_style(module: "torch.nn.Module") -> str:
    """``"v5"`` if ``module``'s Swin blocks use transformers-5 names (``q_proj``...), else ``"v4"``."""
    names = [n for n, _ in module.named_parameters()]
    return "v5" if any(".attention.q_proj." in n for n in names) else "v4"


def remap_swin_keys(state: Mapping[str, Any], *, prefix: str, style: str) -> dict[str, Any]:
    """Rename the Swin block keys under ``prefix`` to transformers ``style`` (``"v4"`` or ``"v5"``).

    Keys of either style are accepted; keys outside ``prefix``'s Swin blocks (e.g. BERT's, which share
    names like ``attention.output.dense``) are left alone.
    """
    if style not in ("v4", "v5"):
        raise ValueError(f"style must be 'v4' or 'v5', not {style!r}")
    rules = SWIN_V4_TO_V5 if style == "v5" else tuple((new, old) for old, new in SWIN_V4_TO_V5)
    block = re.compile("^(" + re.escape(prefix) + _SWIN_BLOCK + ")(.*)$")
    out: dict[str, Any] = {}
    for key, value in state.items():
        match = block.match(key)
        if match:
            head, rest = match.groups()
            for old, new in rules:
                if rest.startswith(old):
                    key = head + new + rest[len(old):]
                    break
        out[key] = value
    return out


# Buffers that library code computes at construction (index tables), persistent in some versions only.
DERIVED_BUFFERS = ("position_ids", "relative_position_index", "token_type_ids")


def reconcile_derived_buffers(module: "torch.nn.Module", state: Mapping[str, "torch.Tensor"], *, model_name: str,
                              source: str | Path) -> tuple[dict[str, "torch.Tensor"], list[str]]:
    """Handle index buffers that a checkpoint and the installed library disagree on persisting.

    A checkpoint key that is a *non-persistent* buffer of ``module`` (BERT ``position_ids`` and Swin
    ``relative_position_index`` under recent transformers) is compared with the module's own value and
    dropped; a persistent derived buffer that the checkpoint lacks is reported as ignorable. Returns
    ``(state without those keys, ignore_missing)``.
    """
    import torch

    persistent = set(module.state_dict())
    buffers = dict(module.named_buffers())
    kept: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in persistent and key in buffers:
            own = buffers[key]
            # compared flat: transformers 5 stores Swin's (49, 49) index table as (2401,)
            if own.numel() != value.numel() or not torch.equal(own.reshape(-1).cpu(), value.reshape(-1).to(own.dtype).cpu()):
                raise CheckpointError(f"{model_name}: buffer {key} in {source} differs from the value this "
                                      "architecture computes; the checkpoint was made for a different configuration")
            continue
        kept[key] = value
    ignore_missing = [k for k in persistent if k not in kept and k.rsplit(".", 1)[-1] in DERIVED_BUFFERS]
    return kept, ignore_missing


def load_state_strict(module: "torch.nn.Module", state: Mapping[str, "torch.Tensor"], *, model_name: str,
                      source: str | Path, ignore_unexpected: Iterable[str] = (),
                      ignore_missing: Iterable[str] = ()) -> None:
    """Copy ``state`` into ``module`` requiring every key on both sides and matching shapes.

    fp16/bf16 tensors are accepted (copied into the module's dtype). ``ignore_*`` name known benign
    differences (e.g. BERT's ``position_ids`` buffer).
    """
    own = module.state_dict()
    skip_u, skip_m = set(ignore_unexpected), set(ignore_missing)
    missing = sorted(k for k in own if k not in state and k not in skip_m)
    unexpected = sorted(k for k in state if k not in own and k not in skip_u)
    wrong_shape = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                         for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label} key(s): {shown}")
        guess = guess_checkpoint_format(state)
        hint = f" It looks like {guess}." if guess else ""
        raise CheckpointError(f"{model_name}: {source} does not match the model ({'; '.join(parts)}).{hint} "
                              "Is this the right file for this model?")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
