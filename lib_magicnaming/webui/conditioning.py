"""The wrapper around ``modules.prompt_parser.get_learned_conditioning`` that splices identities in.

``prompt_parser.get_learned_conditioning(model, prompts, steps, ...)`` turns each prompt into its schedule of
texts (prompt editing, alternation) and calls ``model.get_learned_conditioning(texts)`` once per prompt;
``get_multicond_learned_conditioning`` (AND) calls it too, and hires-fix and refiner conds go the same way.
The wrapper passes the real function a :class:`SplicingModel` in place of the model whenever a prompt holds
markers. For each text the proxy:

1. stops with the message of any error marker (the WebUI does not swallow an exception raised here);
2. in place: makes sure each in-place marker has its textual-inversion placeholder (:mod:`.embeddings`);
3. removes the prepend markers from the text and lets the real model encode the texts;
4. splices: in-place identities at the rows the WebUI's tokenizer gave their placeholders
   (:func:`lib_magicnaming.splice.place_identities`), then Name Prepending of each prepend identity, first tag
   first (:func:`lib_magicnaming.splice.prepend_identity`), into NEW tensors; texts without markers pass
   through untouched.

Where the texts are chunked, where placeholders go and where warnings are shown differ between the WebUIs:
:mod:`.compat` says. Splice warnings (prompt tokens pushed out of chunk 0) go to the comments the WebUI shows
under the image; the placeholders are taken out of the textual-inversion infotext entry the WebUI's text
engines wrote. Nothing here keeps state: identities come from :data:`lib_magicnaming.webui.store.EMBEDDINGS`
by the hash in the marker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from fastapi import HTTPException

from lib_magicnaming.constants import CHUNK_TEXT_TOKENS
from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.splice import Placement, place_identities, prepend_identity
from lib_magicnaming.webui import compat, embeddings
from lib_magicnaming.webui.http_status import INTERNAL_ERROR
from lib_magicnaming.webui.markers import (
    IN_PLACE,
    PREPEND,
    find_error_hashes,
    find_markers,
    has_markers,
    strip_markers,
)
from lib_magicnaming.webui.store import EMBEDDINGS, MESSAGES, EmbeddingStore, StopMessage

NOT_SDXL_MESSAGE = (
    "MagicNaming works with SDXL checkpoints only, and the loaded checkpoint {name} is not SDXL. "
    "Load an SDXL checkpoint, or remove the <name:...> tags from the prompt."
)


LOST_MESSAGE = StopMessage("MagicNaming stopped this generation (the message was lost).", INTERNAL_ERROR)


class GenerationStopped(MagicNamingError, HTTPException):
    """The error that stops a generation: a MagicNamingError, and an HTTPException carrying its status.

    Being an HTTPException is what lets every WebUI's API answer it as the caller's mistake: A1111's exception
    handler answers with its ``status_code`` and ``detail`` (``vars(e).get(...)`` in modules/api/api.py), and
    Forge, whose API registers no middleware (modules/api/api.py: ``#api_middleware(self.app)``) and handles
    other exceptions only in Starlette's ServerErrorMiddleware (webui.py: ``exception_handlers={Exception:
    ...}``), answers it through FastAPI's HTTPException handler; any other exception there is re-raised after
    the answer, so uvicorn prints "Exception in ASGI application" and drops the client's connection.
    On the wire and in the WebUI it is called MagicNamingError, as before.
    """

    def __init__(self, message: str, status: int):
        HTTPException.__init__(self, status_code=status, detail=message)
        self.args = (message,)

    def __str__(self) -> str:
        # The WebUI shows "MagicNamingError: <message>"; HTTPException's own str() puts the status first.
        return self.detail


GenerationStopped.__name__ = GenerationStopped.__qualname__ = MagicNamingError.__name__


def stop_error(stop: StopMessage) -> GenerationStopped:
    """The error that stops a generation with ``stop``'s message and HTTP status."""
    return GenerationStopped(stop.text.removeprefix("MagicNaming: "), stop.status)


def raise_for_error_markers(texts: Sequence[str]) -> None:
    """Raise :func:`stop_error` for the message of the first error marker in ``texts``, if any."""
    for text in texts:
        for key in find_error_hashes(text):
            raise stop_error(MESSAGES.get(key) or LOST_MESSAGE)


def require_sdxl(model) -> None:
    """MagicNamingError naming the checkpoint unless ``model`` is SDXL (base or refiner)."""
    if not getattr(model, "is_sdxl", False):
        info = getattr(model, "sd_checkpoint_info", None)
        name = getattr(info, "name_for_extra", None) or type(model).__name__
        raise MagicNamingError(NOT_SDXL_MESSAGE.format(name=repr(name)))


def _comment(model, text: str) -> None:
    comments = compat.comments_of(model)
    if comments is not None and text not in comments:
        comments.append(text)


def _chunk0_token_count(engines: compat.TextEngines | None, text: str) -> int | None:
    """Prompt tokens in chunk 0 of ``text`` as the WebUI chunks it (for the prepend warning), if knowable."""
    id_end = engines.id_end if engines is not None else None
    if id_end is None:
        return None
    tokens = engines.process_texts([text])[0][0][0].tokens[1:-1]
    count = len(tokens)
    while count and tokens[count - 1] == id_end:
        count -= 1
    return min(count, CHUNK_TEXT_TOKENS)


def splice_item(model, cond, text: str, encoded_text: str, store: EmbeddingStore):
    """One text's conditioning (a per-item dict slice or a (rows, W) tensor), identities spliced in."""
    markers = find_markers(text)
    engines = compat.text_engines(model)
    in_place = any(m.mode == IN_PLACE for m in markers)
    placements = [
        Placement(row, store.require(marker.short_hash), marker.strength)
        for row, marker in (
            embeddings.locate_markers(compat.require_text_engines(model), encoded_text) if in_place else []
        )
    ]
    if placements:
        cond = place_identities(cond, placements)
    prepends = list({m.short_hash: m for m in markers if m.mode == PREPEND}.values())
    if prepends:
        token_count = _chunk0_token_count(engines, encoded_text)
        for marker in reversed(prepends):
            cond, report = prepend_identity(
                cond,
                store.require(marker.short_hash),
                strength=marker.strength,
                chunk0_token_count=token_count,
            )
            token_count = None
            for warning in report.warnings:
                _comment(model, warning)
    return cond


def _item(conds, index: int):
    return {key: value[index] for key, value in conds.items()} if isinstance(conds, dict) else conds[index]


def _stack(items: list):
    if isinstance(items[0], dict):
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}
    return torch.stack(items)


def _same_kind(texts, new_texts: list[str]):
    """``new_texts`` as the same kind of list as ``texts`` (SdConditioning keeps width/height/negative)."""
    if hasattr(texts, "is_negative_prompt"):
        return type(texts)(new_texts, copy_from=texts)
    return list(new_texts)


class SplicingModel:
    """The loaded model, except that ``get_learned_conditioning`` splices identities (module docstring)."""

    def __init__(self, model, store: EmbeddingStore = EMBEDDINGS):
        self._model = model
        self._store = store

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def get_learned_conditioning(self, texts):
        """The model's conditioning for ``texts`` with every marked identity spliced in (new tensors)."""
        raise_for_error_markers(texts)
        marked = [bool(find_markers(text)) for text in texts]
        if not any(marked):
            return self._model.get_learned_conditioning(_same_kind(texts, [strip_markers(t) for t in texts]))
        require_sdxl(self._model)
        in_place = [m.text for text in texts for m in find_markers(text) if m.mode == IN_PLACE]
        with self._placeholders(in_place):
            encoded_texts = [strip_markers(text, PREPEND) for text in texts]
            conds = self._model.get_learned_conditioning(_same_kind(texts, encoded_texts))
            if in_place:
                compat.require_text_engines(self._model).forget_used(in_place)
            items = [
                splice_item(self._model, _item(conds, i), text, encoded, self._store)
                if is_marked
                else _item(conds, i)
                for i, (text, encoded, is_marked) in enumerate(
                    zip(texts, encoded_texts, marked, strict=False)
                )
            ]
        return _stack(items)

    def _placeholders(self, marker_texts: list[str]):
        if not marker_texts:
            return nullcontext()
        return embeddings.placeholders_registered(compat.require_text_engines(self._model), marker_texts)


def make_wrapper(original: Callable, store: EmbeddingStore = EMBEDDINGS) -> Callable:
    """A ``get_learned_conditioning`` that behaves as ``original`` unless a prompt holds markers."""

    def get_learned_conditioning(model, prompts, steps, *args, **kwargs):
        if not any(has_markers(prompt) for prompt in prompts):
            return original(model, prompts, steps, *args, **kwargs)
        raise_for_error_markers(prompts)
        return original(SplicingModel(model, store), prompts, steps, *args, **kwargs)

    get_learned_conditioning.__doc__ = original.__doc__
    return get_learned_conditioning
