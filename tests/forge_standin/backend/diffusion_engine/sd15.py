"""Stand-in for Forge's backend/diffusion_engine/sd15.py: one CLIP-L engine, ``text_processing_engine``
(768 wide, hidden layer -1), ``get_learned_conditioning`` a bare ``(B, 77k, 768)`` tensor; not SDXL."""

import torch

from backend.diffusion_engine.base import clip_engine


class StableDiffusion:
    def __init__(self, estimated_config, huggingface_components):
        self.model_config = estimated_config
        self.text_processing_engine = clip_engine(
            huggingface_components, "text_encoder", "tokenizer", embedding_key="clip_l",
            embedding_expected_shape=768, text_projection=False, minimal_clip_skip=1, clip_skip=1,
            return_pooled=False, final_layer_norm=True,
        )
        self.is_sd1 = True
        self.is_sdxl = False

    def set_clip_skip(self, clip_skip):
        self.text_processing_engine.clip_skip = clip_skip

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt: list[str]):
        return self.text_processing_engine(prompt)
