"""The MagicNaming tab's event handlers (:class:`TabActions`) and the views they show.

Each handler maps a gradio event to one identity use case (:mod:`.use_cases`) and its outcome to what the
tab's outputs show: values in, values out, a status message last (an error's message in the WebUI's
``error`` style). Plain methods, so they are tested without a browser; :mod:`.tab` lays out the components
and wires them here.
"""

from __future__ import annotations

import html
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.webui.log import log_skipped
from lib_magicnaming.webui.services import Services
from lib_magicnaming.webui.use_cases import IdentityUseCases, no_progress, photo_report_json

LIBRARY_HEADERS = ["name", "hash", "made from", "created", "stored as"]

EXPORT_FOLDER_NAME = "magicnaming-export"
"""Under the system temp folder; holds the latest export of each identity."""


def message_html(text: str, *, error: bool = False) -> str:
    """A status line; errors use the WebUI's ``error`` class."""
    css = "error" if error else "magicnaming-message"
    return f"<div class='{css}'>{html.escape(text)}</div>"


def placeholder_card(name: str, short_hash: str, size: int = 128) -> Image.Image:
    """A picture for an identity without a photo (made from names, a mix, a sample): its initials on a
    colour taken from its hash, so the same identity always looks the same in the gallery."""
    red, green, blue = (int(short_hash[i : i + 2], 16) // 2 + 64 for i in (0, 2, 4))
    card = Image.new("RGB", (size, size), (red, green, blue))
    draw = ImageDraw.Draw(card)
    initials = "".join(part[0] for part in re.split(r"[_.-]+", name) if part)[:2].upper() or name[:2].upper()
    font = ImageFont.load_default()
    box = draw.textbbox((0, 0), initials, font=font)
    scale = max(1, (size // 2) // max(1, box[2] - box[0]))
    text = Image.new("L", (box[2] - box[0] + 2, box[3] - box[1] + 2), 0)
    ImageDraw.Draw(text).text((1 - box[0], 1 - box[1]), initials, fill=255, font=font)
    text = text.resize((text.width * scale, text.height * scale), Image.NEAREST)
    card.paste((255, 255, 255), ((size - text.width) // 2, (size - text.height) // 2), text)
    return card


def describe_origin(origin: dict) -> str:
    """How an identity was made, in a few words."""
    kind = origin.get("kind", "?")
    if kind == "names":
        return "names: " + " + ".join(f"{weight:g} {text}" for text, weight in origin.get("names", []))
    if kind == "mix":
        parts = " + ".join(f"{weight:g} {name}" for name, _hash, weight in origin.get("identities", []))
        return f"{origin.get('method', 'linear')} mix: {parts}"
    if kind == "photos":
        return f"{len(origin.get('photo_hashes', []))} photo(s), encoder {origin.get('encoder_hash', '?')}"
    if kind == "sampled":
        source = ""
        if "checkpoint_hash" in origin:
            source = f" from checkpoint {origin['checkpoint_hash']}"
        elif "encoder_hash" in origin:
            source = f" from encoder {origin['encoder_hash']}"
        return f"sampled{source}: seed {origin.get('seed')}, scale {origin.get('scale')}"
    return str(kind)


REPORT_COLUMNS = [
    ("face", lambda r: "yes" if r["face_found"] else "no"),
    ("faces found", lambda r: "(not run)" if r["faces_found"] is None else r["faces_found"]),
    ("score", lambda r: r["score"]),
    ("distance from mean", lambda r: r["distance_from_mean"] and round(r["distance_from_mean"], 3)),
    ("notes", lambda r: "; ".join(r["notes"] + ([r["error"]] if r["error"] else []))),
]


def report_markdown(per_photo: Sequence[Any]) -> str:
    """A markdown table, one row per photo, of what the encoder reported (encode.PhotoReport)."""
    if not per_photo:
        return ""
    lines = ["| photo | " + " | ".join(name for name, _ in REPORT_COLUMNS) + " |",
             "|---" * (len(REPORT_COLUMNS) + 1) + "|"]
    for report in per_photo:
        row = photo_report_json(report)
        cells = ["" if cell(row) is None else str(cell(row)).replace("|", "/") for _, cell in REPORT_COLUMNS]
        lines.append(f"| {row['index'] + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _uploaded_bytes(files: Any) -> list[bytes]:
    """gr.File(type="binary") values (bytes, or a list of them) -> list of bytes."""
    if files is None:
        return []
    if isinstance(files, bytes | bytearray):
        return [bytes(files)]
    return [bytes(item) for item in files if item]


def _saved(info: Any) -> str:
    return message_html(f"Saved {info.name} [{info.short_hash}]: use it as <name:{info.name}>")


def _message_of(action: Callable[[], str]) -> str:
    """``action()``'s message, or its MagicNamingError's as an error message."""
    try:
        return action()
    except MagicNamingError as error:
        return message_html(str(error), error=True)


class TabActions:
    """The tab's event handlers; each returns what its outputs show, with a status message last."""

    def __init__(self, services: Services):
        self.cases = IdentityUseCases(services)

    # -- status and library views

    def encoder_status_text(self) -> str:
        """The encoder status line."""
        return self.cases.encoder_status().summary()

    def library_view(self) -> tuple[list[tuple[Any, str]], list[list[str]], list[str]]:
        """(gallery items, table rows, names) of the saved identities."""
        gallery, rows, names = [], [], []
        for info in self.cases.list():
            names.append(info.name)
            rows.append([info.name, info.short_hash, describe_origin(info.origin), info.created, info.dtype])
            thumbnail = None
            if info.has_thumbnail:
                try:
                    thumbnail = self.cases.load(info.name).thumbnail
                except MagicNamingError as error:
                    log_skipped(f"left {info.name!r} out of the tab's gallery", error)
                    continue
            gallery.append((thumbnail or placeholder_card(info.name, info.short_hash),
                            f"{info.name} [{info.short_hash}]"))
        return gallery, rows, names

    def identity_details(self, name: str | None) -> str:
        """Markdown describing one identity."""
        if not name:
            return ""
        try:
            info = self.cases.info(name)
        except MagicNamingError as error:
            return f"**{html.escape(str(error))}**"
        return (
            f"**{html.escape(info.name)}** `{info.short_hash}`  \n"
            f"made from {html.escape(describe_origin(info.origin))}  \n"
            f"created {info.created}, stored as {info.dtype}  \n"
            f"use it as `<name:{info.name}>`"
        )

    # -- creating

    def preview_photos(
        self, files: Any, assume_cropped: bool, progress: Callable[..., Any] = no_progress
    ) -> tuple[list[tuple[Any, str]], str, Any, str]:
        """Detect and encode the uploaded photos: (crops, per-photo report, EncodeResult to save, message)."""
        photos = _uploaded_bytes(files)
        if not photos:
            return [], "", None, message_html("Upload at least one photo", error=True)
        try:
            result = self.cases.encode_photos(
                photos, assume_cropped=bool(assume_cropped), skip_failed=True, progress=progress
            )
        except MagicNamingError as error:
            return [], "", None, message_html(str(error), error=True)
        crops = [(r.crop.image, f"photo {r.index + 1}") for r in result.per_photo if r.crop is not None]
        message = f"Encoded {len(photos)} photo(s): check the crops, then name and save the identity"
        return crops, report_markdown(result.per_photo), result, message_html(message)

    def save_photos(self, preview: Any, name: str, overwrite: bool) -> str:
        """Save the previewed photo encoding (an EncodeResult) under ``name``."""
        if preview is None:
            return message_html("Encode some photos first", error=True)
        return _message_of(
            lambda: _saved(self.cases.create_from_encoded(name, preview, overwrite=bool(overwrite)))
        )

    def create_from_names(
        self, name: str, names_text: str, method: str, overwrite: bool,
        progress: Callable[..., Any] = no_progress,
    ) -> str:
        """Save an identity made from ``"0.6 Ada Lovelace + 0.4 Alan Turing"`` (SDXL text encoders)."""
        from lib_magicnaming.namespace import parse_weighted_names

        return _message_of(lambda: _saved(self.cases.create_from_names(
            name, parse_weighted_names(names_text), method, overwrite=bool(overwrite), progress=progress
        )))

    def create_mix(self, name: str, mix_text: str, method: str, overwrite: bool) -> str:
        """Save a mix of saved identities, ``"0.5 alice + 0.5 bob"``."""
        from lib_magicnaming.namespace import parse_weighted_names

        return _message_of(lambda: _saved(self.cases.create_mix(
            name, parse_weighted_names(mix_text), method, overwrite=bool(overwrite)
        )))

    # -- managing

    def rename(self, old: str | None, new: str) -> tuple[str, str | None]:
        """Rename a saved identity: (message, the new name, or None when nothing was renamed)."""
        if not old:
            return message_html("Choose an identity to rename", error=True), None
        try:
            info = self.cases.rename(old, (new or "").strip())
        except MagicNamingError as error:
            return message_html(str(error), error=True), None
        return message_html(f"Renamed {old} to {info.name}"), info.name

    def delete(self, name: str | None) -> str:
        """Delete a saved identity (the UI asks for confirmation first)."""
        if not name:
            return message_html("Choose an identity to delete", error=True)

        def delete() -> str:
            self.cases.delete(name)
            return message_html(f"Deleted {name}")

        return _message_of(delete)

    def import_files(self, files: Any, name: str, overwrite: bool) -> str:
        """Import identity files; ``name`` renames a single imported file."""
        contents = _uploaded_bytes(files)
        if not contents:
            return message_html("Choose identity .safetensors files to import", error=True)

        def import_all() -> str:
            imported = self.cases.import_files(contents, name=(name or "").strip(), overwrite=bool(overwrite))
            return message_html("Imported " + ", ".join(info.name for info in imported))

        return _message_of(import_all)

    def export(self, name: str | None) -> tuple[str | None, str]:
        """Write the identity's file for download: (path for gr.File, message).

        One export folder, one file per identity, overwritten by the next export of the same identity: gradio
        copies the file when it serves it, and a folder per export would pile up in the temp directory.
        """
        if not name:
            return None, message_html("Choose an identity to export", error=True)
        folder = Path(tempfile.gettempdir()) / EXPORT_FOLDER_NAME
        try:
            path = self.cases.export(name, folder, overwrite=True)
        except MagicNamingError as error:
            return None, message_html(str(error), error=True)
        return str(path), message_html(f"Exported {name}: download it below")
