"""The AlwaysOn script's arguments, from the UI (positional) or the API (positional, or one dict).

Positional order (the order of the controls ``ui()`` returns, which ``/sdapi/v1/script-info`` lists):

====  ==========  =====================================================================
 0    enabled     bool; the accordion (API callers send ``true``: it defaults to off)
 1    mode        ``"prepend"`` (the paper, default) or ``"in place"``
 2    strength    default strength of tags without one, 0..2 (default 1.0)
 3    face        optional one-off face photo, used as ``<name:face>``: a PIL image from the UI,
                  base64 text (a ``data:image/...;base64,`` prefix is allowed) from the API
 4    face_is_crop  bool; the face photo is a face crop already: skip face detection (default false)
====  ==========  =====================================================================

The API also accepts a single dict as the first arg: ``{"enabled": true, "mode": "in place",
"strength": 0.8, "face": "<base64>", "face_is_crop": false}``; every key is optional and ``enabled``
defaults to true there.
Missing or ``None`` positional values take the defaults.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.tags import DEFAULT_STRENGTH
from lib_magicnaming.webui.limits import LIMITS, TooLarge, size_text
from lib_magicnaming.webui.markers import PREPEND, check_strength, normalise_mode

ARG_NAMES = ("enabled", "mode", "strength", "face", "face_is_crop")
FACE_IDENTITY = "face"
"""The identity name a one-off face photo takes in prompts: ``<name:face>``."""


@dataclass(frozen=True)
class ScriptSettings:
    """The script's arguments for one generation, validated."""

    enabled: bool = False
    mode: str = PREPEND
    strength: float = DEFAULT_STRENGTH
    face: Any = None
    """None, a PIL image, or bytes of an image file."""
    face_is_crop: bool = False
    """Use the face photo as given (no detection)."""


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise MagicNamingError(f"MagicNaming: '{name}' must be true or false, not {value!r}.")


def decode_face(value: Any) -> Any:
    """A face argument as a PIL image or image bytes (None for no face); MagicNamingError for bad data."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bytes | bytearray):
        check_face_bytes(len(value))
        return bytes(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):
            text = text.split(",", 1)[1] if "," in text else ""
        check_face_bytes(len(text) * 3 // 4 - 2)  # before decoding: 3 bytes per 4 characters, less padding
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise MagicNamingError(
                "MagicNaming: the 'face' argument is not valid base64 image data."
            ) from None
        check_face_bytes(len(data))
        return data
    if hasattr(value, "convert") and hasattr(value, "size"):
        return value
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        from PIL import Image

        return Image.fromarray(value)
    # No {"name": <path>} (gradio's temp-file dict): from the API it would read any file on the server.
    raise MagicNamingError(f"MagicNaming: the 'face' argument must be an image, not {type(value).__name__}.")


def check_face_bytes(size: int) -> None:
    """TooLarge (naming the 'face' argument) for a one-off face over the photo file size limit."""
    if size > LIMITS.photo_bytes:
        raise TooLarge(f"MagicNaming: the 'face' argument is larger than {size_text(LIMITS.photo_bytes)}.")


def parse_script_args(args: Sequence[Any]) -> ScriptSettings:
    """Validated settings from the script's argument slice (see the module docstring)."""
    args = list(args)
    if args and isinstance(args[0], dict):
        named = dict(args[0])
        unknown = sorted(set(named) - set(ARG_NAMES))
        if unknown:
            raise MagicNamingError(
                f"MagicNaming: unknown argument(s) {', '.join(map(repr, unknown))}; "
                f"the accepted ones are {', '.join(ARG_NAMES)}."
            )
        named.setdefault("enabled", True)
    else:
        named = {name: value for name, value in zip(ARG_NAMES, args, strict=False) if value is not None}
    enabled = _as_bool(named.get("enabled", False), "enabled")
    return ScriptSettings(
        enabled=enabled,
        mode=normalise_mode(named.get("mode", PREPEND)),
        strength=check_strength(named.get("strength", DEFAULT_STRENGTH)),
        face=decode_face(named.get("face")),
        face_is_crop=_as_bool(named.get("face_is_crop", False), "face_is_crop"),
    )


def wants_enabled(args: Sequence[Any]) -> bool:
    """Whether the args ask for MagicNaming at all (to decide if a bad argument must stop the generation)."""
    if not args or args[0] is None:
        return False
    first = args[0]
    if isinstance(first, dict):
        return True
    try:
        return _as_bool(first, "enabled")
    except MagicNamingError:
        return True  # an 'enabled' that is not a boolean is itself the error to report
