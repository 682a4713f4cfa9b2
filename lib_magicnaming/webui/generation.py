"""The generation path's per-batch work: tags to markers, identities resolved, errors that stop generation.

Called from the AlwaysOn script's hooks (scripts/magicnaming.py):

* ``process`` -> :func:`start_generation`: reads the script args into a :class:`GenerationState` kept on the
  processing object (``p.magicnaming``): per-generation state travels with ``p``, never in module globals.
* ``before_process_batch`` -> :func:`rewrite_batch`: every prompt of the batch on its own (positive,
  negative, and the hires prompts of the same images) has its ``<name:...>`` tags replaced by marker text
  (:mod:`.markers`) naming the identity's content hash, the mode and the strength; the identity's F_ID goes
  to the content-keyed :data:`.store.EMBEDDINGS`. This runs before ``parse_extra_network_prompts``, which
  would otherwise strip the tags.
* ``postprocess_batch`` -> :func:`finish_batch`: puts the user's hires prompts back, so infotext shows them,
  and copies the batch's MagicNaming notes into ``extra_generation_params`` (:mod:`.notes`), where the API's
  ``info`` carries them.

Before any identity is read, each prompt's tags are counted against :data:`.limits.LIMITS`.

A problem (unknown identity, malformed tag, no face uploaded for ``<name:face>``, a non-SDXL model, bad API
args) cannot be raised from a hook: the WebUI catches hook exceptions, prints them and carries on without
the identity. Instead the batch's first prompt gets an error marker and the conditioning wrapper raises
the message when the WebUI computes the conditioning, which stops that generation with the message in the
UI and as the API's error, and leaves the WebUI running.
"""

from __future__ import annotations

import re
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any

from lib_magicnaming.errors import EncoderError, FaceError, IdentityNotFound, MagicNamingError
from lib_magicnaming.tags import TAG_WORD, identity_key, rewrite_name_tags
from lib_magicnaming.webui import compat
from lib_magicnaming.webui.conditioning import require_sdxl
from lib_magicnaming.webui.http_status import BAD_REQUEST, INTERNAL_ERROR, http_status
from lib_magicnaming.webui.infotext import INFOTEXT_KEY, PerImageInfotext, format_summary
from lib_magicnaming.webui.limits import check_prompt_tags
from lib_magicnaming.webui.log import logger
from lib_magicnaming.webui.markers import (
    IN_PLACE,
    check_strength,
    format_error_marker,
    format_marker,
    message_hash,
    padded,
)
from lib_magicnaming.webui.notes import add_note, copy_comment_notes
from lib_magicnaming.webui.portraits import UNSAVED_IDENTITIES_ATTRIBUTE
from lib_magicnaming.webui.redact import client_message
from lib_magicnaming.webui.script_args import (
    FACE_IDENTITY,
    ScriptSettings,
    parse_script_args,
    wants_enabled,
)
from lib_magicnaming.webui.services import Services, webui_services
from lib_magicnaming.webui.store import EMBEDDINGS, MESSAGES, EmbeddingStore, StopMessage

STATE_ATTRIBUTE = "magicnaming"
"""``p.magicnaming``: this generation's :class:`GenerationState`."""
IDENTITY_OVERRIDE_ATTRIBUTE = "magicnaming_identity"
"""Set on ``p`` (X/Y/Z plot): every tag names this identity instead."""
STRENGTH_OVERRIDE_ATTRIBUTE = "magicnaming_strength"
"""Set on ``p`` (X/Y/Z plot): every tag takes this strength instead."""

HOOK_MISSING_COMMENT = (
    "MagicNaming could not hook into this WebUI's prompt conditioning "
    f"({'.'.join(compat.CONDITIONING_HOOK)} not found), so the WebUI dropped the <name:...> tags; "
    "the console says what is missing."
)

_TAG_START_RE = re.compile(rf"<{TAG_WORD}:", re.IGNORECASE)

EXTENSION_OFF_NOTE = (
    "MagicNaming is off, so the WebUI dropped the <name:...> tags from the prompt; "
    "tick the MagicNaming accordion's checkbox (API: send true as the script's first arg) to use them."
)


@dataclass(frozen=True)
class ResolvedIdentity:
    """An identity as this generation uses it: its name and the content hash its F_ID is stored under."""

    name: str
    short_hash: str


@dataclass
class GenerationState:
    """What MagicNaming knows about one generation (kept on ``p``)."""

    settings: ScriptSettings | None
    error: str | None = None
    resolved: dict[str, ResolvedIdentity] = field(default_factory=dict)
    summaries: dict[int, str] = field(default_factory=dict)
    original_hr: dict[int, tuple[str, str]] = field(default_factory=dict)
    library: Any = None


def start_generation(p, args: Sequence[Any]) -> GenerationState:
    """Read the script args into a fresh state on ``p`` (a bad arg becomes the generation's error)."""
    try:
        state = GenerationState(parse_script_args(args))
    except MagicNamingError as error:
        state = GenerationState(None, error=str(error) if wants_enabled(args) else None)
    setattr(p, STATE_ATTRIBUTE, state)
    return state


def generation_state(p, args: Sequence[Any]) -> GenerationState:
    """The state on ``p``, started from ``args`` if the ``process`` hook has not run for this ``p``."""
    state = getattr(p, STATE_ATTRIBUTE, None)
    return state if isinstance(state, GenerationState) else start_generation(p, args)


class IdentityResolver:
    """Turns tags into markers for one batch, loading each identity once per generation."""

    def __init__(self, p, state: GenerationState, services: Services, store: EmbeddingStore):
        self.state = state
        self.settings = state.settings
        self.services = services
        self.store = store
        self.notes: list[str] = []
        """What the one-off face's encoding reported (several faces, another detector than the encoder's)."""
        self.identity_override = getattr(p, IDENTITY_OVERRIDE_ATTRIBUTE, None)
        self.unsaved = getattr(p, UNSAVED_IDENTITIES_ATTRIBUTE, None) or {}
        strength_override = getattr(p, STRENGTH_OVERRIDE_ATTRIBUTE, None)
        self.strength_override = None if strength_override is None else check_strength(strength_override)

    def resolve(self, name: str) -> ResolvedIdentity:
        """The identity a tag names (after any X/Y/Z override), its F_ID put in the store."""
        name = self.identity_override or name
        key = identity_key(name)
        resolved = self.state.resolved.get(key)
        if resolved is None:
            if key in self.unsaved:
                unsaved_name, embedding = self.unsaved[key]
                resolved = ResolvedIdentity(unsaved_name, self.store.add(embedding))
            elif key == FACE_IDENTITY and self.settings.face is not None:
                resolved = ResolvedIdentity(FACE_IDENTITY, self.store.add(self._encode_face()))
            else:
                identity = self._load(name)
                resolved = ResolvedIdentity(identity.name, self.store.add(identity.embedding))
            self.state.resolved[key] = resolved
        elif self.store.get(resolved.short_hash) is None:
            self.state.resolved.pop(key)
            return self.resolve(name)
        return resolved

    def _load(self, name: str):
        if self.state.library is None:
            self.state.library = self.services.library()
        try:
            return self.state.library.load(name)
        except IdentityNotFound:
            hint = (
                " Upload a face in the MagicNaming accordion to use <name:face>."
                if identity_key(name) == FACE_IDENTITY
                else " Create it in the MagicNaming tab, or correct the tag."
            )
            raise IdentityNotFound(
                f"MagicNaming: there is no saved identity called {name!r}.{hint}", name
            ) from None

    def _encode_face(self):
        try:
            result = self.services.encoder().encode_photos(
                [self.settings.face], assume_cropped=self.settings.face_is_crop
            )
        except MagicNamingError as error:
            kind = type(error) if type(error) in (FaceError, EncoderError) else MagicNamingError
            raise kind(f"MagicNaming could not use the uploaded face: {error}") from None
        for report in getattr(result, "per_photo", None) or []:
            self.notes.extend(f"MagicNaming, the one-off face: {note}" for note in report.notes)
        return result.embedding

    def marker_for(self, identity: str, tag_strength: float | None, used: list[tuple[str, str]]) -> str:
        """The padded marker text for one tag; records (name, hash) in ``used``."""
        resolved = self.resolve(identity)
        used.append((resolved.name, resolved.short_hash))
        if self.strength_override is not None:
            strength = self.strength_override
        elif tag_strength is not None:
            strength = tag_strength
        else:
            strength = self.settings.strength
        return padded(format_marker(resolved.short_hash, self.settings.mode, strength))

    def rewrite(self, prompt: str, used: list[tuple[str, str]]) -> str:
        """``prompt`` with each tag replaced by its marker."""
        return rewrite_name_tags(prompt, lambda tag: self.marker_for(tag.identity, tag.strength, used))


def has_tags(text: str) -> bool:
    """Whether ``text`` holds something that starts a ``<name:`` tag."""
    return isinstance(text, str) and _TAG_START_RE.search(text) is not None


def stop_generation(prompts: MutableSequence[str], message: str, status: int = BAD_REQUEST) -> None:
    """Make the conditioning wrapper raise ``message`` for this batch (see the module docstring); ``status``
    is the HTTP status the WebUI's API answers with. The message the client sees names no server path."""
    shown = client_message(message)
    if shown != message and status >= INTERNAL_ERROR:
        logger.warning("stopped a generation: %s", message)
    message = shown
    MESSAGES.put(message_hash(message), StopMessage(message, status))
    prompts[0] = f"{format_error_marker(message)} {prompts[0]}"


def _batch_texts(p, prompts: Sequence[str], batch_number: int) -> list[str]:
    texts = [*prompts, *getattr(p, "negative_prompts", [])]
    if getattr(p, "enable_hr", False) and getattr(p, "all_hr_prompts", None):
        first = batch_number * p.batch_size
        texts += (
            p.all_hr_prompts[first : first + len(prompts)]
            + p.all_hr_negative_prompts[first : first + len(prompts)]
        )
    return texts


def _rewrite_items(
    p, resolver: IdentityResolver, state: GenerationState, prompts: MutableSequence[str], batch_number: int
) -> None:
    rewrite_hr = getattr(p, "enable_hr", False) and getattr(p, "all_hr_prompts", None)
    for i in range(len(prompts)):
        image_index = batch_number * p.batch_size + i
        used: list[tuple[str, str]] = []
        prompts[i] = resolver.rewrite(prompts[i], used)
        p.negative_prompts[i] = resolver.rewrite(p.negative_prompts[i], used)
        if rewrite_hr:
            hr_prompt, hr_negative = p.all_hr_prompts[image_index], p.all_hr_negative_prompts[image_index]
            state.original_hr[image_index] = (hr_prompt, hr_negative)
            p.all_hr_prompts[image_index] = resolver.rewrite(hr_prompt, used)
            p.all_hr_negative_prompts[image_index] = resolver.rewrite(hr_negative, used)
        if used:
            strength = resolver.strength_override
            strength = state.settings.strength if strength is None else strength
            state.summaries[image_index] = format_summary(used, state.settings.mode, strength)


def _update_infotext(p, state: GenerationState, images_so_far: int) -> None:
    values = set(state.summaries.values())
    if not values:
        return
    uniform = len(values) == 1 and len(state.summaries) == images_so_far
    p.extra_generation_params[INFOTEXT_KEY] = values.pop() if uniform else PerImageInfotext(state.summaries)


def rewrite_batch(
    p,
    args: Sequence[Any],
    batch_number: int,
    prompts: MutableSequence[str],
    services: Services | None = None,
    store: EmbeddingStore = EMBEDDINGS,
) -> None:
    """``before_process_batch``: rewrite this batch's tags into markers, or stop it with a message."""
    state = generation_state(p, args)
    if not prompts:
        return
    if state.error:
        stop_generation(prompts, state.error)
        return
    texts = _batch_texts(p, prompts, batch_number)
    if not any(has_tags(text) for text in texts):
        return
    if state.settings is None or not state.settings.enabled:
        add_note(p, EXTENSION_OFF_NOTE)
        return
    if not compat.conditioning_hook_active():
        add_note(p, HOOK_MISSING_COMMENT)
        return
    try:
        check_prompt_tags(texts)
        model = compat.current_model()
        require_sdxl(model)
        if state.settings.mode == IN_PLACE:
            compat.require_text_engines(model)
        resolver = IdentityResolver(p, state, services or webui_services(), store)
        _rewrite_items(p, resolver, state, prompts, batch_number)
        _update_infotext(p, state, batch_number * p.batch_size + len(prompts))
        for note in resolver.notes:
            add_note(p, note)
    except MagicNamingError as error:
        stop_generation(prompts, str(error), http_status(error))
    except Exception as error:  # any failure must stop the generation, never drop the identity silently
        logger.error("stopped a generation on an unexpected error", exc_info=error)
        stop_generation(prompts, f"MagicNaming failed: {type(error).__name__}: {error}", INTERNAL_ERROR)


def finish_batch(p, batch_number: int) -> None:
    """``postprocess_batch``: the user's hires prompts back in ``p.all_hr_prompts`` for the infotext, and the
    batch's MagicNaming notes from the WebUI's comments into the API's ``info``."""
    copy_comment_notes(p)
    state = getattr(p, STATE_ATTRIBUTE, None)
    if not isinstance(state, GenerationState) or not state.original_hr:
        return
    for image_index, (hr_prompt, hr_negative) in list(state.original_hr.items()):
        p.all_hr_prompts[image_index] = hr_prompt
        p.all_hr_negative_prompts[image_index] = hr_negative
        del state.original_hr[image_index]
