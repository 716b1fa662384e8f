"""On-disk embedding cache: content-keyed, checksummed, atomic, safe under parallel workers.

An entry is one ``.npz`` file holding the array and a JSON header with the full key and the SHA-256 of
the array bytes. Writes go to a temporary file that is renamed into place, so a reader never sees half a
file; a lock file per entry makes concurrent pytest-xdist workers wait for one computation instead of
repeating it. An entry whose checksum or key does not match (truncated, corrupted, hash collision) is
deleted and rebuilt, never used; temporary files left by a killed writer are never read, and are deleted
when their entry is next computed. A failed write (disk full, directory not writable) raises
:class:`CacheError` naming the directory and leaves no file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
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

    def __init__(self, root: str | Path | None = None, lock_timeout: float = 3600.0, refresh: bool = False) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.lock_timeout = lock_timeout
        self.refresh = refresh
        """Recompute every entry this run asks for and overwrite it (``--cxr-refresh-cache``)."""
        self.stats = CacheStats()

    def path_for(self, kind: str, key: dict[str, Any]) -> Path:
        """File of the entry for ``key`` (names hold only hashes, never data)."""
        return self.root / kind / f"{key_digest({'kind': kind, **key})[:40]}.npz"

    def contains(self, kind: str, key: dict[str, Any]) -> bool:
        """Whether a valid entry for ``key`` exists (never, under ``refresh``); it is not counted as a hit."""
        if self.refresh:
            return False
        cached, _ = self._read(self.path_for(kind, key), {"kind": kind, **key})
        return cached is not None

    def get_or_compute(self, kind: str, key: dict[str, Any], compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        """The cached array for ``key``, computing and storing it on a miss. Returns ``(array, was_hit)``.

        Concurrent callers with the same key (pytest-xdist workers sharing the directory) wait on one lock
        per entry, so exactly one of them computes; the others then read its entry.
        """
        from filelock import FileLock, Timeout

        path = self.path_for(kind, key)
        self._ensure_dir(path.parent)
        full_key = {"kind": kind, **key}
        cached, _ = (None, "refresh") if self.refresh else self._read(path, full_key)
        if cached is not None:
            self.stats.count(kind, "hits")
            return cached, True
        lock = FileLock(str(path) + ".lock")
        try:
            lock.acquire(timeout=self.lock_timeout)
        except Timeout as exc:
            raise CacheError(f"waited {self.lock_timeout:.0f}s for the cache lock {path}.lock; another process "
                             "holds it (delete the .lock file if no other run is active)") from exc
        except OSError as exc:  # the lock file itself cannot be created
            raise CacheError(f"cannot create the lock file {path}.lock ({exc.strerror or exc}); point --cache-dir "
                             f"or ${DEFAULT_CACHE_ENV} at a writable directory") from exc
        try:
            # Another worker may have written the entry meanwhile. An entry found corrupt only now, under the
            # lock, is rebuilt (a corrupt read outside the lock may be a race, so it is not acted on there).
            cached, status = (None, "refresh") if self.refresh else self._read(path, full_key)
            if cached is not None:
                self.stats.count(kind, "hits")
                return cached, True
            self._remove_stale_tmp(path)
            if status == "corrupt":
                self.stats.count(kind, "rebuilt_corrupt")
                path.unlink(missing_ok=True)
            array = np.ascontiguousarray(compute())
            self._write(path, full_key, array)
        finally:
            lock.release()
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

    def _read(self, path: Path, full_key: dict[str, Any]) -> tuple[np.ndarray | None, str]:
        """``(array, "ok")``, ``(None, "missing")`` or ``(None, "corrupt")``: checksum, key and shape must match."""
        if not path.exists():
            return None, "missing"
        try:
            with np.load(path, allow_pickle=False) as npz:
                header = json.loads(str(npz["header"]))
                array = npz["array"]
            ok = (header.get("key") == json.loads(json.dumps(full_key, sort_keys=True, default=str))
                  and header.get("sha256") == hashlib.sha256(array.tobytes()).hexdigest()
                  and list(array.shape) == header.get("shape") and str(array.dtype) == header.get("dtype"))
        except FileNotFoundError:  # removed by another worker between exists() and open
            return None, "missing"
        except Exception:  # noqa: BLE001 - any damage (bad zip, bad header, huge shape...) means "rebuild"
            ok = False
        return (array, "ok") if ok else (None, "corrupt")

    @staticmethod
    def _remove_stale_tmp(path: Path) -> None:
        """Delete temporary files of ``path``'s entry left by a killed writer (called under the entry lock,
        so no live writer can own them)."""
        for tmp in path.parent.glob(f".{path.stem}.*.tmp"):
            tmp.unlink(missing_ok=True)

    def _write(self, path: Path, full_key: dict[str, Any], array: np.ndarray) -> None:
        header = {"key": json.loads(json.dumps(full_key, sort_keys=True, default=str)),
                  "sha256": hashlib.sha256(array.tobytes()).hexdigest(), "shape": list(array.shape),
                  "dtype": str(array.dtype)}
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, array=array, header=np.array(json.dumps(header)))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as exc:  # nothing half-written is left behind, whatever stopped the write
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            if not isinstance(exc, OSError):
                raise
            raise CacheError(f"cannot write cache entry {path} ({exc.strerror or exc}); free disk space or point "
                             f"--cache-dir / ${DEFAULT_CACHE_ENV} elsewhere") from exc
