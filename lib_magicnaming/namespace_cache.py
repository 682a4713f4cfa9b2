"""A checkpoint's own name space: its names' F_IDs and statistics, computed once and cached in a file.

:func:`compute_checkpoint_namespace` encodes every name of a names list (:mod:`.names_list`) through the
text encoders of an SDXL checkpoint (the caller's ``encode_texts``, the same function that makes identities
from names) in batches, and fits mean, principal basis and scales to their F_IDs with
:func:`lib_magicnaming.namespace.fit_namespace_stats` (the rule the training export uses). The result, a
:class:`CheckpointNamespace`, samples fictional people (:meth:`CheckpointNamespace.sample`) and finds the
listed names nearest to an identity (:mod:`.nearest`).

:class:`NamespaceCache` keeps one file per (checkpoint short hash, names list short hash) in its folder
(``models/magicnaming/namespace/<checkpoint>-<list>.safetensors``). The file (format 1) holds:

=================  ==========================  ==========================================================
``mean``           F32 (8, 2048)               mean F_ID of the listed names
``basis``          F32 (r, 16384)              orthonormal principal directions (r = min(64, N - 1))
``scales``         F32 (r,)                    the names' standard deviation along each direction
``f_ids``          F16 (N, 8, 2048)            every listed name's F_ID, in list order
metadata           strings                     ``format`` magicnaming-namespace, ``format_version`` 1,
                                               ``base_model_family`` sdxl, ``checkpoint_hash`` (10 hex),
                                               ``checkpoint_title``, ``names_list_hash`` (sha256 hex),
                                               ``names`` (JSON list), ``rank``, ``f_id_rule``,
                                               ``created``, ``seconds`` (time to compute),
                                               ``content_sha256`` (of the four tensors' bytes, in the
                                               order above)
=================  ==========================  ==========================================================

Reading validates everything, the content hash included; a damaged file (truncated, edited, written by
another version, not matching its name) is refused, deleted and reported, and the caller computes it again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lib_magicnaming.atomic import write_atomic
from lib_magicnaming.constants import BASE_MODEL_FAMILY, ID_TOKENS, SDXL_CONTEXT_WIDTH, SHORT_HASH_CHARS
from lib_magicnaming.errors import MagicNamingError, NamespaceFileError
from lib_magicnaming.identity import SHORT_HASH_RE, utc_now_iso
from lib_magicnaming.lru import LRUCache
from lib_magicnaming.names_list import NamesList, names_list_hash
from lib_magicnaming.namespace import (
    EncodeTexts,
    NamespaceStats,
    encode_names_f_id,
    fit_namespace_stats,
    sample_namespace,
)
from lib_magicnaming.nearest import NEAREST_COUNT, NameIndex, NearestName
from lib_magicnaming.safetensors_bytes import save_reproducible

logger = logging.getLogger("magicnaming")

FORMAT_NAME = "magicnaming-namespace"
FORMAT_VERSION = 1
NAMESPACE_SUBDIR = "namespace"
"""The cache folder's name in the extension's models folder."""
NAMESPACE_RANK = 64
"""Principal directions kept (as the training export's default ``--rank``)."""
ENCODE_BATCH = 16
"""Names per call of the text encoders."""
F_ID_RULE = (
    "rows 1..8 of the name encoded alone by the checkpoint's own text encoders, as the WebUI encodes an "
    "SDXL prompt (the path that makes identities from names)"
)
TENSOR_ORDER = ("mean", "basis", "scales", "f_ids")
MAX_HEADER_BYTES = 64 << 20
"""A names list of 100,000 names fits in a few MiB of header; more means another kind of file."""
_MEMO_CAPACITY = 2

Progress = Callable[..., Any]


def _no_progress(*_args: Any, **_kwargs: Any) -> None:
    pass


@dataclass(frozen=True)
class SourceCheckpoint:
    """The SDXL checkpoint whose text encoders measure the name space: its short hash and a title."""

    short_hash: str
    """First SHORT_HASH_CHARS hex digits of the checkpoint file's sha256 (the WebUI's "Model hash")."""
    title: str

    def __post_init__(self) -> None:
        if not SHORT_HASH_RE.fullmatch(self.short_hash or ""):
            raise MagicNamingError(f"a checkpoint's short hash must be {SHORT_HASH_CHARS} hex digits, "
                                   f"not {self.short_hash!r}")


@dataclass(frozen=True, eq=False)
class CheckpointNamespace:
    """The name space of one checkpoint as measured with one names list."""

    checkpoint_hash: str
    checkpoint_title: str
    names_list_hash: str
    names: tuple[str, ...]
    f_ids: torch.Tensor
    """(N, 8, 2048) float32 (values as stored: rounded to float16)."""
    stats: NamespaceStats
    created: str
    seconds: float

    @property
    def names_list_short_hash(self) -> str:
        return self.names_list_hash[:SHORT_HASH_CHARS]

    def sample(self, seed: int, scale: float = 1.0) -> torch.Tensor:
        """A fictional person (8, 2048): the same seed and scale always give the same values."""
        return sample_namespace(self.stats, seed, scale)

    def sample_origin(self, seed: int, scale: float) -> dict:
        """The origin of a person sampled here: the source (checkpoint and list hashes), seed and scale."""
        return {
            "kind": "sampled", "source": "checkpoint", "checkpoint_hash": self.checkpoint_hash,
            "names_list_hash": self.names_list_short_hash, "seed": int(seed), "scale": float(scale),
        }

    @functools.cached_property
    def index(self) -> NameIndex:
        """The listed names for cosine look-ups, centred on their mean."""
        return NameIndex(self.names, self.f_ids, self.stats.mean)

    def nearest(self, embedding: torch.Tensor, count: int = NEAREST_COUNT) -> list[NearestName]:
        """The listed names closest to ``embedding`` (see :mod:`.nearest`)."""
        return self.index.nearest(embedding, count)


def compute_checkpoint_namespace(
    encode_texts: EncodeTexts, names_list: NamesList, checkpoint: SourceCheckpoint, *,
    batch_size: int = ENCODE_BATCH, rank: int = NAMESPACE_RANK, progress: Progress = _no_progress,
) -> CheckpointNamespace:
    """Encode every listed name (``batch_size`` per call of ``encode_texts``) and fit the statistics.

    ``progress(fraction, desc=text)`` is called after each batch. The F_IDs are kept as float16 values (as
    the file stores them); the statistics are fitted to the float32 values and stored exactly.
    """
    started = time.monotonic()
    names = names_list.names
    batches = []
    for first in range(0, len(names), batch_size):
        batch = names[first : first + batch_size]
        batches.append(encode_names_f_id(encode_texts, list(batch)).detach().float().cpu())
        done = first + len(batch)
        progress(done / len(names), desc=f"Encoding listed names: {done} / {len(names)}")
    f_ids = torch.cat(batches)
    stats = fit_namespace_stats(f_ids, rank)
    stats = NamespaceStats(stats.mean.float().contiguous(), stats.basis.float().contiguous(),
                           stats.scales.float().contiguous())
    return CheckpointNamespace(
        checkpoint_hash=checkpoint.short_hash, checkpoint_title=checkpoint.title,
        names_list_hash=names_list.sha256, names=names, f_ids=f_ids.half().float(), stats=stats,
        created=utc_now_iso(), seconds=round(time.monotonic() - started, 2),
    )


# ---------------------------------------------------------------------------------------------- the file


def _tensors(namespace: CheckpointNamespace) -> dict[str, torch.Tensor]:
    return {
        "mean": namespace.stats.mean.float().contiguous(),
        "basis": namespace.stats.basis.float().contiguous(),
        "scales": namespace.stats.scales.float().contiguous(),
        "f_ids": namespace.f_ids.half().contiguous(),
    }


def _content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in TENSOR_ORDER:
        digest.update(tensors[key].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encode_namespace_file(namespace: CheckpointNamespace) -> bytes:
    """The bytes of ``namespace``'s cache file (see the module docstring)."""
    tensors = _tensors(namespace)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "base_model_family": BASE_MODEL_FAMILY,
        "checkpoint_hash": namespace.checkpoint_hash,
        "checkpoint_title": namespace.checkpoint_title,
        "names_list_hash": namespace.names_list_hash,
        "names": json.dumps(list(namespace.names), ensure_ascii=False),
        "rank": str(namespace.stats.rank),
        "f_id_rule": F_ID_RULE,
        "created": namespace.created,
        "seconds": str(namespace.seconds),
        "content_sha256": _content_sha256(tensors),
    }
    return save_reproducible(tensors, metadata)


def read_namespace_file(path: str | os.PathLike) -> CheckpointNamespace:
    """Read and fully validate a cache file; NamespaceFileError naming what is wrong (FileNotFoundError when
    there is none)."""
    path = Path(path)
    _check_header_bounds(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            _check_metadata(metadata, path)
            keys = set(handle.keys())
            if keys != set(TENSOR_ORDER):
                raise NamespaceFileError(
                    f"{path.name} holds tensors {sorted(keys)}, not {list(TENSOR_ORDER)}"
                )
            tensors = {key: handle.get_tensor(key) for key in TENSOR_ORDER}
    except SafetensorError as error:
        if "MetadataIncompleteBuffer" in str(error):
            raise NamespaceFileError(f"{path.name} is truncated: its size does not match its header") \
                from error
        raise NamespaceFileError(f"{path.name} is not a readable safetensors file ({error})") from error
    if _content_sha256(tensors) != metadata["content_sha256"]:
        raise NamespaceFileError(f"{path.name} is damaged: its tensors do not match its content hash")
    names = _checked_names(metadata, path)
    f_ids = tensors["f_ids"]
    if f_ids.dtype != torch.float16 or tuple(f_ids.shape) != (len(names), ID_TOKENS, SDXL_CONTEXT_WIDTH):
        raise NamespaceFileError(
            f"{path.name} holds F_IDs {f_ids.dtype} {tuple(f_ids.shape)}; expected float16 "
            f"({len(names)}, {ID_TOKENS}, {SDXL_CONTEXT_WIDTH}), one per listed name"
        )
    if not bool(torch.isfinite(f_ids).all()):
        raise NamespaceFileError(f"{path.name} holds F_IDs that are not finite numbers")
    for key in ("mean", "basis", "scales"):
        if tensors[key].dtype != torch.float32:
            raise NamespaceFileError(f"{path.name} stores {key} as {tensors[key].dtype}, not float32")
    stats = NamespaceStats(tensors["mean"], tensors["basis"], tensors["scales"])
    try:
        stats.validate()
    except MagicNamingError as error:
        raise NamespaceFileError(f"{path.name}: {error}") from error
    if str(stats.rank) != metadata.get("rank"):
        raise NamespaceFileError(f"{path.name} says rank {metadata.get('rank')!r} but holds {stats.rank}")
    return CheckpointNamespace(
        checkpoint_hash=metadata["checkpoint_hash"], checkpoint_title=metadata.get("checkpoint_title", ""),
        names_list_hash=metadata["names_list_hash"], names=names, f_ids=f_ids.float(), stats=stats,
        created=metadata.get("created", ""), seconds=_seconds(metadata.get("seconds")),
    )


def _check_header_bounds(path: Path) -> None:
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        prefix = file.read(8)
    if len(prefix) < 8:
        raise NamespaceFileError(f"{path.name} is truncated: {size} bytes")
    (header_length,) = struct.unpack("<Q", prefix)
    if header_length > MAX_HEADER_BYTES or 8 + header_length > size:
        raise NamespaceFileError(f"{path.name} is truncated or not a name-space file (header of "
                                 f"{header_length} bytes in a file of {size})")


def _check_metadata(metadata: dict[str, str], path: Path) -> None:
    if metadata.get("format") != FORMAT_NAME:
        raise NamespaceFileError(f"{path.name} is not a name-space file (format {metadata.get('format')!r})")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise NamespaceFileError(f"{path.name} has format version {metadata.get('format_version')!r}; this "
                                 f"version reads {FORMAT_VERSION}")
    if metadata.get("base_model_family") != BASE_MODEL_FAMILY:
        raise NamespaceFileError(f"{path.name} is for {metadata.get('base_model_family')!r}, not "
                                 f"{BASE_MODEL_FAMILY!r}")
    for key in ("checkpoint_hash", "names_list_hash", "names", "content_sha256", "rank"):
        if not metadata.get(key):
            raise NamespaceFileError(f"{path.name} lacks its {key!r}")
    if not SHORT_HASH_RE.fullmatch(metadata["checkpoint_hash"]):
        raise NamespaceFileError(f"{path.name} has a malformed checkpoint hash")


def _checked_names(metadata: dict[str, str], path: Path) -> tuple[str, ...]:
    try:
        names = json.loads(metadata["names"])
    except ValueError as error:
        raise NamespaceFileError(f"{path.name} lists its names in malformed JSON") from error
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise NamespaceFileError(f"{path.name} lists its names as something other than texts")
    if names_list_hash(names) != metadata["names_list_hash"]:
        raise NamespaceFileError(f"{path.name} holds names that do not match its names-list hash")
    return tuple(names)


def _seconds(text: str | None) -> float:
    try:
        return float(text or 0.0)
    except ValueError:
        return 0.0


# --------------------------------------------------------------------------------------------- the cache

_LOADED: LRUCache[tuple, CheckpointNamespace] = LRUCache(_MEMO_CAPACITY)
"""Files read, by (path, size, mtime, inode): a changed file is a new key, so nothing stale is served."""


def forget_loaded_files() -> None:
    """Drop the name spaces kept in memory: the next load reads its file again (as after a restart)."""
    _LOADED.clear()


def _file_version(path: Path) -> tuple | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return (str(path.resolve()), status.st_size, status.st_mtime_ns, status.st_ino)


class NamespaceCache:
    """Name-space files in one folder, one per (checkpoint short hash, names-list short hash)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"NamespaceCache({str(self.folder)!r})"

    def path_for(self, checkpoint: SourceCheckpoint, names_list: NamesList) -> Path:
        """``<folder>/<checkpoint short hash>-<list short hash>.safetensors``."""
        return self.folder / f"{checkpoint.short_hash}-{names_list.short_hash}.safetensors"

    def load(self, checkpoint: SourceCheckpoint, names_list: NamesList) -> CheckpointNamespace | None:
        """The cached name space, or None when there is none. A damaged file, or one that is not what its
        name says, is logged and deleted (None): the caller computes it again."""
        path = self.path_for(checkpoint, names_list)
        version = _file_version(path)
        if version is None:
            return None
        namespace = _LOADED.get(version)
        if namespace is not None:
            return namespace
        try:
            namespace = read_namespace_file(path)
            if (namespace.checkpoint_hash, namespace.names_list_hash) != (checkpoint.short_hash,
                                                                          names_list.sha256):
                raise NamespaceFileError(f"{path.name} holds the name space of another checkpoint or list")
        except FileNotFoundError:
            return None
        except (NamespaceFileError, OSError) as error:
            logger.warning("refused the name-space file %s and deleted it (it is computed again): %s",
                           path, error)
            path.unlink(missing_ok=True)
            return None
        _LOADED.put(version, namespace)
        return namespace

    def save(self, namespace: CheckpointNamespace) -> Path:
        """Write ``namespace``'s file atomically (the folder is made if needed); its path."""
        path = self.folder / f"{namespace.checkpoint_hash}-{namespace.names_list_short_hash}.safetensors"
        data = encode_namespace_file(namespace)
        try:
            write_atomic(path, lambda temp: temp.write_bytes(data))
        except OSError as error:
            raise NamespaceFileError(f"cannot write the name-space file {path.name}: "
                                     f"{error.strerror or error}") from error
        version = _file_version(path)
        if version is not None:
            _LOADED.put(version, namespace)
        return path
