"""Atomic file writes: readers (a later run, the report, CI) never see half a file.

Everything is written to a temporary file in the target's directory, flushed to disk, then renamed over
the target. A run killed at any point leaves either the old file or the new one (plus, at worst, a
dot-prefixed ``.tmp`` file that nothing reads).

A target that cannot be written (a directory where a file is wanted, a file where a folder is wanted, a
read-only folder, a full disk) raises :class:`OutputError` naming the path and what to do; the temporary
file is removed first, so nothing half-written is left behind.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

__all__ = ["OutputError", "atomic_open", "atomic_write_text", "check_writable_dir", "check_writable_file"]


class OutputError(OSError):
    """An output path that cannot be written; the message names the path and what to do.

    ``path`` is the path the caller asked for (the file or folder named by the user).
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)

    def __str__(self) -> str:  # OSError would print "(errno) message" if errno were set; keep it plain
        return str(self.args[0])


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (what a ``mkdir -p`` would have to write into)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be created in (or under) ``folder``, or None. Creates and removes one empty probe."""
    here = _existing_ancestor(folder)
    if not here.is_dir():
        return f"{here} is a file, not a directory"
    try:  # a real probe: os.access lies for root and for read-only mounts checked by permission bits only
        fd, probe = tempfile.mkstemp(prefix=".cxr-robust-probe.", dir=here)
    except OSError as exc:
        return _describe(exc, here)
    os.close(fd)
    os.unlink(probe)
    return None


def _describe(exc: OSError, folder: Path) -> str:
    """A short reason for a failed write into ``folder``."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot write into {folder} (permission denied)"
    if exc.errno == errno.EROFS:
        return f"cannot write into {folder} (read-only file system)"
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device of {folder}"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"a part of {folder} is a file, not a directory"
    return f"cannot write into {folder} ({exc.strerror or exc})"


def check_writable_dir(path: str | Path, what: str = "output directory") -> None:
    """Raise :class:`OutputError` unless ``path`` is (or can be created as) a writable directory.

    Nothing is created: a missing folder is checked through its nearest existing ancestor.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file; pass a directory", path)
    problem = _folder_problem(path)
    if problem:
        raise OutputError(f"{what} {path}: {problem}; choose another path", path)


def check_writable_file(path: str | Path, what: str = "output file") -> None:
    """Raise :class:`OutputError` unless ``path`` can be written as a file (its folder created if needed)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; pass a file path", path)
    problem = _folder_problem(path.parent)
    if problem:
        raise OutputError(f"{what} {path}: {problem}; choose another path", path)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: object) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` when the block ends without error.

    Raises :class:`OutputError` (an ``OSError``) when ``path`` cannot be written, including a disk that fills
    up inside the block; other errors raised inside the block propagate unchanged. Either way the temporary
    file is removed.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory; pass a file path", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_mkdir_reason(exc, path.parent)}; choose another path",
                          path) from exc
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:  # type: ignore[call-overload]
            try:
                yield fh
            except OSError as exc:
                if exc.errno in _DISK_ERRNOS:  # the caller's write hit a full disk: say so, with the path
                    raise _write_error(exc, path) from exc
                raise
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise _write_error(exc, path) from exc
        try:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and baselines are shared artifacts
            os.replace(tmp, path)
        except OSError as exc:
            raise _write_error(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
"""Errors of the device rather than of the caller's code, converted to :class:`OutputError`."""


def _mkdir_reason(exc: OSError, folder: Path) -> str:
    """Why the folder of a target could not be made or written, pointing at the culprit."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        culprit = _existing_ancestor(folder)
        return f"{culprit} is a file, not a directory"
    return _describe(exc, folder)


def _write_error(exc: OSError, path: Path) -> OutputError:
    """An OutputError for a failure while writing or renaming onto ``path``."""
    if isinstance(exc, OutputError):
        return exc
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"cannot write {path}: no space left on device; free disk space or choose another "
                           "path", path)
    return OutputError(f"cannot write {path}: {_describe(exc, path.parent)}; choose another path", path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; :class:`OutputError` when it cannot be written."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
