"""Tiny data for the training tests (imported explicitly; not a conftest): drawn faces, towers, targets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, ImageDraw

from lib_magicnaming.constants import CLIP_G_WIDTH, CLIP_L_WIDTH, ID_TOKENS, SDXL_CONTEXT_WIDTH

TINY_CROP = 32


def tiny_encoder_config(crop_size: int = TINY_CROP) -> dict:
    """An encoder config (towers, crop, feature_norm) with two one-layer vision towers at ``crop_size`` px."""

    def tower(name: str, embed_dim: int) -> dict:
        cfg = {
            "embed_dim": embed_dim,
            "vision_cfg": {
                "image_size": crop_size,
                "layers": 1,
                "width": 64,
                "head_width": 32,
                "patch_size": crop_size // 2,
            },
        }
        return {
            "name": name,
            "arch": f"tiny-{name}",
            "pretrained": "random",
            "embed_dim": embed_dim,
            "model_cfg": cfg,
            "file_sha256": None,
            "file_size": None,
        }

    from lib_magicnaming.face import CropConfig

    return {
        "towers": [tower("clip_l", CLIP_L_WIDTH), tower("clip_g", CLIP_G_WIDTH)],
        "crop": CropConfig(size=crop_size).to_dict(),
        "feature_norm": "l2",
    }


def draw_face(identity: int, variant: int, size: int = 64) -> Image.Image:
    """A procedurally drawn face: colours and proportions fixed per identity, pose and light per variant."""
    ident = random.Random(identity * 7919)
    vary = random.Random(identity * 104729 + variant)
    background = tuple(ident.randrange(256) for _ in range(3))
    skin = tuple(ident.randrange(90, 256) for _ in range(3))
    eyes = tuple(ident.randrange(0, 120) for _ in range(3))
    eye_gap, face_w = ident.uniform(0.12, 0.22), ident.uniform(0.28, 0.42)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    cx, cy = size * (0.5 + vary.uniform(-0.06, 0.06)), size * (0.5 + vary.uniform(-0.06, 0.06))
    draw.ellipse([cx - face_w * size, cy - 0.45 * size, cx + face_w * size, cy + 0.45 * size], fill=skin)
    for side in (-1, 1):
        ex = cx + side * eye_gap * size
        draw.ellipse([ex - 0.05 * size, cy - 0.12 * size, ex + 0.05 * size, cy - 0.04 * size], fill=eyes)
    mouth = ident.uniform(0.08, 0.2) * size
    draw.line([cx - mouth, cy + 0.2 * size, cx + mouth, cy + 0.2 * size], fill=eyes, width=max(1, size // 32))
    light = vary.uniform(0.85, 1.15)
    return image.point(lambda v: max(0, min(255, int(v * light))))


def write_faces_table(folder: Path, identities: int, per_identity: int, size: int = TINY_CROP) -> Path:
    """Drawn crops under ``folder/crops`` and a faces table naming them; returns the table's path."""
    crops = folder / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(identities):
        for v in range(per_identity):
            path = crops / f"{i:03d}-{v:03d}.png"
            draw_face(i, v, size).save(path)
            rows.append(
                {
                    "image_id": f"{i:03d}-{v:03d}",
                    "name": person_name(i),
                    "crop_path": str(path),
                    "source_path": str(path),
                    "score": float("nan"),
                    "consistency": float("nan"),
                }
            )
    table = folder / "faces.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


FIRST = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "John", "Radia", "Ken"]
LAST = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Backus",
    "Perlman",
    "Thompson",
]


def person_name(i: int) -> str:
    """A distinct two-word name per index."""
    return f"{FIRST[i % len(FIRST)]} {LAST[(i // len(FIRST) + i) % len(LAST)]}"


def write_random_targets(path: Path, names: list[str], seed: int = 0) -> Path:
    """A targets file with random F_IDs (no text towers: fast), in the targets stage's format."""
    from training.targets import Targets, save_targets

    generator = torch.Generator().manual_seed(seed)
    f_id = torch.randn(len(names), ID_TOKENS, SDXL_CONTEXT_WIDTH, generator=generator)
    return save_targets(path, Targets(names=list(names), f_id=f_id, towers=[]))


def write_encoder_config(path: Path, crop_size: int = TINY_CROP) -> Path:
    """``tiny_encoder_config`` as a JSON file for ``--encoder-config``."""
    path.write_text(json.dumps(tiny_encoder_config(crop_size)))
    return path


def write_arcface_onnx(path: Path, size: int = 112, cells: int = 4) -> Path:
    """A tiny recognition model with insightface's ArcFace signature ((N, 3, 112, 112) -> one (N, D) output).

    insightface's model zoo routes a square input >= 112 (multiple of 16) with one output to ArcFaceONNX.
    The "embedding" is the mean colour of each cell of a ``cells`` x ``cells`` grid: it tells the drawn
    identities apart, which is all the consistency filter needs.
    """
    import onnx
    from onnx import TensorProto, helper

    kernel = size // cells
    nodes = [
        helper.make_node(
            "AveragePool",
            ["input.1"],
            ["pooled"],
            kernel_shape=[kernel, kernel],
            strides=[kernel, kernel],
            name="pool",
        ),
        helper.make_node("Flatten", ["pooled"], ["fc1"], axis=1, name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 3 * cells * cells])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_image_folder(root: Path, layout: dict[str, list[int]], size: int = 64) -> Path:
    """``root/<Name>/<k>.png`` drawn faces; ``layout``: folder name -> drawn identity of each image."""
    for name, identities in layout.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for k, identity in enumerate(identities):
            draw_face(identity, k, size).save(folder / f"{k:03d}.png")
    return root
