"""Stage ``demo``: the whole pipeline on drawn identities ends in a checkpoint the extension encodes with."""

from __future__ import annotations

import json

import pytest
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
    demo_report = json.loads((out / "demo.json").read_text())
    assert demo_report["embedding_shape"] == [8, 2048]
    assert demo_report["encoder_hash"] == checkpoint.short_hash
    encoder = IdentityEncoder(out / "encoder.safetensors", device="cpu")
    first = encoder.encode_photos([draw_face(0, 500)], assume_cropped=True).embedding
    other = encoder.encode_photos([draw_face(3, 500)], assume_cropped=True).embedding
    assert torch.isfinite(first).all() and not torch.allclose(first, other)
    assert (out / "run" / "eval-val.json").is_file() and (out / "run" / "loss.png").is_file()
    # faces (--assume-cropped) -> features -> export: the checkpoint says its crops had no detector
    assert (checkpoint.config.crop.detector, checkpoint.config.crop.rule) == ("none", "box-square")

    # an identity from a photo with the demo encoder and the default detector, YuNet, which needs only
    # OpenCV (a tiny model of YuNet 2023mar's signature stands in for the 227 KiB file)
    from yunet_fixtures import write_yunet_onnx

    from lib_magicnaming.yunet_detector import YuNetDetector

    model = write_yunet_onnx(tmp_path / "yunet.onnx", [(12.0, 8.0, 52.0, 56.0, 0.9)])
    yunet = YuNetDetector(model_path=model)
    encoder = IdentityEncoder(out / "encoder.safetensors", device="cpu", detector=yunet)
    identity, result = encoder.make_identity_from_photos("turing", [draw_face(1, 501)])
    (report,) = result.per_photo
    assert report.crop.detector == "yunet-2023mar"
    assert report.crop.box == pytest.approx((12, 8, 52, 56), abs=0.1)
    assert report.notes == [
        "this encoder was trained on photos used as face crops (no detector); this face was found by "
        "yunet-2023mar, so its crop may frame the face a little differently than the encoder expects"
    ]
    assert identity.embedding.shape == (8, 2048) and identity.origin["encoder_hash"] == checkpoint.short_hash

    likeness = json.loads((out / "likeness.json").read_text())
    assert list(likeness["rows"]) == ["identity", "no_identity", "real_name", "references"]
    for row in ("identity", "no_identity", "real_name"):
        summary = likeness["rows"][row]
        assert summary["faces_found"] == summary["images"] == 4  # 2 people x 2 prompts x 1 seed
        assert -1.0 <= summary["face_sim"] <= 1.0 and 0.0 <= summary["clip_t"] <= 100.0
    assert demo_report["likeness"] == str(out / "likeness.json") and (out / "likeness.md").is_file()
    assert len(likeness["people"]) == 2  # the held-out identity (never trained on) and a new person
