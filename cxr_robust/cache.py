"""On-disk embedding cache: content-keyed, checksummed, atomic, safe under parallel workers.

An entry is one ``.npz`` file holding the array and a JSON header with the full key and the SHA-256 of
the array bytes. Writes go to a temporary file that is renamed into place, so a reader never sees half a
file; a lock file per entry makes concurrent pytest-xdist workers wait for one computation instead of
repeating it. An entry whose checksum or key does not match (truncated, corrupted, hash collision) is
deleted and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

DEFAULT_CACHE_ENV = "CXR_ROBUST_CACHE_DIR"


class CacheError(OSError):
    """The cache directory cannot be used; the message names it and what to do."""


def default_cache_dir() -> Path:
    """``$CXR_ROBUST_CACHE_DIR``, else ``~/.cache/cxr_robust``."""
    env = os.environ.get(DEFAULT_CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cxr_robust"


def key_digest(key: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``key``."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class CacheStats:
    """What the cache did during a run (shown in the report metadata)."""

    hits: int = 0
    misses: int = 0
    rebuilt_corrupt: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, kind: str, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        self.by_kind.setdefault(kind, {}).setdefault(what, 0)
        self.by_kind[kind][what] += 1


class EmbeddingCache:
    """A directory of cached arrays keyed by dictionaries describing everything that produced them."""

    def __init__(self, root: str | Path | None = None, lock_timeout: float = 3600.0) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.lock_timeout = lock_timeout
        self.stats = CacheStats()

    def path_for(self, kind: str, key: dict[str, Any]) -> Path:
        """File of the entry for ``key`` (names hold only hashes, never data)."""
        return self.root / kind / f"{key_digest({'kind': kind, **key})[:40]}.npz"

    def get_or_compute(self, kind: str, key: dict[str, Any], compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        """The cached array for ``key``, computing and storing it on a miss. Returns ``(array, was_hit)``."""
        from filelock import FileLock, Timeout

        path = self.path_for(kind, key)
        self._ensure_dir(path.parent)
        full_key = {"kind": kind, **key}
        cached = self._read(path, full_key, kind)
        if cached is not None:
            self.stats.count(kind, "hits")
            return cached, True
        try:
            with FileLock(str(path) + ".lock", timeout=self.lock_timeout):
                cached = self._read(path, full_key, kind)  # another worker may have written it meanwhile
                if cached is not None:
                    self.stats.count(kind, "hits")
                    return cached, True
                array = np.ascontiguousarray(compute())
                self._write(path, full_key, array)
        except Timeout as exc:
            raise CacheError(f"waited {self.lock_timeout:.0f}s for the cache lock {path}.lock; another process "
                             "holds it (delete the .lock file if no other run is active)") from exc
        self.stats.count(kind, "misses")
        return array, False

    def _ensure_dir(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the embedding cache directory {directory} ({exc.strerror}); "
                             f"point --cache-dir or ${DEFAULT_CACHE_ENV} at a writable directory") from exc
        if not os.access(directory, os.W_OK):
            raise CacheError(f"the embedding cache directory {directory} is not writable; point --cache-dir or "
                             f"${DEFAULT_CACHE_ENV} at a writable directory")

    def _read(self, path: Path, full_key: dict[str, Any], kind: str) -> np.ndarray | None:
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                header = json.loads(str(npz["header"]))
                array = npz["array"]
            ok = (header.get("key") == json.loads(json.dumps(full_key, sort_keys=True, default=str))
                  and header.get("sha256") == hashlib.sha256(array.tobytes()).hexdigest()
                  and list(array.shape) == header.get("shape"))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError):
            ok = False
        if ok:
            return array
        # Corrupt or foreign entry: remove it so it is rebuilt, never used.
        self.stats.count(kind, "rebuilt_corrupt")
        path.unlink(missing_ok=True)
        return None

    def _write(self, path: Path, full_key: dict[str, Any], array: np.ndarray) -> None:
        header = {"key": json.loads(json.dumps(full_key, sort_keys=True, default=str)),
                  "sha256": hashlib.sha256(array.tobytes()).hexdigest(), "shape": list(array.shape),
                  "dtype": str(array.dtype)}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, array=array, header=np.array(json.dumps(header)))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise CacheError(f"cannot write cache entry {path} ({exc.strerror or exc}); free disk space or point "
                             f"--cache-dir / ${DEFAULT_CACHE_ENV} elsewhere") from exc
