"""REST routes under ``/magicnaming/v1/`` (registered from ``script_callbacks.on_app_started``).

All of them when the WebUI's own API is on (``--api``, or ``--nowebui``); otherwise only the identity list
the prompt autocomplete reads (:func:`build_router`'s ``list_only``).

Routes added straight on the app do not get the WebUI's ``--api-auth``; :func:`build_router` applies the
same HTTP Basic check the built-in API uses (``modules/api/api.py``: ``cmd_opts.api_auth`` is
``"user:pass,user2:pass2"``; passwords compared with ``secrets.compare_digest``; 401 with
``WWW-Authenticate: Basic``). Every bad input is answered with a 4xx JSON body whose ``detail`` is a message
naming the problem. The routes only map requests to the identity use cases (:mod:`.use_cases`) and their
errors to HTTP statuses (:mod:`.http_status`); the use cases hold the WebUI's queue lock around work on the
GPU (encoding photos or names) so it never runs beside a generation.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from secrets import compare_digest
from typing import Any, List, Optional

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, Field

from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.webui.api_sampling import add_sampling_routes
from lib_magicnaming.webui.http_status import http_status
from lib_magicnaming.webui.sampling import CHECKPOINT_SOURCE, NOT_MEASURED_NOTE, SamplingUseCases
from lib_magicnaming.webui.services import Services
from lib_magicnaming.webui.use_cases import IdentityUseCases, photo_report_json

PREFIX = "/magicnaming/v1"


@dataclass(frozen=True)
class ApiLimits:
    """Payload limits (413 beyond them). Defaults: 16 photos of at most 16 MiB each, 96 MiB per request."""

    max_photos: int = 16
    max_photo_bytes: int = 16 << 20
    max_request_bytes: int = 96 << 20
    max_mix_items: int = 16


# ------------------------------------------------------------------------------------------- request models
# Plain fields with defaults only: the same models validate on pydantic 1 (A1111) and pydantic 2 (Forge).


class FromPhotosRequest(BaseModel):
    """Create an identity from face photos."""

    name: str = Field(..., description="identity name: 1-64 of A-Z a-z 0-9 _ - . (not starting with .)")
    photos: List[str] = Field(..., description="base64 images (a data:image/...;base64, prefix is accepted)")
    assume_cropped: bool = Field(False, description="the photos are face crops already: skip detection")
    skip_failed: bool = Field(False, description="leave out photos without a usable face (reported)")
    overwrite: bool = Field(False, description="replace an existing identity of the same name")


class WeightedName(BaseModel):
    """One name (or saved identity) and its weight."""

    name: str
    weight: float = 1.0


class FromNamesRequest(BaseModel):
    """Create an identity from names SDXL knows; uses the loaded SDXL checkpoint's text encoders."""

    name: str
    names: List[WeightedName] = Field(..., description="names and weights; weights are normalised to sum 1")
    method: str = Field("linear", description="linear or slerp")
    overwrite: bool = False


class MixRequest(BaseModel):
    """Create an identity as a weighted mix of saved identities."""

    name: str
    identities: List[WeightedName]
    method: str = Field("linear", description="linear or slerp")
    overwrite: bool = False


class SampleRequest(BaseModel):
    """Create a fictional identity sampled from a name space: the loaded SDXL checkpoint's (default), measured
    on first use, or the encoder checkpoint's."""

    name: str
    seed: int = 0
    scale: float = 1.0
    overwrite: bool = False
    source: str = Field(CHECKPOINT_SOURCE, description="checkpoint (the loaded SDXL's name space) or encoder")
    thumbnail: Optional[str] = Field(None, description="base64 image, e.g. the chosen candidate's portrait")


# --------------------------------------------------------------------------------------------- helpers


def size_text(size: int) -> str:
    """``16 MiB`` for whole mebibytes, else ``1000 bytes``."""
    return f"{size >> 20} MiB" if size >= 1 << 20 and size % (1 << 20) == 0 else f"{size} bytes"


def http_error(error: MagicNamingError) -> HTTPException:
    """Map a library error to its HTTP status (:func:`.http_status.http_status`; message as ``detail``)."""
    return HTTPException(status_code=http_status(error), detail=str(error))


@contextmanager
def library_errors() -> Iterator[None]:
    """Turn MagicNamingError raised inside into the matching HTTPException."""
    try:
        yield
    except MagicNamingError as error:
        raise http_error(error) from error


def decode_photo(text: str, index: int, limits: ApiLimits) -> bytes:
    """Base64 (optionally a data URL) -> bytes; 400 for bad base64, 413 beyond the per-photo limit."""
    if not isinstance(text, str) or not text.strip():
        raise HTTPException(status_code=400, detail=f"photo {index + 1}: empty; send a base64-encoded image")
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise HTTPException(status_code=400, detail=f"photo {index + 1}: data URL is not base64-encoded")
    if len(text) > (limits.max_photo_bytes * 4) // 3 + 4:
        raise HTTPException(
            status_code=413, detail=f"photo {index + 1}: larger than {size_text(limits.max_photo_bytes)}"
        )
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        detail = f"photo {index + 1}: not valid base64 ({error})"
        raise HTTPException(status_code=400, detail=detail) from error
    if len(data) > limits.max_photo_bytes:
        raise HTTPException(
            status_code=413, detail=f"photo {index + 1}: larger than {size_text(limits.max_photo_bytes)}"
        )
    return data


def decode_thumbnail(text: str, limits: ApiLimits) -> Any:
    """Base64 image -> a PIL image for a thumbnail; 400/413 naming the problem as for a photo."""
    from lib_magicnaming.errors import FaceError
    from lib_magicnaming.face import load_image

    try:
        return load_image(decode_photo(text, 0, limits))
    except HTTPException as error:
        error.detail = str(error.detail).replace("photo 1", "thumbnail", 1)
        raise
    except FaceError as error:
        raise HTTPException(status_code=400, detail=f"thumbnail: {error}") from error


def thumbnail_base64(image: Any) -> str | None:
    """PNG base64 of a PIL image, or None."""
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def info_json(info: Any) -> dict[str, Any]:
    """JSON body of an IdentityInfo (no file path: it is the server's business)."""
    return {
        "name": info.name,
        "key": info.key,
        "short_hash": info.short_hash,
        "created": info.created,
        "origin": info.origin,
        "dtype": info.dtype,
        "has_thumbnail": info.has_thumbnail,
    }


def check_count(items: list, none_message: str, most: int | None = None, too_many_message: str = "") -> None:
    """400 with ``none_message`` for an empty list, 413 with ``too_many_message`` for more than ``most``."""
    if not items:
        raise HTTPException(status_code=400, detail=none_message)
    if most is not None and len(items) > most:
        raise HTTPException(status_code=413, detail=too_many_message)


def created(make: Callable[[], Any]) -> dict[str, Any]:
    """The body answering a request that made an identity: ``make()``'s IdentityInfo (errors as HTTP)."""
    with library_errors():
        return {"identity": info_json(make())}


def _weights(items: list[WeightedName]) -> list[tuple[str, float]]:
    return [(item.name, float(item.weight)) for item in items]


def size_limited_route(max_request_bytes: int) -> type[APIRoute]:
    """A route class refusing (413) a body whose Content-Length exceeds the limit BEFORE it is read.

    FastAPI reads and parses the body before any dependency runs, so the check sits in the route handler.
    Bodies sent without Content-Length (chunked) are read; each photo's size is still checked after.
    """

    class SizeLimitedRoute(APIRoute):
        def get_route_handler(self) -> Callable:
            handler = super().get_route_handler()

            async def limited(request: Request):
                length = request.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > max_request_bytes:
                    raise HTTPException(
                        status_code=413, detail=f"request body larger than {size_text(max_request_bytes)}"
                    )
                return await handler(request)

            return limited

    return SizeLimitedRoute


def basic_auth_dependency(api_auth: str) -> Callable[..., bool]:
    """The built-in API's ``--api-auth`` check, for ``"user:pass,user2:pass2"``."""
    credentials_by_user: dict[str, str] = {}
    for pair in api_auth.split(","):
        user, _, password = pair.partition(":")
        credentials_by_user[user] = password

    def auth(credentials: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:
        expected = credentials_by_user.get(credentials.username)
        if expected is not None and compare_digest(credentials.password, expected):
            return True
        raise HTTPException(
            status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"}
        )

    return auth


# ---------------------------------------------------------------------------------------------- routes


def build_router(
    services: Services, *, api_auth: str | None = None, limits: ApiLimits = ApiLimits(),
    list_only: bool = False,
) -> APIRouter:
    """The ``/magicnaming/v1`` router; with ``api_auth`` every route requires those Basic credentials.

    ``list_only``: just ``GET /identities`` (the prompt autocomplete's source), for a WebUI started without
    ``--api``, which has no built-in API either: there, routes that create, delete or run the GPU would be
    open to anyone who reaches the UI's port, with no ``--api-auth`` to protect them.
    """
    dependencies = [Depends(basic_auth_dependency(api_auth))] if api_auth else []
    router = APIRouter(
        prefix=PREFIX, dependencies=dependencies, tags=["MagicNaming"],
        route_class=size_limited_route(limits.max_request_bytes),
    )

    cases = IdentityUseCases(services)

    @router.get("/identities")
    def list_identities() -> dict[str, Any]:
        """Every saved identity (from file headers)."""
        with library_errors():
            return {"identities": [info_json(info) for info in cases.list()]}

    if list_only:
        return router

    @router.get("/identities/{name}")
    def get_identity(name: str) -> dict[str, Any]:
        """One identity's metadata, its thumbnail (PNG base64, or null) and the listed names nearest to it in
        the loaded checkpoint's measured name space (null, with a note, while it is not measured)."""
        with library_errors():
            identity = cases.load(name)
            info = cases.info(name)
        nearest = SamplingUseCases(services).nearest(identity.embedding)
        closest = {"nearest_names": None, "nearest_names_note": NOT_MEASURED_NOTE} if nearest is None else {
            "nearest_names": nearest.to_dict()}
        return {**info_json(info), "thumbnail": thumbnail_base64(identity.thumbnail), **closest}

    @router.delete("/identities/{name}")
    def delete_identity(name: str) -> dict[str, Any]:
        """Delete a saved identity."""
        with library_errors():
            cases.delete(name)
        return {"deleted": name}

    @router.post("/identities/from-photos", status_code=201)
    def create_from_photos(request: FromPhotosRequest) -> dict[str, Any]:
        """Encode 1..N face photos into one identity and save it."""
        check_count(request.photos, "send at least one photo",
                    limits.max_photos, f"at most {limits.max_photos} photos per request")
        photos = [decode_photo(text, i, limits) for i, text in enumerate(request.photos)]
        with library_errors():
            info, result = cases.create_from_photos(
                request.name, photos, assume_cropped=request.assume_cropped, skip_failed=request.skip_failed,
                overwrite=request.overwrite,
            )
        return {"identity": info_json(info), "per_photo": [photo_report_json(r) for r in result.per_photo]}

    @router.post("/identities/from-names", status_code=201)
    def create_from_names(request: FromNamesRequest) -> dict[str, Any]:
        """Make an identity from weighted names with the loaded SDXL text encoders (no photo encoder)."""
        check_count(request.names, "send at least one name")
        return created(lambda: cases.create_from_names(
            request.name, _weights(request.names), request.method, overwrite=request.overwrite
        ))

    @router.post("/identities/mix", status_code=201)
    def create_mix(request: MixRequest) -> dict[str, Any]:
        """Mix saved identities (weights normalised to sum 1) into a new one."""
        check_count(request.identities, "send at least one identity to mix",
                    limits.max_mix_items, f"at most {limits.max_mix_items} identities per mix")
        return created(lambda: cases.create_mix(
            request.name, _weights(request.identities), request.method, overwrite=request.overwrite
        ))

    @router.post("/identities/sample", status_code=201)
    def create_sampled(request: SampleRequest) -> dict[str, Any]:
        """Sample a fictional identity (same seed, scale and source: same person) and save it."""
        thumbnail = None
        if request.thumbnail:
            thumbnail = decode_thumbnail(request.thumbnail, limits)
        return created(lambda: cases.create_sampled(
            request.name, request.seed, request.scale, source=request.source, overwrite=request.overwrite,
            thumbnail=thumbnail,
        ))

    @router.get("/encoder")
    def get_encoder_status() -> dict[str, Any]:
        """Whether the photo encoder is installed/loaded, its checkpoint and hash, and what is missing."""
        return cases.encoder_status().to_dict()

    add_sampling_routes(router, services, info_json, library_errors, thumbnail_base64)
    return router


def on_app_started(_demo: Optional[Any], app: FastAPI) -> None:
    """``script_callbacks.on_app_started``: add the routes, honouring ``--api-auth``."""
    from modules import shared

    from lib_magicnaming.webui import services

    api_auth = getattr(shared.cmd_opts, "api_auth", None)
    # As modules/api/api.py's routes: the API exists with --api, and always under --nowebui (webui.py).
    api_enabled = bool(getattr(shared.cmd_opts, "api", False) or getattr(shared.cmd_opts, "nowebui", False))
    router = build_router(services.webui_services(), api_auth=api_auth, list_only=not api_enabled)
    app.include_router(router)
