"""Benchmark the ``features`` stage: images per second and achieved TFLOP/s against the bf16 peak.

    python bench/features.py --device cuda --batch-size 64 --batches 30 --end-to-end 4096
    python bench/features.py --device cpu --towers clip_l --batch-size 2 --batches 2 --end-to-end 8

Towers are real-size (open_clip's own ViT-L/14 and ViT-bigG/14 configs, 224 px) with random weights, built
directly on the device (no downloads). Two figures:

* towers only: ``NameEncoder.features`` on random pixels already on the device (bf16 on CUDA, float32 on
  CPU), median over ``--batches`` timed batches after ``--warmup``;
* end to end (``--end-to-end N``): the real stage (``training.features.run``: PNG crops decoded in
  DataLoader workers, pinned memory, shards written) on N generated 224 px crops; if its images/s is close to
  the towers-only figure, data loading is not the bottleneck.

FLOPs are counted analytically from the tower configs (2 x multiply-adds of patch embedding, attention
projections, attention scores and values, MLP, output projection). Peak: ``--peak-tflops``, or dense bf16
of a known GPU (H100/H200 SXM 989.4, A100 312); none on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_magicnaming.factory import build_encoder  # noqa: E402
from lib_magicnaming.model import (  # noqa: E402
    CLIP_G_TOWER,
    CLIP_L_TOWER,
    EncoderConfig,
    HeadConfig,
    tower_model_config,
)

KNOWN_BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "RTX 4090": 165.2}


def vision_flops_per_image(cfg: dict) -> float:
    """Forward FLOPs of one open_clip ViT image tower on one image, from its model config."""
    v = cfg["vision_cfg"]
    width, layers, patch, size = v["width"], v["layers"], v["patch_size"], v["image_size"]
    mlp = int(width * v.get("mlp_ratio", 4.0))
    patches = (size // patch) ** 2
    tokens = patches + 1
    per_layer = tokens * (4 * width * width + 2 * width * mlp) + 2 * tokens * tokens * width
    macs = patches * 3 * patch * patch * width + layers * per_layer + width * cfg["embed_dim"]
    return 2.0 * macs


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The bf16 dense peak to compare with: given, or looked up by GPU name; None on CPU."""
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in KNOWN_BF16_PEAK_TFLOPS.items() if k in name), None)


def make_config(towers: str) -> EncoderConfig:
    """Both real towers, or CLIP-L alone (small enough for a CPU run)."""
    specs = [CLIP_L_TOWER, CLIP_G_TOWER] if towers == "both" else [CLIP_L_TOWER]
    return EncoderConfig(towers=specs, head=HeadConfig(in_dim=sum(s.embed_dim for s in specs))).validate()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_towers(config: EncoderConfig, args: argparse.Namespace, device: torch.device) -> float:
    """Median images/s of the towers on pixels already on the device."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        encoder = build_encoder(config, random_towers=True)
    encoder = encoder.to(device=device, dtype=dtype).eval()
    pixels = torch.randn(args.batch_size, 3, 224, 224, device=device, dtype=dtype)
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.batches):
            sync(device)
            start = time.perf_counter()
            encoder.features(pixels)
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    del encoder
    return args.batch_size / statistics.median(times)


def bench_end_to_end(config: EncoderConfig, args: argparse.Namespace, device: torch.device) -> float:
    """Images/s of the real features stage (loading, towers, shard writing) on generated crops."""
    import json

    import numpy as np
    import pandas as pd
    from PIL import Image

    from training.distributed import current_place
    from training.features import build_feature_encoder
    from training.features import run as run_features

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        rows = []
        for i in range(args.end_to_end):
            path = folder / f"{i:06d}.png"
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path, compress_level=1)
            rows.append({"image_id": str(i), "name": f"person {i % 97}", "crop_path": str(path)})
        pd.DataFrame(rows).to_csv(folder / "faces.csv", index=False)
        (folder / "encoder.json").write_text(json.dumps(config.to_dict(with_head=False)))
        stage_args = argparse.Namespace(
            faces=str(folder / "faces.csv"),
            out=str(folder / "features"),
            encoder_config=str(folder / "encoder.json"),
            models_dir=None,
            allow_download=False,
            random_towers=0,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            workers=args.workers,
            dtype="auto",
            device=str(device),
        )
        start = time.perf_counter()
        run_features(stage_args)
        sync(device)
        total = time.perf_counter() - start
        # the stage also builds the towers (on the CPU, then saves the random weights and moves them to the
        # device): time exactly that step alone and take it out
        scratch = folder / "build-only"
        scratch.mkdir()
        start = time.perf_counter()
        build_feature_encoder(stage_args, scratch, current_place(str(device)))
        sync(device)
        build = time.perf_counter() - start
    return args.end_to_end / max(1e-9, total - build)


def main() -> None:
    """Parse options, run the benchmarks, print one line per figure."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--towers", choices=("both", "clip_l"), default="both")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--end-to-end", type=int, default=0, metavar="N", help="also run the stage on N crops"
    )
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--peak-tflops", type=float, help="bf16 peak to compare with (default: by GPU name)")
    args = parser.parse_args()
    device = torch.device(args.device)
    config = make_config(args.towers)
    flops = sum(vision_flops_per_image(tower_model_config(t)) for t in config.towers)
    peak = peak_tflops(device, args.peak_tflops)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"device: {name}; towers: {args.towers}; {flops / 1e9:.1f} GFLOP per image; batch {args.batch_size}"
    )
    for label, images_per_s in [("towers only", bench_towers(config, args, device))] + (
        [("end to end", bench_end_to_end(config, args, device))] if args.end_to_end else []
    ):
        tflops = images_per_s * flops / 1e12
        share = f", {100 * tflops / peak:.1f}% of {peak:g} TFLOP/s bf16 peak" if peak else ""
        print(f"{label}: {images_per_s:.2f} images/s, {tflops:.3f} TFLOP/s{share}")


if __name__ == "__main__":
    main()
