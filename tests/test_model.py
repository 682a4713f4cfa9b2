"""The name encoder's architecture: towers, head, configs."""

from __future__ import annotations

import pytest
import torch
from encoder_fixtures import tiny_config, tiny_head_state, tiny_tower

from lib_magicnaming.constants import CLIP_G_WIDTH, CLIP_L_WIDTH, ID_TOKENS, SDXL_CONTEXT_WIDTH
from lib_magicnaming.errors import EncoderError
from lib_magicnaming.factory import build_encoder
from lib_magicnaming.model import (
    EncoderConfig,
    HeadConfig,
    NameHead,
    TowerSpec,
    default_towers,
    head_state_shapes,
    init_head_,
    tower_model_config,
)
from lib_magicnaming.towers import build_tower_module


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    config = tiny_config()
    return build_encoder(config, head_state=tiny_head_state(config), random_towers=True)


def pixels(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_forward_gives_one_f_id_per_image(encoder):
    out = encoder(pixels(3))
    assert out.shape == (3, ID_TOKENS, SDXL_CONTEXT_WIDTH)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_features_concatenate_l_then_g_each_l2_normalised(encoder):
    x = pixels(2)
    features = encoder.features(x)
    assert features.shape == (2, CLIP_L_WIDTH + CLIP_G_WIDTH)
    with torch.no_grad():
        clip_l = torch.nn.functional.normalize(encoder.towers["clip_l"](x), dim=-1)
        clip_g = torch.nn.functional.normalize(encoder.towers["clip_g"](x), dim=-1)
    torch.testing.assert_close(features[:, :CLIP_L_WIDTH], clip_l)
    torch.testing.assert_close(features[:, CLIP_L_WIDTH:], clip_g)
    torch.testing.assert_close(encoder.head_only(features), encoder(x))


def test_images_are_encoded_independently(encoder):
    x = pixels(2)
    torch.testing.assert_close(encoder(x)[1:], encoder(x[1:]), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(encoder(x)[0], encoder(x)[1])


def test_towers_frozen_head_trainable(encoder):
    assert all(not p.requires_grad for p in encoder.towers.parameters())
    assert all(p.requires_grad for p in encoder.head.parameters())
    encoder.train()
    try:
        assert all(not tower.training for tower in encoder.towers.values())
        assert encoder.head.training
        encoder(pixels(1)).square().mean().backward()
        assert encoder.head.fc1.weight.grad is not None
        assert all(p.grad is None for p in encoder.towers.parameters())
    finally:
        encoder.eval()
        encoder.head.zero_grad(set_to_none=True)


def test_features_reject_wrong_pixel_shape(encoder):
    with pytest.raises(EncoderError, match=r"\(B, 3, H, W\)"):
        encoder.features(torch.zeros(3, 224, 224))


@pytest.mark.parametrize("norm", ["layernorm", "none"])
def test_head_state_shapes_match_the_module(norm):
    config = HeadConfig(in_dim=40, hidden_dim=12, out_tokens=3, out_dim=5, norm=norm)
    actual = {k: tuple(v.shape) for k, v in NameHead(config).state_dict().items()}
    assert actual == head_state_shapes(config)
    assert NameHead(config)(torch.zeros(4, 40)).shape == (4, 3, 5)


def test_head_config_round_trip_and_errors():
    config = HeadConfig(hidden_dim=64, norm="none", act="silu")
    assert HeadConfig.from_dict(config.to_dict()) == config
    with pytest.raises(EncoderError, match="hidden_dim must be a positive integer"):
        HeadConfig(hidden_dim=0).validate()
    with pytest.raises(EncoderError, match="norm must be one of"):
        HeadConfig(norm="batchnorm").validate()
    with pytest.raises(EncoderError, match=r"unknown field\(s\) \['depth'\]"):
        HeadConfig.from_dict({**config.to_dict(), "depth": 4})


def test_default_towers_are_the_papers_towers():
    clip_l, clip_g = default_towers()
    assert (clip_l.arch, clip_l.pretrained, clip_l.embed_dim) == ("ViT-L-14", "openai", 768)
    assert (clip_g.arch, clip_g.pretrained, clip_g.embed_dim) == ("ViT-bigG-14", "laion2b_s39b_b160k", 1280)
    assert tower_model_config(clip_l)["quick_gelu"] is True  # OpenAI weights were trained with QuickGELU
    assert tower_model_config(clip_g)["vision_cfg"]["width"] == 1664
    EncoderConfig().validate()


def test_tower_spec_errors():
    with pytest.raises(EncoderError, match="unknown open_clip architecture 'ViT-Imaginary-99'"):
        TowerSpec("clip_l", "ViT-Imaginary-99", "openai", 768).validate()
    with pytest.raises(EncoderError, match="embed_dim 512 does not match"):
        TowerSpec("clip_l", "ViT-L-14", "openai", 512).validate()
    with pytest.raises(EncoderError, match="tower name must be one of"):
        TowerSpec("clip_x", "ViT-L-14", "openai", 768).validate()
    spec = tiny_tower("clip_l", 768, "tiny")
    assert TowerSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "changes, message",
    [
        # open_clip 3.x would fetch "hf-hub:" configs from the network; names also become file names
        ({"arch": "hf-hub:someone/model", "model_cfg": None}, "arch must be a plain open_clip name"),
        ({"arch": "../../outside"}, "arch must be a plain open_clip name"),
        ({"pretrained": "../x"}, "pretrained tag must be a plain open_clip name"),
        ({"embed_dim": 768.0}, "embed_dim must be a positive integer"),
        ({"weights_sha256": "A" * 64, "param_count": 5}, "weights_sha256 must be 64 lower-case hex"),
        ({"weights_sha256": "a" * 63, "param_count": 5}, "weights_sha256 must be 64 lower-case hex"),
        ({"weights_sha256": 7, "param_count": 5}, "weights_sha256 must be 64 lower-case hex"),
        ({"weights_sha256": "a" * 64, "param_count": 0}, "param_count must be a positive integer"),
        ({"weights_sha256": "a" * 64, "param_count": True}, "param_count must be a positive integer"),
        ({"weights_sha256": "a" * 64, "param_count": "5"}, "param_count must be a positive integer"),
        ({"weights_sha256": "a" * 64}, "weights_sha256 and param_count .* recorded together"),
        ({"param_count": 5}, "weights_sha256 and param_count .* recorded together"),
        ({"file_sha256": "a" * 64}, r"unknown field\(s\) \['file_sha256'\]"),
    ],
)
def test_tower_spec_fields_are_checked(changes, message):
    data = {**tiny_tower("clip_l", 768, "tiny").to_dict(), **changes}
    with pytest.raises(EncoderError, match=message):
        TowerSpec.from_dict(data)


@pytest.mark.parametrize(
    "vision_changes, message",
    [
        # a timm tower with pretrained weights would download them even with downloads off
        ({"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": True}, "timm_model_name"),
        ({"patch_size": 0}, "patch_size must be a positive integer"),
        ({"layers": -1}, "layers must be a positive integer"),
        ({"width": 10**7}, "width must be a positive integer up to"),
        ({"bogus": 1}, "open_clip cannot build vision config"),
    ],
)
def test_custom_tower_configs_are_checked(vision_changes, message):
    spec = tiny_tower("clip_l", 768, "tiny")
    spec.model_cfg["vision_cfg"].update(vision_changes)
    with pytest.raises(EncoderError, match=message):
        build_tower_module(spec.validate())


def test_encoder_config_checks_head_width_against_towers():
    config = tiny_config()
    config.head.in_dim = 1000
    message = r"head in_dim 1000 does not match the towers' embed dims summed \(2048\)"
    with pytest.raises(EncoderError, match=message):
        config.validate()
    config = tiny_config()
    config.towers.reverse()
    with pytest.raises(EncoderError, match="towers must be in the order"):
        config.validate()


def test_tiny_embed_dims_are_allowed():
    config = EncoderConfig(
        towers=[tiny_tower("clip_l", 16, "a"), tiny_tower("clip_g", 24, "b")],
        head=HeadConfig(in_dim=40, hidden_dim=8),
    )
    encoder = build_encoder(config, random_towers=True)
    assert encoder(pixels(1)).shape == (1, ID_TOKENS, SDXL_CONTEXT_WIDTH)


def test_head_state_loads_strictly():
    config = tiny_config()
    state = tiny_head_state(config)
    first = build_encoder(config, head_state=state, random_towers=True)
    torch.testing.assert_close(first.head.fc3.bias, state["fc3.bias"])
    bad = dict(state, **{"fc1.weight": torch.zeros(5, 5)})
    with pytest.raises(EncoderError, match=r"'fc1.weight' has shape \(5, 5\)"):
        build_encoder(config, head_state=bad, random_towers=True)
    missing = {k: v for k, v in state.items() if k != "norm2.bias"}
    with pytest.raises(EncoderError, match="missing \\['norm2.bias'\\]"):
        build_encoder(config, head_state=missing, random_towers=True)


def test_tower_states_rebuild_identical_towers(encoder):
    config = encoder.config
    states = {name: tower.state_dict() for name, tower in encoder.towers.items()}
    twin = build_encoder(config, head_state=encoder.head.state_dict(), tower_states=states)
    x = pixels(1)
    torch.testing.assert_close(twin(x), encoder(x))


def test_init_head_is_seeded_and_scaled():
    config = HeadConfig(in_dim=256, hidden_dim=128, out_tokens=2, out_dim=64)
    first = init_head_(NameHead(config), out_std=0.5, generator=torch.Generator().manual_seed(1))
    second = init_head_(NameHead(config), out_std=0.5, generator=torch.Generator().manual_seed(1))
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert first.fc1.weight.std().item() == pytest.approx(256**-0.5, rel=0.05)
    assert first.fc3.weight.std().item() == pytest.approx(0.5, rel=0.05)
    assert first.fc3.bias.abs().max().item() == 0.0
