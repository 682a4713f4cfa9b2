"""Stage ``demo``: the whole pipeline on drawn identities ends in a checkpoint the extension encodes with."""

from __future__ import annotations

import json

import torch

from lib_magicnaming.checkpoint import load_encoder_checkpoint
from lib_magicnaming.encode import IdentityEncoder
from training.cli import main
from training.demo import draw_face


def test_demo_ends_with_a_checkpoint_the_extension_loads_and_encodes_with(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--per-identity", "6", "--steps", "20"]) == 0
    checkpoint = load_encoder_checkpoint(out / "encoder.safetensors")
    assert checkpoint.namespace_stats is not None and checkpoint.training_summary["step"] == 20
    assert set(checkpoint.tower_states) == {"clip_l", "clip_g"}
    report = json.loads((out / "demo.json").read_text())
    assert report["embedding_shape"] == [8, 2048] and report["encoder_hash"] == checkpoint.short_hash
    encoder = IdentityEncoder(out / "encoder.safetensors", device="cpu")
    first = encoder.encode_photos([draw_face(0, 500)], assume_cropped=True).embedding
    other = encoder.encode_photos([draw_face(3, 500)], assume_cropped=True).embedding
    assert torch.isfinite(first).all() and not torch.allclose(first, other)
    assert (out / "run" / "eval-val.json").is_file() and (out / "run" / "loss.png").is_file()
    likeness = json.loads((out / "likeness.json").read_text())
    assert list(likeness["rows"]) == ["identity", "no_identity", "real_name", "references"]
    for row in ("identity", "no_identity", "real_name"):
        summary = likeness["rows"][row]
        assert summary["faces_found"] == summary["images"] == 4  # 2 people x 2 prompts x 1 seed
        assert -1.0 <= summary["face_sim"] <= 1.0 and 0.0 <= summary["clip_t"] <= 100.0
    assert report["likeness"] == str(out / "likeness.json") and (out / "likeness.md").is_file()
    assert len(likeness["people"]) == 2  # the held-out identity (never trained on) and a new person
