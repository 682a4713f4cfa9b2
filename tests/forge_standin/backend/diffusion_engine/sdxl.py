"""Stand-in for Forge's backend/diffusion_engine/sdxl.py (dfdcbab6; Forge Neo 283cb2c4 alike): the loaded
SDXL checkpoint as processing sees it.

Kept as in the real file: two ``ClassicTextProcessingEngine``s, ``text_processing_engine_l`` (CLIP-L: hidden
layer -2, no pooled output) and ``text_processing_engine_g`` (bigG: layer -2, pooled output through the text
projection), both with ``embedding_key`` 'clip_l'/'clip_g', ``embedding_expected_shape`` 2048 and
``minimal_clip_skip`` 2, built with the embeddings folder from ``dynamic_args``; ``set_clip_skip``;
``get_learned_conditioning`` under ``torch.inference_mode`` (its tensors are inference tensors) returning
``dict(crossattn=cat([cond_l, cond_g], dim=2), vector=cat([pooled, size embeddings], dim=1))``, zeros for an
all-empty negative prompt; ``is_sdxl``. The refiner has only ``text_processing_engine_g`` (crossattn 1280
wide, an aesthetic score in ``vector``). Left out: the U-Net, VAE and memory management (``forge_objects``).
The size embedding (``Timestep(256)`` of height, width, crop top/left, target height/width) is the toy's.
"""

import torch
from modules.shared import opts
from toy_text import size_embedding

from backend.diffusion_engine.base import clip_engine

SDXL_ENGINE = dict(embedding_expected_shape=2048, minimal_clip_skip=2, clip_skip=2, final_layer_norm=False)
"""What both SDXL engines (and the refiner's) are built with, besides their encoder and pooled output."""
CLIP_L_ENGINE = dict(SDXL_ENGINE, embedding_key="clip_l", text_projection=False, return_pooled=False)
CLIP_G_ENGINE = dict(SDXL_ENGINE, embedding_key="clip_g", text_projection=True, return_pooled=True)


class StableDiffusionXL:
    def __init__(self, estimated_config, huggingface_components):
        self.model_config = estimated_config

        parts = huggingface_components
        self.text_processing_engine_l = clip_engine(parts, "text_encoder", "tokenizer", **CLIP_L_ENGINE)
        self.text_processing_engine_g = clip_engine(parts, "text_encoder_2", "tokenizer_2", **CLIP_G_ENGINE)

        self.is_sdxl = True

    def set_clip_skip(self, clip_skip):
        self.text_processing_engine_l.clip_skip = clip_skip
        self.text_processing_engine_g.clip_skip = clip_skip

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]):
        cond_l = self.text_processing_engine_l(prompt)
        cond_g, clip_pooled = self.text_processing_engine_g(prompt)

        width = getattr(prompt, "width", 1024) or 1024
        height = getattr(prompt, "height", 1024) or 1024
        is_negative_prompt = getattr(prompt, "is_negative_prompt", False)

        crop_w = opts.sdxl_crop_left
        crop_h = opts.sdxl_crop_top
        sizes = torch.tensor([[height, width, crop_h, crop_w, height, width]])
        flat = size_embedding(sizes).repeat(clip_pooled.shape[0], 1).to(clip_pooled)

        force_zero_negative_prompt = is_negative_prompt and all(x == "" for x in prompt)

        if force_zero_negative_prompt:
            clip_pooled = torch.zeros_like(clip_pooled)
            cond_l = torch.zeros_like(cond_l)
            cond_g = torch.zeros_like(cond_g)

        return dict(
            crossattn=torch.cat([cond_l, cond_g], dim=2),
            vector=torch.cat([clip_pooled, flat], dim=1),
        )

    @torch.inference_mode()
    def get_prompt_lengths_on_ui(self, prompt):
        _, token_count = self.text_processing_engine_l.process_texts([prompt])
        return token_count, token_count


class StableDiffusionXLRefiner:
    def __init__(self, estimated_config, huggingface_components):
        self.model_config = estimated_config

        parts = huggingface_components
        self.text_processing_engine_g = clip_engine(parts, "text_encoder", "tokenizer", **CLIP_G_ENGINE)

        self.is_sdxl = True

    def set_clip_skip(self, clip_skip):
        self.text_processing_engine_g.clip_skip = clip_skip

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]):
        cond_g, clip_pooled = self.text_processing_engine_g(prompt)

        width = getattr(prompt, "width", 1024) or 1024
        height = getattr(prompt, "height", 1024) or 1024
        is_negative_prompt = getattr(prompt, "is_negative_prompt", False)

        aesthetic = (
            opts.sdxl_refiner_low_aesthetic_score
            if is_negative_prompt
            else opts.sdxl_refiner_high_aesthetic_score
        )
        sizes = torch.tensor([[height, width, opts.sdxl_crop_top, opts.sdxl_crop_left, aesthetic]])
        flat = size_embedding(sizes).repeat(clip_pooled.shape[0], 1).to(clip_pooled)

        if is_negative_prompt and all(x == "" for x in prompt):
            clip_pooled = torch.zeros_like(clip_pooled)
            cond_g = torch.zeros_like(cond_g)

        return dict(crossattn=cond_g, vector=torch.cat([clip_pooled, flat], dim=1))
