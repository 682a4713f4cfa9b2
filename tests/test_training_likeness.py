"""Stage ``likeness`` end to end on tiny random models (an SDXL-shaped diffusers pipeline, an ArcFace
signature ONNX, open_clip towers, a YuNet-signature detector by default and an SCRFD-signature insightface
pack by choice) and scikit-image's photos, on the CPU."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from encoder_fixtures import write_tiny_checkpoint
from likeness_fixtures import (
    install_gated_pack,
    write_clip_spec_json,
    write_gated_yunet,
    write_people,
    write_prompts,
    write_text_towers_json,
    write_tiny_sdxl_folder,
)
from PIL import Image

from training.arcface import write_tiny_recognition_onnx
from training.cli import main

REPO = Path(__file__).resolve().parents[1]
METRICS = ("face_sim", "clip_t", "faces_found", "images", "no_face")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every input file of a tiny run, made once per module."""
    d = tmp_path_factory.mktemp("likeness")
    write_tiny_checkpoint(d / "encoder.safetensors")
    write_people(d / "people")
    write_tiny_sdxl_folder(d / "sdxl")
    write_gated_yunet(d / "yunet.onnx")
    install_gated_pack(d / "insightface")
    write_tiny_recognition_onnx(d / "arcface.onnx")
    write_text_towers_json(d / "text-towers.json")
    write_clip_spec_json(d / "clip.json")
    write_prompts(d / "prompts.txt", ["a photo of {}", "{} riding a bicycle"])
    return d


def argv(d: Path, out: Path, *extra: str) -> list[str]:
    return [
        "likeness",
        *("--encoder", str(d / "encoder.safetensors"), "--people", str(d / "people")),
        *("--sdxl", str(d / "sdxl"), "--out", str(out), "--prompts", str(d / "prompts.txt")),
        *("--seeds", "0", "--steps", "2", "--width", "64", "--height", "64"),
        *("--text-towers", str(d / "text-towers.json"), "--random-text-towers", "0"),
        *("--yunet-file", str(d / "yunet.onnx"), "--recognition-model", str(d / "arcface.onnx")),
        *("--clip-config", str(d / "clip.json"), "--clip-random", "0"),
        *("--device", "cpu", "--cpu-threads", "1"),
        *extra,
    ]


@pytest.fixture(scope="module")
def first_run(inputs):
    out = inputs / "run"
    assert main(argv(inputs, out, "--in-place")) == 0
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_report(out: Path) -> dict:
    return json.loads((out / "likeness.json").read_text())


def generated(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted((out / "images").rglob("*.png"))}


def test_every_row_and_metric_is_there_and_finite(first_run):
    report = read_report(first_run)
    assert list(report["rows"]) == ["identity", "identity_in_place", "no_identity", "real_name", "references"]
    for row, summary in report["rows"].items():
        assert set(METRICS) <= set(summary)
        assert math.isfinite(summary["face_sim"]) and -1.0 <= summary["face_sim"] <= 1.0
        if row == "references":
            assert summary["clip_t"] is None and summary["images"] == 6  # 3 photos of each person
        else:
            assert math.isfinite(summary["clip_t"]) and 0.0 <= summary["clip_t"] <= 100.0
            assert summary["faces_found"] == summary["images"] == (2 if row == "real_name" else 4)
    people = report["people"]
    assert set(people) == {"Eileen Collins", "lfw faces"}
    assert (
        people["Eileen Collins"]["real_name"] == "Eileen Collins" and people["lfw faces"]["real_name"] is None
    )
    assert "real_name" not in people["lfw faces"]["rows"]
    for record in people["Eileen Collins"]["images"]:
        assert math.isfinite(record["face_sim"]) and math.isfinite(record["clip_t"])
        assert (first_run / record["file"]).is_file() and record["prompt"] in (
            "a photo of a person",
            "a person riding a bicycle",
        )
    assert report["no_face"] == {"overall": 0, "per_person": {"Eileen Collins": 0, "lfw faces": 0}}
    (skipped,) = report["skipped"]
    assert skipped["item"] == "zz no face" and "no identity from the reference photos" in skipped["reason"]
    table = (first_run / "likeness.md").read_text()
    assert "## Skipped\n\n- zz no face: no identity from the reference photos" in table
    assert "| identity (prepend) |" in table and "| references vs each other (ceiling) |" in table
    assert "| Eileen Collins | real name in the prompt (SDXL's own likeness) |" in table
    sheet = Image.open(first_run / "sheets" / "Eileen_Collins.png")
    assert sheet.height == 5 * 128  # references + 4 method rows
    assert len(generated(first_run)) == 14


def test_a_rerun_resumes_without_generating_again(inputs, first_run, capsys):
    before = generated(first_run)
    report = read_report(first_run)
    assert main(argv(inputs, first_run, "--in-place")) == 0
    assert "0 images generated, 14 reused" in capsys.readouterr().out
    assert generated(first_run) == before  # not one file rewritten
    assert read_report(first_run)["rows"] == report["rows"]


def test_an_interrupted_run_makes_only_what_is_missing(inputs, first_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    removed = sorted((out / "images" / "lfw_faces" / "no_identity").glob("*.png"))[0]
    removed.unlink()
    assert main(argv(inputs, out, "--in-place")) == 0
    assert "1 images generated, 13 reused" in capsys.readouterr().out
    same = Image.open(first_run / removed.relative_to(out)).tobytes()
    assert Image.open(removed).tobytes() == same  # same seed, same conditioning: the same image


def test_an_image_without_a_face_is_counted_and_listed(inputs, first_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    dark = sorted((out / "images" / "Eileen_Collins" / "no_identity").glob("*.png"))[0]
    Image.new("RGB", (64, 64), (0, 0, 0)).save(dark)
    assert main(argv(inputs, out, "--in-place")) == 0
    report = read_report(out)
    assert report["no_face"] == {"overall": 1, "per_person": {"Eileen Collins": 1, "lfw faces": 0}}
    row = report["rows"]["no_identity"]
    assert (row["images"], row["faces_found"], row["no_face"]) == (4, 3, 1)
    assert math.isfinite(row["face_sim"]) and math.isfinite(row["clip_t"])
    record = next(r for r in report["people"]["Eileen Collins"]["images"] if out / r["file"] == dark)
    assert record["face_found"] is False and record["face_sim"] is None and record["clip_t"] is not None
    assert report["people"]["Eileen Collins"]["rows"]["no_identity"]["faces_found"] == 1
    table = (out / "likeness.md").read_text()
    assert "## Images without a face (1)" in table and dark.relative_to(out).as_posix() in table
    assert "| no identity (lower bound) | " in table and " | 3/4 |" in table


def test_yunet_is_the_default_detector_and_an_insightface_pack_the_choice(inputs, first_run, tmp_path):
    assert read_report(first_run)["protocol"]["face_detector"] == "yunet-2023mar"
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    pack = ("--detector", "insightface", "--insightface-root", str(inputs / "insightface"))
    assert main(without(argv(inputs, out, "--in-place", *pack), "--yunet-file")) == 0
    report = read_report(out)
    assert report["protocol"]["face_detector"] == "insightface:buffalo_l"
    assert report["no_face"]["overall"] == 0
    assert all(math.isfinite(row["face_sim"]) for row in report["rows"].values())


def test_other_generation_settings_are_refused_in_the_same_folder(inputs, first_run, capsys):
    assert main(argv(inputs, first_run, "--in-place", "--steps", "3")) == 2
    message = capsys.readouterr().err
    assert "other settings (steps differ" in message and "generation.json" in message


def test_people_the_encoder_was_trained_on_are_refused(inputs, tmp_path, capsys):
    run = tmp_path / "train-run"
    run.mkdir()
    (run / "split.json").write_text(json.dumps({"train": ["Ada Lovelace", "eileen collins"], "val": []}))
    assert main(argv(inputs, tmp_path / "out", "--training-run", str(run))) == 2
    message = capsys.readouterr().err
    assert "refusing 1 test people the encoder was trained on (Eileen Collins)" in message
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_without_diffusers_the_stage_says_what_to_install(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    assert main(argv(inputs, tmp_path / "out")) == 2
    assert "pip install diffusers==0.37.1 transformers==4.57.6" in capsys.readouterr().err


def without(args: list[str], flag: str) -> list[str]:
    at = args.index(flag)
    return args[:at] + args[at + 2 :]


def test_missing_models_are_named_before_any_work(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(without(argv(inputs, out), "--yunet-file")) == 2
    assert "the YuNet face detector needs its file: --models-dir" in capsys.readouterr().err
    assert main(argv(inputs, out, "--yunet-file", str(tmp_path / "yunet.onnx"))) == 2
    assert f"--yunet-file not found: {tmp_path / 'yunet.onnx'}" in capsys.readouterr().err
    assert main(without(argv(inputs, out), "--yunet-file") + ["--models-dir", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err
    assert "face_detection_yunet_2023mar.onnx" in err and str(tmp_path / "models" / "detectors") in err
    assert main(argv(inputs, out, "--detector", "insightface")) == 2
    assert "--detector insightface needs --insightface-root" in capsys.readouterr().err
    empty = ("--insightface-root", str(tmp_path / "empty"))
    assert main(argv(inputs, out, "--detector", "insightface", *empty)) == 2
    assert "insightface pack 'buffalo_l' is not installed" in capsys.readouterr().err
    assert main(argv(inputs, out, "--recognition-model", "pack")) == 2
    assert "--recognition-model pack needs --insightface-root" in capsys.readouterr().err
    assert main(argv(inputs, out, "--recognition-model", str(tmp_path / "arc.onnx"))) == 2
    assert f"face-recognition model not found: {tmp_path / 'arc.onnx'}" in capsys.readouterr().err
    detector = inputs / "insightface" / "models" / "buffalo_l" / "det_10g.onnx"
    assert main(argv(inputs, out, "--recognition-model", str(detector))) == 2
    assert "not an ArcFace-style face-recognition model" in capsys.readouterr().err
    assert main(without(without(argv(inputs, out), "--clip-config"), "--clip-random")) == 2
    assert "CLIP-T needs the whole open_clip ViT-L-14 (openai) checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_two_torchrun_ranks_split_the_people(inputs, tmp_path):
    out = tmp_path / "ranks"
    one_prompt = write_prompts(tmp_path / "one.txt", ["a photo of {}"])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "training"]
    stage = argv(inputs, out, "--no-real-name", "--prompts", str(one_prompt))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(launcher + stage, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    # people by folder: Eileen_Collins (rank 0), lfw_faces (rank 1), zz_no_face (rank 0: no identity)
    assert "rank 0: 2 images generated" in result.stdout and "rank 1: 2 images generated" in result.stdout
    report = read_report(out)
    assert set(report["people"]) == {"Eileen Collins", "lfw faces"}
    assert [s["item"] for s in report["skipped"]] == ["zz no face"]
    assert report["rows"]["identity"]["images"] == 2 and "real_name" not in report["rows"]
