"""Benchmark the ``train`` stage: optimiser steps per second, on one process or several ranks.

    python bench/train.py --device cuda --hidden-dim 2048 --batch-size 1024
    torchrun is driven by the script itself:  python bench/train.py --nproc 8 --device cuda
    python bench/train.py --device cpu --hidden-dim 256 --batch-size 64 --nproc 1 2

Synthetic data: random (N, 2048) features of ``--identities`` identities and random 8 x 2048 targets,
written as a features folder and targets file, then the real stage (``python -m training train``, under
``torch.distributed.run`` for ``--nproc`` > 1) runs ``--steps`` steps; steps/s is the stage's own clock
(``summary.json``: the loop from the end of step 1, so start-up is excluded): data indexing, forward,
backward, all-reduce, AdamW. ``--batch-size`` is per rank; examples/s counts all ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_synthetic(folder: Path, rows: int, identities: int) -> tuple[Path, Path]:
    """A features folder (one shard) and a targets file of random data."""
    from safetensors.torch import save_file

    from training.common import write_json
    from training.features import MANIFEST, shard_path
    from training.targets import Targets, save_targets

    generator = torch.Generator().manual_seed(0)
    names = [f"person {i:05d}" for i in range(identities)]
    features = folder / "features"
    features.mkdir(parents=True)
    save_file(
        {
            "features": torch.randn(rows, 2048, generator=generator),
            "identity": torch.arange(rows) % identities,
            "row": torch.arange(rows),
        },
        str(shard_path(features, 0)),
    )
    write_json(features / MANIFEST, {"names": names, "shards": 1, "rows": rows, "feature_dim": 2048})
    targets = save_targets(
        folder / "targets.safetensors",
        Targets(names, torch.randn(identities, 8, 2048, generator=generator), []),
    )
    return features, targets


def free_port() -> int:
    """A free TCP port on localhost for the rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measured_run(args: argparse.Namespace, nproc: int, features: Path, targets: Path, out: Path) -> float:
    """Steps/s of the training loop (the stage's own clock, start-up excluded) with ``nproc`` ranks."""
    train = [
        "-m",
        "training",
        "train",
        "--features",
        str(features),
        "--targets",
        str(targets),
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--hidden-dim",
        str(args.hidden_dim),
        "--warmup-steps",
        "1",
        "--val-fraction",
        "0.01",
        "--checkpoint-every",
        str(10 * args.steps),
        "--eval-every",
        str(10 * args.steps),
        "--log-every",
        str(10 * args.steps),
        "--no-tensorboard",
        "--resume",
        "no",
        "--device",
        args.device,
    ]
    launcher = [sys.executable]
    if nproc > 1:
        launcher += [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
        ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if args.device == "cpu":
        threads = args.threads_per_rank or max(1, (os.cpu_count() or 1) // nproc)
        env["OMP_NUM_THREADS"] = str(threads)
        train += ["--cpu-threads", str(threads)]
    done = subprocess.run(launcher + train, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # a one-shot GPU run must show why, not only that it failed
        sys.exit(f"the train stage exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())["steps_per_second"]


def main() -> None:
    """Parse options, run, print steps/s per rank count."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1], help="rank counts to measure")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256, help="per rank")
    parser.add_argument("--hidden-dim", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--threads-per-rank", type=int, help="CPU only (default: cores / ranks)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        features, targets = write_synthetic(Path(tmp), args.rows, args.identities)
        print(f"device {args.device}; head hidden {args.hidden_dim}; batch {args.batch_size} per rank")
        for nproc in args.nproc:
            steps_per_s = measured_run(args, nproc, features, targets, Path(tmp) / f"run{nproc}")
            examples = steps_per_s * args.batch_size * nproc
            print(
                f"ranks {nproc}: {steps_per_s:.2f} steps/s, {examples:.0f} examples/s over {args.steps} steps"
            )


if __name__ == "__main__":
    main()
