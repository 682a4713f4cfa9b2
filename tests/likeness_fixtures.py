"""Tiny offline stand-ins for the likeness stage's tests (imported explicitly; not a conftest).

* A tiny SDXL: diffusers' U-Net and VAE built from SDXL's shipped configs with tiny widths (same blocks,
  cross-attention 2048 = 768 + 1280, added conditioning 2816), saved as a diffusers folder, or in the
  WebUI/sgm single-file layout. diffusers' package has no diffusers -> sgm conversion, so
  :func:`ldm_unet_state` and :func:`ldm_vae_state` mirror the key mapping of diffusers' repository script
  ``scripts/convert_diffusers_to_original_sdxl.py`` (unet_conversion_map*, vae_conversion_map*,
  reshape_weight_for_sd); the round-trip test checks them against diffusers' own forward conversion.
* Face detectors that find one face in the middle of any image that is not nearly black (the score is gated
  by the image's mean brightness), so a black image has none: a tiny YuNet-signature model (the default
  detector; images with sides that are multiples of 32) and an insightface pack whose tiny SCRFD-signature
  model does the same for square images.
* Reference photos that packages ship: scikit-image's astronaut and lfw_subset faces.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from encoder_fixtures import DET_SIZE, write_scrfd_onnx
from PIL import Image
from skimage import data as skdata
from yunet_fixtures import write_centred_yunet_onnx

from lib_magicnaming.constants import CLIP_G_WIDTH, CLIP_L_WIDTH
from training.clip_score import tiny_clip_spec
from training.sdxl import tiny_configs, tiny_models, write_diffusers_folder
from training.text_encoders import SDXL_CLIP_G, SDXL_CLIP_L, tiny_spec

FACE_BOX = (0.3, 0.25, 0.7, 0.75)
"""Where the gated detectors find the face, as fractions of the image's sides."""
DARK_MEAN = -0.85
"""The detectors find no face in images whose mean input value (pixels / 128 - 1) is below this."""


def tiny_text_specs():
    """Text towers of SDXL's widths (768, 1280), one layer each: the WebUI's rules, real tokenizer."""
    return [
        tiny_spec(SDXL_CLIP_L, width=CLIP_L_WIDTH, layers=1),
        tiny_spec(SDXL_CLIP_G, width=CLIP_G_WIDTH, layers=1),
    ]


def write_text_towers_json(path: Path) -> Path:
    path.write_text(json.dumps({"towers": [s.to_dict() for s in tiny_text_specs()]}))
    return path


def write_clip_spec_json(path: Path) -> Path:
    path.write_text(json.dumps(tiny_clip_spec().to_dict()))
    return path


def write_tiny_sdxl_folder(folder: Path, seed: int = 0) -> Path:
    configs = tiny_configs()
    unet, vae = tiny_models(seed, configs)
    return write_diffusers_folder(folder, unet, vae, configs["scheduler"])


# --- diffusers -> WebUI/sgm key layout (mirrors diffusers' scripts/convert_diffusers_to_original_sdxl.py) --

_UNET_MAP = [
    ("time_embed.0.weight", "time_embedding.linear_1.weight"),
    ("time_embed.0.bias", "time_embedding.linear_1.bias"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"),
    ("time_embed.2.bias", "time_embedding.linear_2.bias"),
    ("input_blocks.0.0.weight", "conv_in.weight"),
    ("input_blocks.0.0.bias", "conv_in.bias"),
    ("out.0.weight", "conv_norm_out.weight"),
    ("out.0.bias", "conv_norm_out.bias"),
    ("out.2.weight", "conv_out.weight"),
    ("out.2.bias", "conv_out.bias"),
    ("label_emb.0.0.weight", "add_embedding.linear_1.weight"),
    ("label_emb.0.0.bias", "add_embedding.linear_1.bias"),
    ("label_emb.0.2.weight", "add_embedding.linear_2.weight"),
    ("label_emb.0.2.bias", "add_embedding.linear_2.bias"),
]
_UNET_RESNET_MAP = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]


def _unet_layer_map() -> list[tuple[str, str]]:
    layers = []
    for i in range(3):
        for j in range(2):
            layers.append((f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if i > 0:
                layers.append((f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(4):
            layers.append((f"output_blocks.{3 * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if i < 2:
                layers.append((f"output_blocks.{3 * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        layers.append((f"input_blocks.{3 * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
        layers.append((f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}.", f"up_blocks.{i}.upsamplers.0."))
    layers.append(("output_blocks.2.2.conv.", "output_blocks.2.1.conv."))
    layers.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        layers.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    return layers


def ldm_unet_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers SDXL U-Net state in the sgm layout (keys without the model.diffusion_model. prefix)."""
    mapping = {k: k for k in state}
    for sd_name, hf_name in _UNET_MAP:
        mapping[hf_name] = sd_name
    for k, v in mapping.items():
        if "resnets" in k:
            for sd_part, hf_part in _UNET_RESNET_MAP:
                v = v.replace(hf_part, sd_part)
            mapping[k] = v
    layers = _unet_layer_map()
    for k, v in mapping.items():
        for sd_part, hf_part in layers:
            v = v.replace(hf_part, sd_part)
        mapping[k] = v
    return {sd_name: state[hf_name] for hf_name, sd_name in mapping.items()}


def _vae_map() -> list[tuple[str, str]]:
    pairs = [
        ("nin_shortcut", "conv_shortcut"),
        ("norm_out", "conv_norm_out"),
        ("mid.attn_1.", "mid_block.attentions.0."),
    ]
    for i in range(4):
        for j in range(2):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < 3:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            pairs.append((f"up.{3 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(3):
            pairs.append((f"decoder.up.{3 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    for i in range(2):
        pairs.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    return pairs


_VAE_ATTENTION_MAP = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
]


def ldm_vae_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers VAE state in the sgm layout (attention projections as 1 x 1 convolutions)."""
    mapping = {k: k for k in state}
    pairs = _vae_map()
    for k, v in mapping.items():
        for sd_part, hf_part in pairs:
            v = v.replace(hf_part, sd_part)
        mapping[k] = v
    for k, v in mapping.items():
        if "attentions" in k:
            for sd_part, hf_part in _VAE_ATTENTION_MAP:
                v = v.replace(hf_part, sd_part)
            mapping[k] = v
    converted = {v: state[k] for k, v in mapping.items()}
    for key, value in converted.items():
        if (
            any(f"mid.attn_1.{name}.weight" in key for name in ("q", "k", "v", "proj_out"))
            and value.ndim == 2
        ):
            converted[key] = value.reshape(*value.shape, 1, 1)
    return converted


def write_tiny_sdxl_file(path: Path, unet, vae, text_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A single-file SDXL checkpoint in the WebUI's layout (U-Net, VAE, optionally text encoders)."""
    from safetensors.torch import save_file

    tensors = {"model.diffusion_model." + k: v for k, v in ldm_unet_state(unet.state_dict()).items()}
    tensors.update({"first_stage_model." + k: v for k, v in ldm_vae_state(vae.state_dict()).items()})
    tensors.update(text_tensors or {})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


# --- detectors that find a face in any image that is not nearly black ---------------------------------------


def write_gated_yunet(path: Path) -> Path:
    """A YuNet-signature model: one face (with landmarks) at FACE_BOX, none in a dark image."""
    return write_centred_yunet_onnx(path, FACE_BOX, dark_level=128 * (1 + DARK_MEAN))


def install_gated_pack(root: Path, pack: str = "buffalo_l") -> Path:
    """``root/models/<pack>/det_10g.onnx``: one face at FACE_BOX of a square image, none in a dark one."""
    import onnx
    from onnx import helper, numpy_helper

    x1, y1, x2, y2 = (f * DET_SIZE for f in FACE_BOX)
    path = write_scrfd_onnx(root / "models" / pack / "det_10g.onnx", [(x1, y1, x2, y2, 0.9)])
    model = onnx.load(str(path))
    graph = model.graph
    gate = [
        helper.make_node("Sub", ["mean", "dark_mean"], ["above_dark"]),
        helper.make_node("Mul", ["above_dark", "gate_gain"], ["gate_logit"]),
        helper.make_node("Sigmoid", ["gate_logit"], ["gate"]),
    ]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(DARK_MEAN, np.float32), "dark_mean"),
            numpy_helper.from_array(np.array(200.0, np.float32), "gate_gain"),
        ]
    )
    nodes = list(graph.node)
    rebuilt = [nodes[0], *gate]
    for node in nodes[1:]:
        if node.output[0].startswith("score_"):
            node = helper.make_node("Mul", [node.input[0], "gate"], [node.output[0]])
        rebuilt.append(node)
    del graph.node[:]
    graph.node.extend(rebuilt)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path.parent


def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


def lfw_faces(count: int, size: int = 128) -> list[Image.Image]:
    """The first ``count`` faces of scikit-image's lfw_subset (25 x 25 grey), as square RGB photos."""
    faces = skdata.lfw_subset()[:count]
    return [
        Image.fromarray((face * 255).astype(np.uint8)).convert("RGB").resize((size, size)) for face in faces
    ]


def write_people(root: Path) -> Path:
    """``Eileen_Collins`` (the astronaut photo, mirrored and shifted: a real name), ``lfw_faces`` and
    ``zz_no_face`` (one black photo: no face, so no identity)."""
    eileen = root / "Eileen_Collins"
    eileen.mkdir(parents=True)
    photo = astronaut()
    photo.save(eileen / "a.jpg", quality=92)
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(eileen / "b.png")
    photo.crop((16, 0, 512, 496)).resize((512, 512)).save(eileen / "c.png")
    faces = root / "lfw_faces"
    faces.mkdir()
    for k, face in enumerate(lfw_faces(3)):
        face.save(faces / f"{k}.png")
    nobody = root / "zz_no_face"
    nobody.mkdir()
    Image.new("RGB", (128, 128), (0, 0, 0)).save(nobody / "dark.png")
    return root


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("# test prompts\n" + "\n".join(prompts) + "\n")
    return path
