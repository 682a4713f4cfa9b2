"""Tower weights from local open_clip files; offline errors name the file to create."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from encoder_fixtures import tiny_config, tiny_tower
from safetensors.torch import save_file

from lib_magicnaming import towers as towers_module
from lib_magicnaming.errors import EncoderError
from lib_magicnaming.factory import build_encoder
from lib_magicnaming.model import CLIP_G_TOWER
from lib_magicnaming.towers import (
    TowerFingerprint,
    build_tower_module,
    find_tower_file,
    load_tower,
    read_tower_state,
    recorded_fingerprint,
    tower_fingerprint,
    towers_dir,
    with_fingerprint,
)


@pytest.fixture()
def spec():
    return tiny_tower("clip_l", 768, "tiny-l")


@pytest.fixture()
def source(spec):
    torch.manual_seed(3)
    return build_tower_module(spec)


def write_full_clip(source, path):
    """A whole-CLIP open_clip state dict: visual.* plus text-tower keys that must be skipped."""
    tensors = {f"visual.{k}": v.clone() for k, v in source.state_dict().items()}
    tensors["token_embedding.weight"] = torch.zeros(10, 4)
    tensors["logit_scale"] = torch.ones(())
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def assert_same_tower(a, b):
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=0)
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(a(x), b(x))


def test_local_safetensors_whole_clip_file(tmp_path, spec, source):
    path = write_full_clip(source, towers_dir(tmp_path) / f"{spec.file_stem}.safetensors")
    assert find_tower_file(spec, tmp_path) == path
    loaded = load_tower(spec, tmp_path)
    assert_same_tower(loaded, source)
    assert all(not p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())
    assert not loaded.training


def test_the_tower_owns_its_weights_and_lets_the_file_go(tmp_path, spec, source, monkeypatch):
    """The tower is built on the meta device and takes one copy of each tensor as its own: not the file's
    memory mapping (an in-place rewrite of a mapped file would crash the WebUI), and the file's tensors are
    released once loaded (the weights are held once)."""
    import gc
    import weakref

    class State(dict):
        pass

    path = write_full_clip(source, towers_dir(tmp_path) / f"{spec.file_stem}.safetensors")
    handed = [State(read_tower_state(path))]
    released = weakref.ref(handed[0])
    file_pointers = {t.data_ptr() for t in handed[0].values()}
    monkeypatch.setattr(towers_module, "read_tower_state", lambda _path: handed.pop())
    loaded = load_tower(spec, tmp_path)
    gc.collect()
    assert released() is None
    assert not {t.data_ptr() for t in loaded.state_dict().values()} & file_pointers
    assert all(t.device.type == "cpu" for t in [*loaded.parameters(), *loaded.buffers()])
    assert_same_tower(loaded, source)


def test_local_bin_vision_only_state_dict(tmp_path, spec, source):
    path = towers_dir(tmp_path) / f"{spec.file_stem}.bin"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    assert_same_tower(load_tower(spec, tmp_path), source)


def test_safetensors_preferred_over_bin(tmp_path, spec, source):
    write_full_clip(source, towers_dir(tmp_path) / f"{spec.file_stem}.safetensors")
    (towers_dir(tmp_path) / f"{spec.file_stem}.bin").write_bytes(b"not read")
    assert find_tower_file(spec, tmp_path).suffix == ".safetensors"
    assert_same_tower(load_tower(spec, tmp_path), source)


class Payload:
    """A pickled object that weights_only loading must refuse."""


def test_pickled_objects_are_refused(tmp_path, spec):
    path = towers_dir(tmp_path) / f"{spec.file_stem}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"x": Payload()}, path)
    with pytest.raises(EncoderError, match="cannot be read as a plain tensor file"):
        load_tower(spec, tmp_path)


def test_offline_without_file_names_the_path_and_source(tmp_path):
    with pytest.raises(EncoderError) as info:
        load_tower(CLIP_G_TOWER, tmp_path)
    message = str(info.value)
    assert str(tmp_path / "towers" / "ViT-bigG-14-laion2b_s39b_b160k.safetensors") in message
    assert "huggingface.co/laion/CLIP-ViT-bigG-14-laion2B-39B-b160k" in message
    assert "downloads are off" in message


def write_vision_only_fp16(source, path):
    """The vision tower's state dict alone, stored as float16 safetensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in source.state_dict().items()}, str(path))
    return path


def write_whole_clip_bin(source, path):
    """A whole-CLIP state dict (float32, text keys too) saved with torch.save: a dict of tensors only."""
    tensors = {f"visual.{k}": v.clone() for k, v in source.state_dict().items()}
    tensors["text_projection"] = torch.ones(4, 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path)
    return path


def fingerprinted(spec, source):
    """``spec`` recording the fingerprint of ``source``'s weights, as the training pipeline records it."""
    return with_fingerprint(spec, tower_fingerprint(source.state_dict()))


@pytest.fixture()
def fp16_exact_source(source):
    """Weights float16 represents exactly (as OpenAI's CLIP weights): both twin files hold the same values."""
    with torch.no_grad():
        for param in source.parameters():
            param.copy_(param.half().float())
    return source


def test_the_same_weights_in_twin_files_have_one_fingerprint(tmp_path, spec, fp16_exact_source):
    """A vision-only float16 .safetensors and a whole-CLIP float32 .bin of the same weights both load."""
    source = fp16_exact_source
    recorded = fingerprinted(spec, source)
    safetensors_dir, bin_dir = tmp_path / "a", tmp_path / "b"
    write_vision_only_fp16(source, towers_dir(safetensors_dir) / f"{spec.file_stem}.safetensors")
    write_whole_clip_bin(source, towers_dir(bin_dir) / f"{spec.file_stem}.bin")
    from_safetensors = load_tower(recorded, safetensors_dir)
    from_bin = load_tower(recorded, bin_dir)
    assert_same_tower(from_safetensors, source)
    assert_same_tower(from_bin, source)
    assert tower_fingerprint(from_safetensors.state_dict()) == tower_fingerprint(from_bin.state_dict())


def test_float32_weights_match_their_float16_conversion(spec, source):
    """The canonical form is float16: a float32 file and its float16 conversion are the same weights."""
    state = source.state_dict()
    assert any(not torch.equal(v, v.half().float()) for v in state.values())  # not float16-exact
    half = {k: v.half() for k, v in state.items()}
    assert tower_fingerprint(half) == tower_fingerprint(state)
    assert tower_fingerprint(half).param_count == sum(p.numel() for p in source.parameters())


def test_one_changed_weight_is_rejected(tmp_path, spec, source):
    recorded = fingerprinted(spec, source)
    with torch.no_grad():
        source.conv1.weight[0, 0, 0, 0] += 0.01
    path = write_full_clip(source, towers_dir(tmp_path) / f"{spec.file_stem}.safetensors")
    with pytest.raises(EncoderError) as info:
        load_tower(recorded, tmp_path)
    message = str(info.value)
    found = tower_fingerprint(source.state_dict())
    assert str(path) in message
    assert "different weights than the encoder was trained with" in message
    assert f"expects weights_sha256 {recorded.weights_sha256}" in message
    assert f"found weights_sha256 {found.weights_sha256}" in message
    assert_same_tower(load_tower(recorded, tmp_path, verify=False), source)


def test_a_tower_file_is_hashed_once_per_version_of_the_file(tmp_path, spec, source, monkeypatch):
    """Loading the same file again (a second encoder, a replaced one) does not hash bigG again; any new
    version of the file (size, mtime, inode) is hashed, so changed weights are still refused."""
    import os

    recorded = fingerprinted(spec, source)
    path = write_full_clip(source, towers_dir(tmp_path) / f"{spec.file_stem}.safetensors")
    hashed = []
    real = towers_module._fingerprint_of
    monkeypatch.setattr(towers_module, "_fingerprint_of", lambda *args: hashed.append(1) or real(*args))
    load_tower(recorded, tmp_path)
    assert_same_tower(load_tower(recorded, tmp_path), source)
    assert len(hashed) == 1
    with torch.no_grad():
        source.conv1.weight[0, 0, 0, 0] += 0.01
    write_full_clip(source, path)
    os.utime(path, ns=(1, 1))  # a rewrite within one clock tick could keep the mtime; make it differ
    with pytest.raises(EncoderError, match="different weights than the encoder was trained with"):
        load_tower(recorded, tmp_path)
    assert len(hashed) == 2


def test_a_float16_file_becomes_a_float16_tower_checked_against_the_files_values(tmp_path, spec,
                                                                                fp16_exact_source):
    """The towers run in float16 on a GPU: a float16 file loads straight into float16 (its fingerprint is
    the float32 weights' one); a bfloat16 tower is checked against the file's values, not its own rounded
    ones (which would not match)."""
    recorded = fingerprinted(spec, fp16_exact_source)
    for folder, dtype in ((tmp_path / "a", torch.float16), (tmp_path / "b", torch.bfloat16)):
        write_vision_only_fp16(fp16_exact_source, towers_dir(folder) / f"{spec.file_stem}.safetensors")
        tower = load_tower(recorded, folder, dtype=dtype)
        assert {p.dtype for p in tower.parameters()} == {dtype}
        for key, value in tower.state_dict().items():
            assert torch.equal(value, fp16_exact_source.state_dict()[key].to(dtype))
    assert tower_fingerprint(tower.state_dict()) != recorded_fingerprint(recorded)  # bf16 rounding differs


def test_fingerprint_follows_the_documented_rule(source):
    """Recomputed here from the rule in tower_fingerprint's docstring, independently of its code."""
    state = {"b": torch.tensor([[1.0, -2.5]]), "a": torch.arange(3, dtype=torch.int64)}
    entries = b""
    for key, array in (("a", np.arange(3, dtype="<i8")), ("b", np.array([[1.0, -2.5]], dtype="<f2"))):
        header = json.dumps([key, list(array.shape), str(array.dtype)], separators=(",", ":"))
        entries += hashlib.sha256(header.encode() + b"\n" + array.tobytes()).digest()
    expected = hashlib.sha256(b"magicnaming-tower-weights-v1\n" + entries).hexdigest()
    assert tower_fingerprint(state) == TowerFingerprint(expected, 5)
    assert tower_fingerprint(dict(reversed(state.items()))).weights_sha256 == expected
    renamed = {"c": state["b"], "a": state["a"]}
    reshaped = {"b": state["b"].reshape(2, 1), "a": state["a"]}
    assert tower_fingerprint(renamed).weights_sha256 != expected
    assert tower_fingerprint(reshaped).weights_sha256 != expected


def test_stored_tower_weights_are_checked_against_the_recorded_fingerprint():
    config = tiny_config()
    towers = {t.name: build_tower_module(t) for t in config.towers}
    config.towers = [fingerprinted(t, towers[t.name]) for t in config.towers]
    states = {name: tower.state_dict() for name, tower in towers.items()}
    build_encoder(config, tower_states=states)
    states["clip_g"] = {k: v + 1 if k == "proj" else v for k, v in states["clip_g"].items()}
    with pytest.raises(EncoderError, match="clip_g weights stored in the checkpoint: different weights"):
        build_encoder(config, tower_states=states)


def test_downloaded_weights_are_checked_too(monkeypatch, tmp_path, spec, source):
    recorded = fingerprinted(spec, source)
    monkeypatch.setattr(towers_module, "download_tower", lambda _spec, _cache: build_tower_module(spec))
    with pytest.raises(EncoderError, match="open_clip's tiny-l / random weights: different weights"):
        load_tower(recorded, tmp_path, allow_download=True)
    assert load_tower(recorded, tmp_path, allow_download=True, verify=False) is not None


def test_weights_of_another_architecture_are_named(tmp_path, spec):
    other = tiny_tower("clip_l", 768, "other")
    other.model_cfg["vision_cfg"]["width"] = 32
    write_full_clip(build_tower_module(other), towers_dir(tmp_path) / f"{spec.file_stem}.safetensors")
    with pytest.raises(EncoderError, match=r"has shape .* \(is it an open_clip tiny-l checkpoint\?\)"):
        load_tower(spec, tmp_path)


def test_file_without_vision_tensors(tmp_path):
    path = tmp_path / "empty.safetensors"
    save_file({}, str(path))
    with pytest.raises(EncoderError, match="holds no tensors of a CLIP vision tower"):
        read_tower_state(path)


def test_download_goes_through_open_clip_only_when_allowed(monkeypatch, tmp_path):
    calls = []

    class FakeClip:
        visual = torch.nn.Linear(2, 2)

    def fake_create_model(arch, pretrained=None, cache_dir=None, force_quick_gelu=False):
        calls.append((arch, pretrained, cache_dir, force_quick_gelu))
        return FakeClip()

    import open_clip

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    with pytest.raises(EncoderError):
        load_tower(CLIP_G_TOWER, tmp_path)
    assert calls == []
    visual = load_tower(CLIP_G_TOWER, tmp_path, allow_download=True, cache_dir=tmp_path / "cache")
    assert calls == [("ViT-bigG-14", "laion2b_s39b_b160k", str(tmp_path / "cache"), False)]
    assert visual is FakeClip.visual and not visual.weight.requires_grad
    with pytest.raises(EncoderError, match="custom config"):
        towers_module.download_tower(tiny_tower("clip_l", 768, "tiny"))


def test_encoder_loads_both_towers_from_the_models_folder(tmp_path):
    config = tiny_config()
    sources = {}
    for spec in config.towers:
        sources[spec.name] = build_tower_module(spec)
        write_full_clip(sources[spec.name], towers_dir(tmp_path) / f"{spec.file_stem}.safetensors")
    encoder = build_encoder(config, models_dir=str(tmp_path))
    for name, tower in sources.items():
        assert_same_tower(encoder.towers[name], tower)
