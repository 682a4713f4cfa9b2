"""Stages features, train, eval, export on tiny data: resumable shards, exact resume, DDP ranks agree."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from training_fixtures import write_encoder_config, write_faces_table, write_random_targets

from lib_magicnaming.checkpoint import load_encoder_checkpoint
from lib_magicnaming.encode import IdentityEncoder
from lib_magicnaming.errors import EncoderError
from lib_magicnaming.face import pixels_from_crop
from lib_magicnaming.model import EncoderConfig
from lib_magicnaming.towers import build_tower_module, recorded_fingerprint, tower_fingerprint, towers_dir
from training.cli import main
from training.common import TrainingError
from training.distributed import Place
from training.features import load_features, shard_path
from training.train import EpochSampler, lr_at, split_identities
from training.train_settings import TrainSettings
from training.train_state import load_state

REPO = Path(__file__).resolve().parents[1]
TRAIN_ARGS = [
    "--batch-size",
    "8",
    "--hidden-dim",
    "32",
    "--warmup-steps",
    "2",
    "--lr",
    "3e-3",
    "--val-fraction",
    "0.2",
    "--log-every",
    "2",
    "--eval-every",
    "4",
    "--no-tensorboard",
    "--cpu-threads",
    "1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Faces of 6 drawn identities (8 each, one unreadable), their features (3 shards) and random targets."""
    folder = tmp_path_factory.mktemp("data")
    faces = write_faces_table(folder, identities=6, per_identity=8)
    (folder / "crops" / "002-003.png").write_bytes(b"not a png")
    config = write_encoder_config(folder / "encoder.json")
    args = [
        "features",
        "--faces",
        str(faces),
        "--out",
        str(folder / "features"),
        "--encoder-config",
        str(config),
        "--random-towers",
        "7",
        "--shard-size",
        "16",
        "--workers",
        "0",
    ]
    assert main(args) == 0
    names = load_features(folder / "features").names
    write_random_targets(folder / "targets.safetensors", names[:-1])  # the last name has no target
    return {
        "folder": folder,
        "faces": faces,
        "config": config,
        "features_args": args,
        "features": folder / "features",
        "targets": folder / "targets.safetensors",
    }


def _train(data, out: Path, *extra: str) -> int:
    return main(
        [
            "train",
            "--features",
            str(data["features"]),
            "--targets",
            str(data["targets"]),
            "--out",
            str(out),
            *TRAIN_ARGS,
            *extra,
        ]
    )


def test_features_are_sharded_and_report_unreadable_crops(data):
    features = load_features(data["features"])
    assert features.features.shape == (47, 2048) and features.features.dtype == torch.float32
    assert sorted(features.row.tolist()) == [r for r in range(48) if r != 19]
    norms = features.features[:, :768].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))  # the encoder's l2 feature normalisation
    skipped = json.loads((data["features"] / "skipped-rank0.json").read_text())
    assert skipped["count"] == 1 and skipped["skipped"][0]["item"].endswith("002-003.png")


def test_features_resume_skips_finished_shards_and_ranks_take_strided_shards(data, monkeypatch, capsys):
    first, second = shard_path(data["features"], 0), shard_path(data["features"], 1)
    before = first.stat().st_mtime_ns
    second.unlink()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(data["features_args"]) == 0  # rank 1 of 2 owns shard 1 only
    assert first.stat().st_mtime_ns == before and second.is_file()
    progress = capsys.readouterr().out
    assert "features: rank 1 shard 1 (1/1): 15 crops" in progress  # 16 rows, one unreadable
    assert "shard 0" not in progress
    assert load_features(data["features"]).features.shape[0] == 47


def test_features_refuse_to_mix_runs(data, capsys):
    args = list(data["features_args"])
    args[args.index("--random-towers") + 1] = "8"
    assert main(args) == 2
    assert "holds features of a different run (changed: random_towers_seed)" in capsys.readouterr().err


def earlier_manifest_tower(name: str, arch: str, embed_dim: int) -> dict:
    vision = {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 56}
    return {
        "name": name, "arch": arch, "pretrained": "random", "embed_dim": embed_dim,
        "model_cfg": {"embed_dim": embed_dim, "quick_gelu": False, "vision_cfg": vision},
        "weights_sha256": None, "param_count": None,
    }


EARLIER_MANIFEST_ENCODER = {
    "towers": [
        earlier_manifest_tower("clip_l", "tiny-l", 768),
        earlier_manifest_tower("clip_g", "tiny-g", 1280),
    ],
    "crop": {
        "size": 224, "margin": 0.25, "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
    "feature_norm": "l2",
}
"""A features manifest's ``encoder`` entry as earlier versions wrote it (towers, crop, feature_norm)."""


def test_a_features_manifest_of_an_earlier_version_loads_and_resumes():
    config = EncoderConfig.from_dict(EARLIER_MANIFEST_ENCODER)
    assert config.head.in_dim == 2048 and config.feature_dim == 2048
    # written again exactly as before, so check_resumable lets the new version finish an earlier folder
    assert json.dumps(config.to_dict(with_head=False)) == json.dumps(EARLIER_MANIFEST_ENCODER)


def test_retrieval_ranks_in_chunks():
    from training.evaluate import retrieval_ranks

    candidates = torch.arange(5.0).view(5, 1, 1).expand(5, 2, 3)
    predictions = torch.stack([candidates[3] + 0.1, candidates[0] + 2.2, candidates[4] - 0.4])
    ranks = retrieval_ranks(predictions, torch.tensor([3, 0, 1]), candidates, chunk=2)
    assert ranks.tolist() == [0, 4, 3]  # 2.2 vs 0: 1, 2, 3, 4 are nearer; 3.6 vs 1: 2, 3, 4


def test_schedule_split_and_sampler():
    s = TrainSettings(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, s) == pytest.approx(0.1) and lr_at(9, s) == pytest.approx(1.0)
    assert lr_at(99, s) == pytest.approx(0.1, abs=1e-3)
    names = [f"n{i}" for i in range(20)]
    train, val = split_identities(names, 0.25, seed=3)
    assert len(val) == 5 and not set(train) & set(val) and sorted(train + val) == sorted(names)
    assert split_identities(names, 0.25, seed=3) == (train, val)
    ranks = [EpochSampler(40, 4, Place(r, 2, r, torch.device("cpu")), seed=1) for r in range(2)]
    epoch = torch.cat([torch.cat([sampler.indices(step) for sampler in ranks]) for step in range(5)])
    assert sorted(epoch.tolist()) == list(range(40))  # one epoch covers every example exactly once


def test_train_eval_export(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(data, run, "--steps", "16", "--checkpoint-every", "8") == 0
    progress = capsys.readouterr().err
    assert "\r" not in progress, "no progress-bar redraws in a log (stderr is not a terminal here)"
    assert "train: step 16/16" in progress
    log = (run / "log.csv").read_text().splitlines()
    assert log[0] == "step,lr,train_loss,val_loss" and len(log) == 1 + 8
    losses = [float(line.split(",")[2]) for line in log[1:]]
    assert losses[-1] < losses[0]
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 1 and not set(split["train"]) & set(split["val"])
    skipped = json.loads((run / "skipped.json").read_text())["skipped"]
    assert [s["reason"] for s in skipped] == ["no target F_ID for this name (not in the targets file)"]
    assert (run / "checkpoints" / "step-00000008.safetensors").is_file()
    assert load_state(run / "checkpoints" / "last.safetensors").step == 16

    assert (
        main(
            [
                "eval",
                "--run",
                str(run),
                "--features",
                str(data["features"]),
                "--targets",
                str(data["targets"]),
                "--split",
                "train",
            ]
        )
        == 0
    )
    result = json.loads((run / "eval-train.json").read_text())
    assert result["identities"] == 4 and result["candidates"] == 5
    assert 0 <= result["per_crop"]["top1"] <= result["per_crop"]["top5"] <= 1
    assert (run / "loss.png").stat().st_size > 1000

    out = tmp_path / "encoder.safetensors"
    assert (
        main(
            [
                "export",
                "--run",
                str(run),
                "--features",
                str(data["features"]),
                "--targets",
                str(data["targets"]),
                "--rank",
                "3",
                "--include-towers",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    checkpoint = load_encoder_checkpoint(out)
    trained = load_state(run / "checkpoints" / "last.safetensors").head_state
    for key, value in trained.items():
        torch.testing.assert_close(checkpoint.head_state[key], value)
    assert checkpoint.namespace_stats.rank == 3
    assert checkpoint.training_summary["step"] == 16 and "eval-train" in checkpoint.training_summary
    encoder = checkpoint.build_model()
    assert encoder(torch.zeros(1, 3, 32, 32)).shape == (1, 8, 2048)


def write_tower_files(config_path: Path, models: Path, seed: int) -> dict[str, torch.nn.Module]:
    """Whole-CLIP safetensors files of random towers for ``config_path``'s towers under ``models/towers``."""
    config = EncoderConfig.from_dict(json.loads(config_path.read_text()))
    torch.manual_seed(seed)
    towers = {}
    for spec in config.towers:
        towers[spec.name] = build_tower_module(spec)
        path = towers_dir(models) / f"{spec.file_stem}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"visual.{k}": v for k, v in towers[spec.name].state_dict().items()}
        save_file({**tensors, "logit_scale": torch.ones(())}, str(path))
    return towers


def test_export_from_tower_files_records_their_fingerprint_for_the_extension(data, tmp_path, capsys):
    """features fingerprints the towers it loads from files; export writes it; the extension's
    IdentityEncoder loads those files and refuses a changed one (and features refuses to resume with it)."""
    models, features = tmp_path / "models", tmp_path / "features"
    towers = write_tower_files(data["config"], models, seed=11)
    features_args = [
        "features", "--faces", str(data["faces"]), "--out", str(features), "--encoder-config",
        str(data["config"]), "--models-dir", str(models), "--shard-size", "64", "--workers", "0",
    ]
    assert main(features_args) == 0
    expected = {name: tower_fingerprint(tower.state_dict()) for name, tower in towers.items()}
    manifest_towers = load_features(features).manifest["encoder"]["towers"]
    assert {t["name"]: (t["weights_sha256"], t["param_count"]) for t in manifest_towers} == {
        name: (f.weights_sha256, f.param_count) for name, f in expected.items()
    }
    run, out = tmp_path / "run", tmp_path / "encoder.safetensors"
    train_args = ["--features", str(features), "--targets", str(data["targets"]), "--out", str(run)]
    assert main(["train", *train_args, *TRAIN_ARGS, "--steps", "2"]) == 0
    export_args = ["--run", str(run), "--features", str(features), "--targets", str(data["targets"])]
    assert main(["export", *export_args, "--rank", "2", "--out", str(out)]) == 0

    checkpoint = load_encoder_checkpoint(out)
    assert checkpoint.tower_states == {}
    assert {t.name: recorded_fingerprint(t) for t in checkpoint.config.towers} == expected
    stored = load_features(features)
    crop_path = pd.read_csv(data["faces"])["crop_path"][int(stored.row[0])]
    encoder = IdentityEncoder(out, models_dir=models, device="cpu")
    assert encoder.encode_photos([crop_path], assume_cropped=True).embedding.shape == (8, 2048)
    with Image.open(crop_path) as image:
        pixels = pixels_from_crop(image, checkpoint.config.crop)
    torch.testing.assert_close(encoder.load().features(pixels[None])[0], stored.features[0])

    with torch.no_grad():
        towers["clip_g"].proj[0, 0] += 0.5
    changed = towers_dir(models) / f"{checkpoint.config.towers[1].file_stem}.safetensors"
    save_file(dict(towers["clip_g"].state_dict()), str(changed))
    with pytest.raises(EncoderError, match=f"{changed}: different weights than the encoder was trained with"):
        IdentityEncoder(out, models_dir=models, device="cpu").encode_photos([crop_path], assume_cropped=True)
    assert main(features_args) == 2
    assert "holds features of a different run (changed: encoder)" in capsys.readouterr().err


def test_resume_after_interruption_is_bit_exact(data, tmp_path):
    assert _train(data, tmp_path / "straight", "--steps", "12", "--checkpoint-every", "4") == 0
    interrupted = ("--steps", "12", "--checkpoint-every", "4", "--stop-at", "6")
    assert _train(data, tmp_path / "resumed", *interrupted) == 0
    assert load_state(tmp_path / "resumed" / "checkpoints" / "last.safetensors").step == 6
    assert _train(data, tmp_path / "resumed", "--steps", "12", "--checkpoint-every", "4") == 0
    straight = load_file(str(tmp_path / "straight" / "checkpoints" / "last.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "checkpoints" / "last.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert (tmp_path / "straight" / "log.csv").read_text() == (tmp_path / "resumed" / "log.csv").read_text()


def test_resume_refuses_changed_settings(data, tmp_path):
    assert _train(data, tmp_path / "run", "--steps", "4", "--checkpoint-every", "2", "--stop-at", "2") == 0
    with pytest.raises(TrainingError, match="settings changed: batch_size"):
        from training.cli import build_parser

        args = build_parser("train").parse_args(
            [
                "train",
                "--features",
                str(data["features"]),
                "--targets",
                str(data["targets"]),
                "--out",
                str(tmp_path / "run"),
                *TRAIN_ARGS,
                "--steps",
                "4",
                "--batch-size",
                "4",
            ]
        )
        args.stage_main(args)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_torchrun_ranks_end_with_identical_weights(data, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "training",
        "train",
        "--features",
        str(data["features"]),
        "--targets",
        str(data["targets"]),
        "--out",
        str(run),
        *TRAIN_ARGS,
        "--steps",
        "6",
        "--checkpoint-every",
        "3",
        "--device",
        "cpu",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    hashes = [(run / f"weights-rank{r}.sha256").read_text() for r in range(2)]
    assert hashes[0] == hashes[1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world"] == 2 and summary["steps"] == 6
    state = load_state(run / "checkpoints" / "last.safetensors")
    initial = load_state(run / "checkpoints" / "step-00000003.safetensors")
    assert not torch.equal(state.head_state["fc3.weight"], initial.head_state["fc3.weight"])


def _agreement_worker(rank: int, port: int, out: str) -> None:
    from training.distributed import Place, same_on_every_rank

    address = f"tcp://127.0.0.1:{port}"
    torch.distributed.init_process_group("gloo", init_method=address, rank=rank, world_size=2)
    try:
        place = Place(rank=rank, world=2, local_rank=rank, device=torch.device("cpu"))
        results = [same_on_every_rank(6, place), same_on_every_rank(6 if rank == 0 else 0, place)]
        Path(out, f"rank{rank}").write_text(json.dumps(results))
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_check_they_resume_from_the_same_step(tmp_path):
    """What train uses to refuse a resume where one rank found a checkpoint and another did not."""
    torch.multiprocessing.spawn(_agreement_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    assert [json.loads((tmp_path / f"rank{r}").read_text()) for r in range(2)] == [[True, False]] * 2


def test_damaged_training_checkpoint_is_named(tmp_path):
    from safetensors.torch import save_file

    from training.train_state import STATE_FORMAT, STATE_VERSION

    path = tmp_path / "last.safetensors"
    metadata = {"format": STATE_FORMAT, "format_version": STATE_VERSION}  # no "settings"
    save_file({"step": torch.tensor([3])}, str(path), metadata=metadata)
    with pytest.raises(TrainingError, match="last.safetensors is a damaged training checkpoint.*settings"):
        load_state(path)


def test_missing_or_unreadable_pipeline_files_are_named(tmp_path):
    from training.targets import load_targets

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(TrainingError, match="training checkpoint not found: .*absent.safetensors"):
        load_state(tmp_path / "absent.safetensors")
    with pytest.raises(TrainingError, match="junk.safetensors is not a readable training checkpoint"):
        load_state(junk)
    with pytest.raises(TrainingError, match="targets file not found: .*absent.safetensors"):
        load_targets(tmp_path / "absent.safetensors")
    with pytest.raises(TrainingError, match="junk.safetensors is not a readable targets file"):
        load_targets(junk)
    save_file({"other": torch.zeros(1)}, str(junk))
    with pytest.raises(TrainingError, match="junk.safetensors is not a targets file written by the targets"):
        load_targets(junk)


def test_auto_precision_follows_what_the_gpu_supports(monkeypatch):
    from training.features import compute_dtype

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert compute_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a Turing card
    assert compute_dtype("auto", cuda) == torch.float16
    assert compute_dtype("auto", torch.device("cpu")) == torch.float32
    assert compute_dtype("fp32", cuda) == torch.float32


def test_bad_training_settings_are_named(data, tmp_path, capsys):
    assert _train(data, tmp_path / "run", "--steps", "4", "--batch-size", "0", "--log-every", "0") == 2
    err = capsys.readouterr().err
    assert "--batch-size must be at least 1 (got 0)" in err and "--log-every must be at least 1" in err


def test_large_name_space_statistics_are_reproducible(monkeypatch):
    from lib_magicnaming import namespace

    monkeypatch.setattr(namespace, "EXACT_SVD_MAX_NAMES", 4)  # take the randomised path on tiny data
    f_id = torch.randn(12, 8, 2048, generator=torch.Generator().manual_seed(1))
    first, second = namespace.fit_namespace_stats(f_id, 3), namespace.fit_namespace_stats(f_id, 3)
    assert torch.equal(first.basis, second.basis) and torch.equal(first.scales, second.scales)
    torch.testing.assert_close(first.basis @ first.basis.T, torch.eye(3), atol=1e-4, rtol=0)
