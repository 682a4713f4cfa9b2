"""In-place mode: a textual-inversion placeholder per marker, so the WebUI's tokenizer finds its rows.

Registered under the marker word in the WebUI's embedding database(s) (which ones: :mod:`.compat`), the
placeholder makes the WebUI's ``tokenize_line`` (modules/sd_hijack_clip.py in A1111; Forge's
backend/text_processing/classic_engine.py is the same algorithm) reserve ID_TOKENS token slots where the
marker stands and record a ``PromptChunkFix(offset, embedding)`` for it, after emphasis, BREAK, chunking and
comma back-tracking did their work. The rows the identity goes to are then ``chunk * 77 + offset + 1 .. + 8``
(row 0 of a chunk is the start token). The placeholder's input vectors are zeros (a neutral input for the text
encoder); its output rows are replaced by the identity's F_ID.

Placeholders live in the databases only while the conditioning that needs them is computed
(:func:`placeholders_registered`), which the WebUI does under its queue lock. Left registered, they would
show up in the Textual Inversion extra-networks page, whose cards need a file name a placeholder has not
(``os.path.splitext(embedding.filename)`` in modules/ui_extra_networks_textual_inversion.py). Registered per
computation, in the engines of the model computing it, they also follow Forge's model (re)loads, which
build new engines with new databases.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from lib_magicnaming.constants import (
    CHUNK_ROWS,
    CLIP_G_WIDTH,
    CLIP_L_WIDTH,
    ID_TOKENS,
    SDXL_CONTEXT_WIDTH,
)
from lib_magicnaming.errors import SpliceError
from lib_magicnaming.webui.compat import TextEngines
from lib_magicnaming.webui.markers import MARKER_RE, Marker, parse_marker


def placeholder_embedding(embedding_class: type, marker_text: str):
    """An ``embedding_class`` (the WebUI's ``Embedding``) of ID_TOKENS zero vectors for both SDXL towers,
    named ``marker_text``."""
    vec = {"clip_l": torch.zeros(ID_TOKENS, CLIP_L_WIDTH), "clip_g": torch.zeros(ID_TOKENS, CLIP_G_WIDTH)}
    embedding = embedding_class(vec, marker_text)
    embedding.vectors = ID_TOKENS
    embedding.shape = SDXL_CONTEXT_WIDTH
    embedding.cached_checksum = parse_marker(marker_text).short_hash[:4]
    return embedding


@contextmanager
def placeholders_registered(engines: TextEngines, marker_texts: Iterable[str]) -> Iterator[None]:
    """Register a placeholder for each marker in every database of ``engines`` for the duration of the block,
    then remove those it added (``register_embedding_by_name`` with ``None``: the WebUI's own removal)."""
    added = []
    try:
        for database in engines.databases:
            embedding_class = engines.embedding_class(database)
            for marker_text in dict.fromkeys(marker_texts):
                if marker_text not in database.word_embeddings:
                    embedding = placeholder_embedding(embedding_class, marker_text)
                    engines.register(database, embedding, marker_text)
                    added.append((database, marker_text))
        yield
    finally:
        for database, marker_text in reversed(added):
            engines.register(database, None, marker_text)


PLACEHOLDER_TOKEN = 0
"""The token id ``tokenize_line`` writes for each slot of a textual-inversion embedding."""


def placeholder_row(chunk_tokens: list[list[int]], chunk_index: int, offset: int) -> int:
    """The first conditioning row of the placeholder whose fix is at ``offset`` of chunk ``chunk_index``.

    Normally ``chunk * 77 + offset + 1``. v1.10.1's comma back-tracking moves the tokens after the last comma
    into the next chunk but leaves their fixes behind; a placeholder moved that way is found as the first run
    of ID_TOKENS placeholder tokens in the next chunk.
    """
    slots = [PLACEHOLDER_TOKEN] * ID_TOKENS
    tokens = chunk_tokens[chunk_index]
    if tokens[offset + 1 : offset + 1 + ID_TOKENS] == slots or chunk_index + 1 >= len(chunk_tokens):
        return chunk_index * CHUNK_ROWS + offset + 1
    following = chunk_tokens[chunk_index + 1]
    for start in range(1, len(following) - ID_TOKENS):
        if following[start : start + ID_TOKENS] == slots:
            return (chunk_index + 1) * CHUNK_ROWS + start
    return chunk_index * CHUNK_ROWS + offset + 1


def locate_markers(engines: TextEngines, text: str) -> list[tuple[int, Marker]]:
    """(first row, marker) for every in-place marker in ``text``, from the WebUI's own chunking.

    Raises SpliceError when the tokenizer did not place every marker of ``text`` (so an identity is never
    silently lost).
    """
    batch_chunks, _token_count = engines.process_texts([text])
    chunks = batch_chunks[0]
    found: list[tuple[int, Marker]] = []
    for chunk_index, chunk in enumerate(chunks):
        for fix in chunk.fixes:
            name = getattr(fix.embedding, "name", "")
            if MARKER_RE.fullmatch(name):
                found.append(
                    (placeholder_row([c.tokens for c in chunks], chunk_index, fix.offset), parse_marker(name))
                )
    expected = len(MARKER_RE.findall(text))
    if len(found) != expected:
        raise SpliceError(
            f"MagicNaming: the WebUI's tokenizer placed {len(found)} of the {expected} in-place identities "
            "of this prompt; check that no identity tag is inside an escaped or broken bracket."
        )
    return found
