"""The names list: well-known people whose F_IDs measure a checkpoint's name space.

A names list is a UTF-8 text file, one name per line; blank lines and lines starting with ``#`` are skipped,
surrounding blanks are stripped and a name listed twice counts once. The extension ships one
(:data:`SHIPPED_NAMES_LIST`, ``lib_magicnaming/data/well_known_people.txt``); the MagicNaming names-list
setting points at a user's own instead. A list is known by its hash (:func:`names_list_hash`, over the names
as read, so comments and blank lines do not change it): the name-space statistics of a checkpoint are cached
per (checkpoint hash, list hash).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from lib_magicnaming.constants import SHORT_HASH_CHARS
from lib_magicnaming.errors import NamespaceError

SHIPPED_NAMES_LIST = Path(__file__).resolve().parent / "data" / "well_known_people.txt"
MIN_NAMES = 2
"""Statistics need two names at least (a principal axis needs a spread); a useful list holds hundreds."""
MAX_NAMES = 100_000
MAX_FILE_BYTES = 16 << 20
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class NamesList:
    """The names of one list, in file order, and its hash."""

    names: tuple[str, ...]
    sha256: str
    """:func:`names_list_hash` of ``names``."""
    label: str
    """What to call the list in messages: ``shipped list`` or the file's name (never a full path)."""

    @property
    def short_hash(self) -> str:
        """The first SHORT_HASH_CHARS hex digits of the list's hash (in sampled identities' origin)."""
        return self.sha256[:SHORT_HASH_CHARS]


def names_list_hash(names: tuple[str, ...] | list[str]) -> str:
    """sha256 (hex) of the names joined by newlines, UTF-8: the same names in one order, the same hash."""
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def parse_names(text: str, label: str) -> NamesList:
    """A :class:`NamesList` from a list's text; NamespaceError naming the line of a bad name."""
    names: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if len(name) > MAX_NAME_CHARS:
            raise NamespaceError(f"names list {label}, line {number}: a name of more than {MAX_NAME_CHARS} "
                                 "characters")
        if name not in seen:
            seen.add(name)
            names.append(name)
    if len(names) < MIN_NAMES:
        raise NamespaceError(f"names list {label} holds {len(names)} name(s); it needs {MIN_NAMES} at least "
                             "(hundreds give a useful name space)")
    if len(names) > MAX_NAMES:
        raise NamespaceError(f"names list {label} holds {len(names)} names; at most {MAX_NAMES} are read")
    return NamesList(tuple(names), names_list_hash(names), label)


def read_names_list(path: str | os.PathLike | None = None) -> NamesList:
    """Read the names list at ``path`` (None or blank: the shipped list). NamespaceError when it cannot be
    read or holds too few names; messages name the file, not its folder."""
    source = Path(path) if path else SHIPPED_NAMES_LIST
    label = "(shipped list)" if source == SHIPPED_NAMES_LIST else repr(source.name)
    try:
        if source.stat().st_size > MAX_FILE_BYTES:
            raise NamespaceError(f"names list {label} is larger than {MAX_FILE_BYTES >> 20} MiB")
        text = source.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise NamespaceError(f"names list {label} does not exist: correct the names-list setting") from None
    except UnicodeDecodeError as error:
        raise NamespaceError(f"names list {label} is not UTF-8 text ({error.reason} at byte "
                             f"{error.start})") from None
    except OSError as error:
        raise NamespaceError(f"names list {label} cannot be read: {error.strerror or error}") from None
    return parse_names(text, label)
