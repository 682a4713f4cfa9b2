"""The MagicNaming Settings section and the one place that reads settings and command-line flags.

Each setting has a key constant here; :func:`read_settings` turns the WebUI's ``opts``/``cmd_opts`` into a
frozen :class:`MagicNamingSettings`. Command-line flags (``preload.py``) win over the matching setting.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_magicnaming.errors import EncoderError, FaceError
from lib_magicnaming.face_detectors import DEFAULT_DETECTOR, DETECTOR_CHOICES, validate_detector_choice
from lib_magicnaming.identity_library import identities_dir
from lib_magicnaming.insightface_detector import DEFAULT_PACK, validate_pack_name

SECTION = ("magicnaming", "MagicNaming")
"""Settings section id and title (``shared.OptionInfo(..., section=SECTION)``)."""
CATEGORY_ID = "sd"
"""The settings page's category for the section: v1.10.1's "Stable Diffusion" (modules/shared_options.py
registers it); without one the section is listed under "Uncategorized"."""

OPT_MODELS_DIR = "magicnaming_models_dir"
OPT_ENCODER_CHECKPOINT = "magicnaming_encoder_checkpoint"
OPT_ENCODER_DEVICE = "magicnaming_encoder_device"
OPT_KEEP_ENCODER_LOADED = "magicnaming_keep_encoder_loaded"
OPT_DETECTOR_PACK = "magicnaming_detector_pack"
OPT_DOWNLOAD_TOWERS = "magicnaming_download_towers"
OPT_FACE_DETECTOR = "magicnaming_face_detector"
"""auto | yunet | insightface. install.py reads it from the WebUI's config file: 'insightface' makes it
install insightface at the next start."""
OPT_DOWNLOAD_DETECTOR = "magicnaming_download_detector"

OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
"""Set to 1/true/yes, either one forbids downloading tower weights and the face detector file whatever the
settings say."""

DEFAULT_FOLDER_NAME = "magicnaming"
"""Under the WebUI's models folder when the models-folder setting is blank."""

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
"""Accepted device strings: the choices above plus ``cuda:N``."""


@dataclass(frozen=True)
class MagicNamingSettings:
    """Everything the extension reads from Settings and flags, resolved to concrete values."""

    models_dir: Path
    """Holds ``identities/`` and ``encoder/``."""
    insightface_root: Path
    """The insightface root (packs under ``<root>/models/<pack>``), shared with other face extensions."""
    encoder_checkpoint: str
    """File name under ``encoder/``; blank picks the first ``*.safetensors`` by name."""
    encoder_device: str
    keep_encoder_loaded: bool
    detector_pack: str
    download_towers: bool = False
    """Fetch missing CLIP tower weights through open_clip's pretrained mechanism (never when offline)."""
    face_detector: str = DEFAULT_DETECTOR
    """auto, yunet or insightface (lib_magicnaming.face_detectors.make_detector)."""
    download_detector: bool = False
    """Fetch the YuNet file into ``detectors/`` on the first detection when it is absent (never offline)."""

    @property
    def identities_dir(self) -> Path:
        """Folder of the identity library."""
        return identities_dir(self.models_dir)

    @property
    def encoder_dir(self) -> Path:
        """Folder where encoder checkpoints (``*.safetensors``) go."""
        return self.models_dir / "encoder"

    @property
    def detector_dir(self) -> Path:
        """Folder of the chosen insightface detector pack."""
        return self.insightface_root / "models" / self.detector_pack

    @property
    def detectors_dir(self) -> Path:
        """Folder of the YuNet face detector file."""
        return self.models_dir / "detectors"


def validate_device(device: str) -> str:
    """Return ``device`` if it is auto, cpu, cuda, cuda:N or mps; raise EncoderError otherwise."""
    if not isinstance(device, str) or not DEVICE_RE.match(device.strip()):
        raise EncoderError(
            f"MagicNaming encoder device must be auto, cpu, cuda, cuda:N or mps, got {device!r}"
        )
    return device.strip()


def validate_detector_pack(pack: str) -> str:
    """Return the setting ``pack`` stripped if it is a plain folder name
    (insightface_detector.validate_pack_name); raise EncoderError otherwise."""
    try:
        return validate_pack_name(pack.strip() if isinstance(pack, str) else pack)
    except FaceError:
        raise EncoderError(
            f"MagicNaming detector pack must be a folder name such as buffalo_l, got {pack!r}"
        ) from None


def offline_by_environment() -> bool:
    """True when the Hugging Face offline switches are set in the environment."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes") for name in OFFLINE_ENV_VARS)


def _opt(opts: Any, key: str, default: Any) -> Any:
    value = getattr(opts, key, None)
    return default if value is None else value


def read_settings(opts: Any, cmd_opts: Any, models_path: str | Path) -> MagicNamingSettings:
    """Resolve settings: a flag (``--magicnaming-dir``/``--magicnaming-device``) beats its setting.

    ``opts``/``cmd_opts`` are the WebUI's ``shared.opts``/``shared.cmd_opts`` (any object with those
    attributes); ``models_path`` is ``modules.paths.models_path``. Raises EncoderError for a bad device,
    face detector or detector pack, naming the value.
    """
    models_path = Path(models_path)
    folder = getattr(cmd_opts, "magicnaming_dir", None) or str(_opt(opts, OPT_MODELS_DIR, "")).strip()
    models_dir = Path(folder).expanduser() if folder else models_path / DEFAULT_FOLDER_NAME
    device = getattr(cmd_opts, "magicnaming_device", None) or _opt(opts, OPT_ENCODER_DEVICE, "auto")
    return MagicNamingSettings(
        models_dir=models_dir,
        insightface_root=models_path / "insightface",
        encoder_checkpoint=str(_opt(opts, OPT_ENCODER_CHECKPOINT, "")).strip(),
        encoder_device=validate_device(str(device)),
        keep_encoder_loaded=bool(_opt(opts, OPT_KEEP_ENCODER_LOADED, False)),
        detector_pack=validate_detector_pack(str(_opt(opts, OPT_DETECTOR_PACK, DEFAULT_PACK))),
        download_towers=bool(_opt(opts, OPT_DOWNLOAD_TOWERS, True)) and not offline_by_environment(),
        face_detector=validate_detector_choice(_opt(opts, OPT_FACE_DETECTOR, DEFAULT_DETECTOR)),
        download_detector=bool(_opt(opts, OPT_DOWNLOAD_DETECTOR, True)) and not offline_by_environment(),
    )


def current_settings() -> MagicNamingSettings:
    """The settings of the running WebUI."""
    from modules import paths, shared

    return read_settings(shared.opts, shared.cmd_opts, paths.models_path)


def on_ui_settings() -> None:
    """Register the MagicNaming section (``script_callbacks.on_ui_settings``)."""
    import gradio as gr
    from modules import shared

    def add(key: str, info: Any) -> None:
        info.category_id = CATEGORY_ID
        shared.opts.add_option(key, info)

    add(OPT_MODELS_DIR, shared.OptionInfo(
        "", "MagicNaming folder (holds identities/ and encoder/; blank: models/magicnaming; "
        "--magicnaming-dir overrides)", section=SECTION))
    add(OPT_ENCODER_CHECKPOINT, shared.OptionInfo(
        "", "Encoder checkpoint file name in <folder>/encoder (blank: the first *.safetensors by name)",
        section=SECTION))
    add(OPT_ENCODER_DEVICE, shared.OptionInfo(
        "auto", "Photo encoder device (auto: the WebUI's device, CPU under --lowvram/--medvram; "
        "--magicnaming-device overrides)", gr.Radio, {"choices": list(DEVICE_CHOICES)}, section=SECTION))
    add(OPT_KEEP_ENCODER_LOADED, shared.OptionInfo(
        False, "Keep the photo encoder loaded between uses (off: its memory is freed after each use; "
        "never kept on the GPU under --lowvram/--medvram)", section=SECTION))
    add(OPT_DOWNLOAD_TOWERS, shared.OptionInfo(
        True, "Download missing CLIP tower weights with open_clip (off, or HF_HUB_OFFLINE=1: only files in "
        "<folder>/towers are used)", section=SECTION))
    add(OPT_FACE_DETECTOR, shared.OptionInfo(
        DEFAULT_DETECTOR, "Face detector (auto: YuNet, or an installed insightface pack when YuNet's file "
        "cannot be had; yunet: OpenCV's YuNet, MIT licence, nothing to install; insightface: an insightface "
        "pack, non-commercial use only, installed by install.py at the next start)",
        gr.Radio, {"choices": list(DETECTOR_CHOICES)}, section=SECTION))
    add(OPT_DOWNLOAD_DETECTOR, shared.OptionInfo(
        True, "Download the YuNet face detector file (227 KiB, from opencv_zoo) into <folder>/detectors on "
        "the first face detection when it is missing (off, or HF_HUB_OFFLINE=1: put it there yourself)",
        section=SECTION))
    add(OPT_DETECTOR_PACK, shared.OptionInfo(
        DEFAULT_PACK, "insightface pack for the insightface face detector (folder under "
        "models/insightface/models)", section=SECTION))
