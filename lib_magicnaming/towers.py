"""CLIP image towers: built from their specs (open_clip's VisionTransformer), and their weights: from local
open_clip files in the extension's models folder, else open_clip.

Local files live in ``<models_dir>/towers/<arch>-<pretrained>.<ext>`` (``models_dir`` is the extension's
models folder, ``<webui>/models/magicnaming``). They are open_clip checkpoints: a whole CLIP state dict
(``visual.*`` keys are used, the rest is skipped) or the vision tower's state dict alone. safetensors is
preferred; ``.bin``/``.pt``/``.pth`` are read with ``torch.load(weights_only=True)``, which refuses pickled
code. Nothing is ever downloaded unless the caller allows it, and never at import time.

Weights fingerprint: an encoder records, per tower, the :class:`TowerFingerprint` of the weights it was
trained with (``TowerSpec.weights_sha256`` / ``param_count``), and loading checks the user's tower against it.
The fingerprint is of the tower's state dict, not of a file, so equivalent files match: ``.safetensors`` or
``.bin``, whole CLIP or vision tower alone, float32 or float16 storage. See :func:`tower_fingerprint`. Hashing
bigG takes seconds, so the fingerprint of a tower file is remembered per version of the file (path, size,
mtime, inode), like the encoder checkpoint's hash: a file is hashed once per process, not at every load.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from lib_magicnaming.errors import EncoderError
from lib_magicnaming.lru import LRUCache
from lib_magicnaming.model import TowerSpec, freeze, tower_model_config

TOWERS_SUBDIR = "towers"
TOWER_FILE_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth")
"""Looked for in this order."""

KNOWN_SOURCES = {
    ("ViT-L-14", "openai"): "https://huggingface.co/timm/vit_large_patch14_clip_224.openai "
    "(file open_clip_model.safetensors or open_clip_pytorch_model.bin)",
    ("ViT-bigG-14", "laion2b_s39b_b160k"): "https://huggingface.co/laion/CLIP-ViT-bigG-14-laion2B-39B-b160k "
    "(file open_clip_model.safetensors or open_clip_pytorch_model.bin)",
}
"""Where a user gets a tower's open_clip weight file (shown in errors)."""

VISUAL_PREFIX = "visual."

logger = logging.getLogger("magicnaming")


def build_tower_module(spec: TowerSpec) -> nn.Module:
    """Build ``spec``'s image tower with random weights (open_clip's VisionTransformer), frozen, in eval."""
    import open_clip.model as oc_model

    cfg = tower_model_config(spec)
    vision_cfg = {k: v for k, v in cfg["vision_cfg"].items() if k != "output_tokens"}
    quick_gelu = bool(cfg.get("quick_gelu", False))
    try:  # open_clip 2.x and 3.x both have this helper
        tower = oc_model._build_vision_tower(
            embed_dim=cfg["embed_dim"], vision_cfg=vision_cfg, quick_gelu=quick_gelu
        )
    except (TypeError, ValueError, AttributeError, ZeroDivisionError, AssertionError) as err:
        raise EncoderError(
            f"tower {spec.name}: open_clip cannot build vision config {vision_cfg}: {err}"
        ) from err
    return freeze(tower)


def load_state_strict(
    module: nn.Module, state: dict[str, torch.Tensor], what: str, *, assign: bool = False
) -> None:
    """Load ``state`` into ``module`` exactly (names and shapes), raising EncoderError naming the mismatch.

    ``assign`` makes the state's tensors the module's own (no copy): how a module built on the meta device
    gets its weights without holding them twice.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise EncoderError(
            f"{what}: weights do not match the architecture; missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise EncoderError(
                f"{what}: tensor {key!r} has shape {tuple(tensor.shape)}, the architecture needs "
                f"{tuple(expected[key].shape)}"
            )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True, assign=assign)


def towers_dir(models_dir: str | os.PathLike) -> Path:
    """The folder tower weight files go in."""
    return Path(models_dir) / TOWERS_SUBDIR


def tower_file_candidates(spec: TowerSpec, models_dir: str | os.PathLike) -> list[Path]:
    """Every path a local weight file for ``spec`` may have, preferred first."""
    return [towers_dir(models_dir) / f"{spec.file_stem}{ext}" for ext in TOWER_FILE_EXTENSIONS]


def find_tower_file(spec: TowerSpec, models_dir: str | os.PathLike | None) -> Path | None:
    """The first existing local weight file for ``spec``, or None."""
    if models_dir is None:
        return None
    return next((p for p in tower_file_candidates(spec, models_dir) if p.is_file()), None)


def tower_source_hint(spec: TowerSpec) -> str:
    """Human-readable place to get the tower's open_clip weights."""
    known = KNOWN_SOURCES.get((spec.arch, spec.pretrained))
    if known:
        return known
    try:
        from open_clip.pretrained import get_pretrained_cfg

        cfg = get_pretrained_cfg(spec.arch, spec.pretrained) or {}
    except Exception:  # noqa: BLE001 - a hint only; any open_clip failure means "no hint", never an error
        logger.debug("no download hint for %s / %s from open_clip", spec.arch, spec.pretrained, exc_info=True)
        cfg = {}
    if cfg.get("hf_hub"):
        return f"https://huggingface.co/{cfg['hf_hub'].rstrip('/')}"
    return cfg.get("url") or f"open_clip's pretrained weights {spec.arch} / {spec.pretrained}"


def missing_tower_message(spec: TowerSpec, models_dir: str | os.PathLike | None) -> str:
    """The error text for a tower with no local file while downloads are off."""
    if models_dir is None:
        where = f"<extension models folder>/{TOWERS_SUBDIR}/{spec.file_stem}.safetensors"
    else:
        where = str(towers_dir(models_dir) / f"{spec.file_stem}.safetensors")
    return (
        f"CLIP image tower {spec.name} ({spec.arch}, {spec.pretrained}) is not installed and downloads are "
        f"off. Put its open_clip weights at {where} (.bin/.pt also accepted); get them from "
        f"{tower_source_hint(spec)}. Or allow downloads so open_clip fetches them."
    )


def read_tower_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The vision tower's state dict from an open_clip checkpoint file (``visual.`` prefix removed).

    Not ``open_clip.factory.load_state_dict``: in open_clip 2.20.0 (the version A1111 ships, the oldest we
    support) it calls ``torch.load`` without ``weights_only=True``, so a pickled file would run code, and it
    reads no safetensors. Our reader keeps both rules on every open_clip version.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state = _read_safetensors_visual(path)
    else:
        state = _read_torch_file(path)
    if any(k.startswith(VISUAL_PREFIX) for k in state):
        state = {k[len(VISUAL_PREFIX):]: v for k, v in state.items() if k.startswith(VISUAL_PREFIX)}
    if not state:
        raise EncoderError(f"{path} holds no tensors of a CLIP vision tower")
    return state


def _read_safetensors_visual(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            wanted = [k for k in keys if k.startswith(VISUAL_PREFIX)] or keys
            return {k: handle.get_tensor(k) for k in wanted}
    except SafetensorError as err:
        raise EncoderError(f"{path} is not a readable safetensors file: {err}") from err


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds; all mean "not a plain state dict"
        logger.debug("torch.load refused %s", path, exc_info=True)
        raise EncoderError(
            f"{path} cannot be read as a plain tensor file ({type(err).__name__}: {str(err)[:200]}). "
            "Use an open_clip state dict (safetensors preferred); TorchScript archives such as OpenAI's "
            "original ViT-L-14.pt are not accepted."
        ) from err
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise EncoderError(f"{path} does not hold a state dict of tensors")
    if data and all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return data


FINGERPRINT_RULE = b"magicnaming-tower-weights-v1\n"
"""Starts every fingerprint's hashed bytes; a changed rule gets a new tag, so old records never match it."""
FINGERPRINT_DTYPE = torch.float16
"""Floating-point tensors are hashed as float16 (see tower_fingerprint)."""
FINGERPRINT_THREADS = max(1, min(8, os.cpu_count() or 1))
"""Tensors hashed at once by default (hashlib and torch's casts release the GIL)."""


@dataclass(frozen=True)
class TowerFingerprint:
    """A tower's weights, independent of the file that held them: ``weights_sha256`` (64 hex) and
    ``param_count`` (number of values in the state dict)."""

    weights_sha256: str
    param_count: int

    def describe(self) -> str:
        """Human-readable form for messages."""
        return f"weights_sha256 {self.weights_sha256} ({self.param_count:,} values)"


def tower_fingerprint(
    state: Mapping[str, torch.Tensor], *, threads: int = FINGERPRINT_THREADS
) -> TowerFingerprint:
    """The fingerprint of a vision tower's state dict (keys as the built open_clip module names them).

    Canonical form (rule ``magicnaming-tower-weights-v1``): for each key in sorted (code point) order, an
    entry digest ``sha256(header + data)`` where ``header`` is the compact JSON ``[key, shape, dtype]`` plus a
    newline and ``data`` is the tensor's little-endian C-order bytes, floating-point tensors first cast to
    float16 (round to nearest even); ``weights_sha256`` is ``sha256(FINGERPRINT_RULE + entry digests)``.
    float16 because it makes a float32 file and its float16 conversion (OpenAI's CLIP weights were released
    in float16; GPUs run the towers in float16/bfloat16) the same weights, while any change larger than
    float16 rounding (about 1 part in 2000) changes the fingerprint. Per-entry digests let the tensors hash
    in parallel (``threads`` at once). Tensors may be on any device and dtype; nothing is modified.
    """
    keys = sorted(state)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        entries = dict(zip(keys, pool.map(lambda key: _entry_digest(key, state[key]), keys), strict=True))
    return _fingerprint_of(entries, {k: int(state[k].numel()) for k in keys})


def _fingerprint_of(entries: Mapping[str, bytes], counts: Mapping[str, int]) -> TowerFingerprint:
    """Combine per-key entry digests (any order given) into the fingerprint."""
    digest = hashlib.sha256(FINGERPRINT_RULE)
    for key in sorted(entries):
        digest.update(entries[key])
    return TowerFingerprint(digest.hexdigest(), sum(counts.values()))


def _entry_digest(key: str, tensor: torch.Tensor) -> bytes:
    tensor = tensor.detach().to("cpu")
    if tensor.is_floating_point():
        tensor = tensor.to(FINGERPRINT_DTYPE)
    array = tensor.contiguous().numpy()
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    header = json.dumps([key, list(tensor.shape), str(array.dtype)], separators=(",", ":"))
    digest = hashlib.sha256(header.encode("utf-8") + b"\n")
    digest.update(memoryview(array).cast("B") if array.size else b"")
    return digest.digest()


def recorded_fingerprint(spec: TowerSpec) -> TowerFingerprint | None:
    """The fingerprint ``spec`` records, or None (random or unrecorded towers)."""
    if spec.weights_sha256 is None or spec.param_count is None:
        return None
    return TowerFingerprint(spec.weights_sha256, spec.param_count)


def with_fingerprint(spec: TowerSpec, fingerprint: TowerFingerprint) -> TowerSpec:
    """A copy of ``spec`` recording ``fingerprint``."""
    return replace(
        spec, weights_sha256=fingerprint.weights_sha256, param_count=fingerprint.param_count
    ).validate()


def check_tower_weights(spec: TowerSpec, tower: nn.Module, source: str) -> None:
    """Raise EncoderError if ``spec`` records a fingerprint and ``tower``'s weights (from ``source``, e.g.
    the file's path) do not have it; nothing to check when none is recorded."""
    check_state_weights(spec, tower.state_dict(), source)


def check_state_weights(spec: TowerSpec, state: Mapping[str, torch.Tensor], source: str) -> None:
    """:func:`check_tower_weights` for a tower's state dict."""
    expected = recorded_fingerprint(spec)
    if expected is None:
        return
    found = tower_fingerprint(state)
    if found != expected:
        raise EncoderError(weights_mismatch_message(spec, source, expected, found))


def weights_mismatch_message(
    spec: TowerSpec, source: str, expected: TowerFingerprint, found: TowerFingerprint
) -> str:
    """The error for tower weights whose fingerprint is not the one ``spec`` records."""
    return (
        f"{source}: different weights than the encoder was trained with. Tower {spec.name} "
        f"({spec.arch} / {spec.pretrained}) expects {expected.describe()}, found {found.describe()}. "
        "Use the weights the encoder was trained with (the file format and float32/float16 storage "
        "may differ; the values may not)."
    )


def file_version(path: str | os.PathLike) -> tuple[str, int, int, int]:
    """(resolved path, size, mtime_ns, inode): any write to the file or its replacement changes it."""
    path = Path(path)
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino


_FILE_FINGERPRINTS: LRUCache[tuple[str, int, int, int], TowerFingerprint] = LRUCache(16)
"""file_version -> fingerprint of the tower weights in that version of the file (shared, like the memo of the
checkpoint's hash: an entry is only ever right for the exact bytes it names)."""


def load_tower_file(
    spec: TowerSpec, path: str | os.PathLike, *, verify: bool = True, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """Build ``spec``'s tower and load its weights from ``path`` (``dtype``, frozen, eval).

    Each tensor is copied once, straight into ``dtype`` (a float16 file for float16 towers: no float32 round
    trip), into memory the tower owns: safetensors maps the file, and a tower left on that mapping would
    break if the file were rewritten in place while the WebUI runs (and keeps it locked on Windows). With
    ``verify`` (the default) the weights must have the fingerprint ``spec`` records, if any: computed from the
    file's values once per version of the file in this process (remembered by :func:`file_version`), each
    tensor hashed as it is copied, ``FINGERPRINT_THREADS`` tensors at once (hashing adds little to reading).
    """
    path = Path(path)
    spec.validate()
    state = read_tower_state(path)
    tower, on_meta = build_empty_tower(spec, dtype)
    expected = recorded_fingerprint(spec) if verify else None
    version = file_version(path)
    known = None if expected is None else _FILE_FINGERPRINTS.get(version)
    hash_now = expected is not None and known is None
    exact = dtype in (torch.float16, torch.float32)  # copies that hash as the file does (the rule: float16)

    def take(key: str) -> tuple[torch.Tensor, bytes | None]:
        tensor = state[key]
        owned = tensor.to(dtype if tensor.is_floating_point() else tensor.dtype, copy=True)
        return owned, _entry_digest(key, owned if exact else tensor) if hash_now else None

    keys = list(state)
    with ThreadPoolExecutor(max_workers=FINGERPRINT_THREADS) as pool:
        taken = dict(zip(keys, pool.map(take, keys), strict=True))
    owned = {key: tensor for key, (tensor, _) in taken.items()}
    try:
        load_state_strict(tower, owned, f"tower file {path.name}", assign=on_meta)
    except EncoderError as err:
        raise EncoderError(f"{err} (is it an open_clip {spec.arch} checkpoint?)") from err
    if hash_now:
        digests = {key: digest for key, (_, digest) in taken.items()}
        known = _fingerprint_of(digests, {key: int(tensor.numel()) for key, tensor in owned.items()})
        _FILE_FINGERPRINTS.put(version, known)
    if expected is not None and known != expected:
        raise EncoderError(weights_mismatch_message(spec, str(path), expected, known))
    return freeze(tower)


def build_empty_tower(spec: TowerSpec, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, bool]:
    """The tower without allocated weights when torch allows it (in ``dtype``), and whether it is on the
    meta device.

    A meta-device tower takes the file's tensors as its own (``assign``): no seconds spent on random
    initialisation, and the weights are held once, not twice (ViT-bigG/14: 7 GB instead of 14 GB at load).
    """
    try:
        with torch.device("meta"):
            tower = build_tower_module(spec).to(dtype)
    except (TypeError, AttributeError, RuntimeError, NotImplementedError):
        return build_tower_module(spec).to(dtype), False
    saved = set(tower.state_dict())
    if any(name not in saved for name, _ in tower.named_buffers()):
        return build_tower_module(spec).to(dtype), False  # a buffer the file would not fill: initialise
    return tower, True


def download_tower(spec: TowerSpec, cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """Build the tower through open_clip's own pretrained mechanism (may download); its visual part."""
    if spec.model_cfg is not None:
        raise EncoderError(
            f"tower {spec.name} uses a custom config; open_clip has no pretrained weights for it"
        )
    import open_clip

    kwargs = {"pretrained": spec.pretrained, "cache_dir": None if cache_dir is None else str(cache_dir)}
    if _accepts(open_clip.create_model, "force_quick_gelu"):  # 2.x and 3.x both have it; be safe
        kwargs["force_quick_gelu"] = bool(tower_model_config(spec).get("quick_gelu", False))
    try:
        model = open_clip.create_model(spec.arch, **kwargs)
    except Exception as err:  # noqa: BLE001 - network, hub and file errors all end here
        logger.debug("open_clip.create_model(%s, %s) failed", spec.arch, spec.pretrained, exc_info=True)
        raise EncoderError(
            f"open_clip could not load {spec.arch} / {spec.pretrained}: "
            f"{type(err).__name__}: {str(err)[:300]}"
        ) from err
    visual = model.visual
    del model
    return freeze(visual.float())


def load_tower(
    spec: TowerSpec,
    models_dir: str | os.PathLike | None,
    *,
    allow_download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    verify: bool = True,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """``spec``'s tower with real weights (in ``dtype``): the local file if present, else open_clip when
    allowed.

    ``verify=False`` skips the weights-fingerprint check (see :func:`check_tower_weights`). Raises
    EncoderError naming the exact file to create (and where to get it) when offline with no file.
    """
    path = find_tower_file(spec, models_dir)
    if path is not None:
        return load_tower_file(spec, path, verify=verify, dtype=dtype)
    if not allow_download:
        raise EncoderError(missing_tower_message(spec, models_dir))
    tower = download_tower(spec, cache_dir)
    if verify:
        check_tower_weights(spec, tower, f"open_clip's {spec.arch} / {spec.pretrained} weights")
    return tower.to(dtype)


def _accepts(function, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
