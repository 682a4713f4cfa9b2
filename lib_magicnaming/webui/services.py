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

from lib_magicnaming.constants import SDXL_CONTEXT_WIDTH
from lib_magicnaming.errors import EncoderError
from lib_magicnaming.webui import compat
from lib_magicnaming.webui.encoder_cache import EncoderStatus, encoder_status, get_encoder
from lib_magicnaming.webui.options import MagicNamingSettings, current_settings

if TYPE_CHECKING:
    import torch

    from lib_magicnaming.identity_library import IdentityLibrary


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


def identity_library(settings: MagicNamingSettings | None = None) -> IdentityLibrary:
    """The identity library of the configured folder (``<folder>/identities``)."""
    from lib_magicnaming.identity_library import IdentityLibrary

    settings = settings or current_settings()
    return IdentityLibrary(settings.identities_dir)


def webui_encode_texts(texts: list[str]) -> torch.Tensor:
    """The WebUI's checkpoint's ``get_learned_conditioning(texts)['crossattn']``, loading the checkpoint first
    the WebUI's own way if it is not loaded yet (Forge loads it lazily); EncoderError if it is not SDXL."""
    import torch

    model = compat.load_model()
    if not getattr(model, "is_sdxl", False):
        raise EncoderError(compat.NO_MODEL_MESSAGE)
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
    )
