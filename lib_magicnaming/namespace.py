"""Name-space math: identities from names, weighted mixes, and averages of photo embeddings.

An identity is a point F_ID (8 x W, W = 2048 for SDXL) in SDXL's "name space". A name's F_ID is rows
ID_FIRST_ROW .. ID_FIRST_ROW + 7 of the name's own prompt encoding (method.md decision 1): the rows right
after the start token. Nothing here imports the WebUI: the caller passes a function that encodes texts.

Mixing (``mix_embeddings``):

* ``"linear"``: the weighted sum of the embeddings (weights normalised to sum 1).
* ``"slerp"``: per token row. Each row is split into a length and a direction; lengths are mixed linearly and
  directions along the sphere. For two inputs this is the classic slerp with ``t`` = the second weight. For
  more, the direction is the weighted spherical mean (the Karcher/Frechet mean on the unit sphere, found by
  a few Riemannian gradient steps from the normalised weighted mean of directions): it does not depend on the
  order of the inputs, gives the slerp for two inputs and an input itself when that input has all the weight.
  Where directions are undefined or too far apart for a unique spherical mean (a zero row, opposite rows,
  directions whose weighted mean is about zero) that row is mixed linearly instead. Parallel rows need no
  special case: their slerp and their linear mix are the same vector.

Statistics and sampling (``NamespaceStats``): a Gaussian fitted to the training names' F_IDs (mean and the
top principal axes), which an encoder checkpoint carries; a seed draws a fictional person from it. Their
errors are EncoderError, as the statistics come from (and are checked with) an encoder checkpoint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lib_magicnaming.constants import CHUNK_ROWS, ID_FIRST_ROW, ID_TOKENS, SDXL_CONTEXT_WIDTH
from lib_magicnaming.errors import EncoderError, NamespaceError
from lib_magicnaming.tags import NUMBER_RE

EncodeTexts = Callable[[list[str]], torch.Tensor]
"""Encodes texts like the WebUI's ``get_learned_conditioning(texts)['crossattn']``: (N, 77*k, W)."""

MIX_METHODS = ("linear", "slerp")

_TERM_RE = re.compile(
    r"\s*(?:(?P<weight>" + NUMBER_RE.pattern + r")(?:\s*\*\s*|\s+))?(?P<name>.*?)\s*", re.DOTALL
)
_QUOTE = '"'
_DEGENERATE_SIN = 1e-6
_KARCHER_STEPS = 100
_KARCHER_TOLERANCE = 1e-12


def f_id_from_encoding(encoding: torch.Tensor) -> torch.Tensor:
    """A name's F_ID: rows 1..8 of its encoding (77k, W) or (1, 77k, W), as a new (8, W) tensor.

    dtype and device are kept. Raises :class:`NamespaceError` for any other shape.
    """
    if not isinstance(encoding, torch.Tensor):
        raise NamespaceError(f"A name's encoding must be a tensor, not {type(encoding).__name__}.")
    rows = encoding
    if rows.dim() == 3 and rows.shape[0] == 1:
        rows = rows[0]
    if rows.dim() != 2 or rows.shape[0] == 0 or rows.shape[0] % CHUNK_ROWS:
        raise NamespaceError(
            f"A name's encoding must be ({CHUNK_ROWS}*k, width) or (1, {CHUNK_ROWS}*k, width); "
            f"got shape {tuple(encoding.shape)}."
        )
    return rows[ID_FIRST_ROW : ID_FIRST_ROW + ID_TOKENS].clone()


def _checked_names(names: Sequence[str]) -> list[str]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise NamespaceError("Names to encode must be a list of texts.")
    if not names:
        raise NamespaceError("No names to encode.")
    checked = []
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise NamespaceError(f"Name {index + 1} of {len(names)} is empty or not text: {name!r}.")
        checked.append(name.strip())
    return checked


def encode_names_f_id(encode_texts: EncodeTexts, names: Sequence[str]) -> torch.Tensor:
    """F_IDs (N, 8, W) of names, each encoded alone through ``encode_texts`` in one call.

    ``encode_texts(list_of_texts)`` must return (N, 77*k, W) like the WebUI's
    ``get_learned_conditioning(texts)['crossattn']``; a dict holding 'crossattn' is accepted too. Names are
    stripped of surrounding blanks; an empty name raises :class:`NamespaceError`.
    """
    texts = _checked_names(names)
    encoded = encode_texts(texts)
    if isinstance(encoded, dict) and "crossattn" in encoded:
        encoded = encoded["crossattn"]
    if not isinstance(encoded, torch.Tensor) or encoded.dim() != 3 or encoded.shape[0] != len(texts):
        shape = tuple(encoded.shape) if isinstance(encoded, torch.Tensor) else type(encoded).__name__
        raise NamespaceError(
            f"Encoding {len(texts)} name(s) must give ({len(texts)}, {CHUNK_ROWS}*k, width); got {shape}."
        )
    return torch.stack([f_id_from_encoding(item) for item in encoded])


def _split_terms(text: str) -> list[str]:
    """Split on '+' outside double quotes; raise for an unterminated quote."""
    terms, current, quoted = [], [], False
    for char in text:
        if char == _QUOTE:
            quoted = not quoted
        if char == "+" and not quoted:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise NamespaceError(f"Unterminated quote in {text!r}: close the name with '\"'.")
    terms.append("".join(current))
    return terms


def _parse_term(term: str, index: int, text: str) -> tuple[str, float]:
    match = _TERM_RE.fullmatch(term)
    weight_text, name = match.group("weight"), match.group("name")
    if weight_text is None and NUMBER_RE.fullmatch(name):
        weight_text, name = name, ""
    if name.startswith(_QUOTE):
        if not name.endswith(_QUOTE) or len(name) < 2 or name.count(_QUOTE) != 2:
            raise NamespaceError(f"Term {index} of {text!r} ({term.strip()!r}): text after a quoted name.")
        name = name[1:-1].strip()
    elif _QUOTE in name:
        raise NamespaceError(
            f"Term {index} of {text!r} ({term.strip()!r}): quote a whole name, or none of it."
        )
    if not name:
        what = f"has weight {weight_text} but no name" if weight_text else "is empty"
        raise NamespaceError(f"Term {index} of {text!r} {what}; write e.g. '0.6 alice + 0.4 bob'.")
    weight = 1.0 if weight_text is None else float(weight_text)
    if not math.isfinite(weight) or weight < 0:
        raise NamespaceError(
            f"The weight of {name!r} in {text!r} is {weight_text}; weights must be finite numbers >= 0."
        )
    return name, weight


def parse_weighted_names(text: str) -> list[tuple[str, float]]:
    """Parse ``"0.6 Keanu Reeves + 0.4 Emma Stone"`` into ``[("Keanu Reeves", 0.6), ("Emma Stone", 0.4)]``.

    Terms are separated by ``+``. A term is an optional weight (a decimal number, followed by blanks or
    ``*``) and a name (free text). Without a weight a term weighs 1: ``"alice"`` gives ``[("alice", 1.0)]``.
    A name that starts with a number or holds ``+`` is written in double quotes: ``0.5 "50 Cent" + 0.5 bob``.
    Weights are returned as written (not normalised); negative or non-finite ones, empty terms and a weight
    without a name raise :class:`NamespaceError`.
    """
    if not isinstance(text, str) or not text.strip():
        raise NamespaceError("No names given; write e.g. 'alice' or '0.6 alice + 0.4 bob'.")
    return [_parse_term(term, index + 1, text) for index, term in enumerate(_split_terms(text))]


def normalise_weights(weights: Sequence[float]) -> list[float]:
    """Weights scaled to sum 1, after checking they are finite numbers >= 0, not all zero.

    Raises :class:`NamespaceError` naming the offending weight.
    """
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence) or len(weights) == 0:
        raise NamespaceError("Weights must be a non-empty list of numbers.")
    values = []
    for index, weight in enumerate(weights):
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise NamespaceError(f"Weight {index + 1} is {weight!r}; weights must be numbers.")
        try:
            value = float(weight)
        except OverflowError:  # an int beyond float range
            value = math.inf
        if not math.isfinite(value):
            raise NamespaceError(f"Weight {index + 1} is {weight}; weights must be finite.")
        if value < 0:
            raise NamespaceError(f"Weight {index + 1} is {weight}; weights must be >= 0.")
        values.append(value)
    largest = max(values)
    if largest <= 0:
        raise NamespaceError("All weights are zero; at least one must be positive.")
    scaled = [value / largest for value in values]  # the sum of weights near float's maximum would overflow
    total = math.fsum(scaled)
    return [value / total for value in scaled]


def _stacked(embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N, rows, W) float64 on the first embedding's device, checked: same 2-D shape, finite values."""
    if isinstance(embeddings, torch.Tensor) or not isinstance(embeddings, Sequence) or len(embeddings) == 0:
        raise NamespaceError("Embeddings must be a non-empty list of tensors.")
    first = embeddings[0]
    for index, embedding in enumerate(embeddings):
        if not isinstance(embedding, torch.Tensor) or not embedding.is_floating_point():
            raise NamespaceError(f"Embedding {index + 1} is not a floating-point tensor.")
        if embedding.dim() != 2 or embedding.shape != first.shape:
            raise NamespaceError(
                f"Embeddings must all be (tokens, width) of one shape; embedding {index + 1} has shape "
                f"{tuple(embedding.shape)}, embedding 1 has {tuple(first.shape)}."
            )
        if not bool(torch.isfinite(embedding).all()):
            raise NamespaceError(f"Embedding {index + 1} holds NaN or infinite values.")
    return torch.stack([e.to(device=first.device, dtype=torch.float64) for e in embeddings])


def _result_dtype(embeddings: Sequence[torch.Tensor]) -> torch.dtype:
    dtype = torch.float32
    for embedding in embeddings:
        dtype = torch.promote_types(dtype, embedding.dtype)
    return dtype


def _linear(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (stack * weights.reshape(-1, 1, 1)).sum(dim=0)


def _slerp_pair(first: torch.Tensor, second: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Slerp of unit directions (rows, W); returns (directions, rows where slerp is well defined)."""
    cos = (first * second).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    angle = torch.arccos(cos)
    sin = torch.sin(angle)
    defined = (sin > _DEGENERATE_SIN) & (cos > -1 + _DEGENERATE_SIN)
    safe_sin = torch.where(defined, sin, torch.ones_like(sin))
    mixed = (torch.sin((1 - t) * angle) * first + torch.sin(t * angle) * second) / safe_sin
    return mixed, defined.squeeze(-1)


def _karcher_mean(directions: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted spherical mean of unit directions (N, rows, W); returns (mean, rows where it is defined)."""
    w = weights.reshape(-1, 1, 1)
    start = (directions * w).sum(dim=0)
    start_norm = start.norm(dim=-1, keepdim=True)
    defined = (start_norm > _DEGENERATE_SIN).squeeze(-1)
    mean = start / torch.where(start_norm > _DEGENERATE_SIN, start_norm, torch.ones_like(start_norm))
    for _ in range(_KARCHER_STEPS):
        cos = (directions * mean).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
        angle = torch.arccos(cos)
        tangent = directions - cos * mean
        tangent_norm = tangent.norm(dim=-1, keepdim=True)
        scale = torch.where(tangent_norm > 0, angle / tangent_norm.clamp_min(1e-300), torch.zeros_like(angle))
        step = (w * tangent * scale).sum(dim=0)
        step_norm = step.norm(dim=-1, keepdim=True)
        direction = step / step_norm.clamp_min(1e-300)
        mean = torch.cos(step_norm) * mean + torch.sin(step_norm) * direction
        mean = mean / mean.norm(dim=-1, keepdim=True)
        if float(step_norm.max()) < _KARCHER_TOLERANCE:
            break
    return mean, defined


def _slerp(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    norms = stack.norm(dim=-1, keepdim=True)
    nonzero = (norms > 0).all(dim=0).squeeze(-1)
    directions = stack / torch.where(norms > 0, norms, torch.ones_like(norms))
    if stack.shape[0] == 2:
        direction, defined = _slerp_pair(directions[0], directions[1], float(weights[1]))
    else:
        direction, defined = _karcher_mean(directions, weights)
    mixed = direction * (norms * weights.reshape(-1, 1, 1)).sum(dim=0)
    use_slerp = (defined & nonzero).unsqueeze(-1)
    return torch.where(use_slerp, mixed, _linear(stack, weights))


def mix_embeddings(
    embeddings: Sequence[torch.Tensor], weights: Sequence[float], method: str = "linear"
) -> torch.Tensor:
    """Weighted mix of identity embeddings of one shape (tokens, W); weights are normalised first.

    ``method`` is ``"linear"`` or ``"slerp"`` (per token row; see the module docstring for more than two
    inputs and degenerate rows). The math runs in float64; the result is float32 (or float64 if an input is)
    on the first embedding's device. Raises :class:`NamespaceError` for bad weights, shapes or method.
    """
    if method not in MIX_METHODS:
        raise NamespaceError(f"Unknown mix method {method!r}; use one of {', '.join(MIX_METHODS)}.")
    stack = _stacked(embeddings)
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence) or len(weights) != len(stack):
        count = len(weights) if isinstance(weights, Sequence) else type(weights).__name__
        raise NamespaceError(f"{len(stack)} embedding(s) need as many weights; got {count}.")
    normalised = torch.tensor(normalise_weights(weights), dtype=torch.float64, device=stack.device)
    if method == "linear" or len(stack) == 1:
        mixed = _linear(stack, normalised)
    else:
        mixed = _slerp(stack, normalised)
    return mixed.to(_result_dtype(embeddings))


def identity_from_names(
    encode_texts: EncodeTexts, weighted_names: Sequence[tuple[str, float]], method: str = "linear"
) -> torch.Tensor:
    """An identity (8, W) from names with weights, e.g. ``parse_weighted_names("0.6 alice + 0.4 bob")``.

    Each name is encoded alone (see :func:`encode_names_f_id`), its F_ID taken, and the F_IDs mixed with
    :func:`mix_embeddings`. One name gives its F_ID as float32.
    """
    if isinstance(weighted_names, str) or not isinstance(weighted_names, Sequence) or not weighted_names:
        raise NamespaceError("Give at least one (name, weight) pair.")
    names = [pair[0] for pair in weighted_names]
    weights = [pair[1] for pair in weighted_names]
    normalise_weights(weights)  # refuse bad weights before spending time encoding
    f_ids = encode_names_f_id(encode_texts, names)
    return mix_embeddings(list(f_ids), weights, method)


def average_embeddings(embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of several embeddings of one identity (e.g. one per photo): equal-weight linear mix."""
    count = len(embeddings) if isinstance(embeddings, Sequence) else 0
    return mix_embeddings(embeddings, [1.0] * max(count, 1), "linear")


# ------------------------------------------------------------------------- statistics and sampling


@dataclass
class NamespaceStats:
    """Name-space statistics for sampling fictional identities: mean + basis.T @ (scales * z)."""

    mean: torch.Tensor
    basis: torch.Tensor
    scales: torch.Tensor

    def validate(self, tokens: int = ID_TOKENS, width: int = SDXL_CONTEXT_WIDTH) -> NamespaceStats:
        """Raise EncoderError naming the bad tensor (shape, rank agreement, non-finite, negative scale)."""
        if tuple(self.mean.shape) != (tokens, width):
            raise EncoderError(
                f"namespace.mean has shape {tuple(self.mean.shape)}, expected ({tokens}, {width})"
            )
        if self.basis.ndim != 2 or self.basis.shape[1] != tokens * width:
            raise EncoderError(
                f"namespace.basis has shape {tuple(self.basis.shape)}, expected (rank, {tokens * width})"
            )
        if tuple(self.scales.shape) != (self.basis.shape[0],):
            raise EncoderError(
                f"namespace.scales has shape {tuple(self.scales.shape)}, expected ({self.basis.shape[0]},) "
                "(one scale per basis row)"
            )
        for key, tensor in (("mean", self.mean), ("basis", self.basis), ("scales", self.scales)):
            if not tensor.is_floating_point():
                raise EncoderError(f"namespace.{key} must be floating point, got {tensor.dtype}")
            if not bool(torch.isfinite(tensor).all()):
                raise EncoderError(f"namespace.{key} holds non-finite values (NaN or inf)")
        if bool((self.scales < 0).any()):
            raise EncoderError("namespace.scales holds negative values")
        return self

    @property
    def rank(self) -> int:
        """Number of basis rows."""
        return int(self.basis.shape[0])


def sample_namespace(stats: NamespaceStats, seed: int, scale: float = 1.0) -> torch.Tensor:
    """A fictional identity: mean + basis.T @ (scales * z * scale), z ~ N(0, 1) from ``seed`` (CPU float32).

    The same seed and scale always give the same (ID_TOKENS, width) tensor, on any machine.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise EncoderError(f"seed must be an integer, got {seed!r}")
    if not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
        raise EncoderError(f"scale must be a finite number >= 0, got {scale!r}")
    generator = torch.Generator(device="cpu").manual_seed(seed % (1 << 63))
    z = torch.randn(stats.rank, generator=generator, dtype=torch.float32)
    offset = (stats.scales.float() * z * float(scale)) @ stats.basis.float()
    return stats.mean.float() + offset.reshape(stats.mean.shape)


def namespace_stats_from_embeddings(embeddings: torch.Tensor, rank: int) -> NamespaceStats:
    """Fit name-space statistics to (N, ID_TOKENS, width) name embeddings: mean and top-``rank`` PCA axes.

    ``basis`` rows are orthonormal principal directions of the flattened embeddings; ``scales`` are the
    standard deviations along them, so :func:`sample_namespace` draws from a Gaussian fitted to the names.
    The directions come from the N x N Gram matrix of the centred embeddings (in float64), which gives the
    SVD's directions at a fraction of its cost while N is below the 16,384 values of an embedding (an SVD of
    1,232 names took 47 s on two CPU cores, this takes about one). Each direction's sign is fixed (its
    largest entry is positive), so the same embeddings give the same statistics whatever the linear algebra
    library. Directions along which the names do not spread at all are left out.
    """
    if embeddings.ndim != 3 or embeddings.shape[0] < 2:
        raise EncoderError(f"need (N >= 2, tokens, width) embeddings, got {tuple(embeddings.shape)}")
    flat = embeddings.detach().float().reshape(embeddings.shape[0], -1)
    mean = flat.mean(dim=0)
    centred = (flat - mean).double()
    rank = max(0, min(int(rank), flat.shape[0] - 1, flat.shape[1]))
    if flat.shape[0] <= flat.shape[1]:
        eigenvalues, eigenvectors = torch.linalg.eigh(centred @ centred.T)
        order = torch.argsort(eigenvalues, descending=True)[:rank]
        singular = eigenvalues[order].clamp_min(0).sqrt()
        basis = (eigenvectors[:, order].T @ centred) / singular.clamp_min(1e-300).unsqueeze(1)
    else:
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
        singular, basis = singular[:rank], vh[:rank]
    spread = singular > singular[:1].clamp_min(1e-300) * 1e-6 if rank else singular > 0
    singular, basis = singular[spread], basis[spread]
    largest = basis.abs().argmax(dim=1, keepdim=True)
    basis = basis * torch.sign(basis.gather(1, largest))
    scales = singular / math.sqrt(flat.shape[0] - 1)
    return NamespaceStats(
        mean=mean.reshape(embeddings.shape[1:]).clone(), basis=basis.float().contiguous(),
        scales=scales.float().contiguous(),
    ).validate(embeddings.shape[1], embeddings.shape[2])

EXACT_SVD_MAX_NAMES = 4096
"""Up to this many names the basis comes from an exact SVD; beyond, from torch.pca_lowrank."""


def fit_namespace_stats(f_id: torch.Tensor, rank: int) -> NamespaceStats:
    """Mean and top-``rank`` principal axes (with standard deviations) of (N, 8, W) name embeddings.

    The one rule for fitting name-space statistics: the training export stage (an encoder checkpoint's) and
    the statistics of a loaded checkpoint (:mod:`lib_magicnaming.namespace_cache`) both call it. Up to
    EXACT_SVD_MAX_NAMES names it is :func:`namespace_stats_from_embeddings` (an exact SVD); beyond, a
    randomised PCA drawn with a fixed seed, so the same embeddings always give the same statistics.
    """
    if f_id.shape[0] <= EXACT_SVD_MAX_NAMES:
        return namespace_stats_from_embeddings(f_id, rank)
    flat = f_id.float().reshape(f_id.shape[0], -1)
    mean = flat.mean(dim=0)
    rank = min(rank, flat.shape[0] - 1)
    with torch.random.fork_rng(devices=[]):  # pca_lowrank draws a random sketch: same targets, same file
        torch.manual_seed(0)
        _, singular, v = torch.pca_lowrank(flat - mean, q=rank, center=False, niter=4)
    return NamespaceStats(
        mean=mean.reshape(f_id.shape[1:]),
        basis=v.T.contiguous(),
        scales=singular / math.sqrt(flat.shape[0] - 1),
    ).validate(f_id.shape[1], f_id.shape[2])
