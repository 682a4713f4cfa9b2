"""The "MagicNaming" accordion under the prompt (gradio 3.41.2; built inside the script's ``ui()``).

Controls returned as script args, in :mod:`.script_args` order: the accordion itself (enable), insertion
mode, default strength, one-off face, whether that face is a crop already. Not args: a dropdown of saved
identities whose choice the extension's JavaScript inserts into the prompt as a tag, its refresh button,
a status line, and the hidden names channel of the prompt autocomplete (:mod:`.autocomplete`); the
dropdown's list is read again when the accordion is opened or its refresh button pressed. ``ui()`` runs at
API start-up too, so building reads (the identity list, the encoder status) and never loads models.

Element ids (for javascript/ and style.css), with ``<tab>`` = txt2img or img2img:
``script_<tab>_magicnaming_enabled`` (accordion), ``..._mode``, ``..._strength``, ``..._face``,
``..._face_is_crop``, ``..._identity`` (dropdown), ``..._refresh``, ``..._status``, ``..._names`` (hidden
textbox: the autocomplete's names, JSON), ``..._names_refresh`` (hidden button refilling it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from lib_magicnaming.tags import DEFAULT_STRENGTH
from lib_magicnaming.webui.autocomplete import build_names_channel
from lib_magicnaming.webui.markers import MODES, PREPEND
from lib_magicnaming.webui.script_args import FACE_IDENTITY


@dataclass
class AccordionControls:
    """The accordion's components."""

    enabled: object
    mode: object
    strength: object
    face: object
    face_is_crop: object
    identity: object
    refresh: object
    status: object
    names: object = None
    """The hidden textbox of the autocomplete's names."""

    @property
    def args(self) -> list:
        """The controls that are script args, in order."""
        return [self.enabled, self.mode, self.strength, self.face, self.face_is_crop]


def build_accordion(
    elem_id: Callable[[str], str], identity_names: Callable[[], list[str]], status_line: Callable[[], str],
    names_payload: Callable[[], str] | None = None,
) -> AccordionControls:
    """Build the accordion in the current gradio Blocks context (``names_payload``: the autocomplete's
    names as JSON, :func:`.autocomplete.payload`; None leaves the autocomplete channel out)."""
    from modules.ui_components import InputAccordion, ToolButton

    with InputAccordion(False, label="MagicNaming", elem_id=elem_id("enabled")) as enabled:
        with gr.Row():
            mode = gr.Radio(
                choices=list(MODES), value=PREPEND, label="Insertion mode", elem_id=elem_id("mode")
            )
            strength = gr.Slider(
                minimum=0.0,
                maximum=2.0,
                step=0.05,
                value=DEFAULT_STRENGTH,
                label="Default strength",
                elem_id=elem_id("strength"),
            )
        with gr.Row():
            face = gr.Image(
                label=f"One-off face: use it as <name:{FACE_IDENTITY}> (not saved)",
                type="pil",  # no source=: upload is 3.41's default, and gradio 4 has no such argument
                elem_id=elem_id("face"),
            )
            with gr.Column():
                face_is_crop = gr.Checkbox(
                    False, label="The face photo is a face crop already (skip detection)",
                    elem_id=elem_id("face_is_crop"),
                )
                with gr.Row():
                    identity = gr.Dropdown(
                        choices=identity_names(),
                        label="Saved identities (inserts a tag)",
                        elem_id=elem_id("identity"),
                    )
                    refresh = ToolButton(value="\U0001f504", elem_id=elem_id("refresh"))
                status = gr.HTML(value=status_line(), elem_id=elem_id("status"))
                names = build_names_channel(gr, elem_id, names_payload)[0] if names_payload else None
        refresh.click(
            fn=lambda: (gr.update(choices=identity_names()), status_line()),
            inputs=[],
            outputs=[identity, status],
        )
    # Opening the accordion ticks it (v1.10.1's inputAccordion JS): the list then shows identities saved
    # since the page was built, without the refresh button.
    enabled.change(fn=lambda: gr.update(choices=identity_names()), inputs=[], outputs=[identity])
    return AccordionControls(enabled, mode, strength, face, face_is_crop, identity, refresh, status, names)
