"""Safetensors bytes that depend on the content only.

safetensors' writer puts the ``__metadata__`` entries in the order its hash map happens to hold them, a
different order from one call to the next, so one identity saved twice would give two different files.
:func:`save_reproducible` writes the same header with its keys sorted: the same tensors and metadata always
give the same bytes (an identity sampled twice from one seed is the same file but for the time it was
made), and every safetensors reader reads them as before.
"""

from __future__ import annotations

import json
import struct

import safetensors.torch
import torch

HEADER_ALIGNMENT = 8
"""safetensors pads its JSON header with spaces so the tensor data starts on an 8-byte boundary."""


def save_reproducible(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """``safetensors.torch.save(tensors, metadata=metadata)`` with the header's keys sorted (module
    docstring); the tensor data, and every offset into it, are safetensors' own."""
    data = safetensors.torch.save(tensors, metadata=metadata)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(text)) + text + data[8 + length :]
