"""SDXL prompt conditioning exactly as WebUI v1.10.1 makes it, with an identity spliced in by the extension.

For a prompt the WebUI's SDXL conditioner gives two things (modules/sd_models_xl.py, sgm's
GeneralConditioner): the cross-attention rows (77k x 2048: :class:`training.text_encoders.SDXLTextEncoder`
computes them) and the pooled vector, which is bigG's output for the FIRST chunk only
(``zs[0].pooled`` in modules/sd_hijack_clip.py): the last block's output after ``ln_final`` at the first
end token (``text.argmax(-1)``, after ``process_tokens`` set every position past it to 0), times
``text_projection`` (sgm's ``FrozenOpenCLIPEmbedder2.pool``).

Identities go in with the extension's own splice code (:mod:`lib_magicnaming.splice`), as its WebUI glue does
(lib_magicnaming/webui/conditioning.py): the pooled vector stays as the prompt made it.

* Prepend (the paper's Name Prepending, the default): the prompt is encoded without the identity's tag and
  :func:`~lib_magicnaming.splice.prepend_identity` inserts F_ID after the start row.
* In place: where the person goes, the WebUI's tokenizer reserves 8 token slots for the tag's
  textual-inversion placeholder (lib_magicnaming/webui/embeddings.py): token id 0 with all-zero input vectors
  for both towers (modules/sd_hijack.py ``EmbeddingsWithFixes`` swaps them in after the token lookup); the
  encoders run on that, and :func:`~lib_magicnaming.splice.place_identities` writes F_ID over those 8 rows.
  The prompt must then fit one 75-token chunk.

The negative prompt follows the WebUI too: an empty one is all zeros, rows and pooled vector
(``force_zero_embeddings`` in sd_models_xl.get_learned_conditioning). When prompt and negative prompt have
different chunk counts, the shorter is padded with the encoding of the empty prompt (the WebUI's
``pad_cond_uncond`` rule), because diffusers batches them together.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from lib_magicnaming.constants import CHUNK_ROWS, CHUNK_TEXT_TOKENS, ID_TOKENS
from lib_magicnaming.splice import Placement, place_identities, prepend_identity
from training.common import TrainingError
from training.text_encoders import SDXLTextEncoder, hidden_before_last_block, tokenize_line

PERSON_SLOT = "{}"
"""Where the person goes in a prompt template."""
PLACEHOLDER_TOKEN = 0
"""The token id the WebUI's tokenizer writes for each slot of a textual-inversion embedding."""
CACHE_SIZE = 64
"""Prompt conditionings a conditioner remembers (the same prompt serves every person's plain rows)."""


@dataclass(frozen=True)
class SDXLConditioning:
    """One prompt's SDXL conditioning: ``crossattn`` (77k, 2048) and ``pooled`` (1280), float32 on the CPU."""

    crossattn: torch.Tensor
    pooled: torch.Tensor
    notes: tuple[str, ...] = field(default=())


def fill(template: str, subject: str) -> str:
    """The prompt with ``subject`` where ``{}`` stands."""
    return template.replace(PERSON_SLOT, subject, 1)


class _ZeroedSlots(nn.Module):
    """A token embedding whose output is zero where ``mask`` is set (the placeholder's input vectors)."""

    def __init__(self, inner: nn.Module, mask: torch.Tensor):
        super().__init__()
        self.inner, self.mask = inner, mask

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.inner(tokens).masked_fill(self.mask[..., None], 0.0)


@contextmanager
def _placeholder_inputs(towers: list[nn.Module], mask: torch.Tensor | None) -> Iterator[None]:
    """For the block: every tower's token embedding gives zeros at ``mask`` (restored afterwards)."""
    if mask is None:
        yield
        return
    originals = [tower.token_embedding for tower in towers]
    try:
        for tower, original in zip(towers, originals, strict=True):
            tower.token_embedding = _ZeroedSlots(original, mask)
        yield
    finally:
        for tower, original in zip(towers, originals, strict=True):
            tower.token_embedding = original


def _end_token() -> int:
    from open_clip.tokenizer import _tokenizer

    return _tokenizer.encoder["<end_of_text>"]


def pooled_output(
    tower: nn.Module, tokens: torch.Tensor, penultimate: torch.Tensor | None = None
) -> torch.Tensor:
    """bigG's pooled vector of (B, 77) chunk tokens, as sgm's FrozenOpenCLIPEmbedder2 computes it.

    ``penultimate``: the tower's output before its last block for these tokens, when already computed.
    """
    padded = tokens.clone()
    end = _end_token()
    for row in padded:
        first_end = int((row == end).nonzero()[0])
        row[first_end + 1 :] = 0
    x = hidden_before_last_block(tower, tokens, False) if penultimate is None else penultimate
    batch_first = getattr(tower.transformer, "batch_first", False)
    x = tower.transformer.resblocks[-1](x if batch_first else x.permute(1, 0, 2), attn_mask=tower.attn_mask)
    x = tower.ln_final(x if batch_first else x.permute(1, 0, 2))
    picked = x[torch.arange(x.shape[0]), padded.argmax(dim=-1)]
    projection = tower.text_projection
    return projection(picked) if isinstance(projection, nn.Module) else picked @ projection


class WebUIConditioner:
    """Prompt texts -> :class:`SDXLConditioning` the way the WebUI conditions SDXL, identities spliced in."""

    def __init__(self, encoder: SDXLTextEncoder, cache_size: int = CACHE_SIZE):
        if len(encoder.towers) != 2:
            raise TrainingError(f"SDXL has two text encoders, got {len(encoder.towers)}")
        self.encoder = encoder
        self.cache_size = cache_size
        self._cache: OrderedDict[str, SDXLConditioning] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @torch.no_grad()
    def _chunk(self, tokens: list[int], slots: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(77, 2048) rows and the pooled vector of one chunk's tokens; ``slots`` get zero input vectors."""
        batch = torch.tensor([tokens], dtype=torch.long, device=self.device)
        mask = None
        if slots is not None:
            mask = torch.zeros_like(batch, dtype=torch.bool)
            mask[0, slots] = True
        towers = [tower for _spec, tower in self.encoder.towers]
        with _placeholder_inputs(towers, mask):
            hidden = [
                hidden_before_last_block(t, batch, spec.pad_with_end_token) for spec, t in self.encoder.towers
            ]
            pooled = pooled_output(towers[-1], batch, penultimate=hidden[-1])
        rows = torch.cat([h.float() for h in hidden], dim=-1)
        return rows[0].cpu(), pooled[0].float().cpu()

    def plain(self, text: str) -> SDXLConditioning:
        """The prompt as the WebUI conditions it (no identity); the last few are remembered by text."""
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        chunks = tokenize_line(text)
        rows, pooled = self._chunk(chunks[0])
        if len(chunks) > 1:
            rows = self.encoder.encode([text])[0].float().cpu()
        made = SDXLConditioning(rows, pooled)
        if self.cache_size:
            self._cache[text] = made
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return made

    def negative(self, text: str) -> SDXLConditioning:
        """The negative prompt's conditioning: all zeros when it is empty (the WebUI's rule for SDXL)."""
        if text.strip():
            return self.plain(text)
        reference = self.plain("")
        return SDXLConditioning(torch.zeros_like(reference.crossattn), torch.zeros_like(reference.pooled))

    def prepended(self, text: str, f_id: torch.Tensor) -> SDXLConditioning:
        """``text`` with the identity inserted after the start row (Name Prepending)."""
        base = self.plain(text)
        chunk0 = tokenize_line(text)[0]
        text_tokens = chunk0[1:].index(_end_token())
        crossattn, report = prepend_identity(base.crossattn, f_id.float(), chunk0_token_count=text_tokens)
        return SDXLConditioning(crossattn, base.pooled, tuple(report.warnings))

    def in_place(self, template: str, f_id: torch.Tensor) -> SDXLConditioning:
        """The identity's 8 rows where ``{}`` stands in ``template`` (one chunk): the WebUI's placeholder."""
        from open_clip.tokenizer import _tokenizer

        before, _slot, after = template.partition(PERSON_SLOT)
        head, tail = _tokenizer.encode(before), _tokenizer.encode(after)
        body = head + [PLACEHOLDER_TOKEN] * ID_TOKENS + tail
        if len(body) > CHUNK_TEXT_TOKENS:
            raise TrainingError(
                f"in-place identities need the prompt within one {CHUNK_TEXT_TOKENS}-token chunk; "
                f"{template!r} takes {len(body)} with the identity's {ID_TOKENS} slots"
            )
        start = _tokenizer.encoder["<start_of_text>"]
        tokens = [start] + body + [_end_token()] * (CHUNK_ROWS - 1 - len(body))
        row = 1 + len(head)
        rows, pooled = self._chunk(tokens, slots=slice(row, row + ID_TOKENS))
        crossattn = place_identities(rows, [Placement(row=row, f_id=f_id.float())])
        return SDXLConditioning(crossattn, pooled)


def match_lengths(
    cond: SDXLConditioning, uncond: SDXLConditioning, empty: SDXLConditioning
) -> tuple[SDXLConditioning, SDXLConditioning]:
    """Pad the one with fewer chunks with ``empty``'s rows (a zero negative grows as zeros)."""
    rows, other = cond.crossattn.shape[0], uncond.crossattn.shape[0]
    if rows == other:
        return cond, uncond

    def grown(c: SDXLConditioning, to: int) -> SDXLConditioning:
        chunks = (to - c.crossattn.shape[0]) // CHUNK_ROWS
        zero = not bool(c.crossattn.any()) and not bool(c.pooled.any())
        filler = torch.zeros_like(empty.crossattn) if zero else empty.crossattn
        return SDXLConditioning(torch.cat([c.crossattn, filler.repeat(chunks, 1)]), c.pooled, c.notes)

    return (grown(cond, other), uncond) if rows < other else (cond, grown(uncond, rows))
