"""Test doubles shared by the tab and REST API tests: a Services bag over a real IdentityLibrary, and a
TestClient of the REST routes over one.

The SDXL text encoders are replaced by a deterministic function of the text (the real ones need an SDXL
checkpoint); the library, identity files and name-space math are the real ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading

import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from lib_magicnaming.constants import CHUNK_ROWS, ID_TOKENS, SDXL_CONTEXT_WIDTH
from lib_magicnaming.errors import EncoderError
from lib_magicnaming.identity import Identity
from lib_magicnaming.webui.api import build_router
from lib_magicnaming.webui.encoder_cache import EncoderStatus
from lib_magicnaming.webui.limits import LIMITS
from lib_magicnaming.webui.services import Services

NO_ENCODER_MESSAGE = "No MagicNaming encoder checkpoint installed: put a *.safetensors file in /x/encoder"


def text_encoding(text: str) -> torch.Tensor:
    """A deterministic stand-in for one prompt's SDXL crossattn (77, 2048), different per text."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(CHUNK_ROWS, SDXL_CONTEXT_WIDTH, generator=generator)


class RecordingLock:
    """A lock (like the WebUI's queue lock) that counts how often work ran while it was held."""

    def __init__(self):
        self.lock = threading.Lock()
        self.entered = 0

    @contextlib.contextmanager
    def __call__(self):
        with self.lock:
            self.entered += 1
            yield


def random_identity(name: str, seed: int, thumbnail: Image.Image | None = None) -> Identity:
    """An identity with a seeded random embedding."""
    embedding = torch.randn(ID_TOKENS, SDXL_CONTEXT_WIDTH, generator=torch.Generator().manual_seed(seed))
    return Identity(name, embedding, {"kind": "imported"}, thumbnail=thumbnail)


def no_encoder():
    """What encoder_cache.get_encoder raises when no checkpoint is installed."""
    raise EncoderError(NO_ENCODER_MESSAGE)


def missing_encoder_status() -> EncoderStatus:
    return EncoderStatus(loaded=False, missing=["no checkpoint in /x/encoder"])


def make_services(
    library, *, encoder=no_encoder, encode_texts=None, lock=None, status=missing_encoder_status, **more
):
    """(Services over ``library``, the list of text batches encoded, the queue lock); ``more``: other
    Services fields (the loaded checkpoint, names list, name-space cache, portrait drawing, ...)."""
    lock = lock or RecordingLock()
    calls: list[list[str]] = []

    def encode(texts):
        calls.append(list(texts))
        return torch.stack([text_encoding(text) for text in texts])

    services = Services(
        library=lambda: library,
        encoder=encoder,
        encoder_status=status,
        encode_texts=encode_texts or encode,
        queue_lock=lock,
        **more,
    )
    return services, calls, lock


def make_api_client(library, *, api_auth=None, limits=LIMITS, **services_kwargs) -> TestClient:
    """A TestClient of the ``/magicnaming/v1`` router over ``make_services(library, **services_kwargs)``; it
    carries ``encode_calls`` (the text batches encoded), ``lock`` (the queue lock) and ``app_under_test``."""
    services, calls, lock = make_services(library, **services_kwargs)
    app = FastAPI()
    app.include_router(build_router(services, api_auth=api_auth, limits=limits))
    client = TestClient(app)
    client.encode_calls, client.lock, client.app_under_test = calls, lock, app
    return client


def png_bytes(size=(16, 16), color=(90, 90, 90)) -> bytes:
    """A plain PNG file's bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()
