"""The photo encoder as the WebUI serves it: found from the settings, built once, cached, and its status.

:func:`get_encoder` is the one place that builds an ``IdentityEncoder`` from the settings (the tab, the REST
API and the AlwaysOn script reach it through :class:`.services.Services`). The encoder alone decides where
its weights live between calls (in RAM, copied to the GPU for each call, unless "keep loaded" keeps them on
the GPU; never kept there under --lowvram/--medvram): its callers never unload it. This cache owns it: when
a changed checkpoint or setting makes a new one, the old one is unloaded (RAM, pinned RAM, GPU memory and
CUDA graphs freed). The only state shared between requests is :data:`_ENCODERS`, keyed by the encoder
checkpoint's content hash (plus the device, detector and settings it was built for): a changed file is a new
key, so a stale encoder is never served; and the memo of that hash per version of the file
(:func:`checkpoint_sha256`). :func:`encoder_status` says what the encoder needs and has.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lib_magicnaming.constants import SHORT_HASH_CHARS
from lib_magicnaming.errors import EncoderError
from lib_magicnaming.webui.options import MagicNamingSettings, current_settings

OPTIONAL_PACKAGES = {"open_clip": "open_clip_torch"}
"""Importable module -> what to install; the photo encoder needs them (install.py installs them)."""
INSIGHTFACE_PACKAGES = {
    "insightface": "insightface (the face detector setting is 'insightface': install.py installs it at the "
                   "next WebUI start and prints what happened in the console; or choose the 'auto' face "
                   "detector)",
    "onnxruntime": "onnxruntime (or onnxruntime-gpu), for insightface",
}
"""Needed too when the face detector setting is 'insightface' (YuNet, the default, needs only OpenCV)."""

_ENCODERS: dict[tuple, Any] = {}
"""(checkpoint sha256, device, detector pack, the other settings it was built with) -> IdentityEncoder.
Holds at most one entry."""
_ENCODERS_LOCK = threading.Lock()


@dataclass
class EncoderStatus:
    """What the photo encoder needs and has; shown in the tab, the accordion and the REST API."""

    loaded: bool
    checkpoint: str | None = None
    checkpoint_hash: str | None = None
    device: str | None = None
    detector: str | None = None
    """The face detector setting (auto, yunet, insightface)."""
    detector_state: str | None = None
    """What detects faces (or will, on first use), or ``none: <what to do>``."""
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
        detector = self.detector_state or self.detector_provider or "detector not loaded yet"
        return (
            f"MagicNaming encoder {self.checkpoint} [{self.checkpoint_hash}] {state} "
            f"({self.device}; face detector: {detector})"
        )


def missing_packages(settings: MagicNamingSettings | None = None) -> list[str]:
    """Install hints for the packages the photo encoder needs with these settings that do not import here."""
    needed = dict(OPTIONAL_PACKAGES)
    if settings is not None and settings.face_detector == "insightface":
        needed.update(INSIGHTFACE_PACKAGES)
    return [hint for module, hint in needed.items() if importlib.util.find_spec(module) is None]


def face_detector(settings: MagicNamingSettings) -> Any:
    """The face detector the settings pick (nothing loads or downloads until it detects)."""
    from lib_magicnaming.face_detectors import make_detector

    return make_detector(
        settings.face_detector, detectors_dir=settings.detectors_dir,
        allow_download=settings.download_detector, insightface_root=settings.insightface_root,
        pack=settings.detector_pack,
    )


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


def resolve_device(device: str) -> str:
    """``auto`` -> the WebUI's device (``modules.devices.device``); CPU outside the WebUI."""
    if device != "auto":
        return device
    try:
        from modules import devices
    except ImportError:
        return "cpu"
    return str(devices.device)


def webui_lowvram() -> bool:
    """Whether the WebUI runs with --lowvram/--medvram (then the encoder moves one tower at a time)."""
    try:
        from modules import shared
    except ImportError:
        return False
    return bool(getattr(shared.cmd_opts, "lowvram", False) or getattr(shared.cmd_opts, "medvram", False))


def checkpoint_sha256(path: Path) -> str:
    """The checkpoint file's sha256, hashed once per version of the file (path, size, mtime, inode;
    ``checkpoint.remembered_file_sha256``): every use of the encoder and every status line asks for it."""
    from lib_magicnaming.checkpoint import remembered_file_sha256

    return remembered_file_sha256(path)


def _require_packages(settings: MagicNamingSettings) -> None:
    missing = missing_packages(settings)
    if missing:
        raise EncoderError(
            "The MagicNaming photo encoder needs packages that are not installed: " + ", ".join(missing)
            + ". Restart the WebUI without --skip-install, or pip install them into its environment."
        )


def _encoder_key(checkpoint_sha256: str, settings: MagicNamingSettings) -> tuple:
    return (checkpoint_sha256, resolve_device(settings.encoder_device), settings.face_detector,
            settings.detector_pack, settings.download_detector, settings.keep_encoder_loaded, webui_lowvram(),
            str(settings.models_dir), settings.download_towers, settings.pin_encoder_memory)


def get_encoder(settings: MagicNamingSettings | None = None) -> Any:
    """The photo encoder (an ``IdentityEncoder``; its model loads on first use) for the current settings.

    Raises EncoderError naming the folder to put a checkpoint in when none is installed, or the packages
    to install when open_clip (or, for the insightface detector, insightface/onnxruntime) is missing.
    """
    settings = settings or current_settings()
    checkpoint = find_encoder_checkpoint(settings)
    _require_packages(settings)
    key = _encoder_key(checkpoint_sha256(checkpoint), settings)
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            from lib_magicnaming.encode import IdentityEncoder

            for replaced in _ENCODERS.values():  # one encoder at a time: the replaced one frees everything
                replaced.unload()
            _ENCODERS.clear()
            encoder = IdentityEncoder(
                checkpoint,
                models_dir=settings.models_dir,
                detector=face_detector(settings),
                device=resolve_device(settings.encoder_device),
                keep_loaded=settings.keep_encoder_loaded,
                lowvram=webui_lowvram(),
                pin_memory=settings.pin_encoder_memory,
                allow_download=settings.download_towers,
            )
            _ENCODERS[key] = encoder
    return encoder


def _cached_encoder(key: tuple) -> Any | None:
    with _ENCODERS_LOCK:
        return _ENCODERS.get(key)


def encoder_status(settings: MagicNamingSettings | None = None) -> EncoderStatus:
    """Loaded or not, checkpoint name and hash, device, face detector, and what is missing (never loads or
    downloads anything)."""
    settings = settings or current_settings()
    status = EncoderStatus(
        loaded=False,
        encoder_dir=str(settings.encoder_dir),
        detector=settings.face_detector,
        detector_pack=settings.detector_pack,
        device=resolve_device(settings.encoder_device),
        missing=[f"package {hint}" for hint in missing_packages(settings)],
    )
    _describe_detector(status, face_detector(settings))
    try:
        checkpoint = find_encoder_checkpoint(settings)
    except EncoderError as error:
        status.missing.insert(0, str(error))
        return status
    sha = checkpoint_sha256(checkpoint)
    status.checkpoint = checkpoint.name
    status.checkpoint_hash = sha[:SHORT_HASH_CHARS]
    encoder = _cached_encoder(_encoder_key(sha, settings))
    if encoder is not None:
        status.loaded = bool(encoder.is_loaded)
        if encoder.detector is not None:
            _describe_detector(status, encoder.detector)
    return status


def _describe_detector(status: EncoderStatus, detector: Any) -> None:
    status.detector_state = detector.describe()
    if detector.provider:
        status.detector_provider = str(detector.provider)
    elif status.detector_state.startswith("none:"):
        status.detector_provider = status.detector_state
