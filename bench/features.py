"""Benchmark the ``features`` stage: images per second and achieved TFLOP/s against the bf16 peak.

    python bench/features.py --device cuda --batch-size 256 --batches 6 --end-to-end 4096
    python bench/features.py --device cpu --towers tiny --batch-size 4 --batches 2 --end-to-end 16 --workers 1

Towers: real-size (open_clip's own ViT-L/14 and ViT-bigG/14 configs, 224 px; ``--towers clip_l`` for CLIP-L
alone) or the tests' tiny ones, random weights built directly on the device (no downloads). Figures:

* towers only, per ``--variants``: ``NameEncoder.features`` on random pixels already on the device (bf16 on
  CUDA, float32 on CPU), median over ``--batches`` timed batches after ``--warmup``; ``open_clip`` is
  open_clip's own forward, ``fused`` the batch-first fused forward the product uses
  (``lib_magicnaming.vit_forward``), ``compiled`` that forward's blocks under ``torch.compile`` (its first
  batch, compiling included, is timed on its own line). Each variant's features are compared with
  ``open_clip``'s on the same pixels (relative Frobenius difference);
* loader alone (``--end-to-end N``): the stage's DataLoader over N generated 224 px PNG crops (decoding in
  ``--workers`` workers, pinned memory), nothing on the GPU: its capacity;
* end to end (``--end-to-end N``): the real stage (``training.features.prepare`` then ``extract``) on those
  crops with the towers written as float16 tower files and loaded the stage's own way, ``--e2e-variant``
  forward; ``extract``'s own clock (loader start-up included, tower loading not). Close to the towers-only
  figure of the same variant means data loading is not the bottleneck.

FLOPs are counted analytically from the tower configs (2 x multiply-adds of patch embedding, attention
projections, attention scores and values, MLP, output projection). Peak: ``--peak-tflops``, or dense bf16
of a known GPU (H100/H200 SXM 989.4, A100 312); none on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lib_magicnaming.factory import build_encoder  # noqa: E402
from lib_magicnaming.model import (  # noqa: E402
    CLIP_G_TOWER,
    CLIP_L_TOWER,
    EncoderConfig,
    HeadConfig,
    NameEncoder,
    tower_model_config,
)
from lib_magicnaming.vit_forward import CompiledBlocks  # noqa: E402

KNOWN_BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "RTX 4090": 165.2}
VARIANTS = ("open_clip", "fused", "compiled")


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
    """Both real towers, CLIP-L alone (small enough for a CPU run), or the tests' tiny towers."""
    if towers == "tiny":
        from encoder_fixtures import tiny_config

        return tiny_config()
    specs = [CLIP_L_TOWER, CLIP_G_TOWER] if towers == "both" else [CLIP_L_TOWER]
    return EncoderConfig(towers=specs, head=HeadConfig(in_dim=sum(s.embed_dim for s in specs))).validate()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def set_variant(encoder: NameEncoder, variant: str, compiled: CompiledBlocks | None) -> None:
    encoder.fused_towers = variant != "open_clip"
    encoder.block_fn = compiled if variant == "compiled" else None


def bench_towers(
    encoder: NameEncoder, variants: list[str], args, device
) -> tuple[dict, CompiledBlocks | None]:
    """Median images/s per variant on pixels already on the device; prints each variant's features'
    relative difference from open_clip's own forward on the same pixels."""
    compiled = CompiledBlocks() if "compiled" in variants else None
    rates, outputs = {}, {}
    with torch.inference_mode():  # as the stage runs (its tensors are inference tensors too)
        pixels = torch.randn(args.batch_size, 3, 224, 224, device=device, dtype=compute_dtype(device))
        set_variant(encoder, "open_clip", None)
        outputs["open_clip"] = encoder.features(pixels).float()
        for variant in variants:
            set_variant(encoder, variant, compiled)
            if variant == "compiled":
                start = time.perf_counter()
                encoder.features(pixels)
                sync(device)
                failed = f"; compile FAILED, eager: {compiled.failed}" if compiled.failed else ""
                print(f"compiled: first batch (compiling both block shapes) "
                      f"{time.perf_counter() - start:.1f} s{failed}", flush=True)
            times = []
            for i in range(args.warmup + args.batches):
                sync(device)
                start = time.perf_counter()
                out = encoder.features(pixels)
                sync(device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - start)
            rates[variant] = args.batch_size / statistics.median(times)
            reference = outputs["open_clip"]
            diff = float(torch.linalg.norm(out.float() - reference) / torch.linalg.norm(reference))
            print(f"  {variant}: batch times {min(times) * 1000:.1f}-{max(times) * 1000:.1f} ms; "
                  f"features vs open_clip's forward: relative difference {diff:.2e}", flush=True)
    return rates, compiled


def write_crops(folder: Path, count: int) -> Path:
    """``count`` 224 px PNG crops of noise and a faces table naming them."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    crops = folder / "crops"
    crops.mkdir()

    def write(i: int) -> dict:
        rng = np.random.default_rng(i)
        path = crops / f"{i:06d}.png"
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(path, compress_level=1)
        return {"image_id": str(i), "name": f"person {i % 97}", "crop_path": str(path)}

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(write, range(count)))
    pd.DataFrame(rows).to_csv(folder / "faces.csv", index=False)
    return folder / "faces.csv"


def write_tower_files(encoder: NameEncoder, models_dir: Path) -> None:
    """The encoder's towers as float16 tower files, where ``--models-dir`` finds them."""
    from safetensors.torch import save_file

    from lib_magicnaming.towers import towers_dir

    folder = towers_dir(models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for spec in encoder.config.towers:
        state = {k: v.detach().to("cpu", torch.float16).contiguous()
                 for k, v in encoder.towers[spec.name].state_dict().items()}
        save_file(state, str(folder / f"{spec.file_stem}.safetensors"))


def bench_loader(stage, args) -> float:
    """Images/s of the stage's DataLoader alone (decode, collate, pin), nothing on the GPU."""
    from training.features import LOADER_BATCH, CropDataset, _batches_by_shard

    shards = stage.pending_shards()
    rows = [row for shard in shards for row in stage.plan.rows_of(shard)]
    dataset = CropDataset([stage.paths[r] for r in rows], rows, stage.encoder.config.crop)
    batches, _ = _batches_by_shard(stage.plan, shards, min(LOADER_BATCH, args.batch_size))
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=args.workers,
        pin_memory=stage.place.device.type == "cuda", prefetch_factor=4 if args.workers else None,
    )
    start = time.perf_counter()
    count = sum(int(pixels.shape[0]) for pixels, _, _ in loader)
    return count / (time.perf_counter() - start)


def bench_end_to_end(encoder: NameEncoder, compiled, args, device: torch.device) -> tuple[float, float]:
    """(loader alone, end to end) images/s of the real stage on generated crops."""
    from training.features import extract, prepare

    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        write_crops(folder, args.end_to_end)
        write_tower_files(encoder, folder)
        (folder / "encoder.json").write_text(json.dumps(encoder.config.to_dict(with_head=False)))
        print(f"end to end setup: {args.end_to_end} PNG crops and float16 tower files written in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        stage_args = argparse.Namespace(
            faces=str(folder / "faces.csv"), out=str(folder / "features"),
            encoder_config=str(folder / "encoder.json"), models_dir=str(folder), allow_download=False,
            random_towers=None, shard_size=args.shard_size, batch_size=args.batch_size,
            workers=args.workers, dtype="auto", device=str(device), compile="off",
        )
        start = time.perf_counter()
        stage = prepare(stage_args)
        sync(device)
        print(f"end to end: stage prepared (tower files loaded, fingerprinted) in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        set_variant(stage.encoder, args.e2e_variant, compiled)
        loader = bench_loader(stage, args)
        stats = extract(stage)
        sync(device)
    return loader, stats.images_per_second


def main() -> None:
    """Parse options, run the benchmarks, print one line per figure."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--towers", choices=("both", "clip_l", "tiny"), default="both")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default="open_clip,fused,compiled",
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument(
        "--end-to-end", type=int, default=0, metavar="N", help="also run the stage on N crops"
    )
    parser.add_argument("--e2e-variant", choices=VARIANTS, default="compiled")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--folder", help="where the end-to-end crops go (default: a temporary folder)")
    parser.add_argument("--peak-tflops", type=float, help="bf16 peak to compare with (default: by GPU name)")
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = [v for v in args.variants.split(",") if v]
    if not set(variants) <= set(VARIANTS):
        parser.error(f"--variants: choose from {VARIANTS}")
    if args.end_to_end and args.e2e_variant not in variants:
        variants.append(args.e2e_variant)
    config = make_config(args.towers)
    flops = sum(vision_flops_per_image(tower_model_config(t)) for t in config.towers)
    peak = peak_tflops(device, args.peak_tflops)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device: {name}; torch {torch.__version__}; towers: {args.towers}; {flops / 1e9:.1f} GFLOP per "
          f"image; batch {args.batch_size}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)

    def line(label: str, images_per_s: float) -> None:
        tflops = images_per_s * flops / 1e12
        share = f", {100 * tflops / peak:.1f}% of {peak:g} TFLOP/s bf16 peak" if peak else ""
        print(f"{label}: {images_per_s:.2f} images/s, {tflops:.3f} TFLOP/s{share}", flush=True)

    start = time.perf_counter()
    with torch.device(device):
        encoder = build_encoder(config, random_towers=True)
    encoder = encoder.to(device=device, dtype=compute_dtype(device)).eval()
    sync(device)
    print(f"towers built on {device} in {time.perf_counter() - start:.1f} s", flush=True)
    rates, compiled = bench_towers(encoder, variants, args, device)
    for variant in variants:
        line(f"towers only, {variant}", rates[variant])
    if args.end_to_end:
        loader, end_to_end = bench_end_to_end(encoder, compiled, args, device)
        print(f"loader alone ({args.workers} workers): {loader:.1f} images/s", flush=True)
        line(f"end to end, {args.e2e_variant}", end_to_end)
        share = 100 * end_to_end / rates[args.e2e_variant]
        print(f"end to end / towers only ({args.e2e_variant}): {share:.1f}%")


if __name__ == "__main__":
    main()
