"""Identity files: the one codec that writes and reads a single identity as a small safetensors file.

An identity file holds two tensors and string metadata (safetensors' ``__metadata__``):

- ``embedding``: F_ID, ``ID_TOKENS x SDXL_CONTEXT_WIDTH`` (8 x 2048), stored float16 (default) or float32,
  always loaded as float32;
- ``thumbnail`` (optional): a small RGB image, ``H x W x 3`` uint8, each side at most THUMBNAIL_MAX_SIDE;
- metadata ``format``, ``format_version``, ``name``, ``base_model_family``, ``origin`` (JSON), ``created``
  (ISO 8601 UTC) and ``short_hash``.

The short hash is the hash of the embedding AS STORED: saving as float16 rounds the values first, and the
hash written into the file (and listed, and put into infotext) is the hash of those rounded values, which is
exactly what reading the file gives. Reading checks that the stored hash matches the stored values.

Reading goes through safetensors' own reader (``safe_open``: ``metadata()``, ``keys()``,
``get_slice(key).get_shape()/get_dtype()``, and ``get_tensor`` only when the values are wanted), which checks
the header's structure: JSON, tensor entries, offsets, and a file size that matches them. Two checks come
before it, from the file's first 8 bytes, because safe_open cannot make them: a header longer than
MAX_HEADER_BYTES means another kind of file (a model or a LoRA; safe_open would parse up to 100 MB of its
JSON), and one that runs past the end of the file means a truncated or foreign file. Files are written
with their header's keys sorted (:func:`lib_magicnaming.safetensors_bytes.save_reproducible`: the same
identity, the same bytes) and published atomically (:func:`lib_magicnaming.atomic.publish_file`).
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors import SafetensorError, safe_open

from lib_magicnaming.atomic import publish_file
from lib_magicnaming.constants import BASE_MODEL_FAMILY, ID_TOKENS, SDXL_CONTEXT_WIDTH
from lib_magicnaming.errors import IdentityError, IdentityExists, IdentityNotFound
from lib_magicnaming.identity import (
    EMBEDDING_SHAPE,
    SHORT_HASH_RE,
    Identity,
    check_created,
    checked_embedding,
    checked_origin,
    embedding_hash,
    validate_file_name_safe,
)
from lib_magicnaming.safetensors_bytes import save_reproducible
from lib_magicnaming.tags import identity_key

FORMAT_NAME = "magicnaming-identity"
FORMAT_VERSION = 1
FILE_SUFFIX = ".safetensors"
TEMP_PREFIX = ".tmp-"
"""Starts the name of every temp and lock file this module writes (a library scan skips them)."""

THUMBNAIL_MAX_SIDE = 128
STORAGE_DTYPES = {torch.float16: "F16", torch.float32: "F32"}
_DTYPE_NAMES = {"F16": "float16", "F32": "float32"}
_SAFETENSORS_DTYPES = {**STORAGE_DTYPES, torch.uint8: "U8"}

MAX_HEADER_BYTES = 1 << 20
"""An identity file's JSON header is a few KiB; a bigger one means another kind of file (a model, a LoRA)."""
MAX_FILE_BYTES = 4 << 20

_VERSION_RE = re.compile("[0-9]{1,9}")
_SAFETENSORS_PROBLEMS = {
    # safetensors names the kind of damage in its error text ("Error while deserializing header: <kind>")
    "MetadataIncompleteBuffer": "is truncated: its size does not match the tensors its header lists",
    "InvalidHeaderDeserialization": (
        "is not a safetensors file: its header is not JSON, or not a JSON object of tensor entries and "
        "text metadata"
    ),
}


@dataclass(frozen=True)
class IdentityInfo:
    """What is known about a stored identity from its file header alone (no tensors read)."""

    name: str
    key: str
    short_hash: str
    created: str
    origin: dict
    path: Path
    dtype: str
    has_thumbnail: bool


# -------------------------------------------------------------------------------------------------- writing


def thumbnail_rgb(image: Image.Image) -> Image.Image:
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


def _file_contents(identity: Identity, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of ``identity``'s file, checked as for saving."""
    if dtype not in STORAGE_DTYPES:
        raise IdentityError(f"identities are stored as float16 or float32, not {dtype}")
    validate_file_name_safe(identity.name)
    embedding = checked_embedding(identity.embedding, f"identity {identity.name!r}")
    stored = embedding.to(dtype)
    if not torch.isfinite(stored).all():
        raise IdentityError(
            f"the embedding of identity {identity.name!r} has values beyond {dtype}'s range; "
            "save it as float32"
        )
    origin = checked_origin(identity.origin, require_details=True)
    check_created(identity.created)
    tensors = {"embedding": stored.contiguous()}
    if identity.thumbnail is not None:
        thumbnail = thumbnail_rgb(identity.thumbnail)
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
    return tensors, metadata


def encode_identity_file(identity: Identity, dtype: torch.dtype = torch.float16) -> bytes:
    """Serialise ``identity`` to the bytes of an identity file, storing the embedding as ``dtype``.

    ``dtype`` is torch.float16 or torch.float32. The file's short hash is that of the stored (rounded)
    values. Raises IdentityError for an unstorable identity (e.g. values beyond float16's range).
    """
    tensors, metadata = _file_contents(identity, dtype)
    return save_reproducible(tensors, metadata)


def write_identity_file(
    identity: Identity, path: str | os.PathLike, dtype: torch.dtype = torch.float16, *, overwrite: bool = True
) -> IdentityInfo:
    """Write ``identity`` to ``path`` atomically (temp file in the same folder, then rename); its info.

    With ``overwrite=False`` an existing file is left alone and IdentityExists is raised; with two writers at
    once exactly one wins. The folder must exist. Raises IdentityError for an unstorable identity or a folder
    that cannot be written.
    """
    path = Path(path)
    tensors, metadata = _file_contents(identity, dtype)
    data = save_reproducible(tensors, metadata)
    entries = {key: (_SAFETENSORS_DTYPES[t.dtype], list(t.shape)) for key, t in tensors.items()}
    info = _info_from_header(metadata, entries, path, str(path))
    if not _publish(path, lambda temp: temp.write_bytes(data), overwrite=overwrite):
        raise IdentityExists(f"an identity file already exists at {path}", identity.name)
    return info


def copy_identity_file(source: str | os.PathLike, target: str | os.PathLike, *, overwrite: bool) -> bool:
    """Copy the identity file ``source`` to ``target`` byte for byte, after validating the copy fully.

    False (and nothing written) when ``target`` exists and not ``overwrite``. IdentityNotFound when there is
    no ``source``; IdentityError when it is no valid identity file or ``target`` cannot be written.
    """
    source, target = Path(source), Path(target)

    def write(temp: Path) -> None:
        try:
            with open(source, "rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError as error:
            raise IdentityNotFound(f"no identity file at {source}", str(source)) from error
        except OSError as error:
            raise IdentityError(f"cannot read {source}: {error.strerror or error}") from error
        temp.write_bytes(data)
        _read(temp, tensors=True, source=str(source))  # what is published is what was checked

    return _publish(target, write, overwrite=overwrite)


def _publish(target: Path, write: Callable[[Path], None], *, overwrite: bool) -> bool:
    try:
        return publish_file(target, write, overwrite=overwrite, prefix=TEMP_PREFIX)
    except OSError as error:
        raise IdentityError(f"cannot write {target}: {error.strerror or error}") from error


# -------------------------------------------------------------------------------------------------- reading


def read_identity_info(path: str | os.PathLike) -> IdentityInfo:
    """Describe an identity file from its header alone (never reads its tensors).

    IdentityNotFound when there is no file; IdentityError naming any other problem.
    """
    return _read(Path(path), tensors=False)[0]


def read_identity_file(path: str | os.PathLike) -> Identity:
    """Load and fully validate one identity file from anywhere.

    Checks the format name and version, base model family, tensor shapes and dtypes, finite values and that
    the stored short hash matches the stored embedding. IdentityNotFound when there is no file; IdentityError
    naming any other problem.
    """
    return read_stored_identity(path)[0]


def read_stored_identity(path: str | os.PathLike) -> tuple[Identity, IdentityInfo]:
    """:func:`read_identity_file` and :func:`read_identity_info` of one file, read once."""
    info, identity = _read(Path(path), tensors=True)
    return identity, info


def _read(path: Path, *, tensors: bool, source: str | None = None) -> tuple[IdentityInfo, Identity | None]:
    """The file's info and (with ``tensors``) its identity; ``source`` names the file in messages."""
    source = source or str(path)
    file_size = _check_header_bounds(path, source)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = set(handle.keys())
            entries = {}
            for key in ("embedding", "thumbnail"):
                if key in keys:
                    piece = handle.get_slice(key)
                    entries[key] = (piece.get_dtype(), list(piece.get_shape()))
            info = _info_from_header(handle.metadata(), entries, path, source)
            if not tensors:
                return info, None
            if file_size > MAX_FILE_BYTES:
                raise IdentityError(f"{source} is too large to be an identity file")
            stored = handle.get_tensor("embedding")
            thumbnail = handle.get_tensor("thumbnail") if info.has_thumbnail else None
    except SafetensorError as error:
        kind = next((k for k in _SAFETENSORS_PROBLEMS if k in str(error)), None)
        problem = _SAFETENSORS_PROBLEMS[kind] if kind else f"is not a readable safetensors file ({error})"
        raise IdentityError(f"{source} {problem}") from error
    embedding = checked_embedding(stored, source)
    if embedding_hash(embedding) != info.short_hash:
        raise IdentityError(
            f"{source} is damaged: its embedding hashes to {embedding_hash(embedding)}, "
            f"but the file says {info.short_hash}"
        )
    identity = Identity(
        name=info.name,
        embedding=embedding,
        origin=info.origin,
        created=info.created,
        thumbnail=None if thumbnail is None else Image.fromarray(thumbnail.numpy()),
    )
    return info, identity


def _check_header_bounds(path: Path, source: str) -> int:
    """The file's size, after the checks safe_open cannot make (see the module docstring)."""
    try:
        with open(path, "rb") as file:
            file_size = os.fstat(file.fileno()).st_size
            prefix = file.read(8)
    except FileNotFoundError as error:
        raise IdentityNotFound(f"no identity file at {source}", source) from error
    except OSError as error:
        raise IdentityError(f"cannot read {source}: {error.strerror or error}") from error
    if file_size < 8 or len(prefix) < 8:
        raise IdentityError(
            f"{source} is not an identity file: only {file_size} bytes, too short for safetensors"
        )
    (header_length,) = struct.unpack("<Q", prefix)
    if header_length > MAX_HEADER_BYTES:
        raise IdentityError(
            f"{source} is not an identity file: its header claims {header_length} bytes "
            "(a model or LoRA file, or not safetensors at all)"
        )
    if 8 + header_length > file_size:
        raise IdentityError(f"{source} is truncated or not a safetensors file: the header runs past its end")
    return file_size


def _info_from_header(
    metadata: dict[str, str] | None, entries: dict[str, tuple[str, list[int]]], path: Path, source: str
) -> IdentityInfo:
    """Validate an identity file's metadata and its tensors' (dtype, shape) entries; describe the file."""
    if not metadata:
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

    if "embedding" not in entries:
        raise IdentityError(f"{source} has no 'embedding' tensor")
    dtype, shape = entries["embedding"]
    if dtype not in _DTYPE_NAMES:
        raise IdentityError(f"{source} stores its embedding as {dtype}; expected F16 or F32")
    if shape != EMBEDDING_SHAPE:
        raise IdentityError(
            f"{source} holds an embedding of shape {shape}; expected {EMBEDDING_SHAPE} "
            f"(SDXL: {ID_TOKENS} tokens x {SDXL_CONTEXT_WIDTH})"
        )
    if "thumbnail" in entries:
        thumbnail_dtype, thumbnail_shape = entries["thumbnail"]
        if (
            thumbnail_dtype != "U8"
            or len(thumbnail_shape) != 3
            or thumbnail_shape[2] != 3
            or not all(1 <= side <= THUMBNAIL_MAX_SIDE for side in thumbnail_shape[:2])
        ):
            raise IdentityError(
                f"{source} has a thumbnail of {thumbnail_dtype} {thumbnail_shape}; expected U8 [H, W, 3], "
                f"sides 1..{THUMBNAIL_MAX_SIDE}"
            )

    name = metadata.get("name", "")
    try:
        validate_file_name_safe(name)
    except IdentityError as error:
        raise IdentityError(f"{source} holds an unusable identity name: {error}") from error
    short_hash = metadata.get("short_hash", "")
    if not SHORT_HASH_RE.fullmatch(short_hash):
        raise IdentityError(f"{source} has a malformed short hash {short_hash!r}")
    try:
        origin = checked_origin(json.loads(metadata.get("origin", "")), require_details=False)
    except (ValueError, RecursionError) as error:
        raise IdentityError(f"{source} has an origin that is not JSON") from error
    except IdentityError as error:
        raise IdentityError(f"{source}: {error}") from error
    created = metadata.get("created", "")
    try:
        check_created(created)
    except IdentityError as error:
        raise IdentityError(f"{source}: {error}") from error
    return IdentityInfo(
        name=name,
        key=identity_key(name),
        short_hash=short_hash,
        created=created,
        origin=origin,
        path=path,
        dtype=_DTYPE_NAMES[dtype],
        has_thumbnail="thumbnail" in entries,
    )
