"""MagicNaming loaded into a WebUI stand-in: a library with two identities, a fake photo encoder, the
script file loaded as the WebUI loads it, and helpers to run txt2img (in process, or through the WebUI's own
API: ``api_client`` and :func:`txt2img_request`) and read what reached the sampler.

A test module uses both fixtures with ``pytest_plugins = ["webui_standin", "webui_standin.extension"]``.
"""

from __future__ import annotations

import hashlib
import io
import threading
import types
from dataclasses import dataclass

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_magicnaming.constants import ID_TOKENS, SDXL_CONTEXT_WIDTH
from lib_magicnaming.identity import Identity
from lib_magicnaming.identity_library import IdentityLibrary


@dataclass
class FakeEncodeResult:
    """What lib_magicnaming.encode's encode_photos returns, reduced to the field the WebUI glue reads."""

    embedding: torch.Tensor


class FakeEncoder:
    """Follows ``IdentityEncoder.encode_photos(photos, *, assume_cropped) -> result.embedding (8, 2048)``: an
    embedding seeded by the photos' content, so the same photo always gives the same identity."""

    def __init__(self):
        self.calls = 0
        self.assume_cropped: list[bool] = []

    def encode_photos(self, photos, *, assume_cropped=False, skip_failed=False):
        self.calls += 1
        self.assume_cropped.append(assume_cropped)
        digest = hashlib.sha256()
        for photo in photos:
            if isinstance(photo, bytes):
                digest.update(photo)
            else:
                buffer = io.BytesIO()
                photo.save(buffer, format="PNG")
                digest.update(buffer.getvalue())
        seed = int.from_bytes(digest.digest()[:8], "little")
        generator = torch.Generator().manual_seed(seed)
        return FakeEncodeResult(torch.randn(ID_TOKENS, SDXL_CONTEXT_WIDTH, generator=generator))


def random_embedding(seed: int) -> torch.Tensor:
    """A deterministic (8, 2048) F_ID."""
    return torch.randn(ID_TOKENS, SDXL_CONTEXT_WIDTH, generator=torch.Generator().manual_seed(seed))


def save_identity(library: IdentityLibrary, name: str, seed: int, *, overwrite: bool = False) -> torch.Tensor:
    """Save an identity made "from names" with a seeded embedding; returns the embedding as stored."""
    library.save(
        Identity(name, random_embedding(seed), {"kind": "names", "names": [[name, 1.0]]}),
        overwrite=overwrite,
        dtype=torch.float32,
    )
    return library.load(name).embedding


def build_extension(webui, folder) -> types.SimpleNamespace:
    """Load MagicNaming (and the X/Y/Z plot) into ``webui`` and return handles for tests."""
    from webuiapp_doubles import make_services

    library = IdentityLibrary(folder)
    alice = save_identity(library, "alice", 1)
    bob = save_identity(library, "bob", 2)
    encoder = FakeEncoder()
    webui.shared.cmd_opts.embeddings_dir = str(folder.parent / "embeddings")
    webui.use_checkpoint("sdxl")
    webui.load_xyz_grid()
    module = webui.load_script(webui.repo_root / "scripts" / "magicnaming.py")
    webui.script_callbacks.before_ui_callback()
    runner = webui.make_runner()
    script = next(s for s in runner.alwayson_scripts if s.title() == "MagicNaming")
    script.services, _calls, _lock = make_services(library, encoder=lambda: encoder)

    def run(prompt="", negative_prompt="", args=(True,), **fields):
        """Process a txt2img job with MagicNaming args; returns (p, processed)."""
        fields = {"steps": 2, **fields}
        p = webui.txt2img(
            runner, {"magicnaming": list(args)}, prompt=prompt, negative_prompt=negative_prompt, **fields
        )
        return p, webui.processing.process_images(p)

    def encode(text: str, negative: bool = False, size: int = 64) -> dict:
        """The toy model's own conditioning of one text (the WebUI path without MagicNaming)."""
        batch = webui.prompt_parser.SdConditioning(
            [text], width=size, height=size, is_negative_prompt=negative
        )
        cond = webui.model().get_learned_conditioning(batch)
        return {key: value[0] for key, value in cond.items()}

    return types.SimpleNamespace(
        library=library,
        alice=alice,
        bob=bob,
        encoder=encoder,
        module=module,
        runner=runner,
        script=script,
        run=run,
        encode=encode,
        webui=webui,
    )


@pytest.fixture
def magicnaming(webui, tmp_path):
    """MagicNaming loaded into the WebUI stand-in (see :func:`build_extension`)."""
    return build_extension(webui, tmp_path / "identities")


@pytest.fixture
def api_client(magicnaming):
    """A TestClient of the WebUI stand-in's own API (``/sdapi/v1/txt2img``) with MagicNaming loaded."""
    app = FastAPI()
    magicnaming.webui.api.Api(app, threading.Lock())
    return TestClient(app)


def txt2img_request(prompt: str, args) -> dict:
    """A ``/sdapi/v1/txt2img`` body: 2 steps, 64 x 64, MagicNaming's ``args``."""
    return {"prompt": prompt, "negative_prompt": "", "steps": 2, "width": 64, "height": 64,
            "alwayson_scripts": {"MagicNaming": {"args": args}}}
