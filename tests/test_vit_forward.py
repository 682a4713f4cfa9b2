"""The fused tower forward computes what open_clip's own forward computes, with the same weights: on the
CPU with tiny towers of every supported variant, on CUDA in bf16 at the real towers' layer shapes. The
encoder at inference time must see the features it was trained on."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from encoder_fixtures import tiny_config, tiny_tower

from lib_magicnaming import vit_forward
from lib_magicnaming.factory import build_encoder
from lib_magicnaming.model import CLIP_G_TOWER, CLIP_L_TOWER, tower_model_config
from lib_magicnaming.towers import build_tower_module
from lib_magicnaming.vit_forward import (
    CompiledBlocks,
    fused_forward,
    residual_block,
    supports_fused_forward,
    tower_forward,
)


def tiny(**vision) -> torch.nn.Module:
    spec = tiny_tower("clip_l", 768, "tiny-l")
    spec.model_cfg["quick_gelu"] = vision.pop("quick_gelu", False)
    spec.model_cfg["vision_cfg"].update(vision)
    return build_tower_module(spec)


def relative_error(found: torch.Tensor, reference: torch.Tensor) -> float:
    found, reference = found.double(), reference.double()
    return float(torch.linalg.norm(found - reference) / torch.linalg.norm(reference))


def pixels(count: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "vision",
    [{}, {"quick_gelu": True}, {"ls_init_value": 0.5}, {"quick_gelu": True, "ls_init_value": 2.0},
     {"patch_size": 32, "image_size": 224}, {"mlp_ratio": 2.5, "head_width": 16}],
    ids=["gelu", "quick-gelu", "layer-scale", "quick-gelu-layer-scale", "patch-32", "mlp-2.5-4-heads"],
)
def test_fused_forward_equals_open_clip_on_supported_towers(vision):
    torch.manual_seed(1)
    tower = tiny(**vision)
    assert supports_fused_forward(tower)
    x = pixels(3)
    with torch.no_grad():
        torch.testing.assert_close(fused_forward(tower, x), tower(x), rtol=1e-5, atol=1e-5)
        state = {k: v.clone() for k, v in tower.state_dict().items()}
        fused_forward(tower, x)
    assert all(torch.equal(v, state[k]) for k, v in tower.state_dict().items())  # weights untouched


@pytest.mark.parametrize(
    "vision",
    [{"global_average_pool": True}, {"attentional_pool": True}, {"input_patchnorm": True},
     {"output_tokens": True}],
)
def test_towers_the_fused_path_does_not_implement_run_their_own_forward(vision):
    torch.manual_seed(2)
    spec = tiny_tower("clip_l", 768, "tiny-l")
    spec.model_cfg["vision_cfg"].update(vision)
    import open_clip.model as oc_model

    tower = oc_model._build_vision_tower(embed_dim=768, vision_cfg=spec.model_cfg["vision_cfg"]).eval()
    assert not supports_fused_forward(tower)
    x = pixels(2)
    with torch.no_grad():
        expected, found = tower(x), tower_forward(tower, x)
    if isinstance(expected, tuple):
        expected, found = expected[0], found[0]
    torch.testing.assert_close(found, expected, rtol=0, atol=0)


def test_a_tower_in_training_mode_or_with_an_unknown_block_is_not_fused():
    tower = tiny()
    assert not supports_fused_forward(copy.deepcopy(tower).train())
    odd = copy.deepcopy(tower)
    odd.transformer.resblocks[1].mlp.gelu = torch.nn.SiLU()
    assert not supports_fused_forward(odd)


def test_bf16_fused_features_are_as_close_to_float32_as_open_clips_own():
    torch.manual_seed(3)
    tower = tiny(quick_gelu=True)
    x = pixels(4, seed=3)
    with torch.no_grad():
        reference = tower(x)
        low = copy.deepcopy(tower).to(torch.bfloat16)
        own, fused = low(x.bfloat16()), fused_forward(low, x.bfloat16())
    assert relative_error(fused, reference) < 2e-2
    assert relative_error(fused, reference) < 1.5 * relative_error(own, reference) + 2e-3


def test_name_encoder_features_are_the_same_fused_or_not():
    config = tiny_config()
    torch.manual_seed(4)
    encoder = build_encoder(config, random_towers=True)
    x = pixels(2, seed=4)
    with torch.no_grad():
        fused = encoder.features(x)
        encoder.fused_towers = False
        plain = encoder.features(x)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_compiled_blocks_fall_back_to_eager_and_say_so_once(monkeypatch, caplog):
    def broken_compile(function, **kwargs):
        def compiled(*args):
            raise RuntimeError("Cannot find a working triton installation")

        return compiled

    monkeypatch.setattr(vit_forward.torch, "compile", broken_compile)
    blocks = CompiledBlocks()
    tower = tiny()
    x = pixels(2, seed=5)
    with caplog.at_level(logging.WARNING, logger="magicnaming"), torch.no_grad():
        first, second = fused_forward(tower, x, blocks), fused_forward(tower, x, blocks)
        expected = tower(x)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-5)
    assert blocks.failed == "RuntimeError: Cannot find a working triton installation"
    said = [r for r in caplog.records if "torch.compile of the tower blocks failed" in r.getMessage()]
    assert len(said) == 1

    def no_compile(function, **kwargs):
        raise RuntimeError("Windows not yet supported for torch.compile")

    monkeypatch.setattr(vit_forward.torch, "compile", no_compile)
    assert CompiledBlocks().failed.startswith("RuntimeError: Windows")


def real_width_tower(spec, layers: int = 2) -> torch.nn.Module:
    """The real tower's layer shapes (width, heads, MLP, patch, activation) with fewer layers."""
    cfg = tower_model_config(spec)
    cfg["vision_cfg"]["layers"] = layers
    custom = copy.deepcopy(spec)
    custom.model_cfg = cfg
    return build_tower_module(custom)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("spec", [CLIP_L_TOWER, CLIP_G_TOWER], ids=["ViT-L-14", "ViT-bigG-14"])
def test_cuda_bf16_fused_forward_at_real_layer_shapes(spec):
    torch.manual_seed(6)
    with torch.device("cuda"):
        tower = real_width_tower(spec)
    assert supports_fused_forward(tower)
    x = pixels(8, seed=6).cuda()
    with torch.inference_mode():
        reference = tower.double()(x.double()).float()
        low = tower.to(torch.bfloat16)
        own = low(x.bfloat16()).float()
        fused = fused_forward(low, x.bfloat16()).float()
    assert relative_error(fused, reference) < 2e-2
    assert relative_error(fused, reference) < 1.5 * relative_error(own, reference) + 2e-3
    if spec is CLIP_L_TOWER:  # compiling takes a while; bench/features.py compares bigG's compiled blocks
        blocks = CompiledBlocks()
        with torch.inference_mode():
            compiled = fused_forward(low, x.bfloat16(), blocks).float()
        assert blocks.failed is None
        assert relative_error(compiled, reference) < 1.5 * relative_error(own, reference) + 2e-3


def test_the_block_function_is_pure():
    tower = tiny()
    block = tower.transformer.resblocks[0]
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        args = vit_forward.block_arguments(block)
        torch.testing.assert_close(residual_block(x, *args), block(x.transpose(0, 1)).transpose(0, 1),
                                   rtol=1e-5, atol=1e-5)
