"""The Identity value: a name, its F_ID embedding, how it was made and when; and the checks each part obeys.

An identity's embedding is ``ID_TOKENS x SDXL_CONTEXT_WIDTH`` (8 x 2048), float32 in memory. Its short hash
(:func:`embedding_hash`) is the hash of its values, which is what infotext records and markers carry. Its
name follows the one name rule in ``lib_magicnaming.tags``; a name that becomes a file name must also pass
:func:`validate_file_name_safe`. Its origin is a JSON object whose ``kind`` is one of ORIGIN_KINDS.

Files of identities: :mod:`lib_magicnaming.identity_file`; the folder of them: :mod:`.identity_library`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import torch
from PIL import Image

from lib_magicnaming.constants import ID_TOKENS, SDXL_CONTEXT_WIDTH, SHORT_HASH_CHARS
from lib_magicnaming.errors import IdentityError
from lib_magicnaming.tags import identity_key, validate_identity_name

ORIGIN_KINDS = ("photos", "names", "mix", "sampled", "imported")
ORIGIN_REQUIRED_KEYS = {
    "photos": ("encoder_hash", "photo_hashes"),
    "names": ("names",),
    "mix": ("identities", "method"),
    "sampled": ("seed", "scale"),
    "imported": (),
}
"""The details an origin of each kind must record before it is saved."""
ORIGIN_SOURCE_KEYS = {
    "sampled": (("encoder_hash",), ("checkpoint_hash", "names_list_hash")),
}
"""Kinds whose origin must also record where it came from: one of these groups of keys, complete (a sampled
person: the encoder checkpoint's hash, or the hashes of the SDXL checkpoint and names list it was measured
with)."""

EMBEDDING_SHAPE = [ID_TOKENS, SDXL_CONTEXT_WIDTH]

SHORT_HASH_RE = re.compile(f"[0-9a-f]{{{SHORT_HASH_CHARS}}}")
"""The form of a short hash (see embedding_hash); use it with ``fullmatch``."""

WINDOWS_RESERVED_STEMS = frozenset(
    ["con", "prn", "aux", "nul", "conin$", "conout$"]
    + [f"com{i}" for i in range(10)]
    + [f"lpt{i}" for i in range(10)]
)
"""Device names Windows reserves whatever the extension (``nul.txt`` is the null device too)."""


def embedding_hash(embedding: torch.Tensor) -> str:
    """First SHORT_HASH_CHARS hex digits of the sha256 of the embedding's float32 little-endian bytes.

    The tensor is cast to float32 first, so float16 and float32 copies hash alike only when their values are
    equal after the cast; the library hashes the values as stored (after any float16 rounding).
    """
    values = embedding.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    return hashlib.sha256(values.astype("<f4", copy=False).tobytes()).hexdigest()[:SHORT_HASH_CHARS]


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


def checked_embedding(embedding: Any, what: str) -> torch.Tensor:
    """``embedding`` as a new float32 CPU tensor after checking it is a finite floating-point F_ID of
    EMBEDDING_SHAPE; IdentityError naming ``what`` (e.g. "identity 'alice'") otherwise."""
    if not isinstance(embedding, torch.Tensor):
        raise IdentityError(f"the embedding of {what} is a {type(embedding).__name__}, not a torch tensor")
    if not embedding.is_floating_point():
        raise IdentityError(f"the embedding of {what} has dtype {embedding.dtype}; expected a floating dtype")
    if list(embedding.shape) != EMBEDDING_SHAPE:
        raise IdentityError(
            f"the embedding of {what} has shape {list(embedding.shape)}; expected {EMBEDDING_SHAPE} "
            f"({ID_TOKENS} tokens of SDXL's {SDXL_CONTEXT_WIDTH}-wide text conditioning)"
        )
    values = embedding.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()
    if not torch.isfinite(values).all():
        raise IdentityError(f"the embedding of {what} holds NaN or infinite values")
    return values


def checked_origin(origin: Any, *, require_details: bool) -> dict:
    """A plain-JSON copy of ``origin`` after checking its kind (and, with ``require_details``, that it records
    the details of its kind: ORIGIN_REQUIRED_KEYS); IdentityError otherwise."""
    if not isinstance(origin, Mapping):
        raise IdentityError(f"an identity's origin must be a JSON object, not {type(origin).__name__}")
    kind = origin.get("kind")
    if kind not in ORIGIN_KINDS:
        raise IdentityError(
            f"an identity's origin kind is {kind!r}; expected one of {', '.join(ORIGIN_KINDS)}"
        )
    if require_details:
        missing = [k for k in ORIGIN_REQUIRED_KEYS[kind] if k not in origin]
        if missing:
            raise IdentityError(f"an identity origin of kind {kind!r} lacks {', '.join(missing)}")
        sources = ORIGIN_SOURCE_KEYS.get(kind, ((),))
        if not any(all(key in origin for key in group) for group in sources):
            wanted = " or ".join(" + ".join(group) for group in sources)
            raise IdentityError(f"an identity origin of kind {kind!r} must record its source: {wanted}")
    try:
        return json.loads(json.dumps(dict(origin), allow_nan=False))
    except (TypeError, ValueError, RecursionError) as error:
        raise IdentityError(f"an identity's origin is not plain JSON: {error}") from error


def check_created(created: Any) -> None:
    """IdentityError unless ``created`` is an ISO 8601 time in UTC (``...Z`` or ``+00:00``)."""
    if not isinstance(created, str):
        raise IdentityError(f"an identity's created time must be an ISO 8601 string, not {created!r}")
    try:
        stamp = datetime.fromisoformat(created[:-1] + "+00:00" if created.endswith("Z") else created)
    except ValueError as error:
        raise IdentityError(f"an identity's created time {created!r} is not ISO 8601") from error
    if stamp.utcoffset() != timedelta(0):
        raise IdentityError(f"an identity's created time {created!r} is not in UTC (end it with 'Z')")


@dataclass
class Identity:
    """One identity: a name, its F_ID embedding (float32 in memory), how it was made, when, and a thumbnail.

    Constructing one validates the name, the embedding (shape ID_TOKENS x SDXL_CONTEXT_WIDTH, floating point,
    finite; copied to a new float32 CPU tensor) and the origin (a JSON object whose ``kind`` is one of
    ORIGIN_KINDS; saving also requires that kind's details, see ORIGIN_REQUIRED_KEYS).
    """

    name: str
    embedding: torch.Tensor
    origin: dict
    created: str = field(default_factory=utc_now_iso)
    thumbnail: Image.Image | None = None

    def __post_init__(self) -> None:
        validate_identity_name(self.name)
        self.embedding = checked_embedding(self.embedding, f"identity {self.name!r}")
        self.origin = checked_origin(self.origin, require_details=False)
        check_created(self.created)
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
