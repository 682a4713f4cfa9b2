"""The one module that knows the WebUIs differ: capability probes and the few per-WebUI pieces.

MagicNaming runs in AUTOMATIC1111 v1.10.1 and the Forge family (Forge, Forge Neo, Forge Classic, reForge).
The rest of the adapter asks this module and never learns which WebUI it is in; this module asks the WebUI
only whether an attribute is there, never a version string or a fork's name.

Text engines and in-place placeholders, :func:`text_engines` (in-place mode, the dropped-text warning):

* one shared embedding database (A1111 v1.10.1, reForge, Forge Classic): ``modules.sd_hijack.model_hijack
  .embedding_db``, whose ``register_embedding_by_name(embedding, model, name)`` tokenizes the name with the
  model; the model's ``cond_stage_model.process_texts`` chunks prompts (modules/sd_hijack_clip.py);
* engines on the model (Forge, Forge Neo): the SDXL model carries ``text_processing_engine_l`` and ``_g``
  (backend/diffusion_engine/sdxl.py), each a ``ClassicTextProcessingEngine`` with its own ``process_texts``
  and its own ``embeddings`` database (``register_embedding_by_name(embedding, name)``), which a model load
  builds anew (backend/text_processing/classic_engine.py, textual_inversion.py). Each engine splices a
  placeholder into its own encoder's input, so a placeholder goes into every engine.

Placeholders stay in the databases only while the conditioning that needs them is computed, in the engines of
the model computing it (:mod:`.embeddings`): a model (re)load, which in Forge replaces the engines and their
databases (also between the passes of one hires-fix generation), can neither lose one nor keep a stale one,
and there is nothing to register again afterwards. What a load does change is the layout, so
:func:`report_model_layout` (``script_callbacks.on_model_loaded``) probes each loaded model and names what is
missing.

The textual-inversion infotext entry: Forge's engines add the name of every embedding they used to
``last_extra_generation_params['TI']`` in their own module (processing copies it into the infotext); A1111
adds ``name: hash`` to ``model_hijack.extra_generation_params['TI hashes']`` (only for embeddings with a file
hash, which placeholders have not). :meth:`TextEngines.forget_used` takes the placeholders out of both.

Comments under the image (:func:`comments_of`): ``model_hijack.comments`` (A1111 layout), or the model's own
``comments`` (Forge: modules/processing.py copies ``p.sd_model.comments``).

Processing's sampler fields (:func:`sampler_fields`): a separate ``scheduler`` field, or the schedule in the
sampler's name (older code: Forge Classic).

The model on demand (:func:`load_model`): Forge loads its checkpoint when a generation starts
(``modules.sd_models.forge_model_reload``, which processing, the samplers and the checkpoint merger call;
``shared.sd_model`` is a stand-in object until then); A1111's ``shared.sd_model`` loads it when first read.

gradio and pydantic: the UI uses only what gradio 3.41 and 4.40 share, the API models only what pydantic 1
and 2 share, so nothing has to choose; :func:`describe_layout` names the versions found for the console.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from lib_magicnaming.errors import EncoderError, MagicNamingError
from lib_magicnaming.webui.hijack import hijack_record
from lib_magicnaming.webui.log import logger

ENGINE_PREFIX = "text_processing_engine"
"""Forge names the text engines of a loaded model ``text_processing_engine`` (one encoder) or ``..._l``,
``_g`` (SDXL), ``_t5`` (Flux): attributes with this prefix that chunk prompts and own an embedding
database."""
FIRST_ENGINE = f"{ENGINE_PREFIX}_l"
"""Chunks prompts when present (CLIP engines chunk alike; Forge counts the UI's tokens with CLIP-L's)."""
TI_INFOTEXT_KEYS = ("TI", "TI hashes")
"""Infotext entries listing used textual-inversion embeddings (Forge: names; A1111: ``name: hash``)."""
CONDITIONING_HOOK = ("modules.prompt_parser", "get_learned_conditioning")
"""What the conditioning wrapper replaces (looked up as a module attribute by processing in every WebUI)."""

SHARED_DATABASE = "modules.sd_hijack.model_hijack.embedding_db"
MODEL_ENGINES = f"the loaded model's {ENGINE_PREFIX}_l/_g (with process_texts and an embeddings database)"
IN_PLACE_UNAVAILABLE = (
    "MagicNaming: 'in place' mode needs the WebUI's textual-inversion machinery, and this WebUI has neither "
    f"{SHARED_DATABASE} with the model's cond_stage_model.process_texts nor {MODEL_ENGINES}. "
    "Use 'prepend' mode (it works here), or a WebUI that MagicNaming supports."
)
NO_MODEL_MESSAGE = "{needed_by} need an SDXL checkpoint loaded in the WebUI: load one"
NOT_LOADED_YET = "no checkpoint is loaded in the WebUI yet (it loads one for the first generation)"


def _module(name: str):
    try:
        __import__(name)
    except Exception:  # a WebUI without the module: the probe says it is missing
        return None
    return sys.modules.get(name)


def _model_hijack():
    return getattr(_module("modules.sd_hijack"), "model_hijack", None)


def _is_database(database: Any) -> bool:
    return callable(getattr(database, "register_embedding_by_name", None)) and isinstance(
        getattr(database, "word_embeddings", None), dict
    )


def _chunks_prompts(engine: Any) -> bool:
    return callable(getattr(engine, "process_texts", None))


@dataclass(frozen=True)
class TextEngines:
    """Where the loaded model's prompts are chunked and where in-place placeholders are registered."""

    layout: str
    """Which layout was found, in words (for the console)."""
    model: Any
    chunker: Any
    """Has ``process_texts(texts) -> (batch_chunks, token_count)``: chunks with ``tokens`` and ``fixes``."""
    databases: tuple[Any, ...]
    """The embedding databases a placeholder goes into (all of them)."""
    infotext_records: tuple[Callable[[], Any], ...]
    """Each returns the dict (at call time: processing rebinds Forge's) whose TI entries list used
    embeddings."""

    def process_texts(self, texts: list[str]):
        """The WebUI's own chunking of ``texts``: ``(batch_chunks, token_count)``."""
        return self.chunker.process_texts(texts)

    @property
    def id_end(self) -> int | None:
        """The end-of-text token id (pads a chunk after the prompt)."""
        id_end = getattr(self.chunker, "id_end", None)
        embedders = getattr(self.chunker, "embedders", None)
        if id_end is None and embedders:
            id_end = getattr(embedders[0], "id_end", None)
        return id_end

    def embedding_class(self, database: Any) -> type:
        """The WebUI's ``Embedding`` class for ``database`` (the one defined beside the database's class)."""
        cls = getattr(sys.modules.get(type(database).__module__), "Embedding", None)
        if cls is None:
            raise MagicNamingError(f"{IN_PLACE_UNAVAILABLE} (no Embedding class beside {type(database)!r})")
        return cls

    def register(self, database: Any, embedding: Any, name: str) -> None:
        """``register_embedding_by_name`` in the database's own signature; ``embedding=None`` removes."""
        register = database.register_embedding_by_name
        if "model" in inspect.signature(register).parameters:
            register(embedding, self.model, name)  # A1111: the model tokenizes the name
        else:
            register(embedding, name)  # Forge: the engine's database has its tokenizer

    def forget_used(self, names: Iterable[str]) -> None:
        """Take ``names`` out of the textual-inversion infotext entries the engines just wrote."""
        names = set(names)
        for record in self.infotext_records:
            params = record()
            if not isinstance(params, dict):
                continue
            for key in TI_INFOTEXT_KEYS:
                if isinstance(params.get(key), str):
                    parts = params[key].split(", ")
                    kept = [part for part in parts if part.split(":")[0].strip() not in names]
                    if kept:
                        params[key] = ", ".join(kept)
                    else:
                        del params[key]


def _model_engines(model: Any) -> TextEngines | None:
    attributes = vars(model) if hasattr(model, "__dict__") else {}
    engines = {
        name: engine
        for name, engine in sorted(attributes.items())
        if name.startswith(ENGINE_PREFIX)
        and _chunks_prompts(engine)
        and _is_database(getattr(engine, "embeddings", None))
    }
    if not engines:
        return None
    chunker = engines.get(FIRST_ENGINE) or next(iter(engines.values()))
    modules = {type(engine).__module__: None for engine in engines.values()}
    records = tuple(
        (lambda name=name: getattr(sys.modules.get(name), "last_extra_generation_params", None))
        for name in modules
    )
    return TextEngines(
        layout=f"text engines on the model ({', '.join(engines)})",
        model=model,
        chunker=chunker,
        databases=tuple(engine.embeddings for engine in engines.values()),
        infotext_records=records,
    )


def _shared_database_engines(model: Any) -> TextEngines | None:
    hijack = _model_hijack()
    database = getattr(hijack, "embedding_db", None)
    chunker = getattr(model, "cond_stage_model", None)
    if not _is_database(database) or not _chunks_prompts(chunker):
        return None
    return TextEngines(
        layout=f"one shared embedding database ({SHARED_DATABASE})",
        model=model,
        chunker=chunker,
        databases=(database,),
        infotext_records=(lambda: getattr(hijack, "extra_generation_params", None),),
    )


def text_engines(model: Any) -> TextEngines | None:
    """The loaded model's text engines (engines on the model first, else the shared database), or None."""
    if model is None:
        return None
    return _model_engines(model) or _shared_database_engines(model)


def require_text_engines(model: Any) -> TextEngines:
    """:func:`text_engines`, or MagicNamingError saying in-place mode is unavailable and what to do."""
    engines = text_engines(model)
    if engines is None:
        raise MagicNamingError(IN_PLACE_UNAVAILABLE)
    return engines


def comments_of(model: Any) -> list | None:
    """The list whose entries the WebUI shows under the image after computing the conditioning."""
    comments = getattr(_model_hijack(), "comments", None)
    if isinstance(comments, list):
        return comments
    comments = getattr(model, "comments", None)
    return comments if isinstance(comments, list) else None


def is_loaded_model(model: Any) -> bool:
    """Whether ``model`` is a checkpoint (not None, not Forge's placeholder before the first load)."""
    return model is not None and callable(getattr(model, "get_learned_conditioning", None))


def current_model() -> Any:
    """``shared.sd_model`` (during a generation: the model the generation loaded)."""
    from modules import shared

    return shared.sd_model


def peek_model() -> Any:
    """The loaded model without loading one (``modules.sd_models.model_data.sd_model``: reading
    ``shared.sd_model`` would load it in A1111), or None."""
    return getattr(getattr(_module("modules.sd_models"), "model_data", None), "sd_model", None)


def load_model(needed_by: str = "identities from names") -> Any:
    """The WebUI's checkpoint, loaded now if it is not yet, the WebUI's own way (call under the queue lock).

    EncoderError when it cannot be loaded (the details go to the console, not to API callers: they may hold
    server paths) or when no checkpoint is there (the message says what ``needed_by`` it).
    """
    reload = getattr(_module("modules.sd_models"), "forge_model_reload", None)
    try:
        if callable(reload):
            loaded = reload()  # Forge: (model, just_reloaded); loads only when the choice changed
            model = loaded[0] if isinstance(loaded, tuple) else loaded
        else:
            model = current_model()  # A1111: reading shared.sd_model loads the checkpoint
    except Exception as error:  # the WebUI's own loading failed: report it, keep the WebUI running
        logger.error("the WebUI could not load its checkpoint for MagicNaming", exc_info=error)
        raise EncoderError(
            f"the WebUI could not load its checkpoint ({type(error).__name__}; details in the WebUI's "
            "console): choose a working SDXL checkpoint in the WebUI"
        ) from None
    if not is_loaded_model(model):
        raise EncoderError(NO_MODEL_MESSAGE.format(needed_by=needed_by))
    return model


def sampler_fields(processing_class: type, sampler_name: str, scheduler: str) -> dict[str, str]:
    """The keyword arguments choosing a sampler and its schedule for ``processing_class``: ``sampler_name``
    and ``scheduler`` where processing has a ``scheduler`` field (A1111 v1.9+, Forge, Forge Neo, reForge);
    else one name, as the samplers list of older code names them ('DPM++ 2M Karras': Forge Classic's
    modules/sd_samplers_kdiffusion.py)."""
    if hasattr(processing_class, "scheduler"):  # a dataclass field with a default: a class attribute
        return {"sampler_name": sampler_name, "scheduler": scheduler}
    return {"sampler_name": f"{sampler_name} {scheduler}"}


def prepare_text_encoding(model: Any) -> None:
    """What processing does before computing conditioning, for encoding outside a generation: Forge's
    engines keep the clip skip of the last generation until ``set_clip_skip`` (A1111 reads the setting at
    each encoding)."""
    set_clip_skip = getattr(model, "set_clip_skip", None)
    if callable(set_clip_skip):
        from modules import shared

        set_clip_skip(int(getattr(shared.opts, "CLIP_stop_at_last_layers", 1)))


def text_encoding_context() -> AbstractContextManager:
    """``modules.devices.autocast()`` where the WebUI has it."""
    autocast = getattr(_module("modules.devices"), "autocast", None)
    return autocast() if callable(autocast) else nullcontext()


def conditioning_hook_module():
    """The module whose ``get_learned_conditioning`` the wrapper replaces, or None when it is missing."""
    module = _module(CONDITIONING_HOOK[0])
    return module if callable(getattr(module, CONDITIONING_HOOK[1], None)) else None


def conditioning_hook_active() -> bool:
    """Whether the conditioning wrapper is installed and doing the work (the hijack's registry says)."""
    module = conditioning_hook_module()
    return module is not None and hijack_record(module, CONDITIONING_HOOK[1])["active"] is not None


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe_layout(model: Any = None) -> tuple[list[str], list[str]]:
    """(what was found, what is missing) in this WebUI, in words; ``model`` adds its text engines."""
    found = [f"gradio {_version('gradio')}, pydantic {_version('pydantic')}"]
    missing = []
    hook = ".".join(CONDITIONING_HOOK)
    (found if conditioning_hook_module() else missing).append(f"{hook} (every <name:...> tag)")
    if callable(getattr(_module("modules.sd_models"), "forge_model_reload", None)):
        found.append("modules.sd_models.forge_model_reload (loads the checkpoint on demand)")
    if is_loaded_model(model):
        engines = text_engines(model)
        if engines is None:
            missing.append(f"{SHARED_DATABASE} with model.cond_stage_model.process_texts, or {MODEL_ENGINES} "
                           "('in place' mode, the warning about prompt text pushed out of chunk 0)")
        else:
            found.append(engines.layout)
        if comments_of(model) is None:
            missing.append("model_hijack.comments or the model's comments (warnings under the image)")
    elif _is_database(getattr(_model_hijack(), "embedding_db", None)):
        found.append(SHARED_DATABASE)
    return found, missing


def report_layout(model: Any = None) -> list[str]:
    """Log one message naming what this WebUI lacks (a warning) or what was found (info); returns the
    missing pieces. Called when the script loads and for each loaded model."""
    found, missing = describe_layout(model)
    if missing:
        logger.warning(
            "MagicNaming does not know this WebUI's layout; not found: %s. The WebUI keeps working; %s. "
            "Found: %s.",
            "; ".join(missing),
            "identities from names, mixes and 'prepend' mode work" if conditioning_hook_module() else
            "identities from names and mixes work, <name:...> tags do not",
            "; ".join(found),
        )
    else:
        logger.info("MagicNaming in this WebUI: %s", "; ".join(found))
    return missing


def report_model_layout(model: Any) -> None:
    """``script_callbacks.on_model_loaded``: :func:`report_layout` for the model just loaded."""
    if is_loaded_model(model):
        report_layout(model)
