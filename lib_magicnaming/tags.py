"""Prompt tags that name an identity: ``<name:IDENTITY>`` and ``<name:IDENTITY:STRENGTH>``.

What counts as a tag (the grammar, decided here and nowhere else):

* A tag starts where ``<`` is immediately followed by the word ``name`` (any case: ``<Name:`` is ours too)
  and a ``:``. ``<names:...>``, ``< name:...>``, ``<lora:...>`` and every other ``<word:...>`` are not ours
  and are left exactly as they are.
* The tag ends at the first ``>``. If the text ends, or a ``<`` or a line break comes first, the tag is
  unclosed: an error.
* Inside, ``:`` separates the identity name from an optional strength; a third part is an error. Spaces or
  tabs around the name and the strength are allowed and ignored.
* The identity name follows the one rule for identity names (:func:`validate_identity_name`): 1 to 64
  ASCII letters, digits, ``_``, ``-`` and ``.``, not starting with ``.``. Names match case-insensitively
  (:func:`identity_key`).
* The strength is a decimal number (``1``, ``0.8``, ``.5``, ``1e-1``: NUMBER_RE) from STRENGTH_MIN to
  STRENGTH_MAX (:func:`check_strength`, the one strength rule: the script's argument, markers and the splice
  call it too). No strength means the default (DEFAULT_STRENGTH, 1.0: exactly the paper).
* There is no escape: ``<name:`` in a prompt always starts a tag.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from lib_magicnaming.errors import IdentityError, StrengthError, TagError

NAME_MAX_CHARS = 64
NAME_RE = re.compile(rf"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{{0,{NAME_MAX_CHARS - 1}}}")
"""The one rule for identity names; use it with ``fullmatch``."""

STRENGTH_MIN = 0.0
STRENGTH_MAX = 2.0
DEFAULT_STRENGTH = 1.0
"""A tag without a strength means this: exactly the paper's splice."""

NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
"""A decimal number as prompts and mixes write one (``1``, ``0.8``, ``.5``, ``1e-1``); use it with
``fullmatch``. Tags' strengths and the weights of a weighted-names text (``namespace``) follow it."""

TAG_WORD = "name"
_TAG_START_RE = re.compile(rf"<{TAG_WORD}:", re.IGNORECASE | re.ASCII)
_NON_FINITE_RE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE | re.ASCII)
_TAG_STOPPERS = "<\r\n"
_QUOTE_MAX_CHARS = 80
_BLANKS = " \t"


def _quote(text: str) -> str:
    """Quote user text for an error message, shortened when long, control characters made visible."""
    if len(text) > _QUOTE_MAX_CHARS:
        text = text[: _QUOTE_MAX_CHARS - 3] + "..."
    return repr(text)


def validate_identity_name(name: str) -> str:
    """Return ``name`` unchanged if it is a legal identity name, else raise :class:`IdentityError`.

    Legal: 1 to 64 characters, each an ASCII letter, digit, ``_``, ``-`` or ``.``, the first not ``.``.
    This is the single home of the rule: tags, the identity library and the UI all call it.
    """
    if not isinstance(name, str):
        raise IdentityError(f"An identity name must be text, not {type(name).__name__}.")
    if not name:
        raise IdentityError("An identity name cannot be empty.")
    if len(name) > NAME_MAX_CHARS:
        raise IdentityError(
            f"The identity name {_quote(name)} is {len(name)} characters long; the limit is {NAME_MAX_CHARS}."
        )
    bad = sorted({ch for ch in name if NAME_RE.fullmatch("a" + ch) is None})
    if bad:
        shown = ", ".join(repr(ch) for ch in bad)
        raise IdentityError(
            f"The identity name {_quote(name)} contains {shown}; names may hold only ASCII letters, "
            "digits, '_', '-' and '.'."
        )
    if name.startswith("."):
        raise IdentityError(f"The identity name {_quote(name)} starts with '.'; names may not.")
    return name


def identity_key(name: str) -> str:
    """The case-insensitive key of a legal identity name (its lower-case form); raises IdentityError."""
    return validate_identity_name(name).lower()


def format_name_tag(identity: str, strength: float | None = None) -> str:
    """The canonical text of a tag: ``<name:alice>`` or ``<name:alice:0.8>`` (validated; shortest float)."""
    validate_identity_name(identity)
    if strength is None:
        return f"<{TAG_WORD}:{identity}>"
    value = _checked_tag_strength(strength, f"<{TAG_WORD}:{identity}:{strength}>", None)
    return f"<{TAG_WORD}:{identity}:{value!r}>"


@dataclass(frozen=True)
class NameTag:
    """One ``<name:...>`` tag found in a prompt.

    ``start``/``end`` are the tag's span in the prompt (``prompt[start:end] == text``); ``strength`` is None
    when the tag gives none. Built by hand without ``text``, the tag gets its canonical text.
    """

    identity: str
    strength: float | None
    start: int
    end: int
    text: str = ""

    def __post_init__(self) -> None:
        if not self.text:
            object.__setattr__(self, "text", format_name_tag(self.identity, self.strength))

    @property
    def key(self) -> str:
        """The identity's case-insensitive key."""
        return identity_key(self.identity)


def check_strength(value: object) -> float:
    """``value`` as a float strength from STRENGTH_MIN to STRENGTH_MAX: the one strength rule.

    Accepts numbers and number texts (``float()``'s forms); refuses booleans, what is not a number, NaN, the
    infinities and values out of range with :class:`StrengthError`, whose ``problem`` callers put in their own
    words and error type.
    """
    try:
        strength = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        strength = None
    if isinstance(value, bool) or strength is None:
        raise StrengthError(f"{value!r} is not a number")
    if not math.isfinite(strength):
        raise StrengthError("must be a finite number")
    if not STRENGTH_MIN <= strength <= STRENGTH_MAX:
        raise StrengthError(f"is {strength:g}; it must be from {STRENGTH_MIN:g} to {STRENGTH_MAX:g}")
    return strength


def _checked_tag_strength(value: object, tag_text: str, span: tuple[int, int] | None) -> float:
    try:
        return check_strength(value)
    except StrengthError as error:
        raise TagError(f"The strength in the tag {_quote(tag_text)} {error.problem}.", span) from None


def _parse_strength(raw: str, tag_text: str, span: tuple[int, int]) -> float:
    text = raw.strip(_BLANKS)
    if not text:
        raise TagError(
            f"The tag {_quote(tag_text)} has an empty strength; write e.g. <name:alice:0.8> or drop the ':'.",
            span,
        )
    if _NON_FINITE_RE.fullmatch(text):
        raise TagError(f"The strength in the tag {_quote(tag_text)} must be a finite number.", span)
    if NUMBER_RE.fullmatch(text) is None:
        raise TagError(
            f"The strength {_quote(text)} in the tag {_quote(tag_text)} is not a number; write e.g. 0.8.",
            span,
        )
    return _checked_tag_strength(text, tag_text, span)


def _parse_identity(raw: str, tag_text: str, span: tuple[int, int]) -> str:
    name = raw.strip(_BLANKS)
    if not name:
        raise TagError(f"The tag {_quote(tag_text)} names no identity; write e.g. <name:alice>.", span)
    try:
        return validate_identity_name(name)
    except IdentityError as error:
        raise TagError(f"In the tag {_quote(tag_text)}: {error}", span) from None


def _parse_tag_at(prompt: str, start: int) -> NameTag:
    body_start = start + len(TAG_WORD) + 2
    end = body_start
    while end < len(prompt) and prompt[end] != ">" and prompt[end] not in _TAG_STOPPERS:
        end += 1
    if end == len(prompt) or prompt[end] != ">":
        span = (start, end)
        raise TagError(
            f"The tag {_quote(prompt[start:end])} is not closed; end it with '>', e.g. <name:alice>.", span
        )
    span = (start, end + 1)
    tag_text = prompt[start : end + 1]
    parts = prompt[body_start:end].split(":")
    if len(parts) > 2:
        raise TagError(
            f"The tag {_quote(tag_text)} has too many ':'; "
            "write <name:IDENTITY> or <name:IDENTITY:STRENGTH>.",
            span,
        )
    identity = _parse_identity(parts[0], tag_text, span)
    strength = _parse_strength(parts[1], tag_text, span) if len(parts) == 2 else None
    return NameTag(identity=identity, strength=strength, start=span[0], end=span[1], text=tag_text)


def find_name_tags(prompt: str) -> list[NameTag]:
    """Every ``<name:...>`` tag in ``prompt``, in order, with its span.

    Raises :class:`TagError` (with ``.span``) for the first malformed tag: unclosed, empty or illegal
    identity name, too many ``:``, or a strength that is empty, not a number, not finite or out of range.
    Text that is not a tag of ours (``<lora:x:1>``, ``<names:x>``) is ignored.
    """
    if not isinstance(prompt, str):
        raise TagError(f"A prompt must be text, not {type(prompt).__name__}.")
    tags: list[NameTag] = []
    position = 0
    while (match := _TAG_START_RE.search(prompt, position)) is not None:
        tag = _parse_tag_at(prompt, match.start())
        tags.append(tag)
        position = tag.end
    return tags


def rewrite_name_tags(prompt: str, replace: Callable[[NameTag], str]) -> str:
    """``prompt`` with every tag replaced by ``replace(tag)``; all other text is kept as it is.

    The whole prompt is parsed first, so a malformed tag anywhere raises :class:`TagError` before
    ``replace`` is called at all.
    """
    tags = find_name_tags(prompt)
    pieces: list[str] = []
    position = 0
    for tag in tags:
        pieces.append(prompt[position : tag.start])
        pieces.append(replace(tag))
        position = tag.end
    pieces.append(prompt[position:])
    return "".join(pieces)
