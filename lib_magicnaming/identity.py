"""Identity files and the identity library: one small safetensors file per identity in one folder.

An identity file holds two tensors and string metadata (safetensors' ``__metadata__``):

- ``embedding``: F_ID, ``ID_TOKENS x SDXL_CONTEXT_WIDTH`` (8 x 2048), stored float16 (default) or float32,
  always loaded as float32;
- ``thumbnail`` (optional): a small RGB image, ``H x W x 3`` uint8, each side at most THUMBNAIL_MAX_SIDE;
- metadata ``format``, ``format_version``, ``name``, ``base_model_family``, ``origin`` (JSON), ``created``
  (ISO 8601 UTC) and ``short_hash``.

The short hash is the hash of the embedding AS STORED: saving as float16 rounds the values first, and the
hash written into the file (and listed, and put into infotext) is the hash of those rounded values, which is
exactly ``load(name).short_hash``. Loading checks that the stored hash matches the stored values.

File names are ``identity_key(name) + ".safetensors"``; a name is checked (the one name rule in
``lib_magicnaming.tags`` plus the file-system rules below) before any path is built from it.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from PIL import Image, ImageOps
from safetensors.torch import load as safetensors_from_bytes  # safetensors' bytes reader, not torch.load

from lib_magicnaming.atomic import replace_file, write_temp_file
from lib_magicnaming.constants import BASE_MODEL_FAMILY, ID_TOKENS, SDXL_CONTEXT_WIDTH, SHORT_HASH_CHARS
from lib_magicnaming.errors import IdentityError, IdentityExists, IdentityNotFound
from lib_magicnaming.tags import identity_key, validate_identity_name

logger = logging.getLogger(__name__)

FORMAT_NAME = "magicnaming-identity"
FORMAT_VERSION = 1
FILE_SUFFIX = ".safetensors"
DEFAULT_FOLDER_PARTS = ("magicnaming", "identities")
"""The library's default folder, relative to the WebUI's models directory."""

THUMBNAIL_MAX_SIDE = 128
ORIGIN_KINDS = ("photos", "names", "mix", "sampled", "imported")
_ORIGIN_REQUIRED_KEYS = {
    "photos": ("encoder_hash", "photo_hashes"),
    "names": ("names",),
    "mix": ("identities", "method"),
    "sampled": ("encoder_hash", "seed", "scale"),
    "imported": (),
}
STORAGE_DTYPES = {torch.float16: "F16", torch.float32: "F32"}
_DTYPE_NAMES = {"F16": "float16", "F32": "float32"}

MAX_HEADER_BYTES = 1 << 20
"""An identity file's JSON header is a few KiB; a bigger one means another kind of file (a model, a LoRA)."""
MAX_FILE_BYTES = 4 << 20

WINDOWS_RESERVED_STEMS = frozenset(
    ["con", "prn", "aux", "nul", "conin$", "conout$"]
    + [f"com{i}" for i in range(10)]
    + [f"lpt{i}" for i in range(10)]
)
"""Device names Windows reserves whatever the extension (``nul.txt`` is the null device too)."""

_TEMP_PREFIX = ".tmp-"
_LOCK_SUFFIX = ".lock"
_STALE_LOCK_SECONDS = 30.0
_NO_HARD_LINK_ERRNOS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS, errno.EMLINK}
)
_SHORT_HASH_RE = re.compile(f"[0-9a-f]{{{SHORT_HASH_CHARS}}}")
_VERSION_RE = re.compile("[0-9]{1,9}")
_EMBEDDING_SHAPE = [ID_TOKENS, SDXL_CONTEXT_WIDTH]


def embedding_hash(embedding: torch.Tensor) -> str:
    """First SHORT_HASH_CHARS hex digits of the sha256 of the embedding's float32 little-endian bytes.

    The tensor is cast to float32 first, so float16 and float32 copies hash alike only when their values are
    equal after the cast; the library hashes the values as stored (after any float16 rounding).
    """
    values = embedding.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    return hashlib.sha256(values.astype("<f4", copy=False).tobytes()).hexdigest()[:SHORT_HASH_CHARS]


def bytes_hash(data: bytes) -> str:
    """Full sha256 hex digest of ``data`` (the content hash of a photo)."""
    return hashlib.sha256(data).hexdigest()


def utc_now_iso() -> str:
    """The current time as ISO 8601 UTC to the second, e.g. ``2025-01-31T12:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate_file_name_safe(name: str) -> str:
    """Check that an identity name is legal AND safe as a file name everywhere; return it unchanged.

    Beyond the name rule (which already excludes separators, NUL, spaces, non-ASCII look-alikes and names over
    64 characters), refuse Windows device names (``con``, ``nul.txt``, ``com1`` ...: opening one opens the
    device) and a trailing dot (Windows drops trailing dots from names). Raises IdentityError.
    """
    validate_identity_name(name)
    stem = name.split(".", 1)[0].lower()
    if stem in WINDOWS_RESERVED_STEMS:
        raise IdentityError(
            f"{name!r} cannot be an identity name: {stem!r} is a reserved device name on Windows"
        )
    if name.endswith("."):
        raise IdentityError(f"{name!r} cannot be an identity name: it ends with '.'")
    return name


@dataclass
class Identity:
    """One identity: a name, its F_ID embedding (float32 in memory), how it was made, when, and a thumbnail.

    Constructing one validates the name, the embedding (shape ID_TOKENS x SDXL_CONTEXT_WIDTH, floating point,
    finite; copied to a new float32 CPU tensor) and the origin (a JSON object whose ``kind`` is one of
    ORIGIN_KINDS; saving also requires that kind's details, see _ORIGIN_REQUIRED_KEYS).
    """

    name: str
    embedding: torch.Tensor
    origin: dict
    created: str = field(default_factory=utc_now_iso)
    thumbnail: Image.Image | None = None

    def __post_init__(self) -> None:
        validate_identity_name(self.name)
        self.embedding = _checked_embedding(self.embedding, f"identity {self.name!r}")
        self.origin = _checked_origin(self.origin, require_details=False)
        _check_created(self.created)
        if self.thumbnail is not None and not isinstance(self.thumbnail, Image.Image):
            raise IdentityError(f"the thumbnail of identity {self.name!r} is not a PIL image")

    @property
    def short_hash(self) -> str:
        """The embedding's short content hash (see embedding_hash)."""
        return embedding_hash(self.embedding)

    @property
    def key(self) -> str:
        """The case-insensitive key of the name."""
        return identity_key(self.name)


@dataclass(frozen=True)
class IdentityInfo:
    """What the library knows about a stored identity from its file header alone (no tensors read)."""

    name: str
    key: str
    short_hash: str
    created: str
    origin: dict
    path: Path
    dtype: str
    has_thumbnail: bool


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


# ----------------------------------------------------------------------------------------------- validation


def _checked_embedding(embedding: Any, what: str) -> torch.Tensor:
    if not isinstance(embedding, torch.Tensor):
        raise IdentityError(f"the embedding of {what} is a {type(embedding).__name__}, not a torch tensor")
    if not embedding.is_floating_point():
        raise IdentityError(f"the embedding of {what} has dtype {embedding.dtype}; expected a floating dtype")
    if list(embedding.shape) != _EMBEDDING_SHAPE:
        raise IdentityError(
            f"the embedding of {what} has shape {list(embedding.shape)}; expected {_EMBEDDING_SHAPE} "
            f"({ID_TOKENS} tokens of SDXL's {SDXL_CONTEXT_WIDTH}-wide text conditioning)"
        )
    values = embedding.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()
    if not torch.isfinite(values).all():
        raise IdentityError(f"the embedding of {what} holds NaN or infinite values")
    return values


def _checked_origin(origin: Any, *, require_details: bool) -> dict:
    if not isinstance(origin, Mapping):
        raise IdentityError(f"an identity's origin must be a JSON object, not {type(origin).__name__}")
    kind = origin.get("kind")
    if kind not in ORIGIN_KINDS:
        raise IdentityError(
            f"an identity's origin kind is {kind!r}; expected one of {', '.join(ORIGIN_KINDS)}"
        )
    if require_details:
        missing = [k for k in _ORIGIN_REQUIRED_KEYS[kind] if k not in origin]
        if missing:
            raise IdentityError(f"an identity origin of kind {kind!r} lacks {', '.join(missing)}")
    try:
        return json.loads(json.dumps(dict(origin), allow_nan=False))
    except (TypeError, ValueError, RecursionError) as error:
        raise IdentityError(f"an identity's origin is not plain JSON: {error}") from error


def _check_created(created: Any) -> None:
    if not isinstance(created, str):
        raise IdentityError(f"an identity's created time must be an ISO 8601 string, not {created!r}")
    try:
        stamp = datetime.fromisoformat(created[:-1] + "+00:00" if created.endswith("Z") else created)
    except ValueError as error:
        raise IdentityError(f"an identity's created time {created!r} is not ISO 8601") from error
    if stamp.utcoffset() != timedelta(0):
        raise IdentityError(f"an identity's created time {created!r} is not in UTC (end it with 'Z')")


def _thumbnail_rgb(image: Image.Image) -> Image.Image:
    """A new RGB copy of ``image``, upright, transparent parts on white, at most THUMBNAIL_MAX_SIDE a side."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))
    try:
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        else:
            image = image.convert("RGB")
    except ValueError as error:
        raise IdentityError(f"a thumbnail in image mode {image.mode!r} cannot be converted to RGB") from error
    image.thumbnail((THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE), Image.Resampling.LANCZOS)
    return image


# ---------------------------------------------------------------------------------------- bytes <-> identity


def encode_identity_file(identity: Identity, dtype: torch.dtype = torch.float16) -> bytes:
    """Serialise ``identity`` to the bytes of an identity file, storing the embedding as ``dtype``.

    ``dtype`` is torch.float16 or torch.float32. The file's short hash is that of the stored (rounded)
    values. Raises IdentityError for an unstorable identity (e.g. values beyond float16's range).
    """
    if dtype not in STORAGE_DTYPES:
        raise IdentityError(f"identities are stored as float16 or float32, not {dtype}")
    validate_file_name_safe(identity.name)
    embedding = _checked_embedding(identity.embedding, f"identity {identity.name!r}")
    stored = embedding.to(dtype)
    if not torch.isfinite(stored).all():
        raise IdentityError(
            f"the embedding of identity {identity.name!r} has values beyond {dtype}'s range; "
            "save it as float32"
        )
    origin = _checked_origin(identity.origin, require_details=True)
    _check_created(identity.created)
    tensors = {"embedding": stored.contiguous()}
    if identity.thumbnail is not None:
        thumbnail = _thumbnail_rgb(identity.thumbnail)
        tensors["thumbnail"] = torch.from_numpy(np.array(thumbnail, dtype=np.uint8)).contiguous()
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "name": identity.name,
        "base_model_family": BASE_MODEL_FAMILY,
        "origin": json.dumps(origin, sort_keys=True),
        "created": identity.created,
        "short_hash": embedding_hash(stored),
    }
    return safetensors.torch.save(tensors, metadata=metadata)


def _parse_header_bytes(prefix: bytes, file_size: int, source: str) -> tuple[dict, int]:
    """The JSON header of a safetensors file whose first bytes are ``prefix``, and where its data starts."""
    if file_size < 8 or len(prefix) < 8:
        raise IdentityError(
            f"{source} is not an identity file: only {file_size} bytes, too short for safetensors"
        )
    (header_length,) = struct.unpack("<Q", prefix[:8])
    if header_length > MAX_HEADER_BYTES:
        raise IdentityError(
            f"{source} is not an identity file: its header claims {header_length} bytes "
            "(a model or LoRA file, or not safetensors at all)"
        )
    if 8 + header_length > file_size:
        raise IdentityError(f"{source} is truncated or not a safetensors file: the header runs past its end")
    text = prefix[8 : 8 + header_length]
    try:
        header = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as error:  # RecursionError: hostile nesting such as [[[[...]]]]
        raise IdentityError(f"{source} is not a safetensors file: its header is not JSON") from error
    if not isinstance(header, dict):
        raise IdentityError(f"{source} is not a safetensors file: its header is not a JSON object")
    return header, 8 + header_length


def _tensor_entry(header: dict, name: str, source: str) -> dict | None:
    if name not in header:
        return None
    entry = header[name]
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("shape"), list)
        and isinstance(entry.get("dtype"), str)
    ):
        raise IdentityError(f"{source} has a malformed entry for tensor {name!r}")
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise IdentityError(f"{source} has malformed data offsets for tensor {name!r}")
    return entry


def _info_from_header(header: dict, data_start: int, file_size: int, path: Path, source: str) -> IdentityInfo:
    """Validate an identity file's header (metadata, tensor shapes and dtypes, size) and describe it."""
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise IdentityError(
            f"{source} is not a MagicNaming identity file: it has no metadata "
            "(a model, a LoRA or other tensors?)"
        )
    found_format = metadata.get("format")
    if found_format != FORMAT_NAME:
        raise IdentityError(
            f"{source} is not a MagicNaming identity file: its format is {found_format!r}, "
            f"expected {FORMAT_NAME!r}"
        )
    version_text = metadata.get("format_version", "")
    if not _VERSION_RE.fullmatch(version_text):  # not str.isdigit(): it accepts '²', int() does not
        raise IdentityError(f"{source} has format version {version_text!r}; expected {FORMAT_VERSION}")
    if int(version_text) != FORMAT_VERSION:
        newer = (
            " (made by a newer MagicNaming; update the extension)"
            if int(version_text) > FORMAT_VERSION
            else ""
        )
        raise IdentityError(
            f"{source} has identity format version {version_text}; this version reads {FORMAT_VERSION}{newer}"
        )
    family = metadata.get("base_model_family")
    if family != BASE_MODEL_FAMILY:
        raise IdentityError(
            f"{source} is an identity for base model family {family!r}; "
            f"this extension uses {BASE_MODEL_FAMILY!r}"
        )

    embedding = _tensor_entry(header, "embedding", source)
    if embedding is None:
        raise IdentityError(f"{source} has no 'embedding' tensor")
    if embedding["dtype"] not in _DTYPE_NAMES:
        raise IdentityError(f"{source} stores its embedding as {embedding['dtype']}; expected F16 or F32")
    if embedding["shape"] != _EMBEDDING_SHAPE:
        raise IdentityError(
            f"{source} holds an embedding of shape {embedding['shape']}; expected {_EMBEDDING_SHAPE} "
            f"(SDXL: {ID_TOKENS} tokens x {SDXL_CONTEXT_WIDTH})"
        )
    thumbnail = _tensor_entry(header, "thumbnail", source)
    if thumbnail is not None:
        shape = thumbnail["shape"]
        if (
            thumbnail["dtype"] != "U8"
            or len(shape) != 3
            or shape[2] != 3
            or not all(isinstance(s, int) and 1 <= s <= THUMBNAIL_MAX_SIDE for s in shape[:2])
        ):
            raise IdentityError(
                f"{source} has a thumbnail of {thumbnail['dtype']} {shape}; expected U8 [H, W, 3], "
                f"sides 1..{THUMBNAIL_MAX_SIDE}"
            )
    entries = [_tensor_entry(header, key, source) for key in header if key != "__metadata__"]
    needed = data_start + max(entry["data_offsets"][1] for entry in entries)
    if file_size < needed:
        raise IdentityError(f"{source} is truncated: {file_size} bytes, but its tensors need {needed}")

    name = metadata.get("name", "")
    try:
        validate_file_name_safe(name)
    except IdentityError as error:
        raise IdentityError(f"{source} holds an unusable identity name: {error}") from error
    short_hash = metadata.get("short_hash", "")
    if not _SHORT_HASH_RE.fullmatch(short_hash):
        raise IdentityError(f"{source} has a malformed short hash {short_hash!r}")
    try:
        origin = _checked_origin(json.loads(metadata.get("origin", "")), require_details=False)
    except (ValueError, RecursionError) as error:
        raise IdentityError(f"{source} has an origin that is not JSON") from error
    except IdentityError as error:
        raise IdentityError(f"{source}: {error}") from error
    created = metadata.get("created", "")
    try:
        _check_created(created)
    except IdentityError as error:
        raise IdentityError(f"{source}: {error}") from error
    return IdentityInfo(
        name=name,
        key=identity_key(name),
        short_hash=short_hash,
        created=created,
        origin=origin,
        path=path,
        dtype=_DTYPE_NAMES[embedding["dtype"]],
        has_thumbnail=thumbnail is not None,
    )


def _info_from_bytes(data: bytes, path: Path, source: str) -> tuple[IdentityInfo, dict]:
    """Validate the header of a whole identity file held in memory; its info and its raw header."""
    header, data_start = _parse_header_bytes(data[: 8 + MAX_HEADER_BYTES], len(data), source)
    return _info_from_header(header, data_start, len(data), path, source), header


def decode_identity_file(data: bytes, source: str = "the identity file") -> Identity:
    """Parse and fully validate the bytes of an identity file (``source`` names it in error messages).

    Checks the format name and version, base model family, tensor shapes and dtypes, finite values and that
    the stored short hash matches the stored embedding. Raises IdentityError naming the problem.
    """
    header = _info_from_bytes(data, Path(source), source)[1]
    try:
        tensors = safetensors_from_bytes(data)
    except Exception as error:  # safetensors raises its own error types for every malformed file
        raise IdentityError(f"{source} is not a readable safetensors file: {error}") from error
    metadata = header["__metadata__"]
    stored = tensors["embedding"]
    embedding = _checked_embedding(stored, source)
    if embedding_hash(embedding) != metadata["short_hash"]:
        raise IdentityError(
            f"{source} is damaged: its embedding hashes to {embedding_hash(embedding)}, "
            f"but the file says {metadata['short_hash']}"
        )
    thumbnail = None
    if "thumbnail" in tensors:
        thumbnail = Image.fromarray(tensors["thumbnail"].numpy())
    return Identity(
        name=metadata["name"],
        embedding=embedding,
        origin=json.loads(metadata["origin"]),
        created=metadata["created"],
        thumbnail=thumbnail,
    )


def _read_bounded(path: Path) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise IdentityError(f"cannot read {path}: {error.strerror or error}") from error
    if len(data) > MAX_FILE_BYTES:
        read_identity_info(path)  # a LoRA or checkpoint gets a better message than "too large"
        raise IdentityError(f"{path} is too large to be an identity file")
    return data


def read_identity_file(path: str | os.PathLike) -> Identity:
    """Load and validate one identity file from anywhere (see decode_identity_file). Raises IdentityError."""
    path = Path(path)
    try:
        data = _read_bounded(path)
    except FileNotFoundError as error:
        raise IdentityError(f"no identity file at {path}") from error
    return decode_identity_file(data, str(path))


def read_identity_info(path: str | os.PathLike) -> IdentityInfo:
    """Describe an identity file from its header alone (never reads its tensors). Raises IdentityError."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            file_size = os.fstat(file.fileno()).st_size
            prefix = file.read(8)
            if len(prefix) == 8:
                (header_length,) = struct.unpack("<Q", prefix)
                if header_length <= MAX_HEADER_BYTES:
                    prefix += file.read(header_length)
    except FileNotFoundError as error:
        raise IdentityError(f"no identity file at {path}") from error
    except OSError as error:
        raise IdentityError(f"cannot read {path}: {error.strerror or error}") from error
    header, data_start = _parse_header_bytes(prefix, file_size, str(path))
    return _info_from_header(header, data_start, file_size, path, str(path))


# ------------------------------------------------------------------------------------------ atomic publishing


def _publish(data: bytes, target: Path, *, overwrite: bool) -> bool:
    """Atomically give ``target`` the content ``data``; False (and no change) if it exists and not overwrite.

    Raises IdentityError when the folder cannot be written.
    """
    try:
        temp = write_temp_file(target.parent, _TEMP_PREFIX, lambda path: path.write_bytes(data))
        try:
            if overwrite:
                replace_file(temp, target)
                return True
            return _publish_new(temp, target)
        finally:
            temp.unlink(missing_ok=True)
    except OSError as error:
        raise IdentityError(f"cannot write {target}: {error.strerror or error}") from error


def _publish_new(temp: Path, target: Path) -> bool:
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
        return _publish_new_without_links(temp, target)
    temp.unlink(missing_ok=True)
    return True


def _publish_new_without_links(temp: Path, target: Path) -> bool:
    if os.name == "nt":
        try:
            os.rename(temp, target)
        except FileExistsError:
            return False
        return True
    lock = target.with_name(_TEMP_PREFIX + target.name + _LOCK_SUFFIX)
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


def write_identity_file(
    identity: Identity, path: str | os.PathLike, dtype: torch.dtype = torch.float16, *, overwrite: bool = True
) -> None:
    """Write ``identity`` to ``path`` atomically (temp file in the same folder, then rename).

    With ``overwrite=False`` an existing file is left alone and IdentityExists is raised; with two writers at
    once exactly one wins. The folder must exist. Raises IdentityError for an unstorable identity.
    """
    path = Path(path)
    if not _publish(encode_identity_file(identity, dtype), path, overwrite=overwrite):
        raise IdentityExists(f"an identity file already exists at {path}", identity.name)


# ------------------------------------------------------------------------------------------------- library


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
            if entry.name.startswith(_TEMP_PREFIX) or not entry.name.lower().endswith(FILE_SUFFIX):
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
            raise IdentityNotFound(f"no identity named {name!r} in {self.folder}", name)
        info = read_identity_info(path)
        _check_file_name_matches(info, path)
        return info

    def exists(self, name: str) -> bool:
        """Whether an identity file for ``name`` (any case) exists. Raises IdentityError for illegal names."""
        return self.path_for(name).is_file()

    def load(self, name: str) -> Identity:
        """Load and validate the identity called ``name`` (any case). IdentityNotFound if none."""
        path = self.path_for(name)
        try:
            data = _read_bounded(path)
        except FileNotFoundError as error:
            raise IdentityNotFound(f"no identity named {name!r} in {self.folder}", name) from error
        identity = decode_identity_file(data, str(path))
        if identity.key != identity_key(name):
            raise IdentityError(
                f"{path} holds identity {identity.name!r}, not {name!r}; rename the file or import it again"
            )
        return identity

    def load_by_hash(self, short_hash: str) -> Identity:
        """Load the identity whose short content hash is ``short_hash`` (as infotext records it).

        If several identities share the embedding, the first by key is returned. IdentityNotFound if none.
        """
        wanted = short_hash.strip().lower() if isinstance(short_hash, str) else ""
        if not _SHORT_HASH_RE.fullmatch(wanted):
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
        data = encode_identity_file(identity, dtype)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise IdentityError(f"cannot create the identity folder {self.folder}: {error}") from error
        if not _publish(data, path, overwrite=overwrite):
            raise IdentityExists(
                f"an identity named {identity.name!r} already exists; choose another name or overwrite",
                identity.name,
            )
        return _info_from_bytes(data, path, str(path))[0]

    def rename(self, old: str, new: str) -> IdentityInfo:
        """Rename an identity (a change of case only works too). IdentityNotFound / IdentityExists."""
        validate_file_name_safe(new)
        identity = self.load(old)
        dtype = torch.float32 if self.get_info(old).dtype == "float32" else torch.float16
        renamed = dataclasses.replace(identity, name=new)
        same_file = identity_key(old) == identity_key(new)
        info = self.save(renamed, overwrite=same_file, dtype=dtype)
        if not same_file:
            old_path = self.path_for(old)
            try:
                old_path.unlink(missing_ok=True)
            except OSError as error:
                raise IdentityError(
                    f"{identity.name!r} was copied to {new!r}, but {old_path} could not be removed: "
                    f"{error.strerror or error}; delete it by hand"
                ) from error
        return info

    def delete(self, name: str) -> None:
        """Delete the identity called ``name`` (any case). IdentityNotFound if none."""
        path = self.path_for(name)
        try:
            path.unlink()
        except FileNotFoundError as error:
            raise IdentityNotFound(f"no identity named {name!r} in {self.folder}", name) from error
        except OSError as error:
            raise IdentityError(f"cannot delete {path}: {error.strerror or error}") from error

    def import_file(
        self, path: str | os.PathLike, *, name: str | None = None, overwrite: bool = False
    ) -> IdentityInfo:
        """Validate the identity file at ``path`` and add it to the library, optionally under a new ``name``.

        The embedding keeps its stored precision (and so its hash). IdentityExists unless ``overwrite``.
        """
        identity = read_identity_file(path)
        if name is not None:
            identity = dataclasses.replace(identity, name=name)
        dtype = torch.float32 if read_identity_info(path).dtype == "float32" else torch.float16
        return self.save(identity, overwrite=overwrite, dtype=dtype)

    def export_file(self, name: str, dest: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Copy the identity ``name`` to ``dest``: a file path, or a folder to hold ``<key>.safetensors``.

        The copy is validated first and written atomically; an existing file is refused (IdentityExists)
        unless ``overwrite``. Returns the written path.
        """
        source = self.path_for(name)
        try:
            data = _read_bounded(source)
        except FileNotFoundError as error:
            raise IdentityNotFound(f"no identity named {name!r} in {self.folder}", name) from error
        decode_identity_file(data, str(source))
        target = Path(dest)
        if target.is_dir():
            target = target / source.name
        if not _publish(data, target, overwrite=overwrite):
            raise IdentityExists(f"{target} already exists; choose another file or overwrite it", name)
        return target


def _check_file_name_matches(info: IdentityInfo, path: Path) -> None:
    expected = info.key + FILE_SUFFIX
    if path.name != expected:
        raise IdentityError(
            f"{path.name} holds identity {info.name!r}, whose file name should be {expected}; "
            "rename the file or import it through the library"
        )


def default_identity_folder(models_dir: str | os.PathLike) -> Path:
    """The default identity folder under a WebUI models directory: ``<models>/magicnaming/identities``."""
    return Path(models_dir).joinpath(*DEFAULT_FOLDER_PARTS)


def is_valid_short_hash(text: str) -> bool:
    """Whether ``text`` has the form of a short identity hash."""
    return isinstance(text, str) and _SHORT_HASH_RE.fullmatch(text) is not None


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Identity",
    "IdentityInfo",
    "IdentityLibrary",
    "LibraryProblem",
    "LibraryScan",
    "bytes_hash",
    "decode_identity_file",
    "default_identity_folder",
    "embedding_hash",
    "encode_identity_file",
    "is_valid_short_hash",
    "read_identity_file",
    "read_identity_info",
    "validate_file_name_safe",
    "write_identity_file",
]
