"""Identity names (placeholder until branch `core` lands the full tags module; same rule, same behaviour)."""

import re

from lib_magicnaming.errors import IdentityError

NAME_RE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_\-.]{0,63}")
"""THE rule for identity names: 1-64 ASCII letters, digits, '_', '-', '.', not starting with '.'."""


def validate_identity_name(name: str) -> str:
    """Return ``name`` unchanged if it is a legal identity name; raise IdentityError naming the problem."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise IdentityError(
            f"{name!r} is not a valid identity name: use 1-64 ASCII letters, digits, '_', '-' or '.', "
            "not starting with '.'"
        )
    return name


def identity_key(name: str) -> str:
    """The case-insensitive key of a valid identity name (names match regardless of case)."""
    return validate_identity_name(name).lower()
