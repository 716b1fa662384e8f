"""What a model computes, as a cache key: its declared fingerprint, its weights as loaded, and its code.

A declared fingerprint (``RetrievalModel.fingerprint()``) names the weights *file*; it cannot see a model
whose weights were changed in memory after loading, nor a model whose code changed without a version bump.
The identity therefore also holds:

* ``state_sha256``: a hash of every parameter and buffer of the model's torch modules, as they are now (in
  memory, on whatever device), with their names, dtypes and shapes;
* ``code_sha256``: a hash of the source files of the modules that define the model's class (and its base
  classes) and of the modules named in ``code_modules`` (the registry factory's module). Hashing source was
  chosen over a declared version because nobody can forget to bump it: any edit re-encodes once.

Hashing costs about one pass over the weights (~0.3 s for 150 M parameters on a CPU), once per sweep.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import torch

    from cxr_robust.models.base import RetrievalModel

_CHUNK = 1 << 24  # bytes per hash update: bounds the extra memory when a tensor is copied off the device


def model_identity(model: "RetrievalModel", code_modules: Iterable[str] = ()) -> dict[str, Any]:
    """The model's declared fingerprint plus ``state_sha256`` and ``code_sha256`` (see the module docstring)."""
    identity = dict(model.fingerprint())
    modules = find_torch_modules(model)
    identity["state_sha256"] = state_sha256(modules) if modules else None
    identity["code_sha256"] = code_sha256(type(model), code_modules)
    return identity


def find_torch_modules(model: Any) -> list["torch.nn.Module"]:
    """``model.torch_modules()``, else the ``torch.nn.Module`` attributes of the model object itself.

    A custom model that does not declare its modules is still hashed by what it holds.
    """
    import torch

    declared = list(model.torch_modules()) if hasattr(model, "torch_modules") else []
    if declared:
        return declared
    found = []
    for value in vars(model).values():
        if isinstance(value, torch.nn.Module):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, torch.nn.Module))
    return found


def state_sha256(modules: Iterable["torch.nn.Module"]) -> str:
    """SHA-256 over every named parameter and buffer (name, dtype, shape, bytes) of ``modules``."""
    import torch

    digest = hashlib.sha256()
    for i, module in enumerate(modules):
        state = module.state_dict(keep_vars=False)
        for name in sorted(state):
            tensor = state[name]
            if not isinstance(tensor, torch.Tensor):
                digest.update(f"{i}.{name}={tensor!r};".encode())
                continue
            digest.update(f"{i}.{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            flat = tensor.detach().reshape(-1)
            if flat.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the same bits as int16
                flat = flat.view(torch.int16)
            step = max(1, _CHUNK // max(1, flat.element_size()))
            for start in range(0, flat.numel(), step):
                digest.update(flat[start:start + step].cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def code_sha256(cls: type, code_modules: Iterable[str] = ()) -> str:
    """SHA-256 of the source files defining ``cls`` (its MRO) and the named modules, in a stable order."""
    files: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins", "abc"):
            continue
        path = _source_file(sys.modules.get(klass.__module__))
        if path:
            files.add(path)
    for name in code_modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue  # the factory was imported to build the model; if it is gone now, its class still counts
        path = _source_file(module)
        if path:
            files.add(path)
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(Path(path).name.encode() + b"\0" + _file_digest(path).encode() + b"\0")
    return digest.hexdigest()


def _source_file(module: Any) -> str | None:
    if module is None:
        return None
    try:
        path = inspect.getsourcefile(module)
    except TypeError:  # a built-in or C extension module has no source to hash
        return None
    return path if path and Path(path).is_file() else None


@lru_cache(maxsize=256)
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
