"""Which saved identities can be used, and which are broken: what the prompt autocomplete offers and what
the identity list flags.

``IdentityLibrary.list()`` reads file headers only (fast), so a file whose embedding holds NaN values, or
does not match its recorded hash, is listed although every use refuses it. :func:`check_library` loads each
listed identity as a use would and sorts it into usable or broken. The outcome is remembered per version of
each file (path, size, modification time, inode): a changed file is checked again, an unchanged one costs
one ``stat``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lib_magicnaming.errors import IdentityError, IdentityNotFound
from lib_magicnaming.identity_file import IdentityInfo
from lib_magicnaming.identity_library import IdentityLibrary
from lib_magicnaming.lru import LRUCache

CHECKS_REMEMBERED = 4096
OK = ""


@dataclass(frozen=True)
class BrokenIdentity:
    """A file in the identity folder that no use would accept: its file name, the identity's name when its
    header names one, and why it is refused (the library's message)."""

    file: str
    name: str | None
    problem: str


@dataclass(frozen=True)
class CheckedListing:
    """The saved identities split into those a prompt can use and the broken ones."""

    usable: list[IdentityInfo]
    broken: list[BrokenIdentity]


_CHECKED: LRUCache[tuple, str] = LRUCache(CHECKS_REMEMBERED)
"""(path, size, mtime_ns, inode) -> the problem, or OK. Keyed by the file's version: never stale."""


def _file_version(path: Path) -> tuple | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def identity_problem(library: IdentityLibrary, info: IdentityInfo) -> str:
    """Why the identity ``info`` describes cannot be used (loaded as a prompt would load it), or ``""``."""
    version = _file_version(info.path)
    if version is not None:
        known = _CHECKED.get(version)
        if known is not None:
            return known
    try:
        library.load(info.name)
        problem = OK
    except IdentityNotFound:
        return OK  # deleted since it was listed: not broken, just gone (the next listing leaves it out)
    except IdentityError as error:
        problem = str(error)
    if version is not None:
        _CHECKED.put(version, problem)
    return problem


def check_library(library: IdentityLibrary) -> CheckedListing:
    """Every identity file of ``library``: usable ones (sorted by key) and broken ones (sorted by file)."""
    scan = library.scan()
    broken = [BrokenIdentity(problem.path.name, None, problem.message) for problem in scan.problems]
    usable = []
    for info in scan.identities:
        problem = identity_problem(library, info)
        if problem:
            broken.append(BrokenIdentity(info.path.name, info.name, problem))
        else:
            usable.append(info)
    broken.sort(key=lambda item: item.file)
    return CheckedListing(usable, broken)
