"""Messages for clients without server paths: files named relative to the folders the user knows.

Errors raised inside the library name files by their full path (the server log keeps them so). Whatever
reaches a client (a REST error body, the message that stops a generation, a note in the API's ``info``, the
tab's and accordion's status lines) passes through :func:`client_message` first:

* a path in the WebUI's folder becomes relative to it (``models/magicnaming/identities/alice.safetensors``);
* a path in a MagicNaming folder outside the WebUI becomes ``<MagicNaming folder>/...``, one in the WebUI's
  models folder outside the WebUI's folder ``<models>/...``, the system temp folder ``<temp>/...``, the
  home folder ``~/...``;
* any other absolute path is cut to its last part (``.../name``).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lib_magicnaming.webui.log import logger

MAGICNAMING_FOLDER_LABEL = "<MagicNaming folder>"
MODELS_FOLDER_LABEL = "<models>"
WEBUI_FOLDER_LABEL = "the WebUI folder"
TEMP_LABEL = "<temp>"
HOME_LABEL = "~"

_PATH_CHARS = r"[^\s'\"`<>|,;()\[\]{}]"
_POSIX_PATH_RE = re.compile(rf"(?<![\w.~:/\\<>-])/{_PATH_CHARS}+")
"""An absolute POSIX path: a ``/`` that does not follow a word, dot or another path, then path characters."""
_WINDOWS_PATH_RE = re.compile(rf"(?<![\w])[A-Za-z]:[\\/]{_PATH_CHARS}*")


@dataclass(frozen=True)
class Folder:
    """A server folder and how clients see it: ``label`` replaces the folder's own path; an empty label means
    "relative to it" (the WebUI's folder)."""

    path: str
    label: str


def _forms(path: str | os.PathLike) -> set[str]:
    """The path as given, absolute, and with links resolved (an error may quote any of them)."""
    text = os.fspath(path)
    forms = {text.rstrip("/\\") or text, os.path.abspath(text)}
    try:
        forms.add(os.path.realpath(text))
    except (OSError, ValueError):
        pass
    return {form for form in forms if len(form) > 1}


def _under(path: str, folder: str) -> str | None:
    """``path`` relative to ``folder`` when it lies inside it (or is it: ``""``), else None."""
    try:
        relative = os.path.relpath(path, folder)
    except ValueError:  # another drive (Windows)
        return None
    if relative == os.curdir:
        return ""
    if relative == os.pardir or relative.startswith(os.pardir + os.sep) or os.path.isabs(relative):
        return None
    return relative


class PathRedactor:
    """Rewrites the paths in a text as :mod:`this module <.redact>` says, for a given set of folders."""

    def __init__(self, folders: Iterable[Folder]):
        pairs = {(form, folder.label) for folder in folders for form in _forms(folder.path)}
        # the most specific folder first: a longer path inside a shorter one wins
        self.folders: list[tuple[str, str]] = sorted(pairs, key=lambda pair: -len(pair[0]))
        names = "|".join(re.escape(form) for form, _ in self.folders)
        # a folder's path, then the rest of a path inside it, or a character that ends the path
        self._known = re.compile(rf"(?:{names})(?:[\\/]{_PATH_CHARS}*|(?!{_PATH_CHARS}))") if names else None

    def _shown(self, path: str) -> str:
        for folder, label in self.folders:
            relative = _under(path, folder)
            if relative is None:
                continue
            relative = relative.replace(os.sep, "/")
            if not label:
                return relative or WEBUI_FOLDER_LABEL
            return f"{label}/{relative}" if relative else label
        return path

    def __call__(self, text: str) -> str:
        """``text`` with every server path replaced."""
        if self._known is not None:
            text = self._known.sub(lambda match: self._shown(match.group(0)), text)
        text = _POSIX_PATH_RE.sub(_last_part, text)
        return _WINDOWS_PATH_RE.sub(_last_part, text)


_URL_PATH_PREFIXES = ("/sdapi/", "/magicnaming/")
"""The WebUI's and our HTTP routes, which messages may name: not server paths."""


def _last_part(match: re.Match) -> str:
    path = match.group(0)
    if path.startswith(_URL_PATH_PREFIXES):
        return path
    trailing = ""
    while path and path[-1] in ".:":  # the end of a sentence, not of the path
        path, trailing = path[:-1], path[-1] + trailing
    name = re.split(r"[\\/]", path.rstrip("\\/"))[-1]
    return (f".../{name}" if name else "...") + trailing


def webui_folders(magicnaming_folder: str | os.PathLike | None = None) -> list[Folder]:
    """The folders a client may see named: the MagicNaming folder (``magicnaming_folder``, else the
    configured one), the WebUI's folders when a WebUI runs, the temp and home folders."""
    folders: list[Folder] = []
    data_path = models_path = None
    try:
        from modules import paths

        data_path = getattr(paths, "data_path", None) or getattr(paths, "script_path", None)
        models_path = getattr(paths, "models_path", None)
    except ImportError:  # no WebUI (tests of the library, training)
        pass
    if magicnaming_folder is None and data_path is not None:
        try:
            from lib_magicnaming.webui.options import current_settings

            magicnaming_folder = current_settings().models_dir
        except Exception as error:  # a bad setting must not hide the message being redacted
            logger.debug("no MagicNaming folder for redaction: %s", error)
    if data_path:
        folders.append(Folder(os.fspath(data_path), ""))
        script_path = getattr(paths, "script_path", None)
        if script_path:
            folders.append(Folder(os.fspath(script_path), ""))
    if models_path and (not data_path or _under(os.fspath(models_path), os.fspath(data_path)) is None):
        folders.append(Folder(os.fspath(models_path), MODELS_FOLDER_LABEL))
    if magicnaming_folder is not None and (
        not data_path or _under(os.fspath(magicnaming_folder), os.fspath(data_path)) is None
    ):
        folders.append(Folder(os.fspath(magicnaming_folder), MAGICNAMING_FOLDER_LABEL))
    folders.append(Folder(tempfile.gettempdir(), TEMP_LABEL))
    home = os.path.expanduser("~")
    if home and home != "~":
        folders.append(Folder(home, HOME_LABEL))
    return folders


def client_message(text: str, magicnaming_folder: str | os.PathLike | None = None) -> str:
    """``text`` as a client may read it (module docstring); the full text goes to the log at debug level."""
    shown = PathRedactor(webui_folders(magicnaming_folder))(str(text))
    if shown != text:
        logger.debug("message with server paths, as the client sees it without them: %s", text)
    return shown


def client_messages(texts: Sequence[str], magicnaming_folder: str | os.PathLike | None = None) -> list[str]:
    """:func:`client_message` of each text (one set of folders for all)."""
    redactor = PathRedactor(webui_folders(magicnaming_folder))
    return [redactor(str(text)) for text in texts]


def magicnaming_folder_of(identities_folder: str | os.PathLike | None) -> Path | None:
    """The MagicNaming folder that holds an identity library's folder (``<folder>/identities``)."""
    return None if identities_folder is None else Path(identities_folder).parent
