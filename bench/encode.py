"""Benchmark the photo encoder as the product runs it: cold load from tower files, offloaded encodes, the warm
encode (CUDA graphs), batch throughput, GPU memory.

    python bench/encode.py --size tiny --device cpu
    python bench/encode.py --size real --device cuda

``--size real`` builds real-size OpenAI ViT-L/14 and OpenCLIP ViT-bigG/14 image towers (open_clip's own
configs; random weights, made on the device so no time goes into initialising them on the CPU) and writes
them as float16 safetensors tower files (the bytes a user has) plus an encoder checkpoint recording their
fingerprints, then every figure goes through ``IdentityEncoder``:

* cold load: ``IdentityEncoder.load()`` from those files (the first load in the process hashes the tower
  files to check their fingerprint; a second encoder, e.g. after a settings change, finds it remembered),
  next to a plain read of the same files into memory (``safetensors.torch.load_file``, which only maps the
  file, then a copy of each tensor: the bytes read once, as the encoder must);
* offloaded encode (the default, "keep loaded" off): weights copied from RAM to the GPU for the call and
  dropped, pageable and pinned (``pin_memory``), and one tower at a time (``lowvram``); peak GPU memory
  during it and GPU memory held after; plain copies of the same bytes between host and GPU (pageable and
  pinned) for comparison;
* warm encode (``keep_loaded``): ``embed_pixels`` on CPU pixels (graph replay, the host-to-device copy
  included) and ``encode_photos`` of a 224 px PNG crop (hashing, decoding, ``pixels_from_crop`` included),
  each against the same model run eagerly; the model called directly on pixels already on the GPU;
  throughput at ``--batch``; peak GPU memory.

``tiny`` uses the tests' towers (any device); ``clip_l`` the real ViT-L/14 tower alone; ``--load-only`` stops
after the cold-load figures (``--size clip_l --device cpu --dtype float16 --load-only``: the load path a GPU
user's float16 towers take, measurable on a CPU). Figures are medians over ``--repeats`` runs after
``--warmup``. Prints one line per figure. ``--cuda-graph`` is accepted for earlier command lines (graphs
are now the product's own path and always timed on CUDA).
"""

from __future__ import annotations

import argparse
import copy
import io
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

from lib_magicnaming.checkpoint import save_encoder_checkpoint  # noqa: E402
from lib_magicnaming.constants import CLIP_L_WIDTH  # noqa: E402
from lib_magicnaming.encode import IdentityEncoder  # noqa: E402
from lib_magicnaming.model import CLIP_L_TOWER, EncoderConfig, HeadConfig, NameHead, init_head_  # noqa: E402
from lib_magicnaming.towers import (  # noqa: E402
    build_tower_module,
    tower_fingerprint,
    towers_dir,
    with_fingerprint,
)


def make_config(size: str) -> EncoderConfig:
    """The benchmarked architecture (towers without fingerprints yet)."""
    if size == "real":
        return EncoderConfig(head=HeadConfig(hidden_dim=2048))
    if size == "clip_l":
        return EncoderConfig(towers=[copy.deepcopy(CLIP_L_TOWER)], head=HeadConfig(in_dim=CLIP_L_WIDTH))
    from encoder_fixtures import tiny_config

    return tiny_config()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median_ms(times: list[float]) -> float:
    """Median of ``times`` (seconds) in milliseconds."""
    return statistics.median(times) * 1000


def report(name: str, value: float, unit: str) -> None:
    """One figure per line."""
    print(f"{name:<58} {value:>12.3f} {unit}", flush=True)


def write_tower_files(
    config: EncoderConfig, models_dir: Path, device: torch.device
) -> tuple[EncoderConfig, int]:
    """Random towers built on ``device``, written as float16 safetensors tower files; the config recording
    their fingerprints (what a trained encoder's checkpoint holds) and the bytes written."""
    from safetensors.torch import save_file

    folder = towers_dir(models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    specs, written = [], 0
    for spec in config.towers:
        with torch.device(device):
            tower = build_tower_module(spec).half()
        state = {k: v.detach().to("cpu").contiguous() for k, v in tower.state_dict().items()}
        del tower
        path = folder / f"{spec.file_stem}.safetensors"
        save_file(state, str(path))
        written += path.stat().st_size
        specs.append(with_fingerprint(spec, tower_fingerprint(state)))
        del state
    config.towers = specs
    return config.validate(), written


def png_crop(size: int) -> bytes:
    """A 224 px face-crop-sized PNG of noise (the decoder's work does not depend on the content much)."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("tiny", "clip_l", "real"), default="tiny",
                        help="clip_l: the real ViT-L/14 tower alone (small enough for a CPU load figure)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="batch size for the throughput figure")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "float16", "bfloat16"),
        default="auto",
        help="tower dtype (auto: float16 on CUDA, float32 on CPU)",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--offload-repeats", type=int, default=3, help="repeats of each offloaded encode")
    parser.add_argument("--cuda-graph", action="store_true", help="accepted; graphs are always timed on CUDA")
    parser.add_argument("--folder", help="where to write the tower files (default: a temporary folder)")
    parser.add_argument("--load-only", action="store_true", help="stop after the cold-load figures")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU here")
    cuda = device.type == "cuda"

    print(
        f"# {platform.node()} | python {platform.python_version()} | torch {torch.__version__} | "
        f"threads {torch.get_num_threads()} | cpus {os.cpu_count()} | "
        + (torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu")
    )
    print(f"# size {args.size} | device {device} | dtype {args.dtype} | "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        run(Path(folder), args, device, dtype)


def run(folder: Path, args: argparse.Namespace, device: torch.device, dtype) -> None:
    """Every figure, in the order of the module docstring."""
    from safetensors.torch import load_file

    cuda = device.type == "cuda"
    config = make_config(args.size)
    start = time.perf_counter()
    config, written = write_tower_files(config, folder, device)
    checkpoint = folder / "encoder.safetensors"
    head = init_head_(NameHead(config.head)).state_dict()
    save_encoder_checkpoint(checkpoint, config=config, head_state=head)
    report(f"setup: tower files written ({written / 1e9:.2f} GB float16)", time.perf_counter() - start, "s")
    files = sorted(towers_dir(folder).glob("*.safetensors")) + [checkpoint]

    def plain_read():  # load_file maps the file and reads nothing: each tensor is copied out of the mapping
        return [[t.clone() for t in load_file(str(path)).values()] for path in files]

    plain_read()  # the files into the page cache (just written: usually there already)

    def cold_load(**options) -> tuple[IdentityEncoder, float]:
        encoder = IdentityEncoder(checkpoint, models_dir=folder, device=device, dtype=dtype, **options)
        begin = time.perf_counter()
        encoder.load()
        sync(device)
        return encoder, time.perf_counter() - begin

    first, first_seconds = cold_load()
    first.unload()
    reads, loads = [], []
    for _ in range(3):  # interleaved, so that load on a shared machine hits both alike
        reads.append(timed(plain_read, device, 0, 1)[0])
        encoder, seconds = cold_load()
        loads.append(seconds)
        encoder.unload()
    read = statistics.median(reads)
    report("plain read of the same files into memory, median of 3", read, "s")
    report("cold load, first in the process (fingerprints hashed)", first_seconds, "s")
    report("  x plain read", first_seconds / read, "x")
    report("cold load, fingerprints remembered, median of 3", statistics.median(loads), "s")
    report("  x plain read", statistics.median(loads) / read, "x")
    encoder, _ = cold_load()
    model = encoder.load()
    report("parameters (towers + head)", sum(p.numel() for p in model.parameters()) / 1e6, "M")
    if args.load_only:
        return

    one = torch.randn(1, 3, 224, 224)
    if cuda:
        offloaded(encoder, one, args, device)
        encoder.unload()
        raw_copies(written, device)
        torch.cuda.empty_cache()  # the copies' GPU buffer, freed on return
        pinned, seconds = cold_load(pin_memory=True)
        report("cold load with a pinned master (copy + cudaHostRegister)", seconds, "s")
        times = timed(lambda: pinned.embed_pixels(one), device, 1, args.offload_repeats)
        report("offloaded encode, pinned master, median", median_ms(times), "ms")
        pinned.unload()
        lowvram, _ = cold_load(lowvram=True)
        times = timed(lambda: lowvram.embed_pixels(one), device, 0, max(1, args.offload_repeats - 1))
        report("offloaded encode, one tower at a time (--lowvram), median", median_ms(times), "ms")
        lowvram.unload()
    else:
        encoder.unload()
    warm(cold_load, one, args, device)


def offloaded(encoder: IdentityEncoder, one: torch.Tensor, args: argparse.Namespace, device) -> None:
    """The default: the weights wait in RAM and a copy goes up for each call."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    times = timed(lambda: encoder.embed_pixels(one), device, 1, args.offload_repeats)
    report("offloaded encode (keep loaded off), pageable master, median", median_ms(times), "ms")
    report("  peak GPU memory during it", (torch.cuda.max_memory_allocated(device) - before) / 2**20, "MiB")
    report("  GPU memory held after it", (torch.cuda.memory_allocated(device) - before) / 2**20, "MiB")


def raw_copies(nbytes: int, device: torch.device) -> None:
    """Plain copies of the tower files' size, the bounds an offload works against: GPU -> new pageable host
    memory (what ``module.to("cpu")`` does), pageable -> GPU, and pinned memory both ways."""
    gpu = torch.empty(nbytes, dtype=torch.uint8, device=device)
    pageable = torch.zeros(nbytes, dtype=torch.uint8)  # touched, as a master in RAM is
    pinned = torch.zeros(nbytes, dtype=torch.uint8, pin_memory=True)
    copies = {
        "GPU -> new pageable host memory": lambda: gpu.to("cpu"),
        "pageable host -> GPU": lambda: gpu.copy_(pageable),
        "pinned host -> GPU": lambda: gpu.copy_(pinned, non_blocking=True),
        "GPU -> pinned host": lambda: pinned.copy_(gpu, non_blocking=True),
    }
    for label, copy_once in copies.items():
        times = timed(copy_once, device, 1, 3)
        report(f"copy {nbytes / 1e9:.2f} GB, {label}, median", median_ms(times), "ms")


def warm(cold_load, one: torch.Tensor, args: argparse.Namespace, device: torch.device) -> None:
    """keep_loaded: the weights stay on the device; the warm encode replays CUDA graphs there."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    kept, seconds = cold_load(keep_loaded=True, cache_size=0)
    report("cold load onto the device (keep loaded)", seconds, "s")
    model = kept.load()
    crop = png_crop(kept.checkpoint.config.crop.size)
    graphs = kept.graphs
    product = timed(lambda: kept.embed_pixels(one), device, args.warmup, args.repeats)
    label = "graph replay" if cuda and graphs.eager_reason is None else "eager"
    report(f"warm encode, embed_pixels ({label}), median", median_ms(product), "ms")
    report("  min", min(product) * 1000, "ms")
    photo = timed(lambda: kept.encode_photos([crop], assume_cropped=True), device, args.warmup, args.repeats)
    report(f"warm encode, encode_photos of a PNG crop ({label}), median", median_ms(photo), "ms")
    batch = torch.randn(args.batch, 3, 224, 224)
    many = timed(lambda: kept.embed_pixels(batch), device, 1, max(1, args.repeats // 2))
    rate = args.batch / statistics.median(many)
    report(f"batch throughput (batch {args.batch}, {label})", rate, "photos/s")
    if cuda:
        print(f"  graphs: {graphs.captures} captured, {graphs.replays} replays, eager reason: "
              f"{graphs.eager_reason}", flush=True)
        graphs.eager_reason = "bench: the same model timed eagerly"  # the eager path, same weights
        eager = timed(lambda: kept.embed_pixels(one), device, args.warmup, args.repeats)
        report("warm encode, embed_pixels, eager, median", median_ms(eager), "ms")
        eager_photo = timed(lambda: kept.encode_photos([crop], assume_cropped=True), device, 1, args.repeats)
        report("warm encode, encode_photos of a PNG crop, eager, median",
               median_ms(eager_photo), "ms")
        pixels = one.to(device)
        with torch.no_grad():
            direct = timed(lambda: model(pixels), device, 3, args.repeats * 2)
        report("model called eagerly on pixels already on the GPU, median", median_ms(direct), "ms")
        report("peak GPU memory, weights kept on the GPU", (torch.cuda.max_memory_allocated(device) - before)
               / 2**20, "MiB")
        kept.unload()
        torch.cuda.synchronize(device)
        held = torch.cuda.memory_allocated(device) - before
        report("GPU memory held after unload()", held / 2**20, "MiB")


if __name__ == "__main__":
    main()
