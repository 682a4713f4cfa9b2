"""Stage ``eval``: how well the trained head predicts F_ID on held-out identities.

For every crop of the validation identities (``split.json`` of the run): MSE and cosine similarity of the
predicted F_ID to its name's true F_ID, and retrieval: among ALL names of the targets file, is the true
name the nearest (top-1) or among the 5 nearest (top-5) to the prediction (Euclidean distance of the
flattened 8 x 2048 embeddings)? The same retrieval is reported per identity with the mean prediction of
its crops. Printed, and saved as ``eval-<split>.json``; ``loss.png`` plots the training and validation
loss.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lib_magicnaming.model import NameHead
from training.common import TrainingError, read_json, read_table, write_json
from training.features import load_features
from training.targets import load_targets
from training.train_log import LOG_FILE
from training.train_state import last_checkpoint, load_state


def predict(head: NameHead, features: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """(N, D) features -> (N, 8, 2048) float32 predictions on the CPU."""
    head.eval()
    with torch.no_grad():
        return torch.cat(
            [head(features[i : i + batch_size].float()) for i in range(0, len(features), batch_size)]
        )


def retrieval_ranks(
    predictions: torch.Tensor, own_rows: torch.Tensor, candidates: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """0-based rank of each prediction's own candidate by Euclidean distance (0 = nearest).

    Distances are computed ``chunk`` predictions at a time (in float64), so 40k crops against 42k names need
    a few hundred MB, not the full matrix.
    """
    flat = candidates.flatten(1).double()
    ranks = []
    for start in range(0, len(predictions), chunk):
        distances = torch.cdist(predictions[start : start + chunk].flatten(1).double(), flat)
        own = distances.gather(1, own_rows[start : start + chunk].view(-1, 1))
        ranks.append((distances < own).sum(dim=1))
    return torch.cat(ranks)


def metrics(predictions: torch.Tensor, own_rows: torch.Tensor, candidates: torch.Tensor) -> dict:
    """MSE, mean cosine similarity, top-1 and top-5 retrieval accuracy."""
    truth = candidates[own_rows]
    ranks = retrieval_ranks(predictions, own_rows, candidates)
    cosine = torch.nn.functional.cosine_similarity(predictions.flatten(1), truth.flatten(1), dim=1)
    return {
        "mse": float(torch.mean((predictions - truth) ** 2)),
        "cosine": float(cosine.mean()),
        "top1": float((ranks < 1).double().mean()),
        "top5": float((ranks < 5).double().mean()),
        "count": len(predictions),
    }


def evaluate(head: NameHead, feature_folder: str | Path, targets_path: str | Path, names: list[str]) -> dict:
    """Metrics per crop and per identity (mean prediction) for the crops of ``names``."""
    features = load_features(feature_folder)
    targets = load_targets(targets_path)
    row_of = targets.index()
    wanted = [n for n in names if n in row_of]
    if not wanted:
        raise TrainingError("none of the identities to evaluate has a target F_ID")
    name_rows = torch.tensor([row_of.get(n, -1) for n in features.names])[features.identity]
    wanted_rows = torch.tensor(sorted(row_of[n] for n in wanted))
    mask = torch.isin(name_rows, wanted_rows)
    if not bool(mask.any()):
        raise TrainingError("no crop of the identities to evaluate is in the features")
    predictions = predict(head, features.features[mask])
    own = name_rows[mask]
    per_identity = torch.stack([predictions[own == r].mean(dim=0) for r in own.unique()])
    return {
        "per_crop": metrics(predictions, own, targets.f_id),
        "per_identity": metrics(per_identity, own.unique(), targets.f_id),
        "identities": int(own.unique().numel()),
        "candidates": len(targets.names),
    }


def plot_losses(log_csv: str | Path, out_png: str | Path) -> Path:
    """Training and validation loss against step (matplotlib, Agg backend), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = read_table(log_csv, "training log", columns=("step", "train_loss", "val_loss"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(log["step"], log["train_loss"].astype(float), label="train")
    val = log[log["val_loss"].astype(str) != ""]
    if not val.empty:
        ax.plot(val["step"], val["val_loss"].astype(float), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def load_head(checkpoint: str | Path) -> NameHead:
    """The head of a training checkpoint."""
    state = load_state(checkpoint)
    head = NameHead(state.head_config)
    head.load_state_dict(state.head_state)
    return head


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the ``eval`` stage."""
    parser.add_argument("--run", required=True, help="run folder of the train stage")
    parser.add_argument("--features", required=True)
    parser.add_argument("--targets", required=True)
    parser.add_argument("--checkpoint", help="default: RUN/checkpoints/last.safetensors")
    parser.add_argument("--split", choices=("val", "train"), default="val", help="identities to evaluate")


def run(args: argparse.Namespace) -> dict:
    """Run the ``eval`` stage; writes RUN/eval-<split>.json and RUN/loss.png."""
    folder = Path(args.run)
    head = load_head(args.checkpoint or last_checkpoint(folder))
    split = read_json(folder / "split.json", "identity split")
    if not split[args.split]:
        raise TrainingError(f"the run has no {args.split} identities (train with --val-fraction > 0)")
    result = {"split": args.split, **evaluate(head, args.features, args.targets, split[args.split])}
    write_json(folder / f"eval-{args.split}.json", result)
    if (folder / LOG_FILE).is_file():
        plot_losses(folder / LOG_FILE, folder / "loss.png")
    crop, ident = result["per_crop"], result["per_identity"]
    print(
        f"eval ({args.split}, {result['identities']} identities, {result['candidates']} names): "
        f"MSE {crop['mse']:.5g}, cosine {crop['cosine']:.4f}, "
        f"top-1 {crop['top1']:.3f}, top-5 {crop['top5']:.3f} per crop; "
        f"top-1 {ident['top1']:.3f}, top-5 {ident['top5']:.3f} per identity -> eval-{args.split}.json"
    )
    return result
