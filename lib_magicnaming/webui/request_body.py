"""The REST API's body guard: a request body is limited by the bytes actually read, not by what it claims.

:func:`size_limited_route` gives an ``APIRoute`` class whose handler reads the body itself, before FastAPI
parses it: a ``Content-Length`` over the limit is refused (413) before a byte is read, and a body sent
without one (``Transfer-Encoding: chunked``) is read piece by piece and refused as soon as the bytes read
pass the limit, so at most the limit is kept and nothing past the piece that crossed it is read. The bytes
read are handed to FastAPI as the request's body (``Request._body``, which ``Request.body()`` returns when
set: starlette 0.26 under A1111 and 0.27+ under Forge alike), so the route's own parsing is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute

from lib_magicnaming.webui.limits import size_text

PAYLOAD_TOO_LARGE = 413


def too_large(max_bytes: int) -> HTTPException:
    """The 413 answer naming the limit."""
    detail = f"request body larger than {size_text(max_bytes)}"
    return HTTPException(status_code=PAYLOAD_TOO_LARGE, detail=detail)


async def read_limited_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, read as it streams in; HTTPException 413 once more than ``max_bytes`` arrive (or
    when Content-Length says so: then nothing is read)."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise too_large(max_bytes)
    pieces: list[bytes] = []
    received = 0
    async for piece in request.stream():
        received += len(piece)
        if received > max_bytes:
            raise too_large(max_bytes)
        pieces.append(piece)
    return b"".join(pieces)


def size_limited_route(max_bytes: int) -> type[APIRoute]:
    """An ``APIRoute`` class whose routes read at most ``max_bytes`` of body (413 beyond), see the module
    docstring. Requests without a body (GET, DELETE) read nothing."""

    class SizeLimitedRoute(APIRoute):
        def get_route_handler(self) -> Callable:
            handler = super().get_route_handler()

            async def limited(request: Request):
                request._body = await read_limited_body(request, max_bytes)
                return await handler(request)

            return limited

    return SizeLimitedRoute
