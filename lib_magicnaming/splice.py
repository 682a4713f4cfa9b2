"""Splicing an identity's F_ID (8 x 2048) into SDXL prompt conditioning. Pure torch, no WebUI.

Conditioning comes in the WebUI's shapes: a bare cross-attention tensor ``(rows, W)`` or ``(B, rows, W)``
with ``rows = 77 * k`` (k prompt chunks), or a dict ``{'crossattn': ..., 'vector': ...}`` (batched, or the
per-item slices ``prompt_parser`` makes). Every function returns NEW tensors of the input's dtype and device
and never modifies its input.

Two modes:

* :func:`prepend_identity` (the paper's Name Prepending, the default): chunk 0 becomes
  ``[start row, F_ID rows, rows 1..68]``; its last 8 rows fall off. Other chunks and ``'vector'`` (the pooled
  embedding, which the prompt made) are unchanged.
* :func:`place_identities` (in place): each identity's F_ID rows overwrite 8 rows the caller names (the rows a
  placeholder occupies), several identities at once, each with its strength.

Strength (the same rule in both modes). 1.0 is exactly the paper: the F_ID rows are the identity's values
bit for bit and nothing else changes. Any other strength ``s`` works like the WebUI's "Original" emphasis
(``modules/sd_emphasis.py``): take the chunk as spliced at strength 1, remember its mean, multiply the F_ID
rows by ``s``, then multiply the whole chunk by ``original_mean / new_mean``. Details:

* The mean is restored per batch item, per 77-row chunk, and per text encoder: columns ``[:768]`` (CLIP-L)
  and ``[768:]`` (bigG) separately, because the WebUI applies emphasis inside each encoder on its own output.
  Chunks holding no identity with ``s != 1`` are untouched.
* Strength 0 sets the F_ID rows to zero (they still occupy their rows: in prepend mode the text stays shifted
  by 8) and rescales the rest of the chunk so its mean is the mean it had with the identity at strength 1.
  It is "the identity silenced", not "no identity".
* Guard: if the new mean is about zero (``|new_mean| <= 1e-6 * mean(|z|)``), or the ratio is not a positive
  finite number (it would flip or blow up the chunk), the mean is not restored: the F_ID rows are only scaled.
* The arithmetic runs in float32 and the result is cast back to the input's dtype.

Widths. 2048 (SDXL base: CLIP-L 768 + bigG 1280 per row) takes the whole F_ID. 1280 (the SDXL refiner, which
conditions on bigG alone) takes the bigG half ``F_ID[:, 768:]``: the refiner's text encoder is the same
OpenCLIP ViT-bigG/14 penultimate layer that produced those columns, so the half is the identity as the refiner
would have encoded the name. Any other width, or an F_ID that is not 8 x 2048, raises :class:`SpliceError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch

from lib_magicnaming.constants import (
    CHUNK_ROWS,
    CHUNK_TEXT_TOKENS,
    CLIP_L_WIDTH,
    ID_TOKENS,
    REFINER_CONTEXT_WIDTH,
    SDXL_CONTEXT_WIDTH,
)
from lib_magicnaming.errors import SpliceError, StrengthError
from lib_magicnaming.tags import DEFAULT_STRENGTH, check_strength

Conditioning = Union[torch.Tensor, dict]
"""A cross-attention tensor, or a dict holding one under 'crossattn' (and usually 'vector')."""

CROSSATTN_KEY = "crossattn"
PREPEND_KEPT_TEXT_TOKENS = CHUNK_ROWS - 1 - ID_TOKENS
"""Prompt tokens of chunk 0 that survive Name Prepending (rows 1..68 move to rows 9..76)."""

_ENCODER_COLUMNS = {
    SDXL_CONTEXT_WIDTH: (slice(0, CLIP_L_WIDTH), slice(CLIP_L_WIDTH, SDXL_CONTEXT_WIDTH)),
    REFINER_CONTEXT_WIDTH: (slice(0, REFINER_CONTEXT_WIDTH),),
}
_MEAN_GUARD = 1e-6


@dataclass
class SpliceReport:
    """What a splice did that the user may need to know (e.g. prompt text pushed out of chunk 0)."""

    dropped_text_tokens: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Placement:
    """One identity for :func:`place_identities`: its F_ID goes to rows ``row .. row + 7``."""

    row: int
    f_id: torch.Tensor
    strength: float = DEFAULT_STRENGTH


def _crossattn_of(cond: Conditioning) -> torch.Tensor:
    if isinstance(cond, torch.Tensor):
        return cond
    if isinstance(cond, dict):
        if CROSSATTN_KEY not in cond:
            raise SpliceError(
                f"Conditioning dict has no '{CROSSATTN_KEY}' entry (keys: {sorted(map(str, cond))}); "
                "an identity can only be spliced into SDXL cross-attention conditioning."
            )
        crossattn = cond[CROSSATTN_KEY]
        if isinstance(crossattn, torch.Tensor):
            return crossattn
        raise SpliceError(f"Conditioning '{CROSSATTN_KEY}' is a {type(crossattn).__name__}, not a tensor.")
    raise SpliceError(
        f"Conditioning must be a tensor or a dict with '{CROSSATTN_KEY}', not {type(cond).__name__}."
    )


def _with_crossattn(cond: Conditioning, crossattn: torch.Tensor) -> Conditioning:
    """The same kind of conditioning as ``cond`` holding ``crossattn``; other tensors copied, not shared."""
    if isinstance(cond, torch.Tensor):
        return crossattn
    rebuilt = {key: _copy_if_tensor(value) for key, value in cond.items()}
    rebuilt[CROSSATTN_KEY] = crossattn
    return rebuilt


def _copy_if_tensor(value: object) -> object:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _as_batch(crossattn: torch.Tensor) -> torch.Tensor:
    """``crossattn`` as (B, rows, W), checked: rows a positive multiple of 77, a width we can splice into."""
    if crossattn.dim() not in (2, 3):
        raise SpliceError(
            f"Cross-attention conditioning must be (rows, width) or (batch, rows, width); got shape "
            f"{tuple(crossattn.shape)}."
        )
    batch = crossattn if crossattn.dim() == 3 else crossattn.unsqueeze(0)
    rows, width = batch.shape[1], batch.shape[2]
    if rows == 0 or rows % CHUNK_ROWS:
        raise SpliceError(
            f"Cross-attention conditioning has {rows} rows; SDXL prompts have a positive multiple of "
            f"{CHUNK_ROWS} (shape {tuple(crossattn.shape)})."
        )
    if width not in _ENCODER_COLUMNS:
        raise SpliceError(
            f"Cannot splice an identity into conditioning of width {width} (shape {tuple(crossattn.shape)}): "
            f"only SDXL base ({SDXL_CONTEXT_WIDTH}) and the SDXL refiner ({REFINER_CONTEXT_WIDTH}) "
            "are supported."
        )
    if not batch.is_floating_point():
        raise SpliceError(f"Cross-attention conditioning must be floating point, not {batch.dtype}.")
    return batch


def fit_f_id(f_id: torch.Tensor, width: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """F_ID as the rows to write into conditioning of ``width``: (8, 2048) whole, or its bigG half for 1280.

    Raises :class:`SpliceError` for an F_ID that is not a finite (8, 2048) tensor, or another width.
    """
    expected = (ID_TOKENS, SDXL_CONTEXT_WIDTH)
    if not isinstance(f_id, torch.Tensor) or tuple(f_id.shape) != expected:
        shape = tuple(f_id.shape) if isinstance(f_id, torch.Tensor) else type(f_id).__name__
        raise SpliceError(f"An identity embedding must have shape {expected}; got {shape}.")
    if not f_id.is_floating_point() or not bool(torch.isfinite(f_id).all()):
        raise SpliceError("An identity embedding must hold finite floating-point values.")
    if width == SDXL_CONTEXT_WIDTH:
        rows = f_id
    elif width == REFINER_CONTEXT_WIDTH:
        rows = f_id[:, CLIP_L_WIDTH:]
    else:
        raise SpliceError(
            f"Cannot splice an identity of shape {tuple(f_id.shape)} into conditioning of width {width}: "
            f"only {SDXL_CONTEXT_WIDTH} (SDXL) and {REFINER_CONTEXT_WIDTH} (SDXL refiner) are supported."
        )
    return rows.to(device=device, dtype=dtype)


def _checked_strength(strength: float) -> float:
    try:
        return check_strength(strength)
    except StrengthError as error:
        raise SpliceError(f"The identity's strength {error.problem}.") from None


def apply_strengths(spliced: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """Scale rows of (B, rows, W) conditioning by ``multipliers`` (rows,), restoring each chunk's mean.

    The WebUI's "Original" emphasis, per batch item, per 77-row chunk and per text encoder's columns (see the
    module docstring, including the guard for a mean near zero). Chunks whose multipliers are all 1 are
    returned bit for bit. Returns a new tensor of ``spliced``'s dtype.
    """
    result = spliced.clone()
    for chunk_start in range(0, spliced.shape[1], CHUNK_ROWS):
        chunk_rows = slice(chunk_start, chunk_start + CHUNK_ROWS)
        chunk_multipliers = multipliers[chunk_rows]
        if bool((chunk_multipliers == 1).all()):
            continue
        chunk = spliced[:, chunk_rows].float()
        row_scale = chunk_multipliers.to(device=chunk.device, dtype=torch.float32).reshape(1, -1, 1)
        for columns in _ENCODER_COLUMNS[spliced.shape[2]]:
            part = chunk[:, :, columns]
            scaled = part * row_scale
            factor = _mean_restoring_factor(part, scaled)
            result[:, chunk_rows, columns] = (scaled * factor).to(spliced.dtype)
    return result


def _mean_restoring_factor(original: torch.Tensor, scaled: torch.Tensor) -> torch.Tensor:
    """``original_mean / new_mean`` per batch item as (B, 1, 1); 1 where restoring would be unsound."""
    original_mean = original.mean(dim=(1, 2), keepdim=True)
    new_mean = scaled.mean(dim=(1, 2), keepdim=True)
    magnitude = scaled.abs().mean(dim=(1, 2), keepdim=True)
    factor = original_mean / new_mean
    sound = (new_mean.abs() > _MEAN_GUARD * magnitude) & torch.isfinite(factor) & (factor > 0)
    return torch.where(sound, factor, torch.ones_like(factor))


def _splice(
    cond: Conditioning, write: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> Conditioning:
    """Run ``write(original, copy) -> multipliers`` on a copy; return the same kind as ``cond``."""
    crossattn = _crossattn_of(cond)
    batch = _as_batch(crossattn)
    spliced = batch.clone()
    multipliers = write(batch, spliced)
    spliced = apply_strengths(spliced, multipliers)
    return _with_crossattn(cond, spliced if crossattn.dim() == 3 else spliced.squeeze(0))


def _checked_token_count(chunk0_token_count: int | None) -> int | None:
    if chunk0_token_count is None:
        return None
    if isinstance(chunk0_token_count, bool) or not isinstance(chunk0_token_count, int):
        raise SpliceError(f"chunk0_token_count must be an int, not {type(chunk0_token_count).__name__}.")
    if not 0 <= chunk0_token_count <= CHUNK_TEXT_TOKENS:
        raise SpliceError(
            f"chunk0_token_count must be from 0 to {CHUNK_TEXT_TOKENS} (tokens of one chunk); "
            f"got {chunk0_token_count}."
        )
    return chunk0_token_count


def prepend_identity(
    cond: Conditioning,
    f_id: torch.Tensor,
    *,
    strength: float = DEFAULT_STRENGTH,
    chunk0_token_count: int | None = None,
) -> tuple[Conditioning, SpliceReport]:
    """Name Prepending (the paper): insert F_ID after the start row of chunk 0.

    Chunk 0 becomes ``[row 0, F_ID rows 0..7, rows 1..68]``: its last 8 rows are dropped; other chunks and
    ``'vector'`` are unchanged (copied). ``strength`` follows the module's rule (1.0 = exactly the paper).
    ``chunk0_token_count`` is the number of prompt tokens in chunk 0 (without start and end tokens); when
    given and above 68, the report counts the prompt tokens pushed out and carries a warning to show.
    Returns new conditioning of the same kind, dtype and device, and a :class:`SpliceReport`.
    """
    value = _checked_strength(strength)
    token_count = _checked_token_count(chunk0_token_count)

    def write(original: torch.Tensor, spliced: torch.Tensor) -> torch.Tensor:
        rows = fit_f_id(f_id, original.shape[2], dtype=original.dtype, device=original.device)
        first, last = 1, 1 + ID_TOKENS
        spliced[:, first:last] = rows
        spliced[:, last:CHUNK_ROWS] = original[:, first : CHUNK_ROWS - ID_TOKENS]
        multipliers = torch.ones(original.shape[1])
        multipliers[first:last] = value
        return multipliers

    spliced = _splice(cond, write)
    report = SpliceReport()
    if token_count is not None and token_count > PREPEND_KEPT_TEXT_TOKENS:
        report.dropped_text_tokens = token_count - PREPEND_KEPT_TEXT_TOKENS
        report.warnings.append(
            f"MagicNaming: the identity takes {ID_TOKENS} of the first chunk's {CHUNK_TEXT_TOKENS} "
            f"token slots, so the last {report.dropped_text_tokens} of its {token_count} prompt tokens "
            "were dropped. Shorten the start of the prompt or put BREAK within its first "
            f"{PREPEND_KEPT_TEXT_TOKENS} tokens."
        )
    return spliced, report


def _placement_rows(placement: Placement, total_rows: int) -> range:
    """The 8 rows a placement writes, checked to lie inside one chunk's prompt-token rows 1..75."""
    row = placement.row
    if isinstance(row, bool) or not isinstance(row, int):
        raise SpliceError(f"An identity's row must be an int, not {type(row).__name__}.")
    offset = row % CHUNK_ROWS
    if row < 0 or row + ID_TOKENS > total_rows or offset < 1 or offset + ID_TOKENS - 1 > CHUNK_TEXT_TOKENS:
        raise SpliceError(
            f"An identity cannot go to rows {row}..{row + ID_TOKENS - 1}: the conditioning has {total_rows} "
            f"rows ({total_rows // CHUNK_ROWS} chunk(s) of {CHUNK_ROWS}), and an identity's {ID_TOKENS} "
            f"rows must lie inside one chunk's prompt-token rows 1..{CHUNK_TEXT_TOKENS}."
        )
    return range(row, row + ID_TOKENS)


def place_identities(cond: Conditioning, placements: Sequence[Placement]) -> Conditioning:
    """In-place mode: write each placement's F_ID over rows ``row .. row + 7``, with its strength.

    Rows are absolute cross-attention rows (chunk * 77 + offset); each identity's 8 rows must lie inside one
    chunk's prompt-token rows 1..75 and identities may not overlap, else :class:`SpliceError`. Strengths
    follow the module's rule; identities in one chunk share that chunk's mean restoration, as emphasised
    words do. ``'vector'`` is unchanged (copied). Returns new conditioning of the same kind, dtype, device.
    """
    checked = [(placement, _checked_strength(placement.strength)) for placement in placements]

    def write(original: torch.Tensor, spliced: torch.Tensor) -> torch.Tensor:
        multipliers = torch.ones(original.shape[1])
        taken: dict[int, int] = {}
        for placement, value in checked:
            rows = _placement_rows(placement, original.shape[1])
            clash = next((taken[r] for r in rows if r in taken), None)
            if clash is not None:
                raise SpliceError(
                    f"Identities at rows {clash} and {placement.row} overlap; "
                    f"each needs {ID_TOKENS} rows of its own."
                )
            taken.update(dict.fromkeys(rows, placement.row))
            fitted = fit_f_id(placement.f_id, original.shape[2], dtype=original.dtype, device=original.device)
            spliced[:, rows.start : rows.stop] = fitted
            multipliers[rows.start : rows.stop] = value
        return multipliers

    return _splice(cond, write)
