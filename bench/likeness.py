"""Benchmark the likeness stage's generation: prompt conditioning and seconds per SDXL image.

    python bench/likeness.py --device cuda --size real --width 1024 --height 1024 --steps 20 --images 4
    python bench/likeness.py --device cpu --size tiny --width 64 --height 64 --steps 2 --images 4

``real``: SDXL base's U-Net (2.57 B parameters) and VAE built from the configs shipped in
``training/sdxl_configs`` with random weights (float16 on CUDA, float32 on CPU), and real-size random text
encoders (open_clip ViT-L/14 and ViT-bigG/14 text towers); ``tiny``: the tests' SDXL-shaped models and
one-layer text towers of SDXL's widths. The pipeline is the stage's own (``training.sdxl.build_generator``,
DPM++ 2M Karras by default, CFG 7, zero negative prompt), fed by ``training.prompt_conditioning``
(identity prepended). Prints the conditioning time per prompt, seconds per image (the first, which
includes warm-up, and the median of the rest) and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_magicnaming.constants import CLIP_G_WIDTH, CLIP_L_WIDTH  # noqa: E402
from training import sdxl  # noqa: E402
from training.prompt_conditioning import WebUIConditioner, fill, match_lengths  # noqa: E402
from training.text_encoders import (  # noqa: E402
    SDXL_CLIP_G,
    SDXL_CLIP_L,
    SDXLTextEncoder,
    random_text_tower,
    tiny_spec,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def models(size: str, device: torch.device):
    """(unet, vae, scheduler config, text-tower specs) with random weights on ``device``."""
    diffusers = sdxl.import_diffusers()
    configs = sdxl.read_configs() if size == "real" else sdxl.tiny_configs()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel.from_config(configs["unet"]).to(dtype).eval()
        vae = diffusers.AutoencoderKL.from_config(configs["vae"]).to(dtype).eval()
    if size == "real":
        specs = [SDXL_CLIP_L, SDXL_CLIP_G]
    else:
        specs = [
            tiny_spec(SDXL_CLIP_L, width=CLIP_L_WIDTH, layers=1),
            tiny_spec(SDXL_CLIP_G, width=CLIP_G_WIDTH, layers=1),
        ]
    return unet, vae, configs["scheduler"], specs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--sampler", choices=sdxl.SAMPLERS, default=sdxl.DEFAULT_SAMPLER)
    parser.add_argument("--cpu-threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    unet, vae, scheduler, specs = models(args.size, device)
    towers = [(spec, random_text_tower(spec, seed)) for seed, spec in enumerate(specs)]
    conditioner = WebUIConditioner(SDXLTextEncoder(towers, device=device), cache_size=0)
    generator = sdxl.build_generator(unet, vae, scheduler, args.sampler, device)
    print(f"models built in {time.perf_counter() - started:.1f} s ({args.size}, {device})")
    f_id = torch.randn(8, CLIP_L_WIDTH + CLIP_G_WIDTH, generator=torch.Generator().manual_seed(0)) * 0.5
    prompt = fill("a photo of {} hiking in the mountains", "a person")
    conditioner.prepended(prompt, f_id)  # warm-up
    sync(device)
    started = time.perf_counter()
    for _ in range(5):
        cond = conditioner.prepended(prompt, f_id)
    sync(device)
    per_prompt = (time.perf_counter() - started) / 5
    print(f"conditioning (prompt + pooled + splice): {per_prompt * 1000:.1f} ms per prompt")
    cond, uncond = match_lengths(cond, conditioner.negative(""), conditioner.plain(""))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for seed in range(args.images):
        sync(device)
        started = time.perf_counter()
        generator.generate(
            cond, uncond, seed=seed, steps=args.steps, cfg_scale=7.0, width=args.width, height=args.height
        )
        sync(device)
        seconds.append(time.perf_counter() - started)
    rest = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    print(
        f"generation {args.width} x {args.height}, {args.steps} steps, {args.sampler}, CFG 7: first image "
        f"{seconds[0]:.2f} s, then {rest:.2f} s per image (median of {max(1, len(seconds) - 1)})"
    )
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
