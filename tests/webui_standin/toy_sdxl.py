"""A tiny deterministic SDXL-like model for the stand-in: two text towers behind the WebUI's own chunking.

Mirrors the shapes and plumbing of SDXL in the WebUI (modules/sd_models_xl.py, sgm's GeneralConditioner,
modules/sd_hijack.py wrapping each tower): a CLIP-L-like tower (768 wide) and a bigG-like tower (1280 wide)
both subclass the stand-in's ``TextConditionalModel`` (chunks of 75, BREAK, emphasis, TI fixes through
``EmbeddingsWithFixes``); ``get_learned_conditioning`` returns ``{'crossattn': (B, 77k, 2048),
'vector': (B, 2816)}``, zeros for an all-empty negative prompt. The refiner variant has only the bigG tower
(crossattn width 1280, vector 2560). The "transformer" is a causal running mean plus a fixed linear map, so
every row depends on the tokens before it, like a causal text encoder. The tokenizer splits text as CLIP's
pre-tokenizer does (letters, single digits, punctuation runs), one id per piece, ids from a CRC.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import zlib
from dataclasses import dataclass

import torch
from modules import prompt_parser, sd_hijack, sd_hijack_clip, shared

VOCAB = 49408
ID_START = 49406
ID_END = 49407
TABLE_ROWS = 2048
_PIECE_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)


def toy_token_ids(text: str) -> list[int]:
    """Token ids of ``text``: one per pre-tokenizer piece, lower-cased, no start/end tokens."""
    return [zlib.crc32(piece.encode()) % (ID_START - 1) + 1 for piece in _PIECE_RE.findall(text.lower())]


class _HashedTable(torch.nn.Module):
    """Token embedding: a fixed random table indexed by id modulo its size."""

    def __init__(self, width: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(
            torch.randn(TABLE_ROWS, width, generator=generator), requires_grad=False
        )

    def forward(self, input_ids):
        return self.weight[input_ids % TABLE_ROWS]


class ToyTower(sd_hijack_clip.TextConditionalModel):
    """One text encoder as the WebUI wraps it (FrozenCLIPEmbedderForSDXLWithCustomWords and its bigG twin)."""

    def __init__(self, width: int, textual_inversion_key: str, seed: int, return_pooled: bool):
        super().__init__()
        self.width = width
        self.textual_inversion_key = textual_inversion_key
        self.token_embedding = sd_hijack.EmbeddingsWithFixes(
            _HashedTable(width, seed), self.hijack, textual_inversion_key=textual_inversion_key
        )
        generator = torch.Generator().manual_seed(seed + 1)
        self.positions = torch.randn(77, width, generator=generator) * 0.1
        self.mix = torch.randn(width, width, generator=generator) / width**0.5
        self.return_pooled = return_pooled
        self.comma_token = toy_token_ids(",")[0]
        self.id_start = ID_START
        self.id_end = ID_END
        self.id_pad = ID_END if textual_inversion_key == "clip_l" else 0

    def tokenize(self, texts):
        return [toy_token_ids(text) for text in texts]

    def encode_with_transformers(self, tokens):
        x = self.token_embedding(tokens) + self.positions[: tokens.shape[1]]
        counts = torch.arange(1, tokens.shape[1] + 1, dtype=x.dtype).reshape(1, -1, 1)
        z = torch.tanh((x + torch.cumsum(x, dim=1) / counts) @ self.mix) + 0.25
        if self.return_pooled:
            end = [row.index(ID_END) if ID_END in row else len(row) - 1 for row in tokens.tolist()]
            z.pooled = z[torch.arange(z.shape[0]), torch.tensor(end)]
        return z


class ToyConditioner(torch.nn.Module):
    """sgm's GeneralConditioner as the WebUI patches it: tokenize/process_texts go to the first tower."""

    def __init__(self, embedders):
        super().__init__()
        self.embedders = torch.nn.ModuleList(embedders)

    def tokenize(self, texts):
        for embedder in [e for e in self.embedders if hasattr(e, "tokenize")]:
            return embedder.tokenize(texts)
        raise AssertionError("no tokenizer available")

    def process_texts(self, texts):
        for embedder in [e for e in self.embedders if hasattr(e, "process_texts")]:
            return embedder.process_texts(texts)

    def get_target_prompt_token_count(self, token_count):
        for embedder in [e for e in self.embedders if hasattr(e, "get_target_prompt_token_count")]:
            return embedder.get_target_prompt_token_count(token_count)


@dataclass(frozen=True)
class CheckpointInfo:
    """modules/sd_models.py's CheckpointInfo as it is once the checkpoint has loaded (hashed: ``sha256`` set,
    ``sd_model.sd_model_hash`` its first 10 characters). Here the "file" is the model's name."""

    name_for_extra: str
    title: str
    sha256: str | None = None
    filename: str = ""


def _size_embedding(values: torch.Tensor, dims: int = 256) -> torch.Tensor:
    """Sinusoidal embedding of each of (B, n) numbers into ``dims``, concatenated: (B, n * dims)."""
    half = dims // 2
    freqs = torch.exp(-torch.arange(half, dtype=torch.float32) * (9.21 / half))
    angles = values.unsqueeze(-1).float() * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).flatten(1)


class ToySDXL(torch.nn.Module):
    """The loaded checkpoint as processing sees it (``shared.sd_model``)."""

    def __init__(self, refiner: bool = False, name: str = "toy-sdxl"):
        super().__init__()
        self.is_sdxl = True
        self.is_sd1 = False
        self.is_sd2 = False
        self.refiner = refiner
        clip_g = ToyTower(1280, "clip_g", seed=2, return_pooled=True)
        if refiner:
            self.conditioner = ToyConditioner([clip_g])
            self.cond_stage_model = clip_g
        else:
            clip_l = ToyTower(768, "clip_l", seed=1, return_pooled=False)
            self.conditioner = ToyConditioner([clip_l, clip_g])
            self.cond_stage_model = self.conditioner
        sha256 = hashlib.sha256(name.encode()).hexdigest()
        self.sd_checkpoint_info = CheckpointInfo(name, f"{name}.safetensors [{sha256[:10]}]", sha256)
        self.sd_model_hash = sha256[:10]
        self.encoded_texts: list[str] = []

    @contextlib.contextmanager
    def ema_scope(self):
        yield

    def get_learned_conditioning(self, batch: prompt_parser.SdConditioning | list[str]):
        """modules/sd_models_xl.py's get_learned_conditioning: towers side by side, and vector."""
        self.encoded_texts.extend(batch)
        width = getattr(batch, "width", 1024) or 1024
        height = getattr(batch, "height", 1024) or 1024
        is_negative_prompt = getattr(batch, "is_negative_prompt", False)
        force_zero = is_negative_prompt and all(x == "" for x in batch)

        crossattn = []
        pooled = None
        for embedder in self.conditioner.embedders:
            out = embedder(list(batch))
            if isinstance(out, tuple):
                out, pooled = out
            crossattn.append(torch.zeros_like(out) if force_zero else out)
        if force_zero:
            pooled = torch.zeros_like(pooled)

        n = len(batch)
        opts = shared.opts
        if self.refiner:
            aesthetic = (
                opts.sdxl_refiner_low_aesthetic_score
                if is_negative_prompt
                else opts.sdxl_refiner_high_aesthetic_score
            )
            sizes = torch.tensor(
                [[height, width, opts.sdxl_crop_top, opts.sdxl_crop_left, aesthetic]]
            ).repeat(n, 1)
        else:
            sizes = torch.tensor(
                [[height, width, opts.sdxl_crop_top, opts.sdxl_crop_left, height, width]]
            ).repeat(n, 1)
        vector = torch.cat([pooled, _size_embedding(sizes)], dim=1)
        return {"crossattn": torch.cat(crossattn, dim=2), "vector": vector}


class ToySD15(torch.nn.Module):
    """A non-SDXL checkpoint: one 768-wide tower, conditioning is a bare (B, 77k, 768) tensor."""

    def __init__(self):
        super().__init__()
        self.is_sdxl = False
        self.is_sd1 = True
        self.is_sd2 = False
        self.cond_stage_model = ToyTower(768, "clip_l", seed=1, return_pooled=False)
        self.sd_checkpoint_info = CheckpointInfo("toy-sd15", "toy-sd15.safetensors")
        self.sd_model_hash = "abcdef0123"

    @contextlib.contextmanager
    def ema_scope(self):
        yield

    def get_learned_conditioning(self, batch):
        return self.cond_stage_model(list(batch))
