"""The HTTP status of each library error: one rule for the REST routes and for generations the API runs.

Pure (no FastAPI): :mod:`.api` turns it into an ``HTTPException``; :mod:`.conditioning` puts it on the error
that stops a generation, as ``status_code``, which the WebUI API's exception handler answers with
(``vars(e).get('status_code', 500)`` in modules/api/api.py, v1.10.1).
"""

from __future__ import annotations

from lib_magicnaming.errors import EncoderError, FaceError, IdentityExists, IdentityNotFound, MagicNamingError
from lib_magicnaming.webui.limits import TooLarge

BAD_REQUEST = 400
INTERNAL_ERROR = 500


def http_status(error: Exception) -> int:
    """404 unknown identity, 409 name taken, 413 over a size or count limit, 503 encoder unavailable, 422
    unusable face, 400 other bad input (any other MagicNamingError); 500 for anything else (a bug)."""
    if isinstance(error, TooLarge):
        return 413
    if isinstance(error, IdentityNotFound):
        return 404
    if isinstance(error, IdentityExists):
        return 409
    if isinstance(error, EncoderError):
        return 503
    if isinstance(error, FaceError):
        return 422
    return BAD_REQUEST if isinstance(error, MagicNamingError) else INTERNAL_ERROR
