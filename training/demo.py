"""Stage ``demo``: every stage end to end on a tiny synthetic dataset, on the CPU, in well under a minute.

What it builds in ``--out DIR``:

* ``names.txt`` -> ``names.csv`` (names stage, plain-list mode) for a handful of invented people;
* ``images/<Name>/*.png``: procedurally drawn faces, one look per identity (colours, proportions), with
  variation per image (position, lighting) -> ``images.csv`` (images stage, folder mode);
* ``faces/`` (faces stage with ``--assume-cropped``: the drawn images are already face crops, so no
  detector is needed; the crop code is still the extension's);
* ``targets.safetensors`` (targets stage with tiny random text towers of SDXL's widths, 768 and 1280, and
  the real tokenizer, computed the WebUI's way);
* ``features/`` (features stage with two tiny random vision towers), ``run/`` (train, eval on the training
  and the held-out identities, loss plot), and ``encoder.safetensors`` (export, towers included).

It then loads ``encoder.safetensors`` with the extension's own ``IdentityEncoder`` and encodes a new
drawing of a training identity into an identity embedding, reporting the nearest name, and ends with the
``likeness`` stage (when diffusers is installed): new drawings of the held-out identity and of a person
never seen (``likeness-people/``), a tiny random SDXL-shaped diffusers pipeline (``sdxl/``), prompts encoded
by the same random text encoders as the targets, a tiny ArcFace-signature model and a tiny CLIP, giving
``likeness/`` and a copy of its ``likeness.json`` and ``likeness.md`` in ``DIR``. With random towers, text
encoders and SDXL the numbers show the mechanics, not quality.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from lib_magicnaming.constants import CLIP_G_WIDTH, CLIP_L_WIDTH
from lib_magicnaming.face import CropConfig
from training.text_encoders import SDXL_CLIP_G, SDXL_CLIP_L, tiny_spec

DEMO_NAMES = [
    "Ada Lovelace",
    "Alan Turing",
    "Grace Hopper",
    "Edsger Dijkstra",
    "Barbara Liskov",
    "Donald Knuth",
]
TINY_CROP = 32


def tiny_encoder_config(crop_size: int = TINY_CROP) -> dict:
    """An encoder config (towers, crop, feature_norm): two one-layer vision towers at ``crop_size`` px."""

    def tower(name: str, embed_dim: int) -> dict:
        vision = {
            "image_size": crop_size,
            "layers": 1,
            "width": 64,
            "head_width": 32,
            "patch_size": crop_size // 2,
        }
        return {
            "name": name,
            "arch": f"tiny-{name}",
            "pretrained": "random",
            "embed_dim": embed_dim,
            "model_cfg": {"embed_dim": embed_dim, "vision_cfg": vision},
        }

    return {
        "towers": [tower("clip_l", CLIP_L_WIDTH), tower("clip_g", CLIP_G_WIDTH)],
        "crop": CropConfig(size=crop_size).to_dict(),
        "feature_norm": "l2",
    }


def draw_face(identity: int, variant: int, size: int = 64) -> Image.Image:
    """A drawn face: colours and proportions fixed per identity; position and lighting vary per variant."""
    look = random.Random(identity * 7919)
    vary = random.Random(identity * 104729 + variant)
    background = tuple(look.randrange(256) for _ in range(3))
    skin = tuple(look.randrange(90, 256) for _ in range(3))
    eyes = tuple(look.randrange(0, 120) for _ in range(3))
    eye_gap, face_w = look.uniform(0.12, 0.22), look.uniform(0.28, 0.42)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    cx, cy = size * (0.5 + vary.uniform(-0.06, 0.06)), size * (0.5 + vary.uniform(-0.06, 0.06))
    draw.ellipse([cx - face_w * size, cy - 0.45 * size, cx + face_w * size, cy + 0.45 * size], fill=skin)
    for side in (-1, 1):
        ex = cx + side * eye_gap * size
        draw.ellipse([ex - 0.05 * size, cy - 0.12 * size, ex + 0.05 * size, cy - 0.04 * size], fill=eyes)
    mouth = look.uniform(0.08, 0.2) * size
    draw.line([cx - mouth, cy + 0.2 * size, cx + mouth, cy + 0.2 * size], fill=eyes, width=max(1, size // 32))
    light = vary.uniform(0.85, 1.15)
    return image.point(lambda v: max(0, min(255, int(v * light))))


def draw_dataset(root: Path, names: list[str], per_identity: int) -> Path:
    """``root/<Name>/<k>.png`` for every name (folder names use underscores for spaces)."""
    for identity, name in enumerate(names):
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_identity):
            draw_face(identity, k).save(folder / f"{k:03d}.png")
    return root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the ``demo`` stage."""
    parser.add_argument("--out", required=True, help="folder for everything the demo makes")
    parser.add_argument("--per-identity", type=int, default=10, help="drawn images per identity")
    parser.add_argument("--steps", type=int, default=100, help="training steps")


def _stage(argv: list[str]) -> None:
    from training.cli import main

    started = time.perf_counter()
    if main(argv) != 0:
        raise SystemExit(f"demo: stage {argv[0]} failed")
    print(f"demo: {argv[0]} done in {time.perf_counter() - started:.1f} s")


def run(args: argparse.Namespace) -> dict:
    """Run the whole pipeline on drawn data and encode a new drawing with the exported checkpoint."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "names.txt").write_text("\n".join(DEMO_NAMES) + "\n")
    draw_dataset(out / "images", DEMO_NAMES, args.per_identity)
    (out / "encoder-config.json").write_text(json.dumps(tiny_encoder_config()))
    text_towers = [
        tiny_spec(SDXL_CLIP_L, width=CLIP_L_WIDTH, layers=2),
        tiny_spec(SDXL_CLIP_G, width=CLIP_G_WIDTH, layers=2),
    ]
    (out / "text-towers.json").write_text(json.dumps({"towers": [t.to_dict() for t in text_towers]}))
    o = str(out)
    _stage(["names", "--list", f"{o}/names.txt", "--out", f"{o}/names.csv"])
    _stage(["images", "--folder", f"{o}/images", "--names", f"{o}/names.csv", "--out", f"{o}/images.csv"])
    _stage(
        [
            "faces",
            "--images",
            f"{o}/images.csv",
            "--out",
            f"{o}/faces",
            "--assume-cropped",
            "--crop-size",
            str(TINY_CROP),
            "--cpu",
        ]
    )
    _stage(
        [
            "targets",
            "--names",
            f"{o}/names.csv",
            "--text-towers",
            f"{o}/text-towers.json",
            "--random-text-towers",
            "0",
            "--device",
            "cpu",
            "--out",
            f"{o}/targets.safetensors",
        ]
    )
    _stage(
        [
            "features",
            "--faces",
            f"{o}/faces/faces.csv",
            "--out",
            f"{o}/features",
            "--encoder-config",
            f"{o}/encoder-config.json",
            "--random-towers",
            "0",
            "--workers",
            "0",
            "--device",
            "cpu",
        ]
    )
    _stage(
        [
            "train",
            "--features",
            f"{o}/features",
            "--targets",
            f"{o}/targets.safetensors",
            "--out",
            f"{o}/run",
            "--steps",
            str(args.steps),
            "--batch-size",
            "16",
            "--hidden-dim",
            "128",
            "--lr",
            "2e-3",
            "--warmup-steps",
            "10",
            "--val-fraction",
            "0.17",
            "--checkpoint-every",
            "50",
            "--eval-every",
            "25",
            "--log-every",
            "5",
            "--device",
            "cpu",
            "--cpu-threads",
            "1",
        ]
    )
    trained = ["--run", f"{o}/run", "--features", f"{o}/features", "--targets", f"{o}/targets.safetensors"]
    for split in ("train", "val"):
        _stage(["eval", *trained, "--split", split])
    _stage(
        [
            "export",
            *trained,
            "--rank",
            "4",
            "--include-towers",
            "--out",
            f"{o}/encoder.safetensors",
        ]
    )
    report = encode_new_photo(out)
    report["likeness"] = run_likeness(out)
    (out / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def encode_new_photo(out: Path) -> dict:
    """Encode an unseen drawing of the first training identity with the extension's IdentityEncoder."""
    from lib_magicnaming.encode import IdentityEncoder
    from training.targets import load_targets

    split = json.loads((out / "run" / "split.json").read_text())
    name = split["train"][0]
    photo = draw_face(DEMO_NAMES.index(name), variant=999)
    photo.save(out / "new-photo.png")
    encoder = IdentityEncoder(out / "encoder.safetensors", device="cpu")
    result = encoder.encode_photos([photo], assume_cropped=True)
    targets = load_targets(out / "targets.safetensors")
    distances = torch.cdist(result.embedding.flatten()[None].double(), targets.f_id.flatten(1).double())[0]
    nearest = targets.names[int(distances.argmin())]
    report = {
        "photo_of": name,
        "nearest_name": nearest,
        "embedding_shape": list(result.embedding.shape),
        "encoder_hash": result.encoder_hash,
    }
    (out / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"demo: {out / 'encoder.safetensors'} (hash {result.encoder_hash}) encoded a new drawing of {name} "
        f"into an 8 x 2048 identity; nearest name: {nearest}"
    )
    return report


LIKENESS_PROMPTS = ["a photo of {}", "{} riding a bicycle"]
NEW_PERSON = "Katherine Johnson"
"""Drawn for the likeness stage only: never in the names, targets or training."""


def run_likeness(out: Path) -> str:
    """The likeness stage on drawings of the held-out identity and a new person; where its report went."""
    from training.common import TrainingError
    from training.sdxl import import_diffusers, tiny_configs, tiny_models, write_diffusers_folder

    try:
        import_diffusers()
    except TrainingError as exc:
        print(f"demo: likeness skipped: {exc}")
        return f"skipped: {exc}"
    from training.arcface import write_tiny_recognition_onnx
    from training.clip_score import tiny_clip_spec

    held_out = json.loads((out / "run" / "split.json").read_text())["val"][0]
    people = out / "likeness-people"
    for identity, name in ((DEMO_NAMES.index(held_out), held_out), (len(DEMO_NAMES), NEW_PERSON)):
        folder = people / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(3):
            draw_face(identity, 500 + k).save(folder / f"{k}.png")
    configs = tiny_configs()
    write_diffusers_folder(out / "sdxl", *tiny_models(0, configs), configs["scheduler"])
    write_tiny_recognition_onnx(out / "arcface.onnx")
    (out / "clip.json").write_text(json.dumps(tiny_clip_spec().to_dict()))
    (out / "likeness-prompts.txt").write_text("\n".join(LIKENESS_PROMPTS) + "\n")
    o = str(out)
    _stage(
        ["likeness", "--encoder", f"{o}/encoder.safetensors", "--people", str(people), "--sdxl", f"{o}/sdxl"]
        + ["--out", f"{o}/likeness", "--prompts", f"{o}/likeness-prompts.txt", "--seeds", "0", "--steps", "2"]
        + ["--width", "64", "--height", "64", "--training-run", f"{o}/run", "--assume-cropped"]
        + ["--text-towers", f"{o}/text-towers.json", "--random-text-towers", "0"]
        + ["--recognition-model", f"{o}/arcface.onnx", "--clip-config", f"{o}/clip.json"]
        + ["--clip-random", "0", "--device", "cpu", "--cpu-threads", "1"]
    )
    for name in ("likeness.json", "likeness.md"):
        shutil.copyfile(out / "likeness" / name, out / name)
    return str(out / "likeness.json")
