"""Checkpoint format v1: round trip, and every validation error names the problem."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from encoder_fixtures import random_embeddings, tiny_config, tiny_head_state
from safetensors import safe_open
from safetensors.torch import save_file

from lib_magicnaming.checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    config_metadata,
    load_encoder_checkpoint,
    save_encoder_checkpoint,
)
from lib_magicnaming.constants import ID_TOKENS, SDXL_CONTEXT_WIDTH, SHORT_HASH_CHARS
from lib_magicnaming.errors import EncoderError
from lib_magicnaming.factory import build_encoder
from lib_magicnaming.namespace import NamespaceStats, namespace_stats_from_embeddings, sample_namespace


@pytest.fixture(scope="module")
def stats():
    return namespace_stats_from_embeddings(random_embeddings(12), rank=4)


@pytest.fixture()
def saved(tmp_path, stats):
    config = tiny_config()
    head = tiny_head_state(config)
    path = tmp_path / "enc.safetensors"
    short = save_encoder_checkpoint(
        path,
        config=config,
        head_state=head,
        namespace_stats=stats,
        training_summary={"steps": 10, "loss": 0.5},
    )
    return path, short, config, head


def read_raw(path):
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())


def rewrite(path, tensors=None, metadata=None, **meta_changes):
    raw_tensors, raw_meta = read_raw(path)
    tensors = raw_tensors if tensors is None else tensors
    metadata = dict(raw_meta if metadata is None else metadata)
    for key, value in meta_changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_round_trip(saved, stats):
    path, short, config, head = saved
    ckpt = load_encoder_checkpoint(path)
    assert ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ckpt.short_hash == short == ckpt.sha256[:SHORT_HASH_CHARS]
    assert ckpt.config.towers == config.towers
    assert ckpt.config.head == config.head
    assert ckpt.config.crop == config.crop
    assert ckpt.training_summary == {"steps": 10, "loss": 0.5}
    assert ckpt.tower_states == {}
    for key, tensor in head.items():
        torch.testing.assert_close(ckpt.head_state[key], tensor)
    torch.testing.assert_close(ckpt.namespace_stats.basis, stats.basis)
    torch.testing.assert_close(ckpt.namespace_stats.mean, stats.mean)
    assert ckpt.metadata["format"] == FORMAT_NAME and ckpt.metadata["format_version"] == str(FORMAT_VERSION)
    assert json.loads(ckpt.metadata["towers"])[0]["model_cfg"]["vision_cfg"]["width"] == 64


def tiny_tower_json(name: str, arch: str, embed_dim: int) -> str:
    return (
        f'{{"arch": "{arch}", "embed_dim": {embed_dim}, "model_cfg": {{"embed_dim": {embed_dim}, '
        '"quick_gelu": false, "vision_cfg": {"head_width": 32, "image_size": 224, "layers": 2, '
        f'"patch_size": 56, "width": 64}}}}, "name": "{name}", "param_count": null, "pretrained": "random", '
        '"weights_sha256": null}'
    )


V1_METADATA_OF_TINY_CONFIG = {
    "format": "magicnaming-encoder",
    "format_version": "1",
    "base_model_family": "sdxl",
    "id_tokens": "8",
    "context_width": "2048",
    "id_first_row": "1",
    "towers": f"[{tiny_tower_json('clip_l', 'tiny-l', 768)}, {tiny_tower_json('clip_g', 'tiny-g', 1280)}]",
    "head": '{"act": "gelu", "hidden_dim": 32, "in_dim": 2048, "norm": "layernorm", "out_dim": 2048, '
    '"out_tokens": 8}',
    "crop": '{"margin": 0.25, "mean": [0.48145466, 0.4578275, 0.40821073], "size": 224, '
    '"std": [0.26862954, 0.26130258, 0.27577711]}',
    "feature_norm": "l2",
    "training_summary": '{"step": 3}',
}
"""The metadata format v1 as earlier versions wrote it for tiny_config() (copied from a file they wrote)."""


def test_metadata_is_written_as_format_v1_always_was():
    assert config_metadata(tiny_config(), {"step": 3}) == V1_METADATA_OF_TINY_CONFIG


def test_a_recorded_detector_is_written_with_the_crop_rule_beside_v1s_crop_fields():
    config = tiny_config()
    config.crop.detector = "yunet-2023mar"
    crop = json.loads(config_metadata(config, {"step": 3})["crop"])
    v1_crop = json.loads(V1_METADATA_OF_TINY_CONFIG["crop"])
    assert crop == {**v1_crop, "rule": "box-square", "detector": "yunet-2023mar"}


def test_a_checkpoint_written_by_an_earlier_version_loads(tmp_path, stats):
    config = tiny_config()
    head = {f"head.{k}": v for k, v in tiny_head_state(config).items()}
    path = tmp_path / "earlier.safetensors"
    save_file(head, str(path), metadata=V1_METADATA_OF_TINY_CONFIG)
    checkpoint = load_encoder_checkpoint(path)
    assert checkpoint.config == config and checkpoint.training_summary == {"step": 3}


def test_checkpoint_with_towers_rebuilds_the_same_model(tmp_path):
    config = tiny_config()
    original = build_encoder(config, head_state=tiny_head_state(config), random_towers=True)
    path = tmp_path / "full.safetensors"
    save_encoder_checkpoint(
        path,
        config=config,
        head_state=original.head.state_dict(),
        tower_states={n: t.state_dict() for n, t in original.towers.items()},
    )
    ckpt = load_encoder_checkpoint(path)
    assert ckpt.namespace_stats is None
    assert sorted(ckpt.tower_states) == ["clip_g", "clip_l"]
    rebuilt = ckpt.build_model()
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(rebuilt(x), original(x))


def test_overwriting_changes_the_hash(saved, stats):
    path, short, config, head = saved
    head = dict(head, **{"fc3.bias": head["fc3.bias"] + 1})
    assert save_encoder_checkpoint(path, config=config, head_state=head, namespace_stats=stats) != short
    assert list(path.parent.glob(".*tmp")) == []


def test_the_checkpoint_is_hashed_once_per_version_of_the_file(saved, stats, monkeypatch):
    """Every encoder built from the same file reuses its hash (gigabytes with towers inside); a rewrite of
    the file is hashed again."""
    import os

    from lib_magicnaming import checkpoint as checkpoint_module

    path, short, config, head = saved
    hashed = []
    real = checkpoint_module.file_sha256
    monkeypatch.setattr(checkpoint_module, "file_sha256", lambda p: hashed.append(p) or real(p))
    first = load_encoder_checkpoint(path).sha256
    assert load_encoder_checkpoint(path).sha256 == first and len(hashed) == 1
    head = dict(head, **{"fc3.bias": head["fc3.bias"] + 1})
    save_encoder_checkpoint(path, config=config, head_state=head, namespace_stats=stats)
    os.utime(path, ns=(1, 1))  # a rewrite within one clock tick could keep the mtime; make it differ
    hashed.clear()  # saving hashed the new file for its short hash
    assert load_encoder_checkpoint(path).sha256 == real(path) != first and len(hashed) == 1


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "something-else"}, "not a MagicNaming encoder checkpoint"),
        ({"crop": None}, r"missing key\(s\) \['crop'\]"),
        ({"format_version": "2"}, "format version '2'.*update the extension"),
        ({"format_version": "0"}, "format version '0', this MagicNaming reads version 1"),
        ({"id_tokens": "16"}, "id_tokens is '16', this MagicNaming needs '8'"),
        ({"id_first_row": "0"}, "id_first_row is '0'"),
        ({"base_model_family": "sd15"}, "base_model_family is 'sd15'"),
        ({"head": "{not json"}, "metadata head is not valid JSON"),
        ({"towers": "{}"}, "metadata towers must be a JSON list"),
        ({"training_summary": "[]"}, "training_summary must be a JSON dict"),
        ({"feature_norm": "l1"}, "feature_norm must be one of"),
        ({"training_summary": '{"loss": NaN}'}, "training_summary is not valid JSON.*NaN"),
        ({"crop": '{"size": 224}'}, r"crop config is missing field\(s\)"),
    ],
)
def test_bad_metadata_is_named(saved, changes, message):
    path = rewrite(saved[0], **changes)
    with pytest.raises(EncoderError, match=message):
        load_encoder_checkpoint(path)


def test_unknown_tower_arch_is_named(saved):
    path = saved[0]
    towers = json.loads(read_raw(path)[1]["towers"])
    towers[1].update(arch="ViT-Nope-1", model_cfg=None)
    with pytest.raises(EncoderError, match="unknown open_clip architecture 'ViT-Nope-1'"):
        load_encoder_checkpoint(rewrite(path, towers=json.dumps(towers)))


def test_tower_fingerprints_round_trip(tmp_path, stats):
    config = tiny_config()
    config.towers[0].weights_sha256, config.towers[0].param_count = "0123456789abcdef" * 4, 1234
    path = tmp_path / "fingerprinted.safetensors"
    save_encoder_checkpoint(path, config=config, head_state=tiny_head_state(config), namespace_stats=stats)
    towers = load_encoder_checkpoint(path).config.towers
    assert (towers[0].weights_sha256, towers[0].param_count) == ("0123456789abcdef" * 4, 1234)
    assert (towers[1].weights_sha256, towers[1].param_count) == (None, None)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"weights_sha256": "F" * 64, "param_count": 10}, "weights_sha256 must be 64 lower-case hex"),
        ({"weights_sha256": "f" * 40, "param_count": 10}, "weights_sha256 must be 64 lower-case hex"),
        ({"weights_sha256": ["f" * 64], "param_count": 10}, "weights_sha256 must be 64 lower-case hex"),
        ({"weights_sha256": "f" * 64, "param_count": -3}, "param_count must be a positive integer"),
        ({"weights_sha256": "f" * 64, "param_count": 2.5}, "param_count must be a positive integer"),
        ({"weights_sha256": "f" * 64, "param_count": None}, "recorded together"),
        ({"weights_sha256": None, "param_count": 10}, "recorded together"),
        ({"file_size": 10}, r"unknown field\(s\) \['file_size'\]"),
    ],
)
def test_malformed_tower_fingerprints_are_named(saved, fields, message):
    path = saved[0]
    towers = json.loads(read_raw(path)[1]["towers"])
    towers[1].update(fields)
    with pytest.raises(EncoderError, match=rf"enc\.safetensors: .*{message}"):
        load_encoder_checkpoint(rewrite(path, towers=json.dumps(towers)))


def test_head_config_disagreeing_with_tensors_is_named(saved):
    path = saved[0]
    head = json.loads(read_raw(path)[1]["head"])
    head["hidden_dim"] = 16
    message = r"head.fc1.weight has shape \(32, 2048\), the head config needs \(16, 2048\)"
    with pytest.raises(EncoderError, match=message):
        load_encoder_checkpoint(rewrite(path, head=json.dumps(head)))


def test_towers_disagreeing_with_head_width_are_named(saved):
    path = saved[0]
    head = json.loads(read_raw(path)[1]["head"])
    head["in_dim"] = 1024
    with pytest.raises(EncoderError, match="head in_dim 1024 does not match"):
        load_encoder_checkpoint(rewrite(path, head=json.dumps(head)))


def tensor_case(tensors, case):
    if case == "missing":
        tensors.pop("head.fc2.bias")
    elif case == "nan":
        tensors["head.fc1.weight"][0, 0] = float("nan")
    elif case == "inf_pair":  # +inf and -inf: a sum of them is NaN, still caught
        tensors["head.fc1.weight"][0, :2] = torch.tensor([float("inf"), float("-inf")])
    elif case == "inf_mean":
        tensors["namespace.mean"][0, 0] = float("inf")
    elif case == "partial_namespace":
        tensors.pop("namespace.scales")
    elif case == "scales_shape":
        tensors["namespace.scales"] = torch.ones(3)
    elif case == "negative_scale":
        tensors["namespace.scales"][0] = -1.0
    elif case == "mean_shape":
        tensors["namespace.mean"] = torch.zeros(4, SDXL_CONTEXT_WIDTH)
    elif case == "unknown":
        tensors["extra.thing"] = torch.zeros(1)
    elif case == "unknown_tower":
        tensors["tower.clip_x.weight"] = torch.zeros(1)
    elif case == "unexpected_head":
        tensors["head.fc4.weight"] = torch.zeros(1)
    return tensors


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", r"head tensor\(s\) missing: \['head.fc2.bias'\]"),
        ("nan", "head.fc1.weight holds non-finite values"),
        ("inf_pair", "head.fc1.weight holds non-finite values"),
        ("inf_mean", "namespace.mean holds non-finite values"),
        ("partial_namespace", r"name-space statistics incomplete, missing \['namespace.scales'\]"),
        ("scales_shape", r"namespace.scales has shape \(3,\), expected \(4,\)"),
        ("negative_scale", "namespace.scales holds negative values"),
        ("mean_shape", r"namespace.mean has shape \(4, 2048\), expected \(8, 2048\)"),
        ("unknown", r"unknown tensor\(s\) \['extra.thing'\]"),
        ("unknown_tower", "tensor 'tower.clip_x.weight' belongs to no tower"),
        ("unexpected_head", r"unexpected head tensor\(s\) \['head.fc4.weight'\]"),
    ],
)
def test_bad_tensors_are_named(saved, case, message):
    path = saved[0]
    tensors = tensor_case(read_raw(path)[0], case)
    with pytest.raises(EncoderError, match=message):
        load_encoder_checkpoint(rewrite(path, tensors=tensors))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(EncoderError, match="encoder checkpoint not found"):
        load_encoder_checkpoint(tmp_path / "absent.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(EncoderError, match="junk.safetensors is not a readable safetensors file"):
        load_encoder_checkpoint(junk)


def test_truncated_checkpoint_is_rejected(saved):
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EncoderError, match="not a readable safetensors file"):
        load_encoder_checkpoint(path)


def test_save_refuses_what_load_would_refuse(tmp_path, stats):
    config = tiny_config()
    head = tiny_head_state(config)
    with pytest.raises(EncoderError, match="training_summary must be JSON-serialisable"):
        save_encoder_checkpoint(
            tmp_path / "a", config=config, head_state=head, training_summary={"x": object()}
        )
    with pytest.raises(EncoderError, match="non-finite"):
        save_encoder_checkpoint(
            tmp_path / "b",
            config=config,
            head_state=head,
            namespace_stats=NamespaceStats(stats.mean * float("nan"), stats.basis, stats.scales),
        )
    with pytest.raises(EncoderError, match="names tower 'clip_x'"):
        save_encoder_checkpoint(tmp_path / "c", config=config, head_state=head, tower_states={"clip_x": {}})
    assert not list(tmp_path.iterdir())


def test_namespace_stats_fit():
    embeddings = random_embeddings(10, seed=3)
    stats = namespace_stats_from_embeddings(embeddings, rank=20)
    assert stats.rank == 9  # at most N - 1 directions
    torch.testing.assert_close(stats.mean, embeddings.mean(dim=0))
    torch.testing.assert_close(stats.basis @ stats.basis.T, torch.eye(9), atol=1e-4, rtol=0)
    centred = (embeddings - stats.mean).reshape(10, -1)
    torch.testing.assert_close((centred @ stats.basis.T).std(dim=0), stats.scales, rtol=1e-3, atol=1e-4)


def test_sampling_is_seeded(stats):
    first = sample_namespace(stats, seed=7)
    assert first.shape == (ID_TOKENS, SDXL_CONTEXT_WIDTH)
    torch.testing.assert_close(sample_namespace(stats, seed=7), first, rtol=0, atol=0)
    assert not torch.allclose(sample_namespace(stats, seed=8), first)
    torch.testing.assert_close(sample_namespace(stats, seed=7, scale=0.0), stats.mean)
    coords = ((first - stats.mean).reshape(-1) @ stats.basis.T) / stats.scales
    expected = torch.randn(stats.rank, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(coords, expected, rtol=1e-3, atol=1e-3)
    with pytest.raises(EncoderError, match="scale must be a finite number"):
        sample_namespace(stats, seed=1, scale=float("nan"))


def test_the_crop_records_its_detector_and_rule_and_old_files_still_load(tmp_path, stats):
    config = tiny_config()
    config.crop.detector = "yunet-2023mar"
    path = tmp_path / "enc.safetensors"
    save_encoder_checkpoint(path, config=config, head_state=tiny_head_state(config), namespace_stats=stats)
    crop = json.loads(read_raw(path)[1]["crop"])
    assert crop["detector"] == "yunet-2023mar" and crop["rule"] == "box-square"
    assert load_encoder_checkpoint(path).config.crop.detector == "yunet-2023mar"
    # a checkpoint written before the crop recorded its rule and detector
    old_crop = {k: v for k, v in crop.items() if k not in ("rule", "detector")}
    old = load_encoder_checkpoint(rewrite(path, crop=json.dumps(old_crop)))
    assert (old.config.crop.rule, old.config.crop.detector) == ("box-square", None)
    assert old.config.crop.margin == crop["margin"] and old.config.crop.size == crop["size"]
    with pytest.raises(EncoderError, match="crop rule 'eyes-v2' is unknown"):
        load_encoder_checkpoint(rewrite(path, crop=json.dumps({**crop, "rule": "eyes-v2"})))


def test_large_finite_values_are_not_taken_for_non_finite_ones(saved):
    """The finite check sums first: a sum that overflows from finite values must not refuse the file."""
    path = saved[0]
    tensors = read_raw(path)[0]
    tensors["head.fc1.weight"][0, :4] = 3e38
    loaded = load_encoder_checkpoint(rewrite(path, tensors=tensors))
    assert float(loaded.head_state["fc1.weight"][0, 0]) == pytest.approx(3e38)
