"""The REST routes of Sample's candidates, portraits and the name space, added to :mod:`.api`'s router.

``POST /identities/sample/candidates`` draws N sampled people as portraits in one batch and returns, for
each, the seed, origin, short hash and portrait (PNG base64); saving one is ``POST /identities/sample`` with
its seed (and its portrait as ``thumbnail``). ``POST /identities/{name}/portrait`` draws a saved identity and
can make the portrait its thumbnail. ``GET /namespace`` says whether the loaded checkpoint's name space is
measured; ``POST /namespace`` measures it now (the first Sample would). Like every route of :mod:`.api`
they only map requests to use cases (:mod:`.sampling`) and errors to HTTP statuses.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from fastapi import APIRouter
from pydantic import BaseModel, Field

from lib_magicnaming.webui.portraits import MAX_PORTRAITS, PortraitSettings
from lib_magicnaming.webui.sampling import CHECKPOINT_SOURCE, DEFAULT_CANDIDATES, SamplingUseCases
from lib_magicnaming.webui.services import Services

_DEFAULT = PortraitSettings()


class PortraitOptions(BaseModel):
    """How portraits are drawn (defaults: a 640 px square, 12 steps, seed 1234, CFG 5)."""

    size: int = Field(_DEFAULT.size, description="side in pixels, a multiple of 64 from 64 to 1024")
    steps: int = Field(_DEFAULT.steps, description="sampling steps, 1 to 50")
    portrait_seed: int = Field(_DEFAULT.seed, description="the noise seed, the same for every portrait")
    cfg_scale: float = Field(_DEFAULT.cfg_scale, description="1 to 30")

    def settings(self) -> PortraitSettings:
        return PortraitSettings(size=self.size, steps=self.steps, seed=self.portrait_seed,
                                cfg_scale=self.cfg_scale)


class CandidatesRequest(PortraitOptions):
    """Draw ``count`` sampled people (seeds ``seed`` .. ``seed + count - 1``) as portraits in one batch."""

    seed: int = 0
    count: int = Field(DEFAULT_CANDIDATES, description=f"1 to {MAX_PORTRAITS}")
    scale: float = 1.0
    source: str = Field(CHECKPOINT_SOURCE, description="checkpoint (the loaded SDXL's name space) or encoder")


class PortraitRequest(PortraitOptions):
    """Draw a saved identity; ``set_thumbnail`` makes the portrait its thumbnail."""

    set_thumbnail: bool = False


def add_sampling_routes(router: APIRouter, services: Services, info_json: Any, errors: Any,
                        image_base64: Any) -> None:
    """Add the routes (module docstring) to ``router``; ``info_json``, ``errors`` (a context manager mapping
    library errors to HTTP) and ``image_base64`` are :mod:`.api`'s own helpers."""
    cases = SamplingUseCases(services)

    @router.post("/identities/sample/candidates")
    def sample_candidates(request: CandidatesRequest) -> dict[str, Any]:
        """Sampled people drawn as portraits (unsaved): pick one and save it with POST /identities/sample."""
        with errors():
            candidates = cases.candidates(
                request.seed, request.count, request.scale, request.source, request.settings()
            )
        return {
            "candidates": [
                {
                    "seed": candidate.sampled.seed, "scale": candidate.sampled.scale,
                    "source": request.source,
                    "short_hash": candidate.short_hash, "origin": candidate.sampled.origin,
                    "portrait": image_base64(candidate.portrait),
                }
                for candidate in candidates
            ],
            "portrait_settings": asdict(request.settings()),
        }

    @router.post("/identities/{name}/portrait")
    def draw_portrait(name: str, request: Optional[PortraitRequest] = None) -> dict[str, Any]:
        """A portrait of a saved identity (PNG base64); with ``set_thumbnail`` it becomes the thumbnail."""
        request = request or PortraitRequest()
        with errors():
            image, info = cases.draw_portrait(name, request.settings())
            if request.set_thumbnail:
                info = cases.set_thumbnail(name, image, expected_hash=info.short_hash)
        return {"identity": info_json(info), "portrait": image_base64(image),
                "thumbnail_set": bool(request.set_thumbnail)}

    @router.get("/namespace")
    def namespace_status() -> dict[str, Any]:
        """Whether the loaded checkpoint's name space is measured (never measures it)."""
        namespace = cases.cached_namespace()
        if namespace is None:
            return {"measured": False, "status": cases.namespace_status()}
        return {"measured": True, **_namespace_json(namespace)}

    @router.post("/namespace")
    def measure_namespace() -> dict[str, Any]:
        """Measure the loaded checkpoint's name space now, if it is not yet (under the WebUI's queue lock)."""
        with errors():
            namespace = cases.namespace()
        return {"measured": True, **_namespace_json(namespace)}


def _namespace_json(namespace: Any) -> dict[str, Any]:
    return {
        "checkpoint": namespace.checkpoint_title, "checkpoint_hash": namespace.checkpoint_hash,
        "names_list_hash": namespace.names_list_short_hash, "names": len(namespace.names),
        "rank": namespace.stats.rank, "created": namespace.created, "seconds": namespace.seconds,
    }
