"""The only state shared between generations: identity embeddings and error messages by content hash.

``before_process_batch`` puts each resolved identity's F_ID here under its short content hash (the hash in the
marker) and the conditioning wrapper takes it back. Keyed by content, an entry can never be wrong for another
request, so concurrent API requests may share it; it is bounded (least recently used entries go first).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.identity import embedding_hash
from lib_magicnaming.lru import LRUCache

STORE_CAPACITY = 256


class EmbeddingStore(LRUCache[str, torch.Tensor]):
    """F_ID embeddings (8 x 2048, float32, CPU) by :func:`embedding_hash`."""

    def __init__(self, capacity: int = STORE_CAPACITY):
        super().__init__(capacity)

    def add(self, embedding: torch.Tensor) -> str:
        """Keep a float32 CPU copy of ``embedding``; returns its short content hash."""
        stored = embedding.detach().to(device="cpu", dtype=torch.float32).clone()
        key = embedding_hash(stored)
        self.put(key, stored)
        return key

    def require(self, short_hash: str) -> torch.Tensor:
        """The embedding for ``short_hash``; MagicNamingError if it is not (or no longer) here."""
        embedding = self.get(short_hash)
        if embedding is None:
            raise MagicNamingError(
                f"MagicNaming: the identity with hash {short_hash} is not loaded for this generation; "
                "generate again (it is loaded from the prompt's <name:...> tag)."
            )
        return embedding


EMBEDDINGS = EmbeddingStore()
"""Content-hash keyed: shared by every generation (see the module docstring)."""

class StopMessage(NamedTuple):
    """Why a generation stops: the message and its HTTP status (:mod:`.http_status`) for the API."""

    text: str
    status: int


MESSAGES: LRUCache[str, StopMessage] = LRUCache(STORE_CAPACITY)
"""Messages that stop a generation, by :func:`lib_magicnaming.webui.markers.message_hash` of their text."""
