"""The only state shared between generations: identity embeddings and error messages by content hash.

``before_process_batch`` puts each resolved identity's F_ID here under its short content hash (the hash in the
marker) and the conditioning wrapper takes it back. Keyed by content, an entry can never be wrong for another
request, so concurrent API requests may share it; it is bounded (least recently used entries go first).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, NamedTuple, TypeVar

import torch

from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.identity import embedding_hash

Value = TypeVar("Value")

STORE_CAPACITY = 256


class ContentStore(Generic[Value]):
    """A thread-safe bounded map from content hash to value."""

    def __init__(self, capacity: int = STORE_CAPACITY):
        self._items: OrderedDict[str, Value] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def put(self, key: str, value: Value) -> str:
        """Keep ``value`` under ``key``; returns ``key``."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> Value | None:
        """The value under ``key``, or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class EmbeddingStore(ContentStore[torch.Tensor]):
    """F_ID embeddings (8 x 2048, float32, CPU) by :func:`embedding_hash`."""

    def add(self, embedding: torch.Tensor) -> str:
        """Keep a float32 CPU copy of ``embedding``; returns its short content hash."""
        stored = embedding.detach().to(device="cpu", dtype=torch.float32).clone()
        return self.put(embedding_hash(stored), stored)

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


MESSAGES: ContentStore[StopMessage] = ContentStore()
"""Messages that stop a generation, by :func:`lib_magicnaming.webui.markers.message_hash` of their text."""
