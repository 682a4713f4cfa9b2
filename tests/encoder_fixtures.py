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


# --- a tiny detector with insightface's SCRFD signature -------------------------------------------------

SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS = 2
DET_SIZE = 640


def det_scale(image_size: tuple[int, int], det_size: int = DET_SIZE) -> float:
    """The factor insightface's detect() scales a (width, height) image by to fit the square input."""
    width, height = image_size
    if height / width > 1.0:  # taller than wide: height fills the input
        return det_size / height
    return int(det_size * height / width) / height


def write_scrfd_onnx(path, faces, *, kps: bool = True, det_size: int = DET_SIZE):
    """Write an ONNX model with SCRFD's input/outputs (9 with keypoints, 6 without) to ``path``.

    ``faces``: (x1, y1, x2, y2, score) boxes in detector-input pixels (det_size x det_size). The outputs are
    constants that decode (insightface's distance2bbox around stride-32 anchor centres) to exactly these
    boxes; the input is wired in with a zero weight so the graph is a real function of the image.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    stride = SCRFD_STRIDES[-1]
    levels = {}
    for s in SCRFD_STRIDES:
        count = (det_size // s) ** 2 * SCRFD_ANCHORS
        levels[s] = {
            "score": np.zeros((count, 1), np.float32),
            "bbox": np.zeros((count, 4), np.float32),
            "kps": np.zeros((count, 10), np.float32),
        }
    grid = det_size // stride
    used = set()
    for x1, y1, x2, y2, score in faces:
        gx = min(max(int(round((x1 + x2) / 2 / stride)), 0), grid - 1)
        gy = min(max(int(round((y1 + y2) / 2 / stride)), 0), grid - 1)
        index = (gy * grid + gx) * SCRFD_ANCHORS
        while index in used:
            index += 1
        used.add(index)
        cx, cy = gx * stride, gy * stride
        level = levels[stride]
        level["score"][index, 0] = score
        level["bbox"][index] = np.array([cx - x1, cy - y1, x2 - cx, y2 - cy], np.float32) / stride
    names, nodes, outputs, initializers = [], [], [], []
    kinds = ("score", "bbox", "kps") if kps else ("score", "bbox")
    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0))
    nodes.append(helper.make_node("Mul", ["mean", "zero"], ["zero_signal"]))
    initializers.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    for kind in kinds:
        for s in SCRFD_STRIDES:
            value = levels[s][kind]
            const, name = f"{kind}_{s}_const", f"{kind}_{s}"
            initializers.append(numpy_helper.from_array(value, const))
            nodes.append(helper.make_node("Add", [const, "zero_signal"], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
            names.append(name)
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def install_pack(root, image_boxes, image_size, *, pack="buffalo_l", kps=True, extra_files=()):
    """An insightface pack under ``root/models/<pack>`` whose detector finds ``image_boxes`` in an image of
    ``image_size``: boxes are (x1, y1, x2, y2, score) in image pixels."""
    scale = det_scale(image_size)
    det_boxes = [(x1 * scale, y1 * scale, x2 * scale, y2 * scale, s) for x1, y1, x2, y2, s in image_boxes]
    pack_dir = root / "models" / pack
    write_scrfd_onnx(pack_dir / "det_10g.onnx", det_boxes, kps=kps)
    for name in extra_files:
        (pack_dir / name).write_bytes(b"")
    return pack_dir


def write_tiny_checkpoint(path, *, with_stats: bool = True, seed: int = 0, detector: str | None = None):
    """A checkpoint of tiny random towers (stored in the file) + head (+ name-space statistics); its hash.
    ``detector``: the detector its training crops are recorded to come from (None: not recorded)."""
    from lib_magicnaming.checkpoint import save_encoder_checkpoint
    from lib_magicnaming.factory import build_encoder
    from lib_magicnaming.namespace import namespace_stats_from_embeddings

    torch.manual_seed(seed)
    config = tiny_config()
    config.crop.detector = detector
    model = build_encoder(config, head_state=tiny_head_state(config, seed), random_towers=True)
    stats = namespace_stats_from_embeddings(random_embeddings(6, seed), rank=3) if with_stats else None
    return save_encoder_checkpoint(
        path,
        config=config,
        head_state=model.head.state_dict(),
        namespace_stats=stats,
        tower_states={name: tower.state_dict() for name, tower in model.towers.items()},
    )
