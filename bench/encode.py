"""Benchmark the name encoder: cold load, warm single-photo latency, batch throughput, peak GPU memory.

    python bench/encode.py --size tiny --device cpu
    python bench/encode.py --size real --device cuda --cuda-graph

``--size real`` builds real-size OpenAI ViT-L/14 and OpenCLIP ViT-bigG/14 image towers (open_clip's own
configs) and a 2048-wide head, all with random weights (no downloads); ``tiny`` uses the tests' towers.
Latencies are towers + head on already-cropped 224 px pixels (face detection is not included); figures are
medians over ``--repeats`` runs after ``--warmup`` runs. Prints one line per figure.
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

from lib_magicnaming.checkpoint import save_encoder_checkpoint  # noqa: E402
from lib_magicnaming.encode import IdentityEncoder  # noqa: E402
from lib_magicnaming.model import EncoderConfig, HeadConfig, NameHead, init_head_  # noqa: E402


def make_config(size: str) -> EncoderConfig:
    """The benchmarked architecture."""
    if size == "real":
        return EncoderConfig(head=HeadConfig(hidden_dim=2048))
    from encoder_fixtures import tiny_config

    return tiny_config()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize()


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


def report(name: str, value: float, unit: str) -> None:
    """One figure per line."""
    print(f"{name:<44} {value:>12.3f} {unit}")


def cuda_graph_forward(model, pixels: torch.Tensor):
    """Capture towers + head for a static input in one CUDA graph; return a replay function."""
    static_in = pixels.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            model(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_out = model(static_in)

    def replay():
        graph.replay()
        return static_out

    return replay


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="batch size for the throughput figure")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "float16", "bfloat16"),
        default="auto",
        help="tower dtype (auto: float16 on CUDA, float32 on CPU)",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cuda-graph", action="store_true", help="also time one CUDA graph of towers + head")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(mode='max-autotune')")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU here")

    print(
        f"# {platform.node()} | python {platform.python_version()} | torch {torch.__version__} | "
        f"threads {torch.get_num_threads()} | cpus {os.cpu_count()} | "
        + (torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu")
    )
    print(
        f"# size {args.size} | device {device} | dtype {args.dtype} | "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )

    config = make_config(args.size)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.safetensors"
        head = init_head_(NameHead(config.head))
        save_encoder_checkpoint(path, config=config, head_state=head.state_dict())
        del head
        dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
        encoder = IdentityEncoder(path, device=device, keep_loaded=True, random_towers=True, dtype=dtype)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
        start = time.perf_counter()
        model = encoder.load()
        sync(device)
        report("cold load (checkpoint + random towers) s", time.perf_counter() - start, "s")
        params = sum(p.numel() for p in model.parameters())
        report("parameters (towers + head)", params / 1e6, "M")

        one = torch.randn(1, 3, 224, 224)
        batch = torch.randn(args.batch, 3, 224, 224)
        single = timed(lambda: encoder.embed_pixels(one), device, args.warmup, args.repeats)
        report("warm single-photo encode, median", statistics.median(single) * 1000, "ms")
        report("warm single-photo encode, min", min(single) * 1000, "ms")
        many = timed(lambda: encoder.embed_pixels(batch), device, args.warmup, max(1, args.repeats // 2))
        report(f"batch throughput (batch {args.batch})", args.batch / statistics.median(many), "photos/s")

        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() - baseline
            report("peak GPU memory during encode", peak / 2**20, "MiB")
            pixels = one.to(device)
            with torch.no_grad():
                direct = timed(lambda: model(pixels), device, 3, args.repeats * 4)
            report("warm encode, eager on-GPU input, median", statistics.median(direct) * 1000, "ms")
            if args.cuda_graph:
                replay = cuda_graph_forward(model, pixels)
                graphed = timed(replay, device, 3, args.repeats * 4)
                report("warm encode, one CUDA graph, median", statistics.median(graphed) * 1000, "ms")
            if args.compile:
                compiled = torch.compile(model, mode="max-autotune")
                with torch.no_grad():
                    times = timed(lambda: compiled(pixels), device, 3, args.repeats * 4)
                report("warm encode, torch.compile, median", statistics.median(times) * 1000, "ms")
            # keep_loaded off: the encoder builds its model for the call and frees it after (here the towers
            # are random, so the time includes initialising them, not reading tower files)
            freeing = IdentityEncoder(path, device=device, random_towers=True, dtype=dtype)
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            times = timed(lambda: freeing.embed_pixels(one), device, 0, 1)
            report("encode with keep_loaded off (build, encode, free), once", times[0] * 1000, "ms")
            report(
                "GPU memory held after an encode with keep_loaded off",
                (torch.cuda.memory_allocated() - before) / 2**20,
                "MiB",
            )


if __name__ == "__main__":
    main()
