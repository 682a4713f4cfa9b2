"""Benchmark the tower weights fingerprint (lib_magicnaming.towers.tower_fingerprint).

    python bench/tower_fingerprint.py --sample-values 200000000

Fingerprints the tests' tiny tower, then a sample of real ViT-bigG/14 vision-tower tensors (open_clip's
config, random float32 values: the first tensors of the state dict in sorted order up to ``--sample-values``)
and extrapolates the measured values/s to the whole CLIP-L and bigG towers. For comparison it also times
reading the same sample back from a safetensors file into memory (safetensors maps the file; the copy reads
it; the OS page cache may hold it: a lower bound for a read from disk). Medians over ``--repeats`` runs.
Prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lib_magicnaming.model import CLIP_G_TOWER, CLIP_L_TOWER  # noqa: E402
from lib_magicnaming.towers import FINGERPRINT_THREADS, build_tower_module, tower_fingerprint  # noqa: E402


def median_seconds(function, repeats: int) -> float:
    """Median wall time of ``function()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def tower_values(spec) -> int:
    """Values in a tower's state dict (built on the meta device: no memory)."""
    with torch.device("meta"):
        tower = build_tower_module(spec)
    return sum(v.numel() for v in tower.state_dict().values())


def bigg_sample(limit: int) -> dict[str, torch.Tensor]:
    """Random float32 tensors with bigG's names and shapes, in sorted order, up to ``limit`` values."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_tower_module(CLIP_G_TOWER).state_dict().items()}
    sample, total = {}, 0
    generator = torch.Generator().manual_seed(0)
    for key in sorted(shapes):
        if total >= limit:
            break
        sample[key] = torch.randn(shapes[key], generator=generator) * 0.02
        total += sample[key].numel()
    return sample


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sample-values", type=int, default=200_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=FINGERPRINT_THREADS)
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"torch {torch.__version__}, fingerprint threads {args.threads}")
    from encoder_fixtures import tiny_tower

    tiny = build_tower_module(tiny_tower("clip_l", 768, "tiny")).state_dict()
    seconds = median_seconds(lambda: tower_fingerprint(tiny, threads=args.threads), max(args.repeats, 20))
    values = sum(v.numel() for v in tiny.values())
    print(f"tiny tower ({values:,} values, {len(tiny)} tensors): {seconds * 1e3:.2f} ms")

    sample = bigg_sample(args.sample_values)
    values = sum(v.numel() for v in sample.values())
    seconds = median_seconds(lambda: tower_fingerprint(sample, threads=args.threads), args.repeats)
    rate = values / seconds
    print(f"bigG sample ({values:,} float32 values, {len(sample)} tensors): {seconds:.2f} s, "
          f"{rate / 1e6:.0f} M values/s ({rate * 4 / 1e9:.2f} GB/s of float32)")
    for spec in (CLIP_L_TOWER, CLIP_G_TOWER):
        total = tower_values(spec)
        print(f"estimate {spec.arch} vision tower ({total:,} values): {total / rate:.1f} s")

    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sample.safetensors"
        save_file(sample, str(path))
        seconds = median_seconds(lambda: [t.clone() for t in load_file(str(path)).values()], args.repeats)
        print(f"reading the sample from safetensors into memory (page cache): {seconds:.2f} s, "
              f"{path.stat().st_size / seconds / 1e9:.2f} GB/s")


if __name__ == "__main__":
    main()
