"""Facts about SDXL's text conditioning and the MagicNaming method; each has its home here."""

ID_TOKENS = 8
"""Rows in a name embedding F_ID (method.md decision 1)."""

ID_FIRST_ROW = 1
"""F_ID is rows ID_FIRST_ROW .. ID_FIRST_ROW + ID_TOKENS - 1 of a name's encoding (after the start token)."""

CLIP_L_WIDTH = 768
CLIP_G_WIDTH = 1280
SDXL_CONTEXT_WIDTH = CLIP_L_WIDTH + CLIP_G_WIDTH
"""SDXL cross-attention context: CLIP-L (768) then OpenCLIP bigG (1280) per token."""

REFINER_CONTEXT_WIDTH = CLIP_G_WIDTH
"""The SDXL refiner conditions on bigG alone."""

CHUNK_ROWS = 77
"""One prompt chunk: start token, 75 prompt tokens, end token."""

CHUNK_TEXT_TOKENS = CHUNK_ROWS - 2
"""Prompt tokens in one chunk (without its start and end tokens)."""

BASE_MODEL_FAMILY = "sdxl"

SHORT_HASH_CHARS = 10
"""Hex characters of an identity's short content hash (shown in infotext)."""
