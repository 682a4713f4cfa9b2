"""A tiny deterministic SDXL-like model for the stand-in: two text towers behind the WebUI's own chunking.

Mirrors the shapes and plumbing of SDXL in the WebUI (modules/sd_models_xl.py, sgm's GeneralConditioner,
modules/sd_hijack.py wrapping each tower): a CLIP-L-like tower (768 wide) and a bigG-like tower (1280 wide)
both subclass the stand-in's ``TextConditionalModel`` (chunks of 75, BREAK, emphasis, TI fixes through
``EmbeddingsWithFixes``); ``get_learned_conditioning`` returns ``{'crossattn': (B, 77k, 2048),
'vector': (B, 2816)}``, zeros for an all-empty negative prompt. The refiner variant has only the bigG tower
(crossattn width 1280, vector 2560). Tokenizer and "transformer": toy_text.py.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch
from modules import prompt_parser, sd_hijack, sd_hijack_clip, shared
from toy_text import (
    COMMA_TOKEN,
    ID_END,
    ID_START,
    HashedTable,
    ToyEncoderWeights,
    end_rows,
    size_embedding,
    toy_token_ids,
)


class ToyTower(sd_hijack_clip.TextConditionalModel):
    """One text encoder as the WebUI wraps it (FrozenCLIPEmbedderForSDXLWithCustomWords and its bigG twin)."""

    def __init__(self, width: int, textual_inversion_key: str, seed: int, return_pooled: bool):
        super().__init__()
        self.width = width
        self.textual_inversion_key = textual_inversion_key
        self.token_embedding = sd_hijack.EmbeddingsWithFixes(
            HashedTable(width, seed), self.hijack, textual_inversion_key=textual_inversion_key
        )
        self.weights = ToyEncoderWeights(width, seed)
        self.return_pooled = return_pooled
        self.comma_token = COMMA_TOKEN
        self.id_start = ID_START
        self.id_end = ID_END
        self.id_pad = ID_END if textual_inversion_key == "clip_l" else 0

    def tokenize(self, texts):
        return [toy_token_ids(text) for text in texts]

    def encode_with_transformers(self, tokens):
        z = self.weights.encode(self.token_embedding(tokens))
        if self.return_pooled:
            z.pooled = end_rows(tokens, z)
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
        vector = torch.cat([pooled, size_embedding(sizes)], dim=1)
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
