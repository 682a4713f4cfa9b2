"""Marker text: what a ``<name:...>`` tag becomes between ``before_process_batch`` and the conditioning.

A marker is one plain word, ``mnid_<hash>_<mode>_<strength>``: the identity's short content hash (10 hex
digits), ``p`` (prepend) or ``i`` (in place), and the strength in thousandths (4 digits; strengths are
rounded to 0.001). Because the identity's content hash is in the prompt text, the WebUI's persistent
conditioning cache (keyed by the prompt texts) can never serve one identity's conditioning for another, and
an edited identity file is a new key. The word survives everything the WebUI does to a prompt before
encoding: it is not a ``<word:...>`` extra-network tag, holds no ``[]():|\\`` (prompt editing, emphasis),
no ``AND``/``BREAK``, and no ``:`` (AND weights).

An error marker, ``mnerr_<hash>``, stands for a message (kept in :mod:`.store` under that hash) that stops the
generation when the conditioning is computed: the only place the WebUI does not swallow an exception.

Pure: no WebUI, no torch.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from lib_magicnaming.constants import SHORT_HASH_CHARS
from lib_magicnaming.errors import MagicNamingError, StrengthError
from lib_magicnaming.tags import check_strength as check_strength_rule

PREPEND = "prepend"
IN_PLACE = "in place"
MODES = (PREPEND, IN_PLACE)
"""Insertion modes, as shown in the accordion and written to infotext."""

_MODE_CODES = {PREPEND: "p", IN_PLACE: "i"}
_MODE_ALIASES = {
    "prepend": PREPEND,
    "in place": IN_PLACE,
    "in_place": IN_PLACE,
    "in-place": IN_PLACE,
    "inplace": IN_PLACE,
}
STRENGTH_SCALE = 1000
"""Markers carry the strength in thousandths."""

MARKER_PREFIX = "mnid"
ERROR_PREFIX = "mnerr"
MARKER_RE = re.compile(rf"\b{MARKER_PREFIX}_([0-9a-f]{{{SHORT_HASH_CHARS}}})_([pi])_([0-9]{{4}})\b")
ERROR_MARKER_RE = re.compile(rf"\b{ERROR_PREFIX}_([0-9a-f]{{{SHORT_HASH_CHARS}}})\b")
_STRIP_RE = re.compile(rf" ?{MARKER_RE.pattern} ?")


def normalise_mode(value: object) -> str:
    """The canonical insertion mode for ``value`` (``prepend``; ``in place``, ``in_place``, ``in-place``)."""
    mode = _MODE_ALIASES.get(str(value).strip().lower()) if isinstance(value, str) else None
    if mode is None:
        raise MagicNamingError(f"MagicNaming: unknown insertion mode {value!r}; use 'prepend' or 'in place'.")
    return mode


def check_strength(value: object) -> float:
    """``value`` as a float strength (the rule: :func:`lib_magicnaming.tags.check_strength`), else
    MagicNamingError saying it in the words of the script's settings."""
    try:
        return check_strength_rule(value)
    except StrengthError as error:
        raise MagicNamingError(f"MagicNaming: the strength {error.problem}.") from None


@dataclass(frozen=True)
class Marker:
    """One identity occurrence as the conditioning wrapper sees it."""

    short_hash: str
    mode: str
    strength: float

    @property
    def text(self) -> str:
        """The marker word."""
        return format_marker(self.short_hash, self.mode, self.strength)


def format_marker(short_hash: str, mode: str, strength: float) -> str:
    """The marker word for an identity hash, an insertion mode and a strength (rounded to 0.001)."""
    if not re.fullmatch(f"[0-9a-f]{{{SHORT_HASH_CHARS}}}", short_hash or ""):
        raise MagicNamingError(f"MagicNaming: {short_hash!r} is not a short identity hash.")
    code = _MODE_CODES[normalise_mode(mode)]
    thousandths = round(check_strength(strength) * STRENGTH_SCALE)
    return f"{MARKER_PREFIX}_{short_hash}_{code}_{thousandths:04d}"


def _marker_from_match(match: re.Match) -> Marker:
    mode = PREPEND if match.group(2) == "p" else IN_PLACE
    return Marker(match.group(1), mode, int(match.group(3)) / STRENGTH_SCALE)


def parse_marker(text: str) -> Marker:
    """The Marker a marker word stands for; MagicNamingError if ``text`` is not exactly one marker."""
    match = MARKER_RE.fullmatch(text)
    if match is None:
        raise MagicNamingError(f"MagicNaming: {text!r} is not a marker.")
    return _marker_from_match(match)


def find_markers(text: str) -> list[Marker]:
    """Every marker in ``text``, in order."""
    return [_marker_from_match(match) for match in MARKER_RE.finditer(text)]


def has_markers(text: str) -> bool:
    """Whether ``text`` holds an identity marker or an error marker."""
    return MARKER_RE.search(text) is not None or ERROR_MARKER_RE.search(text) is not None


def strip_markers(text: str, mode: str | None = None) -> str:
    """``text`` without its markers (of ``mode`` only, if given), each with the spaces padding it.

    A text left holding only whitespace becomes ``""``, so an all-empty negative prompt is still zeroed.
    """
    wanted = None if mode is None else _MODE_CODES[normalise_mode(mode)]

    def drop(match: re.Match) -> str:
        if wanted is not None and match.group(2) != wanted:
            return match.group(0)
        return " " if match.group(0).startswith(" ") and match.group(0).endswith(" ") else ""

    stripped = _STRIP_RE.sub(drop, text)
    return "" if not stripped.strip() else stripped


def padded(marker_text: str) -> str:
    """A marker word with a space either side, so it never fuses with neighbouring letters when tokenized."""
    return f" {marker_text} "


def message_hash(message: str) -> str:
    """The content hash an error message is kept under."""
    return hashlib.sha256(message.encode("utf-8")).hexdigest()[:SHORT_HASH_CHARS]


def format_error_marker(message: str) -> str:
    """The error-marker word for ``message``."""
    return f"{ERROR_PREFIX}_{message_hash(message)}"


def find_error_hashes(text: str) -> list[str]:
    """The message hashes of every error marker in ``text``."""
    return [match.group(1) for match in ERROR_MARKER_RE.finditer(text)]
