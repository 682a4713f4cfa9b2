"""Notes about a generation that reach API callers as well as UI users.

The WebUI shows a generation's comments (``p.comment(text)``) under the image, but its API leaves them out:
the response's ``info`` is ``Processed.js()``, which carries ``extra_generation_params`` and the infotexts
and not ``Processed.comments`` (modules/processing.py, v1.10.1 and Forge alike). So every MagicNaming note
goes to both: the comment the UI shows and the ``MagicNaming notes`` entry of ``extra_generation_params``,
which the API's ``info`` and each image's infotext carry.

Notes are the extension being off while the prompt holds tags, prompt text pushed out of the first chunk,
what the one-off face's detection reported (a detector other than the encoder's, several faces), ...
Notes the conditioning wrapper writes as WebUI comments (it has no ``p``) are copied by
:func:`copy_comment_notes` after each batch. Text passes :func:`.redact.client_message` first.
"""

from __future__ import annotations

from typing import Any

from lib_magicnaming.webui.redact import client_message

NOTES_KEY = "MagicNaming notes"
"""The ``extra_generation_params`` (infotext) key of the notes."""
NOTE_PREFIX = "MagicNaming"
"""Every note starts with it: the notes among the WebUI's comments are found by it."""
NOTE_SEPARATOR = " | "


def note_text(text: str) -> str:
    """``text`` as a note: starting with ``MagicNaming`` and free of server paths."""
    text = client_message(str(text).strip())
    return text if text.startswith(NOTE_PREFIX) else f"{NOTE_PREFIX}: {text}"


def notes_of(p: Any) -> list[str]:
    """The notes recorded on ``p`` so far, in order."""
    value = getattr(p, "extra_generation_params", {}).get(NOTES_KEY)
    return value.split(NOTE_SEPARATOR) if isinstance(value, str) and value else []


def add_note(p: Any, text: str) -> str:
    """Show ``text`` under the image (a WebUI comment) and put it in the API's ``info`` and the infotext
    (``extra_generation_params["MagicNaming notes"]``), once; returns the note as written."""
    note = note_text(text)
    if hasattr(p, "comment"):
        p.comment(note)
    _record(p, note)
    return note


def _record(p: Any, note: str) -> None:
    notes = notes_of(p)
    if note not in notes:
        p.extra_generation_params[NOTES_KEY] = NOTE_SEPARATOR.join([*notes, note])


def copy_comment_notes(p: Any) -> None:
    """Copy the MagicNaming notes among ``p``'s WebUI comments (the conditioning wrapper's, which the WebUI
    moved there) into ``extra_generation_params``, for the API's ``info``."""
    comments = getattr(p, "comments", None) or {}
    for comment in list(comments):
        if isinstance(comment, str) and comment.startswith(NOTE_PREFIX):
            _record(p, note_text(comment))
