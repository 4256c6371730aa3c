"""Crash-safe files: append-only JSON lines, atomic replacement, and path checks.

Every file metarl_bench writes goes through here: the results store (``evaluation.store``),
the training log and its checkpoint (``training.state``). The rules, tested once in
``tests/test_files.py``:

* **Append-only JSON lines.** A line is written with one ``write`` of whole lines, then
  ``fsync``; a file is never truncated or rewritten, under an exclusive advisory lock so that
  two writers never interleave bytes. The one exception is a *torn* last line: bytes after
  the last newline that are a prefix of a line (a write cut short by a crash or a full disk).
  It holds nothing complete and is removed before the next append, so that append cannot
  glue onto it; a whole last line whose newline alone is missing is ended and kept.
* **Reading** leaves a torn last line out, and nothing else: anything else is the reader's
  to judge (each file's own schema).
* **Atomic replacement** (a checkpoint, a saved suite): a temporary file in the same folder,
  written, flushed and fsynced, then ``os.replace``d over the target and the folder fsynced,
  so a reader or a crash sees the old file or the new one, never a mix.
* **Path checks** (``check_path``, ``check_folder``) refuse, without creating or changing
  anything, a path that could not be written, with one line naming the option.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import tempfile
from typing import Any, Iterable

from metarl_bench._src.core.errors import ParameterError


def check_path(path: Any, option: str = "jsonl", what: str = "a results file") -> str:
    """A file path that can be appended to, checked without creating or changing it.

    ``what``: the kind of file expected at ``path``, as refusals name it.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ParameterError(f"{option} must be a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not path.strip():
        raise ParameterError(f"{option} must be a file path, got an empty string")
    if os.path.isdir(path):
        raise ParameterError(f"{option} {path!r} is a directory, not {what}")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise ParameterError(f"{option} {path!r} cannot be written: permission denied")
    else:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ParameterError(f"{option} {path!r} cannot be written: no folder {folder!r}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ParameterError(f"{option} {path!r} cannot be written: permission denied "
                                 f"in {folder!r}")
    return path


def check_folder(path: Any, option: str = "out") -> str:
    """A folder that exists or can be created, checked without creating anything."""
    if not isinstance(path, (str, os.PathLike)):
        raise ParameterError(f"{option} must be a folder path, got {type(path).__name__}")
    path = os.fspath(path)
    if not path.strip():
        raise ParameterError(f"{option} must be a folder path, got an empty string")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ParameterError(f"{option} {path!r} exists and is not a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ParameterError(f"{option} {path!r} cannot be created: {existing!r} is not a "
                             f"folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ParameterError(f"{option} {path!r} cannot be written: permission denied in "
                             f"{existing!r}")
    return path


def make_folder(path: Any, option: str = "out") -> str:
    """Create the folder ``path`` (checked first) and its parents; one line if it cannot be."""
    path = check_folder(path, option)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ParameterError(f"{option} {path!r} cannot be created: {exc.strerror}") from None
    return path


def is_regular(path: str) -> bool:
    """Whether ``path`` is a regular file (not missing, a folder or a device)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


# --- append-only JSON lines ----------------------------------------------------------------

def plain(value: Any) -> Any:
    """JSON-ready copy: NaN and infinities become None (strict JSON has neither); arrays and
    tensors (e.g. in a plug-in task's parameters) become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy, torch
        return plain(value.tolist())
    return value



def torn_line(raw: bytes, opening: bytes) -> bool:
    """Whether a last line with no newline is a line cut short (not a whole one) of a file
    whose every line begins with ``opening``."""
    if not (opening.startswith(raw) or raw.startswith(opening)):
        return False
    try:
        json.loads(raw)
    except ValueError:
        return True
    return False


def complete_lines(data: bytes, opening: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The non-blank lines of a JSON-lines file's bytes as (line number, bytes), and the
    byte length of the file without its torn last line (``torn_line``), which is left out."""
    pieces = data.split(b"\n")
    end = len(data)
    if pieces[-1] and torn_line(pieces[-1], opening):
        end -= len(pieces[-1])
        pieces = pieces[:-1]
    return [(number, raw) for number, raw in enumerate(pieces, 1) if raw.strip()], end


def encode_lines(lines: Iterable[dict[str, Any]]) -> bytes:
    """Whole lines of strict JSON (no NaN), each ending in a newline."""
    return "".join(json.dumps(line, allow_nan=False) + "\n" for line in lines).encode()


def lock(fd: int, *, wait: bool = True) -> None:
    """An exclusive advisory lock on ``fd``, released when it is closed. ``wait=False``
    raises :class:`BlockingIOError` at once when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: one writer per file, unchecked
        return
    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))


def repair_tail(fd: int, opening: bytes) -> None:
    """Remove a torn last line (bytes after the last newline that are a cut-short line), or
    end a whole last line whose newline is missing (written by hand), so that the next
    append starts a line of its own."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        return
    if os.pread(fd, 1, info.st_size - 1) == b"\n":
        return
    end = info.st_size
    while end > 0:
        start = max(0, end - 65536)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if torn_line(os.pread(fd, info.st_size - end, end), opening):
        os.ftruncate(fd, end)
    else:
        os.write(fd, b"\n")


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` (``os.write`` may write fewer), then flush it to disk."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    sync(fd)


def sync(fd: int) -> None:
    """``fsync``, where the file supports it (a device such as /dev/null does not)."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):
            raise


def append_lines(path: str, lines: Iterable[dict[str, Any]], opening: bytes) -> None:
    """Append whole JSON lines to ``path`` (created if missing) under the file's lock,
    waiting for another writer, after repairing a torn tail; raises OSError."""
    data = encode_lines(lines)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        lock(fd)
        repair_tail(fd, opening)
        write_all(fd, data)
    finally:
        os.close(fd)


# --- atomic replacement --------------------------------------------------------------------

def write_atomically(path: str, data: bytes | str) -> None:
    """Replace ``path`` with ``data``: a reader, or a crash, sees the old file or the new
    one. The temporary file lies in the same folder (``os.replace`` cannot cross file
    systems) and is removed if anything fails; raises OSError."""
    if isinstance(data, str):
        data = data.encode()
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".",
                                     suffix=".tmp")
    try:
        try:
            if hasattr(os, "fchmod"):  # as an appended file is created (mkstemp: 0o600)
                os.fchmod(fd, 0o644)
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        folder_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder_fd)
    except OSError:
        pass
    finally:
        os.close(folder_fd)
