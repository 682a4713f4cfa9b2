"""The likeness stage's parts: WebUI conditioning with identities, SDXL loading, faces, CLIP-T, inputs."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from likeness_fixtures import (
    ldm_unet_state,
    tiny_text_specs,
    write_prompts,
    write_tiny_sdxl_file,
    write_tiny_sdxl_folder,
)
from PIL import Image, ImageDraw
from training_fixtures import hf_clip_text_state

from lib_magicnaming.constants import CHUNK_ROWS, ID_TOKENS, SDXL_CONTEXT_WIDTH
from training.common import SkipReport, TrainingError
from training.prompt_conditioning import WebUIConditioner, fill, match_lengths
from training.text_encoders import (
    SDXL_CLIP_G,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L,
    SDXL_CLIP_L_PREFIX,
    SDXLTextEncoder,
    load_text_tower,
    tiny_spec,
    tokenize_line,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other work on a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def conditioner():
    towers = [(spec, load_text_tower(spec, random_seed=seed)) for seed, spec in enumerate(tiny_text_specs())]
    return WebUIConditioner(SDXLTextEncoder(towers))


def f_id(seed: int) -> torch.Tensor:
    return torch.randn(ID_TOKENS, SDXL_CONTEXT_WIDTH, generator=torch.Generator().manual_seed(seed))


# --- conditioning ---------------------------------------------------------------------------------------


def test_plain_conditioning_is_the_webui_encoding_and_open_clips_pooled_output(conditioner):
    text = "a photo of a person riding a bicycle"
    cond = conditioner.plain(text)
    torch.testing.assert_close(cond.crossattn, conditioner.encoder.encode([text])[0])
    tokens = torch.tensor([tokenize_line(text)[0]])
    end = int(tokens[0, -1])
    first_end = int((tokens[0] == end).nonzero()[0])
    tokens[0, first_end + 1 :] = 0  # process_tokens: bigG pads with 0 after the first end token
    bigg = conditioner.encoder.towers[1][1]
    with torch.no_grad():
        reference = bigg(tokens)[0]  # open_clip's own forward: ln_final, argmax token, text_projection
    torch.testing.assert_close(cond.pooled, reference, rtol=1e-5, atol=1e-6)
    assert cond.crossattn.shape == (CHUNK_ROWS, SDXL_CONTEXT_WIDTH) and cond.pooled.shape == (1280,)


def test_an_empty_negative_prompt_is_zeros_and_a_written_one_is_encoded(conditioner):
    zero = conditioner.negative("")
    assert not zero.crossattn.any() and not zero.pooled.any() and zero.crossattn.shape[0] == CHUNK_ROWS
    written = conditioner.negative("blurry")
    torch.testing.assert_close(written.crossattn, conditioner.plain("blurry").crossattn)


def test_prepending_inserts_the_identity_after_the_start_row_and_keeps_the_pooled_vector(conditioner):
    text = fill("a photo of {} hiking", "a person")
    plain, spliced = conditioner.plain(text), conditioner.prepended(text, f_id(1))
    torch.testing.assert_close(spliced.crossattn[1:9], f_id(1))
    torch.testing.assert_close(spliced.crossattn[0], plain.crossattn[0])
    torch.testing.assert_close(spliced.crossattn[9:], plain.crossattn[1 : CHUNK_ROWS - ID_TOKENS])
    assert torch.equal(spliced.pooled, plain.pooled) and spliced.notes == ()
    long = "word " * 72
    assert "were dropped" in conditioner.prepended(long, f_id(1)).notes[0]


def test_in_place_writes_the_identity_where_the_person_goes(conditioner):
    cond = conditioner.in_place("a photo of {} hiking", f_id(2))
    prefix = conditioner.plain("a photo of")
    row = 1 + 3  # start, "a", "photo", "of"
    torch.testing.assert_close(cond.crossattn[row : row + ID_TOKENS], f_id(2))
    torch.testing.assert_close(cond.crossattn[:row], prefix.crossattn[:row])  # causal: earlier rows unchanged
    assert not torch.equal(cond.crossattn[row + ID_TOKENS :], prefix.crossattn[row + ID_TOKENS :])
    assert not torch.allclose(cond.pooled, conditioner.plain("a photo of a person hiking").pooled)
    with pytest.raises(TrainingError, match="within one 75-token chunk"):
        conditioner.in_place("word " * 70 + "{}", f_id(2))


def test_prompt_and_negative_prompt_get_the_same_length(conditioner):
    long = conditioner.plain("portrait, " * 40)
    assert long.crossattn.shape[0] == 2 * CHUNK_ROWS
    empty = conditioner.plain("")
    cond, uncond = match_lengths(long, conditioner.negative(""), empty)
    assert cond is long and uncond.crossattn.shape == long.crossattn.shape and not uncond.crossattn.any()
    cond, uncond = match_lengths(long, conditioner.negative("blurry"), empty)
    torch.testing.assert_close(uncond.crossattn[CHUNK_ROWS:], empty.crossattn)


def test_the_identity_reaches_the_unet(conditioner, tmp_path):
    from training.sdxl import load_generator

    write_tiny_sdxl_folder(tmp_path / "sdxl")
    generator = load_generator(
        tmp_path / "sdxl", config_folder="unused", sampler="euler", device=torch.device("cpu")
    )
    text, uncond = "a photo of a person", conditioner.negative("")

    def draw(cond) -> np.ndarray:
        image = generator.generate(cond, uncond, seed=7, steps=2, cfg_scale=7.0, width=64, height=64)
        return np.asarray(image, dtype=np.int16)

    alice, bob = draw(conditioner.prepended(text, f_id(3))), draw(conditioner.prepended(text, f_id(4)))
    nobody = draw(conditioner.plain(text))
    assert np.array_equal(alice, draw(conditioner.prepended(text, f_id(3))))  # same seed, same image
    assert np.abs(alice - bob).mean() > 0.05 and np.abs(alice - nobody).mean() > 0.05


# --- loading SDXL ---------------------------------------------------------------------------------------


def test_the_shipped_configs_are_sdxl_base():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from training.sdxl import read_configs

    configs = read_configs()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684  # SDXL base 1.0's U-Net
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert configs["unet"]["cross_attention_dim"] == 2048
    assert configs["unet"]["projection_class_embeddings_input_dim"] == 2816


def test_a_webui_single_file_checkpoint_loads_like_the_models_it_was_made_from(tmp_path):
    from training.sdxl import load_single_file, tiny_configs, tiny_models

    configs = tiny_configs()
    unet, vae = tiny_models(5, configs)
    small = [tiny_spec(SDXL_CLIP_L, width=32, layers=2), tiny_spec(SDXL_CLIP_G, width=48, layers=2)]
    clip_l, clip_g = (load_text_tower(spec, random_seed=9 + i) for i, spec in enumerate(small))
    text = {SDXL_CLIP_L_PREFIX + k: v for k, v in hf_clip_text_state(clip_l).items()}
    text.update({SDXL_CLIP_G_PREFIX + k: v for k, v in clip_g.state_dict().items()})
    path = write_tiny_sdxl_file(tmp_path / "sdxl.safetensors", unet, vae, text)
    assert "input_blocks.4.1.proj_in.weight" in ldm_unet_state(unet.state_dict())
    loaded_unet, loaded_vae = load_single_file(path, configs, torch.float32)
    for original, loaded in ((unet, loaded_unet), (vae, loaded_vae)):
        want, got = original.state_dict(), loaded.state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    from training.likeness_generate import load_text_encoder

    tower_specs = tmp_path / "towers.json"
    tower_specs.write_text(json.dumps({"towers": [s.to_dict() for s in small]}))
    args = argparse.Namespace(
        sdxl=str(path),
        text_towers=str(tower_specs),
        random_text_towers=None,
        clip_l_weights=None,
        clip_g_weights=None,
        allow_download=False,
    )
    encoder = load_text_encoder(args, torch.device("cpu"))
    expected = SDXLTextEncoder([(small[0], clip_l), (small[1], clip_g)]).encode(["Ada Lovelace"])
    torch.testing.assert_close(encoder.encode(["Ada Lovelace"]), expected)
    other = write_tiny_sdxl_file(tmp_path / "other.safetensors", *tiny_models(5, None))
    configs["unet"]["block_out_channels"] = [16, 32, 64]
    with pytest.raises(TrainingError, match="does not match the U-Net config"):
        load_single_file(other, configs, torch.float32)


def test_a_diffusers_folder_brings_its_own_text_encoders(tmp_path):
    from safetensors.torch import save_file

    from training.sdxl import folder_text_states

    small = [tiny_spec(SDXL_CLIP_L, width=32, layers=2), tiny_spec(SDXL_CLIP_G, width=48, layers=2)]
    towers = [load_text_tower(spec, random_seed=3 + i) for i, spec in enumerate(small)]
    for sub, tower in zip(("text_encoder", "text_encoder_2"), towers, strict=True):
        tensors = {"text_model." + k: v.contiguous() for k, v in hf_clip_text_state(tower).items()}
        if sub == "text_encoder_2":
            tensors["text_projection.weight"] = tower.text_projection.detach().T.contiguous()
        (tmp_path / sub).mkdir()
        save_file(tensors, str(tmp_path / sub / "model.safetensors"))
    states = folder_text_states(tmp_path)
    loaded = [load_text_tower(spec, state=states[spec.name]) for spec in small]
    mine = WebUIConditioner(SDXLTextEncoder(list(zip(small, loaded, strict=True)))).plain("Ada Lovelace")
    theirs = WebUIConditioner(SDXLTextEncoder(list(zip(small, towers, strict=True)))).plain("Ada Lovelace")
    torch.testing.assert_close(mine.crossattn, theirs.crossattn)
    torch.testing.assert_close(mine.pooled, theirs.pooled)


# --- faces ----------------------------------------------------------------------------------------------


def test_five_landmarks_are_aligned_onto_arcfaces_template():
    from training.face_similarity import ARCFACE_TEMPLATE, FoundFace, recognition_crop, similarity_transform

    angle, scale, shift = 0.3, 2.5, np.array([140.0, 90.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = ARCFACE_TEMPLATE @ (scale * rotation).T + shift
    matrix = similarity_transform(points, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(points @ matrix[:, :2].T + matrix[:, 2], ARCFACE_TEMPLATE, atol=1e-6)
    photo = Image.new("RGB", (400, 400), (0, 0, 0))
    draw = ImageDraw.Draw(photo)
    for x, y in points:
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(255, 255, 255))
    crop = np.asarray(recognition_crop(photo, FoundFace((0, 0, 1, 1), points, 1)))
    assert crop.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].min() > 200  # every dot landed on its template point
    assert crop.mean() < 40


def test_yunets_landmarks_feed_the_arcface_alignment(tmp_path):
    from likeness_fixtures import FACE_BOX, write_gated_yunet
    from yunet_fixtures import landmarks_in

    from lib_magicnaming.yunet_detector import YuNetDetector
    from training.face_similarity import ARCFACE_TEMPLATE, find_face, recognition_crop, similarity_transform

    side = 256
    points = np.array(landmarks_in(tuple(f * side for f in FACE_BOX)))
    photo = Image.new("RGB", (side, side), (60, 60, 60))
    draw = ImageDraw.Draw(photo)
    for x, y in points:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(255, 255, 255))
    detector = YuNetDetector(model_path=write_gated_yunet(tmp_path / "yunet.onnx")).load()
    face = find_face(photo, detector, assume_cropped=False)
    assert face.faces_found == 1
    np.testing.assert_allclose(face.landmarks, points, atol=0.5)
    matrix = similarity_transform(face.landmarks, ARCFACE_TEMPLATE)
    landed = points @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(landed - ARCFACE_TEMPLATE).max() < 6  # eyes, nose and mouth go to ArcFace's places
    crop = np.asarray(recognition_crop(photo, face))
    for x, y in landed:
        assert crop[int(round(y)), int(round(x))].min() > 200


def test_the_recognition_model_signature_and_pack_lookup(tmp_path):
    from encoder_fixtures import write_scrfd_onnx

    from training.arcface import ArcFaceModel, write_tiny_recognition_onnx

    pack = tmp_path / "models" / "buffalo_l"
    write_scrfd_onnx(pack / "det_10g.onnx", [(10, 10, 50, 50, 0.9)])
    with pytest.raises(TrainingError, match="not an ArcFace-style face-recognition model"):
        ArcFaceModel(pack / "det_10g.onnx")
    with pytest.raises(TrainingError, match="holds no face-recognition"):
        ArcFaceModel.from_pack(tmp_path, "buffalo_l")
    write_tiny_recognition_onnx(pack / "w600k_r50.onnx")
    model = ArcFaceModel.from_pack(tmp_path, "buffalo_l")
    assert model.path.name == "w600k_r50.onnx" and (model.mean, model.std) == (127.5, 127.5)
    faces = [Image.new("RGB", (112, 112), c) for c in ((200, 30, 30), (200, 30, 30), (20, 90, 220))]
    embeddings = model.embed(faces)
    assert embeddings.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0)
    assert embeddings[0] @ embeddings[1] == pytest.approx(1.0) and embeddings[0] @ embeddings[2] < 0.99


def test_reference_ceiling_is_each_reference_against_the_others():
    from training.arcface import reference_centre
    from training.face_similarity import leave_one_out

    embeddings = np.eye(3)
    assert leave_one_out(embeddings) == pytest.approx([0.0, 0.0, 0.0])
    same = np.tile([[0.6, 0.8]], (3, 1))
    assert leave_one_out(same) == pytest.approx([1.0, 1.0, 1.0]) and leave_one_out(same[:1]) == []
    np.testing.assert_allclose(reference_centre(same), [0.6, 0.8])


# --- CLIP-T ---------------------------------------------------------------------------------------------


def test_clip_t_scores_and_loading_from_a_file(tmp_path):
    from safetensors.torch import save_file

    from training.clip_score import DEFAULT_CLIP, ClipScorer, tiny_clip_spec

    spec = tiny_clip_spec()
    scorer = ClipScorer.load(spec, random_seed=0)
    images = [Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (48, 80), (0, 0, 255))]
    scores = scorer.scores(images, ["a red square", "a blue square"])
    assert all(0.0 <= s <= 100.0 for s in scores) and len(set(scores)) == 2
    state = {k: v.contiguous() for k, v in scorer.model.state_dict().items()}
    save_file(state, str(tmp_path / "clip.safetensors"))
    from_file = ClipScorer.load(spec, weights=tmp_path / "clip.safetensors")
    assert from_file.scores(images, ["a red square", "a blue square"]) == pytest.approx(scores)
    save_file(
        {k: v for k, v in state.items() if k.startswith("visual.")}, str(tmp_path / "vision.safetensors")
    )
    with pytest.raises(TrainingError, match="a vision-only tower file is not enough"):
        ClipScorer.load(spec, weights=tmp_path / "vision.safetensors")
    with pytest.raises(TrainingError, match="towers/ViT-L-14-openai.safetensors") as info:
        ClipScorer.load(DEFAULT_CLIP, models_dir=tmp_path)
    assert "huggingface.co/timm/vit_large_patch14_clip_224.openai" in str(info.value)


# --- inputs ---------------------------------------------------------------------------------------------


def test_prompts_files_are_checked_line_by_line(tmp_path):
    from training.likeness_inputs import DEFAULT_PROMPTS, read_prompts

    defaults = read_prompts(DEFAULT_PROMPTS)
    assert 18 <= len(defaults) <= 25 and all(p.count("{}") == 1 for p in defaults)
    path = write_prompts(
        tmp_path / "p.txt", ["a photo of {}", "", "no person here", "{} and {}", "(best:1.2) {}"]
    )
    with pytest.raises(TrainingError) as info:
        read_prompts(path)
    message = str(info.value)
    assert "line 4 needs {} exactly once" in message and "line 5 needs {}" in message
    assert "line 6 holds WebUI prompt syntax '('" in message


def test_seeds_accept_lists_and_ranges():
    from training.likeness_inputs import parse_seeds

    assert parse_seeds("0-3") == (0, 1, 2, 3) and parse_seeds("5, 1,5,2-3") == (5, 1, 2, 3)
    for bad in ("", "a", "3-1", "1,,2"):
        with pytest.raises(TrainingError):
            parse_seeds(bad)


def test_people_folders_and_who_has_a_real_name(tmp_path):
    from training.likeness_inputs import discover_people, refuse_trained_people

    for folder in ("Ada_Lovelace", "person_07", "empty"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "Ada_Lovelace" / "a.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "person_07" / "a.png")
    report = SkipReport("likeness")
    people = discover_people(tmp_path, report)
    assert [(p.name, p.folder, p.real_name) for p in people] == [
        ("Ada Lovelace", "Ada_Lovelace", "Ada Lovelace"),
        ("person 07", "person_07", None),
    ]
    assert report.skipped == [{"item": str(tmp_path / "empty"), "reason": "no images"}]
    refuse_trained_people(people, ({"alan turing"}, "split.json"))  # held-out people are fine
    with pytest.raises(TrainingError, match=r"refusing 1 test people .*\(Ada Lovelace\)"):
        refuse_trained_people(people, ({"ada lovelace"}, "split.json"))
