"""Nearest known names: which listed people an identity lies closest to in name space.

Closeness is the cosine between flattened 8 x 2048 F_IDs, each first centred on the listed names' mean.
DECISION: centred, because every name's F_ID shares a large common part (the same positions, the same
prompt structure, and the few very large hidden-state channels CLIP text towers are known for); uncentred,
every name would lie within a hair of every other and the ranking would say little. A listed name's own F_ID
is its own nearest name (cosine 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lib_magicnaming.errors import NamespaceError

NEAREST_COUNT = 5
"""How many names the library shows and the API returns."""
_TINY = 1e-12


@dataclass(frozen=True)
class NearestName:
    """A listed name and its cosine to the identity (1 = the same direction from the names' mean)."""

    name: str
    cosine: float

    def to_dict(self) -> dict:
        """JSON form: ``{"name": ..., "cosine": 0.8123}``."""
        return {"name": self.name, "cosine": round(self.cosine, 4)}


class NameIndex:
    """Listed names' F_IDs, centred on ``centre`` and scaled to unit length, for cosine look-ups."""

    def __init__(self, names: Sequence[str], f_ids: torch.Tensor, centre: torch.Tensor):
        if f_ids.ndim != 3 or f_ids.shape[0] != len(names) or tuple(centre.shape) != tuple(f_ids.shape[1:]):
            raise NamespaceError(
                f"{len(names)} names need (N, tokens, width) F_IDs and a (tokens, width) centre; got "
                f"{tuple(f_ids.shape)} and {tuple(centre.shape)}"
            )
        self.names = tuple(names)
        self.centre = centre.detach().float().reshape(-1).clone()
        flat = f_ids.detach().float().reshape(f_ids.shape[0], -1) - self.centre
        self._unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(_TINY)

    def cosines(self, embedding: torch.Tensor) -> torch.Tensor:
        """The cosine of ``embedding`` (tokens, width) to every listed name, in list order."""
        flat = embedding.detach().float().reshape(-1)
        if flat.shape != self.centre.shape:
            raise NamespaceError(
                f"an identity of shape {tuple(embedding.shape)} cannot be compared with names of "
                f"{self.centre.numel()} values"
            )
        offset = flat - self.centre
        return self._unit @ (offset / offset.norm().clamp_min(_TINY))

    def nearest(self, embedding: torch.Tensor, count: int = NEAREST_COUNT) -> list[NearestName]:
        """The ``count`` listed names closest to ``embedding``, closest first."""
        cosines = self.cosines(embedding)
        values, indices = torch.topk(cosines, min(int(count), len(self.names)))
        return [NearestName(self.names[int(i)], float(v)) for v, i in zip(values, indices, strict=True)]
