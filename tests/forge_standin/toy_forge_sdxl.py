"""The toys behind the Forge stand-in's ``backend``: tokenizers and text encoders shaped as Forge uses
transformers' (``tokenizer(texts, truncation=False, add_special_tokens=False)['input_ids']``, ``get_vocab()``,
``bos/eos/pad_token_id``; ``text_encoder.transformer.text_model.embeddings.token_embedding``,
``transformer(tokens, output_hidden_states=True)`` with ``hidden_states`` and ``pooler_output``,
``transformer.text_projection``), and the checkpoints ``backend.loader.forge_loader`` builds by file name.

The arithmetic is toy_text.py's, as in the v1.10.1 stand-in: hidden layer -2 (SDXL's layer for both
encoders) is that stand-in's tower output and the pooled output its end-token row, with an identity text
projection, so both stand-ins encode a text to the same numbers. Layer -1 differs from -2, so a clip skip
setting changes the result as in the real encoders.
"""

from __future__ import annotations

import hashlib
import types
from dataclasses import dataclass

import torch
from backend.diffusion_engine.sd15 import StableDiffusion
from backend.diffusion_engine.sdxl import StableDiffusionXL, StableDiffusionXLRefiner
from toy_text import COMMA_TOKEN, ID_END, ID_START, HashedTable, ToyEncoderWeights, end_rows, toy_token_ids


class ToyTokenizer:
    """transformers' CLIPTokenizer as Forge calls it (SDXL's second tokenizer pads with id 0)."""

    bos_token_id = ID_START
    eos_token_id = ID_END

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, texts, truncation=False, add_special_tokens=False):
        return {"input_ids": [toy_token_ids(text) for text in texts]}

    def get_vocab(self):
        return {",</w>": COMMA_TOKEN}


class ToyCLIPTextTransformer(torch.nn.Module):
    """transformers' CLIPTextModel(WithProjection): ``text_model.embeddings.token_embedding`` (Forge wraps it
    for textual inversion), ``hidden_states`` per layer and ``pooler_output``."""

    def __init__(self, width: int, seed: int):
        super().__init__()
        self.text_model = torch.nn.Module()
        self.text_model.embeddings = torch.nn.Module()
        self.text_model.embeddings.token_embedding = HashedTable(width, seed)
        self.text_model.final_layer_norm = torch.nn.LayerNorm(width, elementwise_affine=False)
        self.weights = ToyEncoderWeights(width, seed)
        self.text_projection = torch.nn.Identity()

    def forward(self, input_ids, output_hidden_states=True):
        x = self.text_model.embeddings.token_embedding(input_ids)
        penultimate = self.weights.encode(x)
        last = torch.tanh(penultimate @ self.weights.mix)
        return types.SimpleNamespace(
            hidden_states=(x, penultimate, last), pooler_output=end_rows(input_ids, penultimate)
        )


class ToyTextEncoder:
    """What Forge's CLIP patcher hands an engine: the encoder is at ``.transformer``."""

    def __init__(self, width: int, seed: int):
        self.transformer = ToyCLIPTextTransformer(width, seed)


def sdxl_components(refiner: bool = False) -> dict:
    if refiner:
        return {"text_encoder": ToyTextEncoder(1280, seed=2), "tokenizer": ToyTokenizer(0)}
    return {
        "text_encoder": ToyTextEncoder(768, seed=1),
        "tokenizer": ToyTokenizer(ID_END),
        "text_encoder_2": ToyTextEncoder(1280, seed=2),
        "tokenizer_2": ToyTokenizer(0),
    }


class RecordingMixin:
    """Records every text the model encodes (``encoded_texts``), to see the conditioning cache work."""

    def get_learned_conditioning(self, prompt):
        self.__dict__.setdefault("encoded_texts", []).extend(prompt)
        return super().get_learned_conditioning(prompt)


class ToyForgeSDXL(RecordingMixin, StableDiffusionXL):
    pass


class ToyForgeSDXLRefiner(RecordingMixin, StableDiffusionXLRefiner):
    pass


class ToyForgeSD15(RecordingMixin, StableDiffusion):
    pass


@dataclass(eq=False, repr=False)
class CheckpointInfo:
    """modules/sd_models.py's CheckpointInfo, as far as processing, infotext and the name-space cache read
    it: ``sha256`` is None until ``calculate_shorthash()`` hashes the file (here its name), sets it and
    returns its first 10 characters (``forge_model_reload`` calls it at every load). A plain class's repr,
    as the real one's: ``forge_model_reload`` compares ``str(forge_loading_parameters)``, which holds it."""

    filename: str
    name_for_extra: str
    title: str
    sha256: str | None = None

    def calculate_shorthash(self):
        self.sha256 = hashlib.sha256(self.filename.encode()).hexdigest()
        return self.sha256[:10]


CHECKPOINTS = {
    "sdxl": (CheckpointInfo("toy-sdxl.safetensors", "toy-sdxl", "toy-sdxl.safetensors"),
             lambda: ToyForgeSDXL(None, sdxl_components())),
    "refiner": (CheckpointInfo("toy-refiner.safetensors", "toy-refiner", "toy-refiner.safetensors"),
                lambda: ToyForgeSDXLRefiner(None, sdxl_components(refiner=True))),
    "sd15": (CheckpointInfo("toy-sd15.safetensors", "toy-sd15", "toy-sd15.safetensors"),
             lambda: ToyForgeSD15(None, {"text_encoder": ToyTextEncoder(768, seed=1),
                                         "tokenizer": ToyTokenizer(ID_END)})),
}
"""Checkpoint kind -> (its CheckpointInfo, what forge_loader builds from its file)."""


def build_model(filename: str):
    """``forge_loader`` for a toy checkpoint's file name."""
    for info, build in CHECKPOINTS.values():
        if info.filename == filename:
            return build()
    raise ValueError("Failed to recognize model type!")
