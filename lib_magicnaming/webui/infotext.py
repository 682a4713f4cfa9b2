"""The ``MagicNaming`` infotext entry: written per image, read back when a PNG's info is pasted.

Value: ``alice:1a2b3c4d5e, bob:2b3c4d5e6f, mode: prepend, strength: 1.0``: every identity the image's prompts
used (name and short content hash, so a changed identity file shows as a different hash), the insertion mode
and the default strength. The WebUI quotes it (it holds commas) and unquotes it when parsing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lib_magicnaming.webui.markers import MODES, PREPEND

INFOTEXT_KEY = "MagicNaming"
_ENTRY_RE = re.compile(r"^\s*([A-Za-z0-9_\-][A-Za-z0-9_.\-]*):([0-9a-f]+)\s*$")
_FIELD_RE = re.compile(r"^\s*(mode|strength): (.*?)\s*$")


@dataclass(frozen=True)
class InfotextSummary:
    """What one image's MagicNaming entry says."""

    identities: tuple[tuple[str, str], ...]
    mode: str = PREPEND
    strength: float = 1.0


def format_summary(identities: Sequence[tuple[str, str]], mode: str, strength: float) -> str:
    """The entry's value: ``name:hash, ..., mode: <mode>, strength: <strength>``."""
    entries = [f"{name}:{short_hash}" for name, short_hash in dict.fromkeys(identities)]
    return ", ".join([*entries, f"mode: {mode}", f"strength: {round(float(strength), 3)}"])


def parse_summary(text: str) -> InfotextSummary | None:
    """The summary in an entry's value; None when it is not one of ours (nothing to restore)."""
    if not isinstance(text, str):
        return None
    identities: list[tuple[str, str]] = []
    fields: dict[str, str] = {}
    for part in text.split(","):
        entry = _ENTRY_RE.match(part)
        field = _FIELD_RE.match(part)
        if field:
            fields[field.group(1)] = field.group(2)
        elif entry:
            identities.append((entry.group(1), entry.group(2)))
        elif part.strip():
            return None
    mode = fields.get("mode", PREPEND)
    try:
        strength = float(fields.get("strength", "1.0"))
    except ValueError:
        return None
    if mode not in MODES:
        return None
    return InfotextSummary(tuple(identities), mode, strength)


def paste_fields(enabled, mode, strength) -> list[tuple[object, object]]:
    """``infotext_fields`` for the accordion's controls: pasting an image with the entry turns it on and
    restores mode and strength; pasting one without it turns the accordion off."""

    def summary(params: dict) -> InfotextSummary | None:
        return parse_summary(params.get(INFOTEXT_KEY))

    return [
        (enabled, lambda params: summary(params) is not None),
        (mode, lambda params: summary(params).mode if summary(params) else None),
        (strength, lambda params: summary(params).strength if summary(params) else None),
    ]


class PerImageInfotext:
    """An ``extra_generation_params`` value for batches whose images used different identities.

    ``create_infotext`` (modules/processing.py) calls it with its locals, where ``index`` means two things:
    the image's position in the current batch when called per batch with ``all_prompts=p.prompts``, but its
    position in the whole generation when called with ``p.all_prompts`` (``Processed.infotext``, hires
    intermediate images). It answers that image's entry.
    """

    def __init__(self, summaries: dict[int, str]):
        self.summaries = summaries

    def __call__(self, p=None, index: int = 0, all_prompts=None, **kwargs) -> str | None:
        if all_prompts is not None and all_prompts is getattr(p, "all_prompts", None):
            return self.summaries.get(index)
        batch_size = getattr(p, "batch_size", 1) or 1
        return self.summaries.get(getattr(p, "iteration", 0) * batch_size + index)
