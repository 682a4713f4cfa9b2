"""Every limit on input that costs work, in one table, and the checks that apply them before any work.

The identity use cases (:mod:`.use_cases`, behind the tab and the REST API), the REST API's body guard
(:mod:`.request_body`) and the generation path (:mod:`.generation`) check their input against
:data:`LIMITS` before any costly work and before the WebUI's queue lock is taken, so no request can hold
the lock for more than its limited input costs. :func:`limit_rows` is the table the README lists in full
(a test keeps the two the same).

A limit that is exceeded raises :class:`TooLarge` (HTTP 413) where the input is too big or too many, or a
plain MagicNamingError (HTTP 400) where a text is longer than a name can be: both name the limit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lib_magicnaming.constants import CHUNK_TEXT_TOKENS
from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.face import DEFAULT_MAX_PIXELS
from lib_magicnaming.identity_file import MAX_FILE_BYTES
from lib_magicnaming.names_list import MAX_NAME_CHARS, MAX_NAMES
from lib_magicnaming.tags import NAME_MAX_CHARS, TAG_WORD
from lib_magicnaming.webui.log import logger

_TAG_START_RE = re.compile(rf"<{TAG_WORD}:", re.IGNORECASE | re.ASCII)
_BREAK_RE = re.compile(r"\bBREAK\b")
"""The WebUI's chunk separator: in a name's text each one would cost a whole 77-token chunk of encoding."""


MAX_PORTRAITS = 8
"""Portraits drawn in one batch (the candidates of one Sample)."""
PORTRAIT_SIZE_RANGE = (64, 1024)
"""A portrait's side in pixels (a multiple of 64)."""
PORTRAIT_STEPS_RANGE = (1, 50)


class TooLarge(MagicNamingError):
    """Input over a size or count limit (HTTP 413); the message names the limit."""


@dataclass(frozen=True)
class Limits:
    """The limits (defaults: :data:`LIMITS`). Tests pass smaller ones."""

    identity_name_chars: int = NAME_MAX_CHARS
    name_text_chars: int = MAX_NAME_CHARS
    name_chunks: int = 1
    names_per_identity: int = 16
    mix_items: int = 16
    photos: int = 16
    photo_bytes: int = 16 << 20
    photo_pixels: int = DEFAULT_MAX_PIXELS
    request_bytes: int = 96 << 20
    import_files: int = 16
    identity_file_bytes: int = MAX_FILE_BYTES
    tags_per_prompt: int = 16
    candidates: int = MAX_PORTRAITS


LIMITS = Limits()


def size_text(size: int) -> str:
    """``16 MiB`` for whole mebibytes, else ``1000 bytes``."""
    return f"{size >> 20} MiB" if size >= 1 << 20 and size % (1 << 20) == 0 else f"{size:,} bytes"


@dataclass(frozen=True)
class LimitRow:
    """One row of the limits table: what is limited, the limit as text, and where it applies."""

    what: str
    limit: str
    applies_to: str


def limit_rows(limits: Limits = LIMITS) -> list[LimitRow]:
    """The limits table (the README's "Limits" table lists exactly these rows)."""
    return [
        LimitRow("Identity name", f"{limits.identity_name_chars} characters",
                 "every identity name: tags, the tab, the API"),
        LimitRow("Name text (a person's name to encode)", f"{limits.name_text_chars} characters, "
                 f"{limits.name_chunks} prompt chunk (75 tokens), no BREAK",
                 "each name of `from-names` and of the tab's *From names*"),
        LimitRow("Names per identity", str(limits.names_per_identity),
                 "`from-names`, the tab's *From names*"),
        LimitRow("Identities per mix", str(limits.mix_items), "`mix`, the tab's *Mix*"),
        LimitRow("Photos per identity", str(limits.photos), "`from-photos`, the tab's *From photos*"),
        LimitRow("Photo file size", size_text(limits.photo_bytes),
                 "each photo (API, tab, the one-off face)"),
        LimitRow("Photo size in pixels", f"{limits.photo_pixels:,} pixels",
                 "each photo, read from its header before decoding"),
        LimitRow("Request body", size_text(limits.request_bytes),
                 "every `/magicnaming/v1` request, counted as it is read (with or without Content-Length)"),
        LimitRow("Identity files per import", str(limits.import_files), "the tab's *Import*"),
        LimitRow("Identity file size", size_text(limits.identity_file_bytes), "each imported identity file"),
        LimitRow("`<name:...>` tags per prompt", str(limits.tags_per_prompt),
                 "each prompt, negative prompt and hires prompt of a generation"),
        LimitRow("Candidates drawn at a time", str(limits.candidates),
                 "`sample/candidates`, the tab's *Sample*"),
        LimitRow("Portrait size and steps", "{}-{} px (a multiple of 64), {}-{} steps".format(
                 *PORTRAIT_SIZE_RANGE, *PORTRAIT_STEPS_RANGE),
                 "`sample/candidates`, `{name}/portrait`, the tab"),
        LimitRow("Names list (the names-list setting)", f"{MAX_NAMES:,} names of at most {MAX_NAME_CHARS} "
                 f"characters, {limits.name_chunks} prompt chunk each", "measuring the loaded checkpoint's "
                 "name space (the first Sample from it), checked before the queue lock"),
    ]


# ------------------------------------------------------------------------------------------------ checks


def _excerpt(text: str, chars: int = 40) -> str:
    return repr(text if len(text) <= chars else text[: chars - 3] + "...")


def check_name_texts(names: Sequence[str], limits: Limits = LIMITS) -> None:
    """The names an identity is made from: at most ``names_per_identity`` of them (TooLarge), each at most
    ``name_text_chars`` characters without the WebUI's ``BREAK`` (MagicNamingError, naming the name)."""
    if len(names) > limits.names_per_identity:
        raise TooLarge(f"at most {limits.names_per_identity} names per identity, not {len(names)}")
    for index, text in enumerate(names):
        if not isinstance(text, str):
            continue  # not text: the name-space code names that problem
        if len(text) > limits.name_text_chars:
            raise MagicNamingError(
                f"name {index + 1} ({_excerpt(text)}) is {len(text):,} characters long; a name may have at "
                f"most {limits.name_text_chars}"
            )
        if _BREAK_RE.search(text):
            raise MagicNamingError(
                f"name {index + 1} ({_excerpt(text)}) holds BREAK, the WebUI's chunk separator; a name cannot"
            )


def clip_token_chunks(text: str) -> int | None:
    """The 75-token chunks CLIP's tokenizer makes of ``text`` (open_clip's: the vocabulary of both SDXL text
    encoders), without the WebUI's emphasis and textual-inversion parsing, which only ever shorten a name;
    None when open_clip cannot be imported. Tokenizing only: no model work."""
    try:
        from open_clip.tokenizer import _tokenizer
    except ImportError as error:
        logger.warning("cannot count a name's tokens without open_clip: %s", error)
        return None
    return max(1, -(-len(_tokenizer.encode(text)) // CHUNK_TEXT_TOKENS))


def check_name_chunks(names: Sequence[str], count_chunks, limits: Limits = LIMITS) -> None:
    """Each name tokenises into at most ``name_chunks`` 77-token chunks, as ``count_chunks(text)`` (the loaded
    checkpoint's tokenizer) counts them, or :func:`clip_token_chunks` where that cannot tell (None): so
    encoding one name costs one chunk of the text encoders whatever the WebUI."""
    for index, text in enumerate(names):
        if not isinstance(text, str) or not text.strip():
            continue
        chunks = count_chunks(text.strip()) if count_chunks is not None else None
        if chunks is None:
            chunks = clip_token_chunks(text.strip())
        if chunks is not None and chunks > limits.name_chunks:
            raise MagicNamingError(
                f"name {index + 1} ({_excerpt(text)}) fills {chunks} prompt chunks of 75 tokens; a name must "
                f"fit in {limits.name_chunks} (only the start of the first one makes the identity)"
            )


def check_candidates(count: object, limits: Limits = LIMITS) -> int:
    """``count`` candidates to draw: a whole number from 1 (MagicNamingError) to ``candidates`` (TooLarge)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise MagicNamingError(f"draw 1 to {limits.candidates} candidates at a time, not {count!r}")
    if count > limits.candidates:
        raise TooLarge(f"at most {limits.candidates} candidates at a time, not {count}")
    return count


def check_mix_items(count: int, limits: Limits = LIMITS) -> None:
    """At most ``mix_items`` identities in one mix (TooLarge)."""
    if count > limits.mix_items:
        raise TooLarge(f"at most {limits.mix_items} identities per mix, not {count}")


def check_photos(photos: Sequence[bytes], limits: Limits = LIMITS) -> None:
    """At most ``photos`` photos, each at most ``photo_bytes`` bytes (TooLarge naming the photo)."""
    if len(photos) > limits.photos:
        raise TooLarge(f"at most {limits.photos} photos per request, not {len(photos)}")
    for index, photo in enumerate(photos):
        check_photo_bytes(len(photo), index, limits)


def check_photo_bytes(size: int, index: int | None = None, limits: Limits = LIMITS) -> None:
    """One photo of ``size`` bytes (``index``: its place, for the message); TooLarge over ``photo_bytes``."""
    if size > limits.photo_bytes:
        which = "the photo" if index is None else f"photo {index + 1}"
        raise TooLarge(f"{which}: larger than {size_text(limits.photo_bytes)}")


def check_import_files(contents: Sequence[bytes], limits: Limits = LIMITS) -> None:
    """At most ``import_files`` files, each at most ``identity_file_bytes`` (TooLarge naming the file)."""
    if len(contents) > limits.import_files:
        raise TooLarge(f"at most {limits.import_files} identity files per import, not {len(contents)}")
    for index, data in enumerate(contents):
        if len(data) > limits.identity_file_bytes:
            raise TooLarge(
                f"File {index + 1}: {size_text(len(data))} is larger than an identity file can be "
                f"({size_text(limits.identity_file_bytes)})"
            )


def count_tags(prompt: str) -> int:
    """How many ``<name:...>`` tags start in ``prompt`` (0 for what is not text); counted without parsing
    them, so the count is known before any tag is read."""
    return len(_TAG_START_RE.findall(prompt)) if isinstance(prompt, str) else 0


def check_prompt_tags(prompts: Sequence[str], limits: Limits = LIMITS) -> None:
    """At most ``tags_per_prompt`` tags in each prompt (TooLarge naming the count)."""
    for prompt in prompts:
        count = count_tags(prompt)
        if count > limits.tags_per_prompt:
            raise TooLarge(
                f"MagicNaming: a prompt holds {count} <name:...> tags; at most {limits.tags_per_prompt} "
                "per prompt"
            )
