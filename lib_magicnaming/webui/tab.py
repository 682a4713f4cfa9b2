"""The "MagicNaming" tab: make identities (photos, names, mixes, samples) and manage the saved ones.

This module lays out the gradio components and wires their events to :class:`.tab_actions.TabActions`,
whose handlers map each event to an identity use case (:mod:`.use_cases`). Only components and arguments
that exist in both gradio 3.41 (A1111) and gradio 4 (Forge) are used: ``gr.update`` for visibility,
``File(type="binary")``, galleries of ``(image, caption)`` pairs, ``gr.Progress``. Per-session state (a
photo preview waiting to be saved, a delete waiting for confirmation) travels in ``gr.State``, never in
module globals.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.namespace import MIX_METHODS
from lib_magicnaming.webui.log import log_skipped
from lib_magicnaming.webui.tab_actions import LIBRARY_HEADERS, TabActions, message_html


def ask_delete(name: str | None) -> tuple[Any, str, str]:
    """(confirmation row, its question naming the selected identity, tab message); without a selection there
    is nothing to confirm and the message says so."""
    import gradio as gr

    if not name:
        return gr.update(visible=False), "", message_html("Choose an identity to delete", error=True)
    return gr.update(visible=True), f"Delete the identity `{name}` for good?", ""


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
        ui.method = gr.Radio(list(MIX_METHODS), value="linear", label="Mix")
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
        message, renamed = actions.rename(old, new)
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
    except MagicNamingError as error:
        log_skipped("built the MagicNaming tab with an empty library view", error)
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
    from lib_magicnaming.webui.services import webui_services

    return [(build_tab(TabActions(webui_services())), "MagicNaming", "magicnaming")]
