"""Writing files so that a reader sees the old file or the whole new one, never a part of one.

The one home of the temp-file-then-rename rule used by identity files, encoder checkpoints and every file the
training pipeline writes, and of publishing a new file without overwriting one (:func:`publish_file` with
``overwrite=False``: of several writers of one name exactly one wins).

Temp files are created with mode 0o666 so the kernel applies the user's umask: the finished file gets the
permissions any other file the user writes would get (``tempfile.mkstemp`` would leave it readable by its
owner alone, a surprise on a shared training cluster). A temp file is flushed to disk
(fsync) before it gets its final name: otherwise a power cut can leave the final name on an empty or partial
file, which a resuming training stage would then take as finished.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

TEMP_SUFFIX = ".part"
_REPLACE_ATTEMPTS = 20
_REPLACE_RETRY_SECONDS = 0.05
_LOCK_SUFFIX = ".lock"
_STALE_LOCK_SECONDS = 30.0
_NO_HARD_LINK_ERRNOS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS, errno.EMLINK}
)


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
    publish_file(target, write, overwrite=True, prefix=f".{target.name}.")
    return target


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    return write_atomic(path, lambda temp: temp.write_bytes(data))


def publish_file(
    target: Path, write: Callable[[Path], None], *, overwrite: bool, prefix: str
) -> bool:
    """Fill a temp file beside ``target`` with ``write(temp_path)``, sync it, then give it ``target``'s name.

    With ``overwrite`` an existing file is replaced; without, the file is published only if no file has that
    name, and False is returned (nothing changed) if one has; of several writers of one new name exactly one
    wins. The temp file (and a lock file, see :func:`_publish_new`) is named ``prefix`` + random + TEMP_SUFFIX
    and is always removed. The folder must exist; OSError from the file system and any error of ``write``
    propagate.
    """
    temp = write_temp_file(target.parent, prefix, write)
    try:
        if overwrite:
            replace_file(temp, target)
            return True
        return _publish_new(temp, target, prefix)
    finally:
        temp.unlink(missing_ok=True)


def _publish_new(temp: Path, target: Path, prefix: str) -> bool:
    """Give the complete file ``temp`` the name ``target`` only if no file has that name; False if one has.

    Readers never see a partial file and two writers never both succeed:
    - os.link creates the final name atomically and fails if it exists (POSIX link(2); on Windows,
      CreateHardLinkW, which also refuses an existing name). The temp file is then removed.
    - Where hard links are unsupported (FAT/exFAT, some network shares): on Windows os.rename refuses an
      existing target (MoveFileExW without REPLACE_EXISTING), which is what we need; on POSIX, rename
      overwrites, so writers first take a lock file created with O_CREAT | O_EXCL, then check and replace.
    """
    try:
        os.link(temp, target)
    except FileExistsError:
        return False
    except OSError as error:
        # Windows reports a volume without hard links in several ways (ERROR_INVALID_FUNCTION, ...); the
        # rename that follows refuses an existing name by itself and raises real problems (a full disk).
        if os.name != "nt" and error.errno not in _NO_HARD_LINK_ERRNOS:
            raise
        return _publish_new_without_links(temp, target, prefix)
    temp.unlink(missing_ok=True)
    return True


def _publish_new_without_links(temp: Path, target: Path, prefix: str) -> bool:
    if os.name == "nt":
        try:
            os.rename(temp, target)
        except FileExistsError:
            return False
        return True
    lock = target.with_name(prefix + target.name + _LOCK_SUFFIX)
    _take_lock(lock)
    try:
        if target.exists():
            return False
        os.replace(temp, target)
        return True
    finally:
        lock.unlink(missing_ok=True)


def _take_lock(lock: Path) -> None:
    """Create ``lock`` exclusively, waiting for another writer; a stale lock (left by a crash) is taken.

    A lock is stale when its mtime is old, or (clocks of network shares disagree) when this writer has seen
    that same lock file for _STALE_LOCK_SECONDS. The wait starts again for each new lock file, so a waiter
    never removes a lock another waiter has only just taken.
    """
    seen, deadline = None, 0.0
    while True:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return
        except FileExistsError:
            try:
                status = lock.stat()
            except FileNotFoundError:
                continue
            if (status.st_ino, status.st_mtime_ns) != seen:
                seen, deadline = (status.st_ino, status.st_mtime_ns), time.monotonic() + _STALE_LOCK_SECONDS
            if time.time() - status.st_mtime > _STALE_LOCK_SECONDS or time.monotonic() > deadline:
                lock.unlink(missing_ok=True)
                continue
            time.sleep(0.01)
