"""Tiny data for the training tests (imported explicitly; not a conftest): drawn faces, towers, targets."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from lib_magicnaming.constants import ID_TOKENS, SDXL_CONTEXT_WIDTH
from training import demo

TINY_CROP = demo.TINY_CROP
tiny_encoder_config = demo.tiny_encoder_config
draw_face = demo.draw_face


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


def write_image_folder(root: Path, layout: dict[str, list[int]], size: int = 64) -> Path:
    """``root/<Name>/<k>.png`` drawn faces; ``layout``: folder name -> drawn identity of each image."""
    for name, identities in layout.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for k, identity in enumerate(identities):
            draw_face(identity, k, size).save(folder / f"{k:03d}.png")
    return root


def hf_clip_text_state(tower) -> dict[str, torch.Tensor]:
    """open_clip text tower -> Hugging Face CLIPTextModel names (as SDXL checkpoints store CLIP-L)."""
    state, out = tower.state_dict(), {}
    out["embeddings.token_embedding.weight"] = state["token_embedding.weight"]
    out["embeddings.position_embedding.weight"] = state["positional_embedding"]
    out["embeddings.position_ids"] = torch.arange(77)[None]
    out["final_layer_norm.weight"], out["final_layer_norm.bias"] = (
        state["ln_final.weight"],
        state["ln_final.bias"],
    )
    for i in range(len(tower.transformer.resblocks)):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{src}attn.in_proj_{kind}"].chunk(3)
            out.update(
                {
                    f"{dst}self_attn.q_proj.{kind}": q,
                    f"{dst}self_attn.k_proj.{kind}": k,
                    f"{dst}self_attn.v_proj.{kind}": v,
                }
            )
            for hf, oc in (
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ):
                out[f"{dst}{hf}.{kind}"] = state[f"{src}{oc}.{kind}"]
    return out
