"""The identity library: the identities saved in one folder, one ``<key>.safetensors`` file each.

File names are ``identity_key(name) + ".safetensors"``; a name is checked (the one name rule in
``lib_magicnaming.tags`` plus :func:`lib_magicnaming.identity.validate_file_name_safe`) before any path is
built from it. The files are read and written by :mod:`lib_magicnaming.identity_file`. The library's folder is
``identities/`` in the extension's models folder (:func:`identities_dir`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lib_magicnaming.constants import SHORT_HASH_CHARS
from lib_magicnaming.errors import IdentityError, IdentityExists, IdentityNotFound
from lib_magicnaming.identity import SHORT_HASH_RE, Identity, validate_file_name_safe
from lib_magicnaming.identity_file import (
    FILE_SUFFIX,
    TEMP_PREFIX,
    IdentityInfo,
    copy_identity_file,
    read_identity_info,
    read_stored_identity,
    write_identity_file,
)
from lib_magicnaming.tags import identity_key

logger = logging.getLogger("magicnaming")

IDENTITIES_SUBDIR = "identities"


def identities_dir(models_dir: str | os.PathLike) -> Path:
    """The identity library's folder in the extension's models folder (``<webui>/models/magicnaming``)."""
    return Path(models_dir) / IDENTITIES_SUBDIR


@dataclass(frozen=True)
class LibraryProblem:
    """A file in the identity folder that is not a usable identity, and why."""

    path: Path
    message: str


@dataclass(frozen=True)
class LibraryScan:
    """The result of scanning the folder: the identities (sorted by key) and the files that were skipped."""

    identities: list[IdentityInfo]
    problems: list[LibraryProblem]


class IdentityLibrary:
    """The identities saved in one folder, one ``<key>.safetensors`` file each.

    Every method is safe to call from several threads and processes at once. Names are validated (and
    refused with IdentityError) before any path is built from them.
    """

    def __init__(self, folder: str | os.PathLike):
        """Use ``folder`` (created on the first save)."""
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"IdentityLibrary({str(self.folder)!r})"

    # -- paths

    def path_for(self, name: str) -> Path:
        """The file an identity of this name lives in (whether or not it exists). Raises IdentityError."""
        validate_file_name_safe(name)
        path = self.folder / (identity_key(name) + FILE_SUFFIX)
        folder_real = os.path.realpath(self.folder)
        if os.path.dirname(os.path.realpath(path)) != folder_real:
            raise IdentityError(f"the identity file for {name!r} would lie outside the identity folder")
        return path

    def _not_found(self, name: str) -> IdentityNotFound:
        return IdentityNotFound(f"no identity named {name!r} in {self.folder}", name)

    # -- reading

    def scan(self) -> LibraryScan:
        """Describe every identity file in the folder from headers alone; skipped files go to ``problems``."""
        identities: list[IdentityInfo] = []
        problems: list[LibraryProblem] = []
        try:
            entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
        except FileNotFoundError:
            return LibraryScan([], [])
        except OSError as error:
            raise IdentityError(f"cannot read the identity folder {self.folder}: {error}") from error
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX) or not entry.name.lower().endswith(FILE_SUFFIX):
                continue
            path = Path(entry.path)
            try:
                info = read_identity_info(path)
                _check_file_name_matches(info, path)
                self.path_for(info.name)  # a link out of the folder: a problem here, as load() refuses it
            except IdentityError as error:
                if path.exists():  # a file deleted or renamed while we scanned is no problem
                    problems.append(LibraryProblem(path, str(error)))
                continue
            identities.append(info)
        identities.sort(key=lambda info: info.key)
        return LibraryScan(identities, problems)

    def list(self) -> list[IdentityInfo]:
        """Every identity in the folder, sorted by key; unusable files are skipped with a logged warning."""
        scan = self.scan()
        for problem in scan.problems:
            logger.warning("skipping %s: %s", problem.path, problem.message)
        return scan.identities

    def get_info(self, name: str) -> IdentityInfo:
        """Describe the identity called ``name`` (any case) from its header. IdentityNotFound if none."""
        path = self.path_for(name)
        if not path.is_file():
            raise self._not_found(name)
        try:
            info = read_identity_info(path)
        except IdentityNotFound:  # deleted since
            raise self._not_found(name) from None
        _check_file_name_matches(info, path)
        return info

    def exists(self, name: str) -> bool:
        """Whether an identity file for ``name`` (any case) exists. Raises IdentityError for illegal names."""
        return self.path_for(name).is_file()

    def load(self, name: str) -> Identity:
        """Load and validate the identity called ``name`` (any case). IdentityNotFound if none."""
        return self._load_stored(name)[0]

    def _load_stored(self, name: str) -> tuple[Identity, IdentityInfo]:
        path = self.path_for(name)
        try:
            identity, info = read_stored_identity(path)
        except IdentityNotFound:
            raise self._not_found(name) from None
        if identity.key != identity_key(name):
            raise IdentityError(
                f"{path} holds identity {identity.name!r}, not {name!r}; rename the file or import it again"
            )
        return identity, info

    def load_by_hash(self, short_hash: str) -> Identity:
        """Load the identity whose short content hash is ``short_hash`` (as infotext records it).

        If several identities share the embedding, the first by key is returned. IdentityNotFound if none.
        """
        wanted = short_hash.strip().lower() if isinstance(short_hash, str) else ""
        if not SHORT_HASH_RE.fullmatch(wanted):
            raise IdentityError(
                f"{short_hash!r} is not a short identity hash ({SHORT_HASH_CHARS} hex digits)"
            )
        for info in self.scan().identities:
            if info.short_hash == wanted:
                identity = self.load(info.name)
                if identity.short_hash == wanted:
                    return identity
        raise IdentityNotFound(f"no identity with hash {wanted} in {self.folder}", wanted)

    # -- writing

    def save(
        self, identity: Identity, *, overwrite: bool = False, dtype: torch.dtype = torch.float16
    ) -> IdentityInfo:
        """Save ``identity`` atomically as ``dtype`` (float16 or float32).

        Refuses (IdentityExists) if an identity of the same name in any case exists, unless ``overwrite``.
        When two threads or processes save the same new name at once, exactly one succeeds. Returns the
        stored identity's info; its short_hash is the hash of the stored values.
        """
        path = self.path_for(identity.name)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise IdentityError(f"cannot create the identity folder {self.folder}: {error}") from error
        try:
            return write_identity_file(identity, path, dtype, overwrite=overwrite)
        except IdentityExists:
            raise IdentityExists(
                f"an identity named {identity.name!r} already exists; choose another name or overwrite",
                identity.name,
            ) from None

    def rename(self, old: str, new: str) -> IdentityInfo:
        """Rename an identity (a change of case only works too). IdentityNotFound / IdentityExists."""
        validate_file_name_safe(new)
        identity, info = self._load_stored(old)
        renamed = dataclasses.replace(identity, name=new)
        same_file = identity_key(old) == identity_key(new)
        saved = self.save(renamed, overwrite=same_file, dtype=_storage_dtype(info))
        if not same_file:
            old_path = self.path_for(old)
            try:
                old_path.unlink(missing_ok=True)
            except OSError as error:
                raise IdentityError(
                    f"{identity.name!r} was copied to {new!r}, but {old_path} could not be removed: "
                    f"{error.strerror or error}; delete it by hand"
                ) from error
        return saved

    def delete(self, name: str) -> None:
        """Delete the identity called ``name`` (any case). IdentityNotFound if none."""
        path = self.path_for(name)
        try:
            path.unlink()
        except FileNotFoundError as error:
            raise self._not_found(name) from error
        except OSError as error:
            raise IdentityError(f"cannot delete {path}: {error.strerror or error}") from error

    def import_file(
        self, path: str | os.PathLike, *, name: str | None = None, overwrite: bool = False
    ) -> IdentityInfo:
        """Validate the identity file at ``path`` and add it to the library, optionally under a new ``name``.

        The embedding keeps its stored precision (and so its hash). IdentityExists unless ``overwrite``.
        """
        try:
            identity, info = read_stored_identity(path)
        except IdentityNotFound as error:
            raise IdentityError(str(error)) from None  # a missing file to import is the caller's bad path
        if name is not None:
            identity = dataclasses.replace(identity, name=name)
        return self.save(identity, overwrite=overwrite, dtype=_storage_dtype(info))

    def export_file(self, name: str, dest: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Copy the identity ``name`` to ``dest``: a file path, or a folder to hold ``<key>.safetensors``.

        The copy is validated first and written atomically; an existing file is refused (IdentityExists)
        unless ``overwrite``. Returns the written path.
        """
        source = self.path_for(name)
        target = Path(dest)
        if target.is_dir():
            target = target / source.name
        try:
            copied = copy_identity_file(source, target, overwrite=overwrite)
        except IdentityNotFound:
            raise self._not_found(name) from None
        if not copied:
            raise IdentityExists(f"{target} already exists; choose another file or overwrite it", name)
        return target


def _storage_dtype(info: IdentityInfo) -> torch.dtype:
    return torch.float32 if info.dtype == "float32" else torch.float16


def _check_file_name_matches(info: IdentityInfo, path: Path) -> None:
    expected = info.key + FILE_SUFFIX
    if path.name != expected:
        raise IdentityError(
            f"{path.name} holds identity {info.name!r}, whose file name should be {expected}; "
            "rename the file or import it through the library"
        )
