"""Tiny encoder configurations shared by the encoder's tests (imported explicitly, not via conftest)."""

from __future__ import annotations

import copy

import torch

from lib_magicnaming.constants import CLIP_G_WIDTH, CLIP_L_WIDTH, ID_TOKENS, SDXL_CONTEXT_WIDTH
from lib_magicnaming.model import EncoderConfig, HeadConfig, NameHead, TowerSpec, init_head_

TINY_VISION = {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 56}


def tiny_tower(name: str, embed_dim: int, arch: str) -> TowerSpec:
    """A two-layer, 64-wide ViT tower with the real projected width (custom open_clip config)."""
    cfg = {"embed_dim": embed_dim, "vision_cfg": copy.deepcopy(TINY_VISION), "quick_gelu": False}
    return TowerSpec(name=name, arch=arch, pretrained="random", embed_dim=embed_dim, model_cfg=cfg)


def tiny_config(hidden_dim: int = 32) -> EncoderConfig:
    """Tiny towers (768 + 1280 projected, like the real ones) and a narrow head."""
    return EncoderConfig(
        towers=[tiny_tower("clip_l", CLIP_L_WIDTH, "tiny-l"), tiny_tower("clip_g", CLIP_G_WIDTH, "tiny-g")],
        head=HeadConfig(in_dim=SDXL_CONTEXT_WIDTH, hidden_dim=hidden_dim),
    )


def tiny_head_state(config: EncoderConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A deterministic, non-trivial head state dict for ``config`` (biases non-zero too)."""
    generator = torch.Generator().manual_seed(seed)
    head = init_head_(NameHead(config.head), out_std=0.5, generator=generator)
    with torch.no_grad():
        head.fc3.bias.copy_(torch.randn(head.fc3.bias.shape, generator=generator))
    return {k: v.clone() for k, v in head.state_dict().items()}


def random_embeddings(count: int, seed: int = 0) -> torch.Tensor:
    """(count, ID_TOKENS, SDXL_CONTEXT_WIDTH) random name embeddings."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, ID_TOKENS, SDXL_CONTEXT_WIDTH, generator=generator)
