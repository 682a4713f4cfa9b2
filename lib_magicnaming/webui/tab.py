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
from lib_magicnaming.webui.limits import MAX_PORTRAITS, PORTRAIT_SIZE_RANGE, PORTRAIT_STEPS_RANGE
from lib_magicnaming.webui.log import log_skipped
from lib_magicnaming.webui.portraits import PortraitSettings
from lib_magicnaming.webui.sample_actions import DEFAULT_SOURCE_LABEL, SOURCE_LABELS, SampleActions
from lib_magicnaming.webui.sampling import DEFAULT_CANDIDATES
from lib_magicnaming.webui.tab_actions import LIBRARY_HEADERS, TabActions, message_html


def ask_delete(name: str | None) -> tuple[Any, str, str]:
    """(confirmation row, its question naming the selected identity, tab message); without a selection there
    is nothing to confirm and the message says so."""
    import gradio as gr

    if not name:
        return gr.update(visible=False), "", message_html("Choose an identity to delete", error=True)
    return gr.update(visible=True), f"Delete the identity `{name}` for good?", ""


def _photos_section(gr: Any, needs: str) -> SimpleNamespace:
    with gr.Tab("From photos", id="photos", elem_id="magicnaming_tab_photos"):
        gr.Markdown(needs, elem_id="magicnaming_photos_needs")
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
    with gr.Tab("From names", id="names", elem_id="magicnaming_tab_names"):
        gr.Markdown("Names SDXL knows, with weights. Uses the loaded SDXL checkpoint, no encoder.")
        ui = SimpleNamespace(text=gr.Textbox(label="Names", placeholder="0.6 Ada Lovelace + 0.4 Alan Turing"))
        _mix_save_row(gr, ui)
    return ui


def _mix_section(gr: Any) -> SimpleNamespace:
    with gr.Tab("Mix", id="mix", elem_id="magicnaming_tab_mix"):
        text = gr.Textbox(label="Saved identities, weighted", placeholder="0.5 alice + 0.5 bob")
        ui = SimpleNamespace(text=text)
        _mix_save_row(gr, ui)
    return ui


def _sample_section(gr: Any, namespace_status: str) -> SimpleNamespace:
    with gr.Tab("Sample", id="sample", elem_id="magicnaming_tab_sample"):
        gr.Markdown("A fictional person: a point of the loaded checkpoint's name space, measured once from "
                    "many well-known names (or of the encoder checkpoint's). The same seed gives the same "
                    "person.")
        ui = SimpleNamespace(status=gr.Markdown(namespace_status, elem_id="magicnaming_namespace_status"))
        with gr.Row():
            ui.source = gr.Radio(list(SOURCE_LABELS), value=DEFAULT_SOURCE_LABEL, label="Source",
                                 elem_id="magicnaming_sample_source")
            ui.seed = gr.Number(0, label="Seed", precision=0)
            ui.scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Scale")
        with gr.Row():
            ui.count = gr.Slider(1, MAX_PORTRAITS, value=DEFAULT_CANDIDATES, step=1, label="Candidates")
            ui.size = gr.Slider(*PORTRAIT_SIZE_RANGE, value=PortraitSettings.size, step=64,
                                label="Portrait size")
            ui.steps = gr.Slider(*PORTRAIT_STEPS_RANGE, value=PortraitSettings.steps, step=1,
                                 label="Portrait steps")
            ui.draw = gr.Button("Draw candidates", variant="secondary", elem_id="magicnaming_sample_draw")
        ui.gallery = gr.Gallery(label="Candidates (seeds from Seed on; click one to choose it)", columns=4,
                                height="auto", elem_id="magicnaming_candidates")
        ui.candidates = gr.State([])
        with gr.Row():
            ui.name = gr.Textbox(label="Identity name")
            ui.overwrite = gr.Checkbox(False, label="Overwrite")
            ui.save = gr.Button("Save identity", variant="primary", elem_id="magicnaming_sample_save")
    return ui


def _library_section(gr: Any, initial: tuple[list, list, list[str]]) -> SimpleNamespace:
    _, rows, names = initial  # thumbnails come with the page's load event (build_tab's blocks.load):
    # saving images at build time needs the WebUI's temp folder, which Forge Neo has not made yet then
    # (seen in the real Neo: FileNotFoundError in ui_tempdir, and the whole tab was missing)
    with gr.Tab("Library", id="library", elem_id="magicnaming_tab_library") as library_tab:
        ui = SimpleNamespace(
            tab=library_tab,
            refresh=gr.Button("Refresh"),
            gallery=gr.Gallery([], label="Saved identities", columns=8, height="auto",
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
            ui.draw = gr.Button("Draw portrait", elem_id="magicnaming_library_draw")
        with gr.Row():
            ui.portrait = gr.Image(label="Portrait", type="pil", interactive=False, height=256,
                                   elem_id="magicnaming_library_portrait")
            ui.use_portrait = gr.Button("Use as thumbnail")
            ui.pending_portrait = gr.State(None)
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


def _wire(
    gr: Any, actions: TabActions, sample_actions: SampleActions, status: Any, message: Any,
    ui: SimpleNamespace,
) -> Callable:
    """Connect every event; returns the library refresh function (for the page-load event)."""
    library = ui.library
    library_outputs = [library.gallery, library.table, library.selected, library.details]

    def identity_details(name: str | None) -> str:
        """The identity's details and the listed names nearest to it."""
        return "  \n".join(part for part in (actions.identity_details(name),
                                             sample_actions.nearest_text(name)) if part)

    def refresh_library(selected: str | None = None):
        gallery, rows, names = actions.library_view()
        selected = selected if selected in names else None
        details = identity_details(selected) if selected else ""
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

    def sampled(name, seed, scale, overwrite, source, candidates, progress=gr.Progress()):
        saved = sample_actions.create_sampled(name, seed, scale, overwrite, source, candidates, progress)
        return (saved, *refresh_library(), sample_actions.namespace_status_text())

    photos, names, mix, sample = ui.photos, ui.names, ui.mix, ui.sample
    saved = [message, *library_outputs]
    photos.encode.click(preview_photos, [photos.photos, photos.assume_cropped],
                        [photos.crops, photos.report, photos.preview, message])
    photos.save.click(saving(actions.save_photos), [photos.preview, photos.name, photos.overwrite], saved)
    names.save.click(from_names, [names.name, names.text, names.method, names.overwrite], saved)
    mix.save.click(saving(actions.create_mix), [mix.name, mix.text, mix.method, mix.overwrite], saved)
    sample.save.click(sampled, [sample.name, sample.seed, sample.scale, sample.overwrite, sample.source,
                                sample.candidates], [*saved, sample.status])
    _wire_sample_and_portraits(gr, sample_actions, message, ui, saved, refresh_library)

    refreshed = library.refresh.click(refresh_library, [library.selected], library_outputs)
    refreshed.then(actions.encoder_status_text, [], [status])
    library.tab.select(refresh_library, [library.selected], library_outputs)
    # a new selection withdraws a pending delete confirmation (it names the previous identity)
    library.selected.change(identity_details, [library.selected], [library.details]).then(
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


def _wire_sample_and_portraits(
    gr: Any, sample_actions: SampleActions, message: Any, ui: SimpleNamespace, saved: list,
    refresh_library: Callable,
) -> None:
    """Sample's candidates (draw, click to choose) and the library's portrait (draw, use as thumbnail)."""
    sample, library = ui.sample, ui.library

    def draw_candidates(seed, count, scale, source, size, steps, progress=gr.Progress()):
        return sample_actions.draw_candidates(seed, count, scale, source, size, steps, progress)

    def choose(candidates, event):
        seed, text = sample_actions.choose_candidate(candidates, event.index)
        return (gr.update() if seed is None else seed), text

    # gradio finds the event data parameter by its type (not a string annotation: gr is no global here)
    choose.__annotations__ = {"event": gr.SelectData}

    def draw_portrait(name, progress=gr.Progress()):
        return sample_actions.draw_portrait(name, progress)

    def use_portrait(pending, selected):
        return (sample_actions.use_portrait(pending), *refresh_library(selected))

    sample.draw.click(draw_candidates,
                      [sample.seed, sample.count, sample.scale, sample.source, sample.size, sample.steps],
                      [sample.gallery, sample.candidates, sample.status, message])
    sample.gallery.select(choose, [sample.candidates], [sample.seed, message])
    library.draw.click(draw_portrait, [library.selected],
                       [library.portrait, library.pending_portrait, message])
    library.use_portrait.click(use_portrait, [library.pending_portrait, library.selected], saved)


def initial_library(actions: TabActions) -> tuple[list, list, list[str]]:
    """The library view at build time (empty if the folder cannot be read: the UI must still build)."""
    try:
        return actions.library_view()
    except MagicNamingError as error:
        log_skipped("built the MagicNaming tab with an empty library view", error)
        return [], [], []


def build_tab(actions: TabActions, sample_actions: SampleActions | None = None) -> Any:
    """Lay out the tab (a ``gr.Blocks``) and wire its events to ``actions`` (and ``sample_actions``, made
    over the same services when not given). It opens on *From photos* when an encoder is installed, else on
    *From names*."""
    import gradio as gr

    sample_actions = sample_actions or SampleActions(actions.cases.services)
    with gr.Blocks(analytics_enabled=False) as blocks:
        status = gr.Markdown(actions.encoder_status_text(), elem_id="magicnaming_tab_status")
        message = gr.HTML(elem_id="magicnaming_tab_message")
        with gr.Tabs(elem_id="magicnaming_tabs", selected=sample_actions.starting_section()) as sections:
            # The WebUI's ui-config.json would otherwise restore the section of the first start (seen in
            # the real A1111: "photos" kept after the encoder was removed); modules/ui_loadsave.py skips
            # this flag.
            sections.do_not_save_to_config = True
            ui = SimpleNamespace(
                photos=_photos_section(gr, sample_actions.photos_need_text()), names=_names_section(gr),
                mix=_mix_section(gr), sample=_sample_section(gr, sample_actions.namespace_status_text()),
                library=_library_section(gr, initial_library(actions)),
            )
        refresh_library = _wire(gr, actions, sample_actions, status, message, ui)
        blocks.load(refresh_library, [], [ui.library.gallery, ui.library.table, ui.library.selected,
                                          ui.library.details])
    return blocks


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    """``script_callbacks.on_ui_tabs``: the MagicNaming tab."""
    from lib_magicnaming.webui.services import webui_services

    return [(build_tab(TabActions(webui_services())), "MagicNaming", "magicnaming")]
