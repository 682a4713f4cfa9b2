"""The toy text encoder's arithmetic, shared by the v1.10.1 stand-in's towers (toy_sdxl.py) and the Forge
stand-in's engines (tests/forge_standin/toy_forge_sdxl.py), so both WebUIs' toys encode a text to the same
numbers. Pure torch: no WebUI module.

The tokenizer splits text as CLIP's pre-tokenizer does (letters, single digits, punctuation runs), one id per
piece, ids from a CRC. The "transformer" is a causal running mean plus a fixed linear map, so every row
depends on the tokens before it, like a causal text encoder.
"""

from __future__ import annotations

import re
import zlib

import torch

VOCAB = 49408
ID_START = 49406
ID_END = 49407
TABLE_ROWS = 2048
_PIECE_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)


def toy_token_ids(text: str) -> list[int]:
    """Token ids of ``text``: one per pre-tokenizer piece, lower-cased, no start/end tokens."""
    return [zlib.crc32(piece.encode()) % (ID_START - 1) + 1 for piece in _PIECE_RE.findall(text.lower())]


COMMA_TOKEN = toy_token_ids(",")[0]


class HashedTable(torch.nn.Module):
    """Token embedding: a fixed random table indexed by id modulo its size."""

    def __init__(self, width: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(
            torch.randn(TABLE_ROWS, width, generator=generator), requires_grad=False
        )

    def forward(self, input_ids):
        return self.weight[input_ids % TABLE_ROWS]


class ToyEncoderWeights:
    """The fixed weights of one toy tower (CLIP-L-like: 768 wide, bigG-like: 1280)."""

    def __init__(self, width: int, seed: int):
        generator = torch.Generator().manual_seed(seed + 1)
        self.positions = torch.randn(77, width, generator=generator) * 0.1
        self.mix = torch.randn(width, width, generator=generator) / width**0.5

    def encode(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, T, W) input embeddings -> (B, T, W) output rows (the toy's "penultimate layer")."""
        x = token_embeddings + self.positions[: token_embeddings.shape[1]]
        counts = torch.arange(1, token_embeddings.shape[1] + 1, dtype=x.dtype).reshape(1, -1, 1)
        return torch.tanh((x + torch.cumsum(x, dim=1) / counts) @ self.mix) + 0.25


def end_rows(tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Each item's row at its first end token (the toy's pooled output)."""
    end = [row.index(ID_END) if ID_END in row else len(row) - 1 for row in tokens.tolist()]
    return z[torch.arange(z.shape[0]), torch.tensor(end)]


def size_embedding(values: torch.Tensor, dims: int = 256) -> torch.Tensor:
    """Sinusoidal embedding of each of (B, n) numbers into ``dims``, concatenated: (B, n * dims)."""
    half = dims // 2
    freqs = torch.exp(-torch.arange(half, dtype=torch.float32) * (9.21 / half))
    angles = values.unsqueeze(-1).float() * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).flatten(1)
