"""Benchmark measuring a checkpoint's name space: encoding the listed names, fitting, writing the cache file.

    python bench/namespace.py                      # real-size SDXL text encoders, 64 names, CPU
    python bench/namespace.py --names 0            # every name of the shipped list (1,232)
    python bench/namespace.py --size tiny --names 0
    python bench/namespace.py --device cuda --dtype float16 --names 0   # a GPU, as the WebUI runs it

``--size real`` builds SDXL's two text encoders at their real size (OpenAI CLIP ViT-L/14 text, 123 M
parameters; OpenCLIP ViT-bigG/14 text, 695 M) from open_clip's configs with random weights (no downloads), and
encodes each name as the WebUI does (77-token chunks, CLIP-L hidden layer 11, bigG penultimate) through
``training.text_encoders.SDXLTextEncoder``; ``tiny`` uses one-layer towers of the same widths. The names are
encoded in the extension's batches (``namespace_cache.ENCODE_BATCH``) by
``namespace_cache.compute_checkpoint_namespace``, the function the WebUI runs. Prints seconds per name, the
time for the whole list (measured, or projected from the names encoded when ``--names`` is a subset), the
fit over the whole list's size, the cache file's write and read, and the FLOPs of one name, from which a
GPU's time is estimated.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_magicnaming.constants import CHUNK_ROWS, CLIP_G_WIDTH, CLIP_L_WIDTH  # noqa: E402
from lib_magicnaming.names_list import names_list_hash, read_names_list  # noqa: E402
from lib_magicnaming.namespace import fit_namespace_stats  # noqa: E402
from lib_magicnaming.namespace_cache import (  # noqa: E402
    ENCODE_BATCH,
    NAMESPACE_RANK,
    NamespaceCache,
    SourceCheckpoint,
    compute_checkpoint_namespace,
    forget_loaded_files,
)
from training.text_encoders import (  # noqa: E402
    SDXL_CLIP_G,
    SDXL_CLIP_L,
    SDXLTextEncoder,
    random_text_tower,
    tiny_spec,
)

LAYERS_RUN = {"clip_l": 12, "clip_g": 31}
"""Transformer blocks the WebUI runs per tower (HF CLIP-L computes all 12 for its hidden states; bigG stops
before the last of 32)."""
REAL_WIDTHS = {"clip_l": CLIP_L_WIDTH, "clip_g": CLIP_G_WIDTH}


def flops_per_name() -> float:
    """Forward FLOPs of one name (one 77-token chunk) through both real-size towers, as the WebUI runs them:
    24 w^2 per token per block (attention projections and the 4x MLP) plus 4 * 77 * w for attention."""
    total = 0.0
    for tower, layers in LAYERS_RUN.items():
        width = REAL_WIDTHS[tower]
        total += layers * CHUNK_ROWS * (24 * width * width + 4 * CHUNK_ROWS * width)
    return total


def encoder(size: str, device: str, dtype: torch.dtype) -> SDXLTextEncoder:
    specs = [SDXL_CLIP_L, SDXL_CLIP_G]
    if size == "tiny":
        specs = [tiny_spec(SDXL_CLIP_L, width=CLIP_L_WIDTH, layers=1),
                 tiny_spec(SDXL_CLIP_G, width=CLIP_G_WIDTH, layers=1)]
    towers = [(spec, random_text_tower(spec, seed).to(dtype)) for seed, spec in enumerate(specs)]
    return SDXLTextEncoder(towers, device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--names", type=int, default=64, help="names to encode (0: the whole list)")
    parser.add_argument("--batch-size", type=int, default=ENCODE_BATCH)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="the towers' weights (the WebUI runs them in float16 on a GPU)")
    parser.add_argument("--cpu-threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    shipped = read_names_list()
    count = len(shipped.names) if args.names <= 0 else min(args.names, len(shipped.names))
    names = shipped.names[:count]
    subset = type(shipped)(names, names_list_hash(names), shipped.label)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}, "
          f"{args.dtype}")

    started = time.perf_counter()
    text = encoder(args.size, args.device, getattr(torch, args.dtype))
    print(f"text encoders built in {time.perf_counter() - started:.1f} s ({args.size} size, random weights)")
    text.encode(["warm up"])

    started = time.perf_counter()
    namespace = compute_checkpoint_namespace(
        text.encode, subset, SourceCheckpoint("0" * 10, "bench"), batch_size=args.batch_size
    )
    seconds = time.perf_counter() - started
    per_name = seconds / count
    print(f"measured {count} names (batches of {args.batch_size}) in {seconds:.1f} s: {per_name:.3f} s per "
          "name (fit included)")
    if count < len(shipped.names):
        print(f"whole shipped list ({len(shipped.names)} names), projected: "
              f"{per_name * len(shipped.names) / 60:.1f} min")

    whole = torch.randn(len(shipped.names), 8, CLIP_L_WIDTH + CLIP_G_WIDTH)
    started = time.perf_counter()
    fit_namespace_stats(whole, NAMESPACE_RANK)
    fitted = time.perf_counter() - started
    print(f"fit over {len(shipped.names)} names (rank {NAMESPACE_RANK}): {fitted:.1f} s")

    with tempfile.TemporaryDirectory() as folder:
        cache = NamespaceCache(folder)
        started = time.perf_counter()
        path = cache.save(namespace)
        written = time.perf_counter() - started
        forget_loaded_files()
        started = time.perf_counter()
        cache.load(SourceCheckpoint("0" * 10, "bench"), subset)
        print(f"cache file {path.stat().st_size / 2**20:.1f} MiB for {count} names: written in {written:.2f} "
              f"s, read and validated in {time.perf_counter() - started:.2f} s")

    flops = flops_per_name()
    total = flops * len(shipped.names)
    print(f"FLOPs (real size): {flops / 1e9:.0f} GFLOP per name, {total / 1e12:.0f} TFLOP for the whole list")
    if args.size == "real":
        print(f"this run: {flops * count / seconds / 1e9:.0f} GFLOP/s (fit included)")
    print(f"GPU estimate (not measured): at 100 TFLOP/s sustained fp16 (10 % of an H100/H200's dense peak) "
          f"the whole list's encoding is {total / 100e12:.1f} s of compute, plus per-batch overhead")


if __name__ == "__main__":
    main()
