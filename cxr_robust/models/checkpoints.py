"""Reading checkpoint files safely and loading them strictly.

Every published key must be consumed: a checkpoint that leaves parameters at their random initialisation
would make a benchmark silently measure noise. Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

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
        raise CheckpointError(f"{model_name}: {source} does not match the model ({'; '.join(parts)}). "
                              "Is this the right file for this model?")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
