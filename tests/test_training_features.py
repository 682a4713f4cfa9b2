"""The features stage's feeding: loader batches within shards, uint8 crops normalised on the device, GPU
batches gathered from several loader batches; the features are what the extension's encoder computes on
``pixels_from_crop`` of each crop (the encoder at inference must see the features it was trained on)."""

from __future__ import annotations

import argparse
import logging

import torch
from PIL import Image
from training_fixtures import write_encoder_config, write_faces_table

from lib_magicnaming import vit_forward
from lib_magicnaming.face import pixels_from_crop
from training import features as features_stage
from training.features import ShardPlan, _batches_by_shard, extract, load_features, prepare


def stage_args(folder, **overrides) -> argparse.Namespace:
    values = {
        "faces": str(folder / "faces.csv"), "out": str(folder / "features"),
        "encoder_config": str(folder / "encoder.json"), "models_dir": None, "allow_download": False,
        "random_towers": 3, "shard_size": 7, "batch_size": 5, "workers": 0, "dtype": "auto", "device": "cpu",
        "compile": "auto",
    }
    return argparse.Namespace(**{**values, **overrides})


def test_loader_batches_never_cross_a_shard():
    plan = ShardPlan(rows=17, shard_size=7)
    batches, owner = _batches_by_shard(plan, [0, 2], 3)
    assert batches == [[0, 1, 2], [3, 4, 5], [6], [7, 8, 9]]
    assert owner == [0, 0, 0, 2]


def test_stage_features_equal_the_encoders_on_each_crop(tmp_path, monkeypatch, capsys):
    write_faces_table(tmp_path, identities=3, per_identity=5)
    write_encoder_config(tmp_path / "encoder.json")
    (tmp_path / "crops" / "001-002.png").write_bytes(b"not a png")
    monkeypatch.setattr(features_stage, "LOADER_BATCH", 2)  # GPU batches of 5 gather loader batches of 2
    stage = prepare(stage_args(tmp_path))
    assert stage.encoder.block_fn is None  # auto: no compiling on the CPU
    stats = extract(stage)
    assert stats.shards == 3 and stats.crops == 15 and stats.seconds > 0
    found = load_features(tmp_path / "features")
    assert found.features.shape == (14, 2048)
    assert [s["item"] for s in stage.report.skipped] == [str(tmp_path / "crops" / "001-002.png")]
    crop = stage.encoder.config.crop
    rows = found.row.tolist()
    expected_rows = [r for r in range(15) if r != 7]
    assert rows == expected_rows
    with torch.no_grad():
        pixels = torch.stack([pixels_from_crop(Image.open(stage.paths[r]), crop) for r in rows])
        expected = stage.encoder.features(pixels)
    torch.testing.assert_close(found.features, expected, rtol=1e-5, atol=1e-6)
    assert "features: rank 0 shard 1 (2/3): 6 crops" in capsys.readouterr().out


def test_compile_on_that_fails_still_writes_the_same_features(tmp_path, monkeypatch, caplog):
    write_faces_table(tmp_path, identities=2, per_identity=4)
    write_encoder_config(tmp_path / "encoder.json")
    reference = prepare(stage_args(tmp_path, out=str(tmp_path / "eager"), compile="off"))
    extract(reference)

    def no_compiler(function, **kwargs):
        raise RuntimeError("no working C++ compiler")

    monkeypatch.setattr(vit_forward.torch, "compile", no_compiler)
    with caplog.at_level(logging.WARNING, logger="magicnaming"):
        compiled = prepare(stage_args(tmp_path, out=str(tmp_path / "compiled"), compile="on"))
        assert compiled.encoder.block_fn is not None
        extract(compiled)
    assert any("torch.compile of the tower blocks failed" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(load_features(tmp_path / "compiled").features,
                               load_features(tmp_path / "eager").features, rtol=0, atol=0)


def test_auto_compiles_on_cuda_only_for_enough_crops(tmp_path, monkeypatch):
    write_faces_table(tmp_path, identities=1, per_identity=3)
    write_encoder_config(tmp_path / "encoder.json")
    stage = prepare(stage_args(tmp_path))
    cuda = torch.device("cuda")
    assert not features_stage.use_compile("auto", cuda, stage)
    monkeypatch.setattr(features_stage, "COMPILE_AUTO_MIN_CROPS", 3)
    assert features_stage.use_compile("auto", cuda, stage)
    assert not features_stage.use_compile("auto", torch.device("cpu"), stage)
    assert features_stage.use_compile("on", torch.device("cpu"), stage)
    assert not features_stage.use_compile("off", cuda, stage)
