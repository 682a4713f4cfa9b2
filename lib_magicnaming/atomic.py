"""Writing files so that a reader sees the old file or the whole new one, never a part of one.

The one home of the temp-file-then-rename rule used by identity files, encoder checkpoints and every file the
training pipeline writes. Temp files are created with mode 0o666 so the kernel applies the user's umask: the
finished file gets the permissions any other file the user writes would get (``tempfile.mkstemp`` would leave
it readable by its owner alone, a surprise on a shared training cluster).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

TEMP_SUFFIX = ".part"


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


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temp_path)`` to fill a temp file beside ``path``, then rename it onto ``path``.

    The folder is created if needed. On any error the temp file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp = create_temp_file(target.parent, prefix=f".{target.name}.")
    os.close(descriptor)
    try:
        write(temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    return write_atomic(path, lambda temp: temp.write_bytes(data))
