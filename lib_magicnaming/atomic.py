"""Writing files so that a reader sees the old file or the whole new one, never a part of one.

The one home of the temp-file-then-rename rule used by identity files, encoder checkpoints and every file the
training pipeline writes. Temp files are created with mode 0o666 so the kernel applies the user's umask: the
finished file gets the permissions any other file the user writes would get (``tempfile.mkstemp`` would leave
it readable by its owner alone, a surprise on a shared training cluster). A temp file is flushed to disk
(fsync) before it gets its final name: otherwise a power cut can leave the final name on an empty or partial
file, which a resuming training stage would then take as finished.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

TEMP_SUFFIX = ".part"
_REPLACE_ATTEMPTS = 20
_REPLACE_RETRY_SECONDS = 0.05


def create_temp_file(folder: Path, prefix: str, suffix: str = TEMP_SUFFIX) -> tuple[int, Path]:
    """Create a new, empty file in ``folder`` (same file system as the final name); return (fd, path)."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder}")


def write_temp_file(folder: Path, prefix: str, write: Callable[[Path], None]) -> Path:
    """A new temp file in ``folder`` filled by ``write(temp_path)`` and synced to disk; the caller renames it.

    On any error the temp file is removed.
    """
    descriptor, temp = create_temp_file(folder, prefix)
    os.close(descriptor)
    try:
        write(temp)
        with open(temp, "rb+") as file:  # writable: Windows cannot flush a read-only handle
            os.fsync(file.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def replace_file(source: Path, target: Path) -> None:
    """``os.replace``, retried briefly on Windows, where it fails while another process holds the target."""
    for attempt in range(_REPLACE_ATTEMPTS):
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if os.name != "nt" or attempt == _REPLACE_ATTEMPTS - 1:
                raise
            time.sleep(_REPLACE_RETRY_SECONDS)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temp_path)`` to fill a temp file beside ``path``, sync it, then rename it onto ``path``.

    The folder is created if needed. On any error the temp file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = write_temp_file(target.parent, prefix=f".{target.name}.", write=write)
    try:
        replace_file(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    return write_atomic(path, lambda temp: temp.write_bytes(data))
