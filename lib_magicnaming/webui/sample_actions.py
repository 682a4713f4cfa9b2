"""The MagicNaming tab's handlers for Sample (candidates as portraits, pick one, save it) and for portraits
and nearest names in the library; :mod:`.tab` wires them. Values in, values out, a message last (as
:mod:`.tab_actions`); every piece of work is a use case of :mod:`.sampling` or :mod:`.use_cases`.

Per-session state: the candidates drawn last (seed, scale, source, short hash, portrait), and a portrait
waiting to become a thumbnail (name, short hash, image); both travel in ``gr.State``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.webui.portraits import PortraitSettings
from lib_magicnaming.webui.sampling import CHECKPOINT_SOURCE, ENCODER_SOURCE, SamplingUseCases
from lib_magicnaming.webui.services import Services
from lib_magicnaming.webui.tab_actions import message_html
from lib_magicnaming.webui.use_cases import IdentityUseCases, no_progress

SOURCE_LABELS = {"loaded checkpoint": CHECKPOINT_SOURCE, "encoder checkpoint": ENCODER_SOURCE}
"""The Source radio's choices and the source each means."""
DEFAULT_SOURCE_LABEL = "loaded checkpoint"


def source_of(label: str) -> str:
    """The sample source a Source radio label stands for (an unknown label is refused by the use case)."""
    return SOURCE_LABELS.get(label, label)


def _candidate_key(seed: Any, scale: Any, source: str) -> tuple:
    return int(seed), round(float(scale), 6), source


class SampleActions:
    """Handlers of the Sample section and of the library's portrait and nearest-names pieces."""

    def __init__(self, services: Services):
        self.sampling = SamplingUseCases(services)
        self.cases = IdentityUseCases(services)

    # -- Sample

    def namespace_status_text(self) -> str:
        """One line on the loaded checkpoint's name space (measured or not)."""
        return self.sampling.namespace_status()

    def draw_candidates(
        self, seed: float, count: float, scale: float, source_label: str, size: float, steps: float,
        progress: Callable[..., Any] = no_progress,
    ) -> tuple[list, list[dict], str, str]:
        """(gallery items, candidates state, name-space status, message) for ``count`` candidates."""
        try:
            settings = PortraitSettings(size=int(size), steps=int(steps))
            candidates = self.sampling.candidates(
                int(seed), int(count), float(scale), source_of(source_label), settings, progress
            )
        except MagicNamingError as error:
            return [], [], self.namespace_status_text(), message_html(str(error), error=True)
        state = [
            {"seed": c.sampled.seed, "scale": c.sampled.scale, "source": source_of(source_label),
             "short_hash": c.short_hash, "portrait": c.portrait}
            for c in candidates
        ]
        gallery = [(item["portrait"], f"seed {item['seed']} [{item['short_hash']}]") for item in state]
        message = (f"Drew {len(state)} candidates (seeds {state[0]['seed']} to {state[-1]['seed']}): click "
                   "one, then name and save it")
        return gallery, state, self.namespace_status_text(), message_html(message)

    def choose_candidate(self, candidates: list[dict] | None, index: Any) -> tuple[Any, str]:
        """(the chosen candidate's seed for the Seed box, message) when the user clicks portrait
        ``index``."""
        if isinstance(index, list | tuple):
            index = index[0] if index else None
        if not candidates or not isinstance(index, int) or not 0 <= index < len(candidates):
            return None, message_html("Draw candidates first, then click one", error=True)
        chosen = candidates[index]
        return chosen["seed"], message_html(
            f"Chose seed {chosen['seed']} [{chosen['short_hash']}]: name it and save it (its portrait "
            "becomes its thumbnail)"
        )

    def create_sampled(
        self, name: str, seed: float, scale: float, overwrite: bool, source_label: str,
        candidates: list[dict] | None, progress: Callable[..., Any] = no_progress,
    ) -> str:
        """Save the person of this seed, scale and source; a drawn candidate's portrait is its thumbnail."""
        source = source_of(source_label)
        wanted = _candidate_key(seed, scale, source)
        drawn = [c for c in candidates or [] if _candidate_key(c["seed"], c["scale"], c["source"]) == wanted]
        portrait = drawn[0]["portrait"] if drawn else None
        try:
            info = self.cases.create_sampled(
                name, int(seed), float(scale), source=source, overwrite=bool(overwrite), thumbnail=portrait,
                progress=progress,
            )
        except MagicNamingError as error:
            return message_html(str(error), error=True)
        return message_html(f"Saved {info.name} [{info.short_hash}]: use it as <name:{info.name}>")

    # -- library: portraits and nearest names

    def draw_portrait(
        self, name: str | None, progress: Callable[..., Any] = no_progress
    ) -> tuple[Any, Any, str]:
        """(portrait, pending thumbnail state, message) for the selected identity."""
        if not name:
            return None, None, message_html("Choose an identity to draw", error=True)
        try:
            image, info = self.sampling.draw_portrait(name, PortraitSettings(), progress)
        except MagicNamingError as error:
            return None, None, message_html(str(error), error=True)
        pending = {"name": info.name, "short_hash": info.short_hash, "image": image}
        return image, pending, message_html(f"Drew {info.name} [{info.short_hash}]: use it as its thumbnail?")

    def use_portrait(self, pending: dict | None) -> str:
        """Make the portrait drawn last the thumbnail of the identity it was drawn for."""
        if not pending:
            return message_html("Draw a portrait first", error=True)
        try:
            info = self.sampling.set_thumbnail(pending["name"], pending["image"], pending["short_hash"])
        except MagicNamingError as error:
            return message_html(str(error), error=True)
        return message_html(f"The portrait is now the thumbnail of {info.name}")

    def nearest_text(self, name: str | None) -> str:
        """Markdown: ``closest to: A (0.81), B (0.77), ...``, or why it is not known yet."""
        if not name:
            return ""
        try:
            nearest = self.sampling.nearest_to_saved(name)
        except MagicNamingError:
            return ""
        if nearest is None:
            return "closest to: (known once the loaded checkpoint's name space is measured: sample once)"
        return f"closest to: {html.escape(nearest.text())}"

    # -- where the tab starts

    def photos_need_text(self) -> str:
        """One line at the top of *From photos*: what it needs, and whether it is there."""
        status = self.cases.encoder_status()
        if status.ready:
            return f"Uses the encoder {status.checkpoint} [{status.checkpoint_hash}]."
        return ("Needs a MagicNaming encoder checkpoint (a .safetensors file in the encoder folder; see "
                "Settings > MagicNaming): none is installed. *From names* and *Sample* work without one.")

    def starting_section(self) -> str:
        """The id of the section the tab opens on: *From photos* with an encoder, *From names* without."""
        try:
            return "photos" if self.cases.encoder_status().ready else "names"
        except MagicNamingError:
            return "names"
