"""The "MagicNaming" tab: make identities (photos, names, mixes, samples) and manage the saved ones.

The event handlers live on :class:`TabActions` as plain methods (values in, values out) so they can be tested
without a browser; :func:`build_tab` only lays out gradio components and wires them. Only components and
arguments that exist in both gradio 3.41 (A1111) and gradio 4 (Forge) are used: ``gr.update`` for
visibility, ``File(type="binary")``, galleries of ``(image, caption)`` pairs, ``gr.Progress``.
Per-session state (a photo preview waiting to be saved) travels in ``gr.State``, never in module globals.
"""

from __future__ import annotations

import html
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.webui.services import (
    ServiceContext,
    mix_identity,
    names_identity,
    photo_report_json,
    photos_identity,
    refuse_existing,
    sampled_identity,
)

METHODS = ["linear", "slerp"]
LIBRARY_HEADERS = ["name", "hash", "made from", "created", "stored as"]


EXPORT_FOLDER_NAME = "magicnaming-export"
"""Under the system temp folder; holds the latest export of each identity."""


def no_progress(*_args: Any, **_kwargs: Any) -> None:
    """The progress callback when none is given (gr.Progress must not be tested for truth: it has a len)."""


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


def ask_delete(name: str | None) -> tuple[Any, str, str]:
    """(confirmation row, its question naming the selected identity, tab message); without a selection there
    is nothing to confirm and the message says so."""
    import gradio as gr

    if not name:
        return gr.update(visible=False), "", message_html("Choose an identity to delete", error=True)
    return gr.update(visible=True), f"Delete the identity `{name}` for good?", ""


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
        return f"sampled: seed {origin.get('seed')}, scale {origin.get('scale')}"
    return str(kind)


def parse_weighted(text: str) -> list[tuple[str, float]]:
    """``"0.6 alice + 0.4 bob"`` -> weighted names (the one parser: namespace.parse_weighted_names)."""
    from lib_magicnaming.namespace import parse_weighted_names

    return parse_weighted_names(text)


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


class TabActions:
    """The tab's event handlers; each returns what its outputs show, with a status message last."""

    def __init__(self, context: ServiceContext):
        self.context = context

    # -- status and library views

    def encoder_status_text(self) -> str:
        """The encoder status line."""
        return self.context.encoder_status().summary()

    def identity_names(self) -> list[str]:
        """Saved identity names, sorted by key."""
        return [info.name for info in self.context.library().list()]

    def library_view(self) -> tuple[list[tuple[Any, str]], list[list[str]], list[str]]:
        """(gallery items, table rows, names) of the saved identities."""
        library = self.context.library()
        gallery, rows, names = [], [], []
        for info in library.list():
            names.append(info.name)
            rows.append([info.name, info.short_hash, describe_origin(info.origin), info.created, info.dtype])
            thumbnail = None
            if info.has_thumbnail:
                try:
                    thumbnail = library.load(info.name).thumbnail
                except MagicNamingError:
                    continue
            gallery.append((thumbnail or placeholder_card(info.name, info.short_hash),
                            f"{info.name} [{info.short_hash}]"))
        return gallery, rows, names

    def identity_details(self, name: str | None) -> str:
        """Markdown describing one identity."""
        if not name:
            return ""
        try:
            info = self.context.library().get_info(name)
        except MagicNamingError as error:
            return f"**{html.escape(str(error))}**"
        return (
            f"**{html.escape(info.name)}** `{info.short_hash}`  \n"
            f"made from {html.escape(describe_origin(info.origin))}  \n"
            f"created {info.created}, stored as {info.dtype}  \n"
            f"use it as `<name:{info.name}>`"
        )

    # -- creating

    def _save(self, identity: Any, overwrite: bool) -> str:
        info = self.context.library().save(identity, overwrite=bool(overwrite))
        return message_html(f"Saved {info.name} [{info.short_hash}]: use it as <name:{info.name}>")

    def preview_photos(
        self, files: Any, assume_cropped: bool, progress: Callable[..., Any] | None = None
    ) -> tuple[list[tuple[Any, str]], str, Any, str]:
        """Detect and encode the uploaded photos: (crops, per-photo report, EncodeResult to save, message)."""
        progress = no_progress if progress is None else progress
        photos = _uploaded_bytes(files)
        if not photos:
            return [], "", None, message_html("Upload at least one photo", error=True)
        try:
            progress(0.1, desc="Loading the MagicNaming encoder")
            encoder = self.context.encoder()
            progress(0.4, desc=f"Encoding {len(photos)} photo(s)")
            with self.context.gpu_lock():
                result = encoder.encode_photos(photos, assume_cropped=bool(assume_cropped), skip_failed=True)
        except MagicNamingError as error:
            return [], "", None, message_html(str(error), error=True)
        finally:
            self.context.release_encoder()
        crops = [(r.crop.image, f"photo {r.index + 1}") for r in result.per_photo if r.crop is not None]
        message = f"Encoded {len(photos)} photo(s): check the crops, then name and save the identity"
        return crops, report_markdown(result.per_photo), result, message_html(message)

    def _create(self, name: str, overwrite: bool, make: Callable[[], Any]) -> str:
        """Refuse a taken name (unless overwriting), make the identity, save it; errors become messages."""
        try:
            refuse_existing(self.context.library(), name, bool(overwrite))
            return self._save(make(), overwrite)
        except MagicNamingError as error:
            return message_html(str(error), error=True)

    def save_photos(self, preview: Any, name: str, overwrite: bool) -> str:
        """Save the previewed photo encoding (an EncodeResult) under ``name``."""
        if preview is None:
            return message_html("Encode some photos first", error=True)
        return self._create(name, overwrite, lambda: photos_identity(name, preview))

    def create_from_names(
        self, name: str, names_text: str, method: str, overwrite: bool,
        progress: Callable[..., Any] | None = None,
    ) -> str:
        """Save an identity made from ``"0.6 Ada Lovelace + 0.4 Alan Turing"`` (SDXL text encoders)."""
        progress = no_progress if progress is None else progress

        def make() -> Any:
            progress(0.3, desc="Encoding names with the SDXL text encoders")
            return names_identity(self.context, name, parse_weighted(names_text), method)

        return self._create(name, overwrite, make)

    def create_mix(self, name: str, mix_text: str, method: str, overwrite: bool) -> str:
        """Save a mix of saved identities, ``"0.5 alice + 0.5 bob"``."""
        return self._create(
            name, overwrite,
            lambda: mix_identity(self.context.library(), name, parse_weighted(mix_text), method),
        )

    def create_sampled(
        self, name: str, seed: float, scale: float, overwrite: bool,
        progress: Callable[..., Any] | None = None,
    ) -> str:
        """Save a fictional identity sampled from the encoder's name-space statistics."""
        progress = no_progress if progress is None else progress

        def make() -> Any:
            progress(0.3, desc="Loading the MagicNaming encoder")
            return sampled_identity(self.context, name, int(seed), float(scale))

        return self._create(name, overwrite, make)

    # -- managing

    def rename(self, old: str | None, new: str) -> str:
        """Rename a saved identity."""
        return self.rename_identity(old, new)[0]

    def rename_identity(self, old: str | None, new: str) -> tuple[str, str | None]:
        """Rename a saved identity: (message, the new name, or None when nothing was renamed)."""
        if not old:
            return message_html("Choose an identity to rename", error=True), None
        try:
            info = self.context.library().rename(old, (new or "").strip())
        except MagicNamingError as error:
            return message_html(str(error), error=True), None
        return message_html(f"Renamed {old} to {info.name}"), info.name

    def delete(self, name: str | None) -> str:
        """Delete a saved identity (the UI asks for confirmation first)."""
        if not name:
            return message_html("Choose an identity to delete", error=True)
        try:
            self.context.library().delete(name)
        except MagicNamingError as error:
            return message_html(str(error), error=True)
        return message_html(f"Deleted {name}")

    def import_files(self, files: Any, name: str, overwrite: bool) -> str:
        """Import identity files; ``name`` renames a single imported file."""
        contents = _uploaded_bytes(files)
        if not contents:
            return message_html("Choose identity .safetensors files to import", error=True)
        new_name = (name or "").strip() or None
        if new_name and len(contents) > 1:
            return message_html("A new name works for one file at a time", error=True)
        imported = []
        with tempfile.TemporaryDirectory(prefix="magicnaming-import-") as folder:
            for index, data in enumerate(contents):
                path = Path(folder) / f"import-{index}.safetensors"
                path.write_bytes(data)
                try:
                    info = self.context.library().import_file(path, name=new_name, overwrite=bool(overwrite))
                except MagicNamingError as error:
                    done = f" (imported before it: {', '.join(imported)})" if imported else ""
                    return message_html(f"File {index + 1}: {error}{done}", error=True)
                imported.append(info.name)
        return message_html("Imported " + ", ".join(imported))

    def export(self, name: str | None) -> tuple[str | None, str]:
        """Write the identity's file for download: (path for gr.File, message).

        One export folder, one file per identity, overwritten by the next export of the same identity: gradio
        copies the file when it serves it, and a folder per export would pile up in the temp directory.
        """
        if not name:
            return None, message_html("Choose an identity to export", error=True)
        folder = Path(tempfile.gettempdir()) / EXPORT_FOLDER_NAME
        try:
            folder.mkdir(exist_ok=True)
            path = self.context.library().export_file(name, folder, overwrite=True)
        except MagicNamingError as error:
            return None, message_html(str(error), error=True)
        except OSError as error:
            return None, message_html(f"Cannot write the export to {folder}: {error}", error=True)
        return str(path), message_html(f"Exported {name}: download it below")


def _photos_section(gr: Any) -> SimpleNamespace:
    with gr.Tab("From photos", elem_id="magicnaming_tab_photos"):
        ui = SimpleNamespace(
            photos=gr.File(label="Face photos (1 or more of the same person)", file_count="multiple",
                           file_types=["image"], type="binary", elem_id="magicnaming_photos"),
            assume_cropped=gr.Checkbox(False, label="Photos are face crops already (skip detection)"),
            encode=gr.Button("Detect faces and encode", variant="secondary"),
            crops=gr.Gallery(label="Detected face crops", columns=6, height="auto",
                             elem_id="magicnaming_crops"),
            report=gr.Markdown(),
            preview=gr.State(None),
        )
        with gr.Row():
            ui.name = gr.Textbox(label="Identity name", placeholder="alice")
            ui.overwrite = gr.Checkbox(False, label="Overwrite")
            ui.save = gr.Button("Save identity", variant="primary")
    return ui


def _mix_save_row(gr: Any, ui: SimpleNamespace) -> None:
    """The name / mix method / overwrite / save row that the names and mix sections share."""
    with gr.Row():
        ui.name = gr.Textbox(label="Identity name")
        ui.method = gr.Radio(METHODS, value="linear", label="Mix")
        ui.overwrite = gr.Checkbox(False, label="Overwrite")
        ui.save = gr.Button("Save identity", variant="primary")


def _names_section(gr: Any) -> SimpleNamespace:
    with gr.Tab("From names", elem_id="magicnaming_tab_names"):
        gr.Markdown("Names SDXL knows, with weights. Uses the loaded SDXL checkpoint, no encoder.")
        ui = SimpleNamespace(text=gr.Textbox(label="Names", placeholder="0.6 Ada Lovelace + 0.4 Alan Turing"))
        _mix_save_row(gr, ui)
    return ui


def _mix_section(gr: Any) -> SimpleNamespace:
    with gr.Tab("Mix", elem_id="magicnaming_tab_mix"):
        text = gr.Textbox(label="Saved identities, weighted", placeholder="0.5 alice + 0.5 bob")
        ui = SimpleNamespace(text=text)
        _mix_save_row(gr, ui)
    return ui


def _sample_section(gr: Any) -> SimpleNamespace:
    with gr.Tab("Sample", elem_id="magicnaming_tab_sample"):
        gr.Markdown("A fictional person drawn from the encoder's name-space statistics.")
        ui = SimpleNamespace()
        with gr.Row():
            ui.seed = gr.Number(0, label="Seed", precision=0)
            ui.scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Scale")
        with gr.Row():
            ui.name = gr.Textbox(label="Identity name")
            ui.overwrite = gr.Checkbox(False, label="Overwrite")
            ui.save = gr.Button("Save identity", variant="primary")
    return ui


def _library_section(gr: Any, initial: tuple[list, list, list[str]]) -> SimpleNamespace:
    gallery, rows, names = initial
    with gr.Tab("Library", elem_id="magicnaming_tab_library") as library_tab:
        ui = SimpleNamespace(
            tab=library_tab,
            refresh=gr.Button("Refresh"),
            gallery=gr.Gallery(gallery, label="Saved identities", columns=8, height="auto",
                               elem_id="magicnaming_library_gallery"),
            table=gr.Dataframe(rows or None, headers=LIBRARY_HEADERS, interactive=False, wrap=True),
            selected=gr.Dropdown(choices=names, label="Identity", elem_id="magicnaming_library_selected"),
            details=gr.Markdown(),
        )
        with gr.Row():
            ui.new_name = gr.Textbox(label="New name")
            ui.rename = gr.Button("Rename")
        with gr.Row():
            ui.delete = gr.Button("Delete", variant="stop")
            ui.export = gr.Button("Export")
        with gr.Row(visible=False) as ui.confirm_row:
            ui.confirm_text = gr.Markdown()
            ui.pending_delete = gr.State(None)
            ui.confirm = gr.Button("Yes, delete", variant="stop")
            ui.cancel = gr.Button("Cancel")
        ui.export_file = gr.File(label="Exported file", interactive=False)
        with gr.Row():
            ui.import_files = gr.File(label="Import identity files", file_count="multiple",
                                      file_types=[".safetensors"], type="binary")
            ui.import_name = gr.Textbox(label="Import as (one file only; blank: its own name)")
            ui.import_overwrite = gr.Checkbox(False, label="Overwrite")
            ui.import_button = gr.Button("Import")
    return ui


def _wire(gr: Any, actions: TabActions, status: Any, message: Any, ui: SimpleNamespace) -> Callable:
    """Connect every event; returns the library refresh function (for the page-load event)."""
    library = ui.library
    library_outputs = [library.gallery, library.table, library.selected, library.details]

    def refresh_library(selected: str | None = None):
        gallery, rows, names = actions.library_view()
        selected = selected if selected in names else None
        details = actions.identity_details(selected) if selected else ""
        table = rows or [[""] * len(LIBRARY_HEADERS)]
        return gallery, table, gr.update(choices=names, value=selected), details

    def saving(handler: Callable[..., str]) -> Callable[..., tuple]:
        """A handler whose message goes to the status line, followed by a library refresh."""
        def run(*args):
            return (handler(*args), *refresh_library())
        return run

    # gradio injects a progress tracker into a parameter whose default is gr.Progress(), found by position
    # in the signature: these wrappers spell their parameters out.
    def preview_photos(files, cropped, progress=gr.Progress()):
        return actions.preview_photos(files, cropped, progress)

    def from_names(name, text, method, overwrite, progress=gr.Progress()):
        return (actions.create_from_names(name, text, method, overwrite, progress), *refresh_library())

    def sampled(name, seed, scale, overwrite, progress=gr.Progress()):
        return (actions.create_sampled(name, seed, scale, overwrite, progress), *refresh_library())

    photos, names, mix, sample = ui.photos, ui.names, ui.mix, ui.sample
    saved = [message, *library_outputs]
    photos.encode.click(preview_photos, [photos.photos, photos.assume_cropped],
                        [photos.crops, photos.report, photos.preview, message])
    photos.save.click(saving(actions.save_photos), [photos.preview, photos.name, photos.overwrite], saved)
    names.save.click(from_names, [names.name, names.text, names.method, names.overwrite], saved)
    mix.save.click(saving(actions.create_mix), [mix.name, mix.text, mix.method, mix.overwrite], saved)
    sample.save.click(sampled, [sample.name, sample.seed, sample.scale, sample.overwrite], saved)

    refreshed = library.refresh.click(refresh_library, [library.selected], library_outputs)
    refreshed.then(actions.encoder_status_text, [], [status])
    library.tab.select(refresh_library, [library.selected], library_outputs)
    # a new selection withdraws a pending delete confirmation (it names the previous identity)
    library.selected.change(actions.identity_details, [library.selected], [library.details]).then(
        lambda: (gr.update(visible=False), None), [], [library.confirm_row, library.pending_delete])

    def rename(old, new):
        """The renamed identity stays selected and "New name" empties; on failure both are kept."""
        message, renamed = actions.rename_identity(old, new)
        if renamed is None:
            return (message, *refresh_library(old), gr.update())
        return (message, *refresh_library(renamed), "")

    library.rename.click(rename, [library.selected, library.new_name], [*saved, library.new_name])
    confirm_outputs = [library.confirm_row, library.pending_delete]
    library.delete.click(lambda name: (*ask_delete(name), name), [library.selected],
                         [library.confirm_row, library.confirm_text, message, library.pending_delete])
    library.cancel.click(lambda: (gr.update(visible=False), None), [], confirm_outputs)
    # delete the identity the confirmation named, whatever is selected now
    library.confirm.click(saving(actions.delete), [library.pending_delete], saved).then(
        lambda: (gr.update(visible=False), None), [], confirm_outputs)
    library.export.click(actions.export, [library.selected], [library.export_file, message])
    import_inputs = [library.import_files, library.import_name, library.import_overwrite]
    library.import_button.click(saving(actions.import_files), import_inputs, saved)
    return refresh_library


def initial_library(actions: TabActions) -> tuple[list, list, list[str]]:
    """The library view at build time (empty if the folder cannot be read: the UI must still build)."""
    try:
        return actions.library_view()
    except MagicNamingError:
        return [], [], []


def build_tab(actions: TabActions) -> Any:
    """Lay out the tab (a ``gr.Blocks``) and wire its events to ``actions``."""
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as blocks:
        status = gr.Markdown(actions.encoder_status_text(), elem_id="magicnaming_tab_status")
        message = gr.HTML(elem_id="magicnaming_tab_message")
        with gr.Tabs(elem_id="magicnaming_tabs"):
            ui = SimpleNamespace(
                photos=_photos_section(gr), names=_names_section(gr), mix=_mix_section(gr),
                sample=_sample_section(gr), library=_library_section(gr, initial_library(actions)),
            )
        refresh_library = _wire(gr, actions, status, message, ui)
        blocks.load(refresh_library, [], [ui.library.gallery, ui.library.table, ui.library.selected,
                                          ui.library.details])
    return blocks


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    """``script_callbacks.on_ui_tabs``: the MagicNaming tab."""
    from lib_magicnaming.webui.services import webui_context

    return [(build_tab(TabActions(webui_context())), "MagicNaming", "magicnaming")]
