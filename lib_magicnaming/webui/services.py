"""The extension's services: the identity library and the photo encoder, built from the current settings.

The WebUI glue (tab, REST API, AlwaysOn script) asks here instead of building its own. The only state shared
between requests is :data:`_ENCODERS`, a cache keyed by the encoder checkpoint's content hash (plus the device
and detector it was built for): a changed file is a new key, so a stale encoder is never served.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lib_magicnaming.constants import SDXL_CONTEXT_WIDTH, SHORT_HASH_CHARS
from lib_magicnaming.errors import EncoderError, IdentityExists
from lib_magicnaming.tags import validate_identity_name
from lib_magicnaming.webui.options import MagicNamingSettings, current_settings

OPTIONAL_PACKAGES = {
    "open_clip": "open_clip_torch",
    "insightface": "insightface",
    "onnxruntime": "onnxruntime (or onnxruntime-gpu)",
}
"""Importable module -> what to install; the photo encoder needs all three (install.py installs them)."""

_ENCODERS: dict[tuple[str, str, str], Any] = {}
"""(checkpoint sha256, device, detector pack) -> IdentityEncoder. Holds at most one entry."""
_ENCODERS_LOCK = threading.Lock()


@dataclass
class EncoderStatus:
    """What the photo encoder needs and has; shown in the tab, the accordion and the REST API."""

    loaded: bool
    checkpoint: str | None = None
    checkpoint_hash: str | None = None
    device: str | None = None
    detector_pack: str | None = None
    detector_provider: str | None = None
    encoder_dir: str | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """True when nothing is missing (a checkpoint exists and the packages import)."""
        return not self.missing

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the REST route's body)."""
        return {**asdict(self), "ready": self.ready}

    def summary(self) -> str:
        """One line for a status label."""
        if self.missing:
            return "MagicNaming encoder unavailable: " + "; ".join(self.missing)
        state = "loaded" if self.loaded else "not loaded yet"
        detector = self.detector_provider or "detector not loaded yet"
        return (
            f"MagicNaming encoder {self.checkpoint} [{self.checkpoint_hash}] {state} "
            f"({self.device}; {detector})"
        )


def missing_packages() -> list[str]:
    """Install hints for the optional packages that do not import here."""
    return [hint for module, hint in OPTIONAL_PACKAGES.items() if importlib.util.find_spec(module) is None]


def identity_library(settings: MagicNamingSettings | None = None):
    """The identity library of the configured folder (``<folder>/identities``)."""
    from lib_magicnaming.identity import IdentityLibrary

    settings = settings or current_settings()
    return IdentityLibrary(settings.identities_dir)


def find_encoder_checkpoint(settings: MagicNamingSettings) -> Path:
    """The encoder checkpoint file to use; EncoderError naming the folder when there is none."""
    folder = settings.encoder_dir
    if settings.encoder_checkpoint:
        path = folder / settings.encoder_checkpoint
        if not path.is_file():
            raise EncoderError(
                f"MagicNaming encoder checkpoint {settings.encoder_checkpoint!r} is not in {folder}: put the "
                "file there or clear the 'Encoder checkpoint' setting"
            )
        return path
    candidates = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not candidates:
        raise EncoderError(
            "No MagicNaming encoder checkpoint installed: put a *.safetensors encoder checkpoint in "
            f"{folder} "
            "(identities from names and mixes work without one)"
        )
    return candidates[0]


def file_sha256(path: Path) -> str:
    """Full sha256 hex of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_device(device: str) -> str:
    """``auto`` -> the WebUI's device, or CPU under --lowvram/--medvram (keep extra models off the GPU)."""
    if device != "auto":
        return device
    try:
        from modules import devices, shared
    except ImportError:
        return "cpu"
    if getattr(shared.cmd_opts, "lowvram", False) or getattr(shared.cmd_opts, "medvram", False):
        return "cpu"
    return str(devices.device)


def _require_packages() -> None:
    missing = missing_packages()
    if missing:
        raise EncoderError(
            "The MagicNaming photo encoder needs packages that are not installed: " + ", ".join(missing)
            + ". Restart the WebUI without --skip-install, or pip install them into its environment."
        )


def _build_encoder(checkpoint: Path, settings: MagicNamingSettings, device: str) -> Any:
    from lib_magicnaming.encode import IdentityEncoder

    return IdentityEncoder(
        checkpoint,
        models_dir=settings.models_dir,
        detector_dir=settings.detector_dir,
        device=device,
    )


def get_encoder(settings: MagicNamingSettings | None = None) -> Any:
    """The photo encoder (an ``IdentityEncoder``, loaded lazily on first use) for the current settings.

    Raises EncoderError naming the folder to put a checkpoint in when none is installed, or the packages
    to install when open_clip/insightface/onnxruntime are missing.
    """
    settings = settings or current_settings()
    checkpoint = find_encoder_checkpoint(settings)
    _require_packages()
    device = resolve_device(settings.encoder_device)
    key = (file_sha256(checkpoint), device, settings.detector_pack)
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            _ENCODERS.clear()  # one encoder at a time: a replaced checkpoint frees the old one
            encoder = _build_encoder(checkpoint, settings, device)
            _ENCODERS[key] = encoder
    return encoder


def release_encoder(settings: MagicNamingSettings | None = None) -> None:
    """Forget the cached encoder unless 'keep encoder loaded' is on (call after a one-off use)."""
    settings = settings or current_settings()
    if settings.keep_encoder_loaded:
        return
    with _ENCODERS_LOCK:
        encoders = list(_ENCODERS.values())
        _ENCODERS.clear()
    for encoder in encoders:
        unload = getattr(encoder, "unload", None)
        if callable(unload):
            unload()


def _cached_encoder(checkpoint_sha256: str) -> Any | None:
    with _ENCODERS_LOCK:
        for (sha, _device, _pack), encoder in _ENCODERS.items():
            if sha == checkpoint_sha256:
                return encoder
    return None


def encoder_status(settings: MagicNamingSettings | None = None) -> EncoderStatus:
    """Loaded or not, checkpoint name and hash, device, detector provider, and what is missing."""
    settings = settings or current_settings()
    status = EncoderStatus(
        loaded=False,
        encoder_dir=str(settings.encoder_dir),
        detector_pack=settings.detector_pack,
        device=resolve_device(settings.encoder_device),
        missing=[f"package {hint}" for hint in missing_packages()],
    )
    try:
        checkpoint = find_encoder_checkpoint(settings)
    except EncoderError as error:
        status.missing.insert(0, str(error))
        return status
    sha = file_sha256(checkpoint)
    status.checkpoint = checkpoint.name
    status.checkpoint_hash = sha[:SHORT_HASH_CHARS]
    if not settings.detector_dir.is_dir():
        status.detector_provider = (
            f"no detector pack at {settings.detector_dir}: photos must be face crops already"
        )
    encoder = _cached_encoder(sha)
    if encoder is not None:
        status.loaded = bool(getattr(encoder, "is_loaded", True))
        provider = getattr(encoder, "detector_provider", None)
        if provider:
            status.detector_provider = str(provider)
    return status


# --------------------------------------------------------------------------- what the tab and the API share


@dataclass(frozen=True)
class ServiceContext:
    """What the tab and the REST routes need from the WebUI; tests pass their own."""

    library: Callable[[], Any]
    """-> IdentityLibrary"""
    encoder: Callable[[], Any]
    """-> IdentityEncoder (EncoderError when none is installed)"""
    encoder_status: Callable[[], EncoderStatus]
    encode_texts: Callable[[list[str]], Any]
    """prompts -> crossattn (N, 77k, 2048) of the loaded SDXL model (EncoderError when none is loaded)"""
    gpu_lock: Callable[[], Any]
    """-> a context manager held around GPU work (the WebUI's queue lock)"""
    release_encoder: Callable[[], None] = lambda: None


def names_identity(context: ServiceContext, name: str, weighted: list[tuple[str, float]], method: str) -> Any:
    """A new Identity from weighted names, encoded by the loaded SDXL text encoders (under the GPU lock)."""
    from lib_magicnaming.identity import Identity
    from lib_magicnaming.namespace import identity_from_names

    validate_identity_name(name)
    with context.gpu_lock():
        embedding = identity_from_names(context.encode_texts, weighted, method=method)
    origin = {"kind": "names", "names": [[text, float(weight)] for text, weight in weighted]}
    return Identity(name, embedding, origin)


def mix_identity(library: Any, name: str, weighted: list[tuple[str, float]], method: str) -> Any:
    """A new Identity mixing saved identities; its origin records each one's name, hash and weight."""
    from lib_magicnaming.identity import Identity
    from lib_magicnaming.namespace import mix_embeddings

    validate_identity_name(name)
    sources = [library.load(source) for source, _ in weighted]
    weights = [float(weight) for _, weight in weighted]
    embedding = mix_embeddings([source.embedding for source in sources], weights, method=method)
    pairs = zip(sources, weights, strict=True)
    mixed = [[source.name, source.short_hash, weight] for source, weight in pairs]
    return Identity(name, embedding, {"kind": "mix", "identities": mixed, "method": method})


def first_image(report: Any) -> Any | None:
    """The first PIL image on a per-photo report (its face crop), searching one level of nesting."""
    for value in vars(report).values() if hasattr(report, "__dict__") else []:
        if hasattr(value, "mode") and hasattr(value, "size"):
            return value
        nested = first_image(value) if hasattr(value, "__dict__") else None
        if nested is not None:
            return nested
    return None


def photos_identity(name: str, result: Any, photo_bytes: list[bytes], encoder_hash: str) -> Any:
    """A new Identity from an encoder result (``encode_photos``); the first face crop is its thumbnail."""
    from lib_magicnaming.identity import Identity, bytes_hash

    validate_identity_name(name)
    crops = [first_image(report) for report in getattr(result, "per_photo", [])]
    thumbnail = next((crop for crop in crops if crop is not None), None)
    photo_hashes = [bytes_hash(data) for data in photo_bytes]
    origin = {"kind": "photos", "encoder_hash": encoder_hash, "photo_hashes": photo_hashes}
    return Identity(name, result.embedding, origin, thumbnail=thumbnail)


def sampled_identity(context: ServiceContext, name: str, seed: int, scale: float) -> Any:
    """A new fictional Identity drawn from the encoder checkpoint's name-space statistics."""
    from lib_magicnaming.identity import Identity

    validate_identity_name(name)
    encoder = context.encoder()
    embedding = encoder.sample_identity(int(seed), scale=float(scale))
    origin = {"kind": "sampled", "encoder_hash": encoder.checkpoint_hash, "seed": int(seed),
              "scale": float(scale)}
    return Identity(name, embedding, origin)


def refuse_existing(library: Any, name: str, overwrite: bool) -> None:
    """Validate ``name`` and raise IdentityExists for a taken one (before any expensive work)."""
    if not overwrite and library.exists(name):
        raise IdentityExists(
            f"an identity named {name!r} already exists; choose another name or overwrite", name
        )


def webui_encode_texts(texts: list[str]) -> Any:
    """The loaded SDXL model's ``get_learned_conditioning(texts)['crossattn']``; EncoderError if not SDXL."""
    import torch
    from modules import devices, shared

    model = shared.sd_model
    if model is None or not getattr(model, "is_sdxl", False):
        raise EncoderError("identities from names need an SDXL checkpoint loaded in the WebUI: load one")
    with torch.no_grad(), devices.autocast():
        cond = model.get_learned_conditioning(texts)
    crossattn = cond["crossattn"] if isinstance(cond, dict) else cond
    if crossattn.shape[-1] != SDXL_CONTEXT_WIDTH:
        raise EncoderError(
            f"the loaded checkpoint's text conditioning is {crossattn.shape[-1]} wide, not SDXL's "
            f"{SDXL_CONTEXT_WIDTH} (the SDXL refiner?): load an SDXL base checkpoint to encode names"
        )
    return crossattn.float()


def webui_context() -> ServiceContext:
    """The ServiceContext of the running WebUI (settings are read at each call, so changes apply at once)."""
    from modules import call_queue

    return ServiceContext(
        library=identity_library,
        encoder=get_encoder,
        encoder_status=encoder_status,
        encode_texts=webui_encode_texts,
        gpu_lock=lambda: call_queue.queue_lock,
        release_encoder=release_encoder,
    )
