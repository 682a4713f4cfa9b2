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
OPT_PIN_ENCODER_MEMORY = "magicnaming_pin_encoder_memory"
OPT_DETECTOR_PACK = "magicnaming_detector_pack"
OPT_DOWNLOAD_TOWERS = "magicnaming_download_towers"
OPT_FACE_DETECTOR = "magicnaming_face_detector"
"""auto | yunet | insightface. install.py reads it from the WebUI's config file: 'insightface' makes it
install insightface at the next start."""
OPT_DOWNLOAD_DETECTOR = "magicnaming_download_detector"
OPT_NAMES_LIST = "magicnaming_names_list"
"""The names list that measures the loaded checkpoint's name space (blank: the shipped list)."""

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
    pin_encoder_memory: bool = False
    """Keep the encoder's CPU copy of its weights in page-locked RAM (faster copies to the GPU per encode)."""
    download_towers: bool = False
    """Fetch missing CLIP tower weights through open_clip's pretrained mechanism (never when offline)."""
    face_detector: str = DEFAULT_DETECTOR
    """auto, yunet or insightface (lib_magicnaming.face_detectors.make_detector)."""
    download_detector: bool = False
    """Fetch the YuNet file into ``detectors/`` on the first detection when it is absent (never offline)."""
    names_list: str = ""
    """A names-list file (lib_magicnaming.names_list); blank: the list shipped with the extension."""

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

    @property
    def namespace_dir(self) -> Path:
        """Folder of the name-space statistics of loaded checkpoints (lib_magicnaming.namespace_cache)."""
        return self.models_dir / "namespace"

    @property
    def names_list_path(self) -> Path | None:
        """The names-list file the setting names, or None for the shipped list."""
        return Path(self.names_list).expanduser() if self.names_list else None


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
        pin_encoder_memory=bool(_opt(opts, OPT_PIN_ENCODER_MEMORY, False)),
        detector_pack=validate_detector_pack(str(_opt(opts, OPT_DETECTOR_PACK, DEFAULT_PACK))),
        download_towers=bool(_opt(opts, OPT_DOWNLOAD_TOWERS, True)) and not offline_by_environment(),
        face_detector=validate_detector_choice(_opt(opts, OPT_FACE_DETECTOR, DEFAULT_DETECTOR)),
        download_detector=bool(_opt(opts, OPT_DOWNLOAD_DETECTOR, True)) and not offline_by_environment(),
        names_list=str(_opt(opts, OPT_NAMES_LIST, "")).strip(),
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
        False, "Keep the photo encoder on the GPU between uses (on: about 4.4 GB of VRAM held, a photo "
        "encodes in milliseconds; off: its weights wait in RAM and are copied to the GPU for each use, which "
        "frees that VRAM again; never kept on the GPU under --lowvram/--medvram)", section=SECTION))
    add(OPT_PIN_ENCODER_MEMORY, shared.OptionInfo(
        False, "Pin the photo encoder's weights in RAM (faster copies to the GPU when it is not kept there: "
        "about 0.1 s instead of 0.6 s per use; locks about 4.4 GB of RAM the system cannot page out)",
        section=SECTION))
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
    add(OPT_NAMES_LIST, shared.OptionInfo(
        "", "Names list for Sample and \"closest to\" (a UTF-8 text file, one well-known name per line, # "
        "for comments; blank: the list shipped with the extension). Its names measure the loaded "
        "checkpoint's name space once per checkpoint and list, in <folder>/namespace", section=SECTION))
    add(OPT_DETECTOR_PACK, shared.OptionInfo(
        DEFAULT_PACK, "insightface pack for the insightface face detector (folder under "
        "models/insightface/models)", section=SECTION))
