"""Name-encoder checkpoint format v1: one safetensors file, string metadata, validated on load.

The training pipeline writes checkpoints with :func:`save_encoder_checkpoint`; the extension reads them with
:func:`load_encoder_checkpoint`. Reading never executes code from the file (safetensors + JSON only).

Tensors:
    head.<param>            the MLP head's state dict (see model.head_state_shapes)
    namespace.mean          (ID_TOKENS, SDXL_CONTEXT_WIDTH)  mean F_ID of the training names
    namespace.basis         (r, ID_TOKENS * SDXL_CONTEXT_WIDTH)  orthonormal rows of a low-rank basis
    namespace.scales        (r,)  standard deviation of the names along each basis row
    tower.<slot>.<param>    optional: a tower's weights (normally towers come from open_clip files)
Metadata (all strings; JSON where structured): see METADATA_KEYS.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lib_magicnaming.atomic import write_atomic
from lib_magicnaming.constants import (
    BASE_MODEL_FAMILY,
    ID_FIRST_ROW,
    ID_TOKENS,
    SDXL_CONTEXT_WIDTH,
    SHORT_HASH_CHARS,
)
from lib_magicnaming.errors import EncoderError, MagicNamingError
from lib_magicnaming.factory import build_encoder
from lib_magicnaming.model import EncoderConfig, HeadConfig, NameEncoder, head_state_shapes
from lib_magicnaming.namespace import NamespaceStats
from lib_magicnaming.towers import file_version

FORMAT_NAME = "magicnaming-encoder"
FORMAT_VERSION = 1

METADATA_KEYS = (
    "format",  # FORMAT_NAME
    "format_version",  # "1"
    "base_model_family",  # "sdxl"
    "id_tokens",  # "8"  rows of F_ID
    "context_width",  # "2048"  width of each row
    "id_first_row",  # "1"  F_ID = rows id_first_row .. id_first_row+id_tokens-1 of the name's encoding
    "towers",  # JSON list of TowerSpec dicts, in concatenation order
    "head",  # JSON HeadConfig
    "crop",  # JSON CropConfig
    "feature_norm",  # "l2" | "none"
    "training_summary",  # JSON object (free form; "{}" when none)
)

CONFIG_JSON_KEYS = ("towers", "head", "crop")
"""The EncoderConfig fields (EncoderConfig.to_dict) stored as JSON, one metadata key each."""

HEAD_PREFIX = "head."
TOWER_PREFIX = "tower."
NAMESPACE_KEYS = ("namespace.mean", "namespace.basis", "namespace.scales")


@dataclass
class EncoderCheckpoint:
    """A loaded, validated checkpoint. ``sha256`` is the file's content hash."""

    path: Path
    config: EncoderConfig
    head_state: dict[str, torch.Tensor]
    namespace_stats: NamespaceStats | None
    training_summary: dict[str, Any]
    sha256: str
    tower_states: dict[str, dict[str, torch.Tensor]]
    metadata: dict[str, str]

    @property
    def short_hash(self) -> str:
        """First SHORT_HASH_CHARS hex characters of the file's sha256 (the ``encoder_hash`` of identities)."""
        return self.sha256[:SHORT_HASH_CHARS]

    @property
    def hash(self) -> str:
        """Alias of :attr:`short_hash` (CONTRACT name)."""
        return self.short_hash

    def build_model(
        self, *, models_dir: str | os.PathLike | None = None, allow_download: bool = False,
        random_towers: bool = False, tower_dtype: torch.dtype = torch.float32,
    ) -> NameEncoder:
        """Rebuild the encoder this checkpoint describes (head loaded; towers as factory.build_encoder)."""
        return build_encoder(
            self.config, head_state=self.head_state, tower_states=self.tower_states,
            models_dir=None if models_dir is None else str(models_dir),
            allow_download=allow_download, random_towers=random_towers, tower_dtype=tower_dtype,
        )


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remembered_file_sha256(path: str | os.PathLike) -> str:
    """:func:`file_sha256`, computed once per version of the file (path, size, mtime, inode: any write to the
    file or its replacement changes it). A checkpoint with its towers inside is gigabytes; the WebUI asks for
    its hash at every use and every status line, and each encoder reading it needs it again."""
    return _version_sha256(file_version(path))


@functools.lru_cache(maxsize=8)
def _version_sha256(version: tuple[str, int, int, int]) -> str:
    return file_sha256(version[0])


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite. A sum is finite only when every value is (NaN and inf propagate), and
    is one fast pass with no temporary; only a non-finite sum (maybe an overflow of finite values) needs the
    element-wise check. (A float64 sum would copy the tensor into float64 first.)"""
    return math.isfinite(float(tensor.sum())) or bool(torch.isfinite(tensor).all())


def config_metadata(config: EncoderConfig, training_summary: dict | None = None) -> dict[str, str]:
    """The string metadata recording ``config`` (and the fixed facts of format v1)."""
    config.validate()
    try:
        summary = json.dumps(training_summary or {}, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise EncoderError(f"training_summary must be JSON-serialisable with finite numbers: {err}") from err
    fields = config.to_dict()
    return {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "base_model_family": BASE_MODEL_FAMILY,
        "id_tokens": str(ID_TOKENS),
        "context_width": str(SDXL_CONTEXT_WIDTH),
        "id_first_row": str(ID_FIRST_ROW),
        **{key: json.dumps(fields[key], sort_keys=True) for key in CONFIG_JSON_KEYS},
        "feature_norm": fields["feature_norm"],
        "training_summary": summary,
    }


def save_encoder_checkpoint(
    path: str | os.PathLike,
    *,
    config: EncoderConfig,
    head_state: dict[str, torch.Tensor],
    namespace_stats: NamespaceStats | None = None,
    training_summary: dict | None = None,
    tower_states: dict[str, dict[str, torch.Tensor]] | None = None,
) -> str:
    """Validate and write a v1 checkpoint atomically; return its short hash (see EncoderCheckpoint).

    Everything is checked with the same rules as loading before anything is written, so a file this writes
    always loads.
    """
    from safetensors.torch import save_file

    metadata = config_metadata(config, training_summary)
    head = _check_head_state({k: v for k, v in head_state.items()}, config.head)
    tensors = {HEAD_PREFIX + k: v for k, v in head.items()}
    if namespace_stats is not None:
        namespace_stats.validate(config.head.out_tokens, config.head.out_dim)
        stats_tensors = (namespace_stats.mean, namespace_stats.basis, namespace_stats.scales)
        tensors.update(zip(NAMESPACE_KEYS, stats_tensors, strict=True))
    slots = {t.name for t in config.towers}
    for slot, state in (tower_states or {}).items():
        if slot not in slots:
            raise EncoderError(f"tower_states names tower {slot!r}, which the config does not have")
        tensors.update({f"{TOWER_PREFIX}{slot}.{k}": v for k, v in state.items()})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}

    target = write_atomic(path, lambda temp: save_file(tensors, str(temp), metadata=metadata))
    return file_sha256(target)[:SHORT_HASH_CHARS]


def load_encoder_checkpoint(path: str | os.PathLike) -> EncoderCheckpoint:
    """Read and validate a checkpoint; raise EncoderError saying exactly what is wrong."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise EncoderError(f"encoder checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            config, summary = _config_from_metadata(metadata, path)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as err:
        raise EncoderError(f"{path.name} is not a readable safetensors file: {err}") from err
    head_state = {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    head_state = {k: v.float() for k, v in _check_head_state(head_state, config.head, path.name).items()}
    stats = _namespace_from_tensors(tensors, config.head, path.name)
    tower_states = _tower_states_from_tensors(tensors, config, path.name)
    unknown = sorted(
        k for k in tensors
        if not k.startswith((HEAD_PREFIX, TOWER_PREFIX)) and k not in NAMESPACE_KEYS
    )
    if unknown:
        raise EncoderError(f"{path.name}: unknown tensor(s) {unknown[:5]} in an encoder checkpoint")
    return EncoderCheckpoint(
        path=path, config=config, head_state=head_state, namespace_stats=stats, training_summary=summary,
        sha256=remembered_file_sha256(path), tower_states=tower_states, metadata=metadata,
    )


def _config_from_metadata(metadata: dict[str, str], path: Path) -> tuple[EncoderConfig, dict]:
    name = path.name
    fmt = metadata.get("format")
    if fmt != FORMAT_NAME:
        raise EncoderError(f"{name} is not a MagicNaming encoder checkpoint (format {fmt!r}, expected "
                           f"{FORMAT_NAME!r})")
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise EncoderError(f"{name}: checkpoint metadata is missing key(s) {missing}")
    version = metadata["format_version"]
    if version != str(FORMAT_VERSION):
        newer = version.isdigit() and int(version) > FORMAT_VERSION
        raise EncoderError(
            f"{name}: checkpoint format version {version!r}, this MagicNaming reads version {FORMAT_VERSION}"
            + ("; update the extension to read it" if newer else "")
        )
    expected = {
        "base_model_family": BASE_MODEL_FAMILY, "id_tokens": str(ID_TOKENS),
        "context_width": str(SDXL_CONTEXT_WIDTH), "id_first_row": str(ID_FIRST_ROW),
    }
    for key, value in expected.items():
        if metadata[key] != value:
            raise EncoderError(
                f"{name}: metadata {key} is {metadata[key]!r}, this MagicNaming needs {value!r}"
            )
    fields = {key: _json(metadata, key, name, list if key == "towers" else dict) for key in CONFIG_JSON_KEYS}
    try:
        config = EncoderConfig.from_dict({**fields, "feature_norm": metadata["feature_norm"]})
    except (MagicNamingError, TypeError) as err:
        raise EncoderError(f"{name}: {err}") from err
    head = config.head
    if (head.out_tokens, head.out_dim) != (ID_TOKENS, SDXL_CONTEXT_WIDTH):
        raise EncoderError(f"{name}: head predicts ({head.out_tokens}, {head.out_dim}), F_ID is "
                           f"({ID_TOKENS}, {SDXL_CONTEXT_WIDTH})")
    return config, _json(metadata, "training_summary", name, dict)


def _json(metadata: dict[str, str], key: str, name: str, kind: type) -> Any:
    try:
        value = json.loads(metadata[key], parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as err:
        raise EncoderError(f"{name}: metadata {key} is not valid JSON ({err})") from err
    if not isinstance(value, kind):
        raise EncoderError(f"{name}: metadata {key} must be a JSON {kind.__name__}")
    return value


def _reject_constant(token: str) -> Any:
    """NaN and Infinity are not JSON; the writer never emits them (``allow_nan=False``)."""
    raise ValueError(f"{token} is not a JSON number")


def _check_head_state(
    state: dict[str, torch.Tensor], head: HeadConfig, name: str = "head_state"
) -> dict[str, torch.Tensor]:
    shapes = head_state_shapes(head)
    missing = sorted(set(shapes) - set(state))
    if missing:
        raise EncoderError(f"{name}: head tensor(s) missing: {[HEAD_PREFIX + k for k in missing]}")
    unexpected = sorted(set(state) - set(shapes))
    if unexpected:
        raise EncoderError(f"{name}: unexpected head tensor(s) {[HEAD_PREFIX + k for k in unexpected]}")
    for key, shape in shapes.items():
        tensor = state[key]
        if tuple(tensor.shape) != shape:
            raise EncoderError(
                f"{name}: tensor {HEAD_PREFIX}{key} has shape {tuple(tensor.shape)}, the head config "
                f"needs {shape}"
            )
        if not tensor.is_floating_point():
            raise EncoderError(
                f"{name}: tensor {HEAD_PREFIX}{key} must be floating point, got {tensor.dtype}"
            )
        if not _all_finite(tensor):
            raise EncoderError(f"{name}: tensor {HEAD_PREFIX}{key} holds non-finite values (NaN or inf)")
    return state


def _namespace_from_tensors(
    tensors: dict[str, torch.Tensor], head: HeadConfig, name: str
) -> NamespaceStats | None:
    present = [k for k in NAMESPACE_KEYS if k in tensors]
    if not present:
        return None
    if len(present) != len(NAMESPACE_KEYS):
        missing = [k for k in NAMESPACE_KEYS if k not in tensors]
        raise EncoderError(f"{name}: name-space statistics incomplete, missing {missing}")
    mean, basis, scales = (tensors[k].float() if tensors[k].is_floating_point() else tensors[k]
                           for k in NAMESPACE_KEYS)
    try:
        return NamespaceStats(mean, basis, scales).validate(head.out_tokens, head.out_dim)
    except EncoderError as err:
        raise EncoderError(f"{name}: {err}") from err


def _tower_states_from_tensors(
    tensors: dict[str, torch.Tensor], config: EncoderConfig, name: str
) -> dict[str, dict[str, torch.Tensor]]:
    states: dict[str, dict[str, torch.Tensor]] = {}
    slots = {t.name for t in config.towers}
    for key, tensor in tensors.items():
        if not key.startswith(TOWER_PREFIX):
            continue
        slot, _, param = key[len(TOWER_PREFIX):].partition(".")
        if slot not in slots or not param:
            raise EncoderError(
                f"{name}: tensor {key!r} belongs to no tower of this checkpoint ({sorted(slots)})"
            )
        if tensor.is_floating_point() and not _all_finite(tensor):
            raise EncoderError(f"{name}: tensor {key} holds non-finite values (NaN or inf)")
        states.setdefault(slot, {})[param] = tensor
    return states
