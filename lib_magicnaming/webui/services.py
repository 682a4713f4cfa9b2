"""What the WebUI adapter needs from the WebUI, in one bag: :class:`Services`.

The identity use cases (:mod:`.use_cases`, behind the tab and the REST API) and the generation path
(:mod:`.generation`) take their identity library, photo encoder, the loaded checkpoint's text encoders and
the WebUI's queue lock from it, never from the WebUI directly. :func:`webui_services` fills it from the
running WebUI (settings are read at each call, so a changed setting applies at once); tests pass their own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lib_magicnaming.constants import SDXL_CONTEXT_WIDTH, SHORT_HASH_CHARS
from lib_magicnaming.errors import EncoderError
from lib_magicnaming.webui import compat
from lib_magicnaming.webui.encoder_cache import EncoderStatus, encoder_status, get_encoder
from lib_magicnaming.webui.job_progress import Progress, caller_progress_only, webui_job
from lib_magicnaming.webui.options import MagicNamingSettings, current_settings

if TYPE_CHECKING:
    import torch

    from lib_magicnaming.identity_library import IdentityLibrary
    from lib_magicnaming.names_list import NamesList
    from lib_magicnaming.namespace_cache import NamespaceCache, SourceCheckpoint
    from lib_magicnaming.webui.portraits import DrawJob


def no_loaded_checkpoint(*, compute_hash: bool = True, load: bool = False) -> SourceCheckpoint:
    """The default of :attr:`Services.loaded_checkpoint` where no WebUI serves one."""
    raise EncoderError("no SDXL checkpoint is loaded: load one in the WebUI")


def no_namespace_cache() -> NamespaceCache:
    """The default of :attr:`Services.namespace_cache` where no folder is configured."""
    raise EncoderError("no folder for name-space statistics is configured")


def no_drawing(job: DrawJob) -> list:
    """The default of :attr:`Services.draw` where no WebUI draws images."""
    raise EncoderError("portraits need the WebUI's txt2img, which is not available here")


def shipped_names_list() -> NamesList:
    """The names list shipped with the extension."""
    from lib_magicnaming.names_list import read_names_list

    return read_names_list(None)


@dataclass(frozen=True)
class Services:
    """The WebUI as the adapter sees it (the running WebUI's: :func:`webui_services`)."""

    library: Callable[[], IdentityLibrary]
    """The identity library of the configured folder."""
    encoder: Callable[[], Any]
    """The photo encoder, an ``IdentityEncoder`` (EncoderError naming what is missing). It alone decides when
    its model leaves the GPU; callers never unload it."""
    encoder_status: Callable[[], EncoderStatus]
    """What the photo encoder needs and has."""
    encode_texts: Callable[[list[str]], torch.Tensor]
    """The text encoders of the WebUI's checkpoint (loaded on demand, the WebUI's way): prompts -> crossattn
    (N, 77k, 2048), a plain float32 tensor; an EncoderError when no SDXL base checkpoint can be had. Call it
    under ``queue_lock``."""
    queue_lock: Callable[[], AbstractContextManager]
    """-> the WebUI's queue lock, held around model work started outside a generation (the tab, the REST
    API) so it never runs beside one. Never taken during a generation, which holds it already."""
    count_chunks: Callable[[str], int | None] | None = None
    """How many 77-token chunks the loaded checkpoint's text encoders make of one text: its tokenizer only,
    no model work, so it runs before the queue lock is taken (None, or returning None: cannot tell)."""
    loaded_checkpoint: Callable[..., SourceCheckpoint] = no_loaded_checkpoint
    """The SDXL checkpoint loaded in the WebUI, as its short hash and title (EncoderError when none is).
    ``compute_hash=False``: EncoderError rather than hashing a checkpoint file the WebUI has not hashed.
    ``load=True`` (under the queue lock): load the WebUI's checkpoint first if it has not loaded one yet."""
    names_list: Callable[[], NamesList] = shipped_names_list
    """The names list the settings choose (lib_magicnaming.names_list)."""
    namespace_cache: Callable[[], NamespaceCache] = no_namespace_cache
    """The folder of name-space statistics computed for checkpoints (lib_magicnaming.namespace_cache)."""
    draw: Callable[[DrawJob], list] = no_drawing
    """Draws portraits through the WebUI's txt2img (:func:`.portraits.webui_draw`); the caller holds the
    queue lock."""
    job: Callable[[str, int, Progress], AbstractContextManager[Progress]] = caller_progress_only
    """``job(name, steps, progress)`` -> the progress to report each step of long work with, shown where the
    WebUI shows its own jobs (:func:`.job_progress.webui_job`); the caller holds the queue lock."""


def identity_library(settings: MagicNamingSettings | None = None) -> IdentityLibrary:
    """The identity library of the configured folder (``<folder>/identities``)."""
    from lib_magicnaming.identity_library import IdentityLibrary

    settings = settings or current_settings()
    return IdentityLibrary(settings.identities_dir)


def webui_encode_texts(texts: list[str]) -> torch.Tensor:
    """The WebUI's checkpoint's ``get_learned_conditioning(texts)['crossattn']``, loading the checkpoint first
    the WebUI's own way if it is not loaded yet (Forge loads it lazily); EncoderError if it is not SDXL."""
    import torch

    needed_by = "identities from names"
    model = compat.load_model(needed_by)
    if not getattr(model, "is_sdxl", False):
        raise EncoderError(compat.NO_MODEL_MESSAGE.format(needed_by=needed_by))
    compat.prepare_text_encoding(model)
    with torch.no_grad(), compat.text_encoding_context():
        cond = model.get_learned_conditioning(texts)
    crossattn = cond["crossattn"] if isinstance(cond, dict) else cond
    if crossattn.shape[-1] != SDXL_CONTEXT_WIDTH:
        raise EncoderError(
            f"the loaded checkpoint's text conditioning is {crossattn.shape[-1]} wide, not SDXL's "
            f"{SDXL_CONTEXT_WIDTH} (the SDXL refiner?): load an SDXL base checkpoint to encode names"
        )
    # clone(): Forge computes under torch.inference_mode, whose tensors refuse later in-place work
    return crossattn.float().clone()


def webui_count_chunks(text: str) -> int | None:
    """The chunks the loaded model's text engines make of ``text``, as the WebUI chunks prompts (BREAK,
    emphasis, comma back-tracking), without loading a model. None when no loaded model offers it."""
    engines = compat.text_engines(compat.peek_model())
    if engines is None:
        return None
    result = engines.process_texts([text])
    return None if result is None else len(result[0][0])


def webui_loaded_checkpoint(*, compute_hash: bool = True, load: bool = False) -> SourceCheckpoint:
    """The loaded SDXL checkpoint's short hash (the WebUI's own, sha256 of the file; hashed here once per
    version of the file when the WebUI has not, e.g. under ``--no-hashing``) and its name. ``load``: load
    the WebUI's checkpoint first if it is not loaded yet (the WebUI's own way; the caller holds the queue
    lock)."""
    from pathlib import Path

    from lib_magicnaming.namespace_cache import SourceCheckpoint
    from lib_magicnaming.webui.encoder_cache import checkpoint_sha256

    model = compat.load_model("Sample and the name space") if load else compat.current_model()
    if not compat.is_loaded_model(model):
        raise EncoderError(compat.NOT_LOADED_YET)
    if not getattr(model, "is_sdxl", False):
        raise EncoderError(compat.NO_MODEL_MESSAGE.format(needed_by="Sample and the name space"))
    info = getattr(model, "sd_checkpoint_info", None)
    if info is None:
        raise EncoderError("the loaded checkpoint has no checkpoint information: load an SDXL checkpoint")
    title = str(getattr(info, "name_for_extra", None) or getattr(info, "title", None) or "checkpoint")
    sha256 = getattr(info, "sha256", None)
    if not sha256 and compute_hash and hasattr(info, "calculate_shorthash"):
        info.calculate_shorthash()  # the WebUI's own hash, cached in its cache.json
        sha256 = getattr(info, "sha256", None)
    filename = getattr(info, "filename", None)
    if not sha256 and compute_hash and filename and Path(filename).is_file():
        sha256 = checkpoint_sha256(Path(filename))
    if not sha256:
        raise EncoderError(f"the loaded checkpoint {title} has not been hashed yet")
    return SourceCheckpoint(str(sha256)[:SHORT_HASH_CHARS].lower(), title)


def webui_names_list() -> NamesList:
    """The names list of the names-list setting (the shipped one when blank); EncoderError when the setting
    names a file that cannot be used (a problem of the setup, not of a request)."""
    from lib_magicnaming.errors import NamespaceError
    from lib_magicnaming.names_list import read_names_list

    try:
        return read_names_list(current_settings().names_list_path)
    except NamespaceError as error:
        raise EncoderError(f"the MagicNaming names-list setting: {error}") from error


def webui_namespace_cache() -> NamespaceCache:
    """The name-space statistics folder of the configured MagicNaming folder (``<folder>/namespace``)."""
    from lib_magicnaming.namespace_cache import NamespaceCache

    return NamespaceCache(current_settings().namespace_dir)


def webui_draw(job: DrawJob) -> list:
    """:func:`.portraits.webui_draw` (imported when first used)."""
    from lib_magicnaming.webui import portraits

    return portraits.webui_draw(job)


def webui_queue_lock() -> AbstractContextManager:
    """``modules.call_queue.queue_lock``, the lock the WebUI holds around each generation."""
    from modules import call_queue

    return call_queue.queue_lock


def webui_services() -> Services:
    """The running WebUI's services."""
    return Services(
        library=identity_library,
        encoder=get_encoder,
        encoder_status=encoder_status,
        encode_texts=webui_encode_texts,
        queue_lock=webui_queue_lock,
        count_chunks=webui_count_chunks,
        loaded_checkpoint=webui_loaded_checkpoint,
        names_list=webui_names_list,
        namespace_cache=webui_namespace_cache,
        draw=webui_draw,
        job=webui_job,
    )
