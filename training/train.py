"""Stage ``train``: the MLP head (lib_magicnaming.model.NameHead) on precomputed features.

Loss: MSE between the predicted and the true F_ID (plus ``--cosine-weight`` x (1 - cosine similarity) of
the flattened embeddings). AdamW with linear warm-up then cosine decay; bf16 autocast on CUDA; gradient
clipping. The identities (not the images) are split into training and validation sets, deterministically
from ``--seed``, so no identity is in both (``split.json``).

Runs on one device, or under torchrun with DistributedDataParallel (nccl on CUDA, gloo on CPU; one node or
several): ``torchrun --nproc_per_node 8 -m training train ...``; ``--batch-size`` is per rank. Every rank
draws its batch from the same per-epoch permutation (seeded by ``--seed`` and the epoch), so a run is a
pure function of its settings and the step: checkpoints every ``--checkpoint-every`` steps
(``checkpoints/last.safetensors``: head, AdamW state, step and RNG state as tensors, settings as JSON
metadata; safetensors, never pickle) resume bit-exactly on the same hardware and world size.

Logs: ``log.csv`` (step, lr, train_loss, val_loss) and TensorBoard (``tensorboard/``) on rank 0, with a tqdm
progress bar. Each rank writes ``weights-rank<r>.sha256`` (hash of its final head weights) so a run can be
checked for ranks that drifted apart.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from lib_magicnaming.model import NameHead, init_head_
from training.common import SkipReport, TrainingError, write_json
from training.distributed import Place, current_place, init_process_group, mean_over_ranks, same_on_every_rank
from training.features import FeatureSet, load_features
from training.targets import Targets, load_targets
from training.train_log import LoopClock, TrainingLog
from training.train_settings import TrainSettings
from training.train_state import head_weights_hash, last_checkpoint, resume_from, save_state, step_checkpoint


def lr_at(step: int, s: TrainSettings) -> float:
    """Learning rate of 0-based ``step``: linear warm-up to ``lr``, then cosine to ``lr * min_lr_ratio``."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def split_identities(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic identity-level split: (train names, validation names), disjoint, both sorted."""
    ordered = sorted(set(names))
    n_val = 0
    if val_fraction > 0 and len(ordered) >= 2:
        n_val = min(len(ordered) - 1, max(1, round(len(ordered) * val_fraction)))
    perm = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed)).tolist()
    val = sorted(ordered[i] for i in perm[:n_val])
    train = sorted(ordered[i] for i in perm[n_val:])
    return train, val


class EpochSampler:
    """Step -> this rank's batch indices; every rank shares one permutation per epoch (seed + epoch)."""

    def __init__(self, count: int, batch_size: int, place: Place, seed: int):
        if count == 0:
            raise TrainingError("no training examples")
        self.count, self.batch_size, self.place, self.seed = count, batch_size, place, seed
        self.global_batch = batch_size * place.world
        self.steps_per_epoch = max(1, count // self.global_batch)
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            needed = self.steps_per_epoch * self.global_batch
            parts, total = [], 0
            while total < needed:  # fewer examples than one global batch: concatenate permutations
                parts.append(torch.randperm(self.count, generator=generator))
                total += self.count
            self._epoch, self._perm = epoch, torch.cat(parts)[:needed]
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        """This rank's example indices for ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.global_batch + self.place.rank * self.batch_size
        return self._permutation(epoch)[start : start + self.batch_size]


@dataclass
class TrainData:
    """Features with the row of their name's F_ID in ``table``, split by identity.

    Targets stay one row per identity (``table``, (identities, 8, 2048)); a batch gathers its rows, so memory
    grows with identities, not with crops (810k crops x 64 KiB would not fit).
    """

    train_features: torch.Tensor
    train_rows: torch.Tensor
    val_features: torch.Tensor
    val_rows: torch.Tensor
    table: torch.Tensor
    train_names: list[str]
    val_names: list[str]

    def to(self, device: torch.device) -> TrainData:
        """The same data on ``device`` (on CUDA the whole set moves once instead of every batch)."""
        moved = {
            k: getattr(self, k).to(device)
            for k in ("train_features", "train_rows", "val_features", "val_rows", "table")
        }
        return TrainData(**moved, train_names=self.train_names, val_names=self.val_names)


def prepare_data(features: FeatureSet, targets: Targets, s: TrainSettings, report: SkipReport) -> TrainData:
    """Join features to targets by name (names without a target are reported) and split by identity."""
    row_of = targets.index()
    names = features.names
    missing = sorted({names[i] for i in features.identity.tolist()} - set(row_of))
    for name in missing:
        report.add(name, "no target F_ID for this name (not in the targets file)")
    usable = sorted({names[i] for i in features.identity.tolist()} & set(row_of))
    if not usable:
        raise TrainingError("no identity of the features has a target F_ID: are the targets for these names?")
    train_names, val_names = split_identities(usable, s.val_fraction, s.seed)
    target_row = torch.tensor([row_of.get(n, -1) for n in names], dtype=torch.long)[features.identity]
    val_set = set(val_names)
    in_val = torch.tensor([n in val_set for n in names], dtype=torch.bool)[features.identity]
    known = target_row >= 0
    train_mask, val_mask = known & ~in_val, known & in_val
    return TrainData(
        train_features=features.features[train_mask],
        train_rows=target_row[train_mask],
        val_features=features.features[val_mask],
        val_rows=target_row[val_mask],
        table=targets.f_id,
        train_names=train_names,
        val_names=val_names,
    )


def loss_terms(pred: torch.Tensor, target: torch.Tensor, cosine_weight: float) -> torch.Tensor:
    """MSE (+ cosine_weight * (1 - cosine similarity) of the flattened embeddings), in float32."""
    pred = pred.float()
    loss = F.mse_loss(pred, target)
    if cosine_weight:
        cos = F.cosine_similarity(pred.flatten(1), target.flatten(1), dim=1).mean()
        loss = loss + cosine_weight * (1 - cos)
    return loss


def autocast(place: Place):
    """bf16 autocast on CUDA GPUs that have bf16 (Ampere and later); float32 elsewhere (CPU, older GPUs,
    where bf16 autocast refuses to run)."""
    enabled = place.device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=place.device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def validation_loss(head: NameHead, data: TrainData, s: TrainSettings, place: Place) -> float | None:
    """Mean loss over the validation identities' crops (None without any)."""
    if len(data.val_features) == 0:
        return None
    head.eval()
    total = 0.0
    for start in range(0, len(data.val_features), s.batch_size):
        x = data.val_features[start : start + s.batch_size].to(place.device, torch.float32)
        y = data.table[data.val_rows[start : start + s.batch_size]].to(place.device)
        with autocast(place):
            pred = head(x)
        total += float(loss_terms(pred, y, s.cosine_weight)) * len(x)
    head.train()
    return total / len(data.val_features)


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """TrainSettings from the command line (same field names, dashes for underscores), checked."""
    s = TrainSettings(**{f.name: getattr(args, f.name) for f in fields(TrainSettings)})
    counts = {
        "--steps": s.steps, "--batch-size": s.batch_size, "--hidden-dim": s.hidden_dim,
        "--checkpoint-every": args.checkpoint_every, "--eval-every": args.eval_every,
        "--log-every": args.log_every,
    }
    problems = [f"{flag} must be at least 1 (got {value})" for flag, value in counts.items() if value < 1]
    if s.warmup_steps < 0:
        problems.append(f"--warmup-steps must be >= 0 (got {s.warmup_steps})")
    if not s.lr > 0:
        problems.append(f"--lr must be > 0 (got {s.lr})")
    if not 0 <= s.val_fraction < 1:
        problems.append(f"--val-fraction must be in [0, 1) (got {s.val_fraction})")
    if problems:
        raise TrainingError("; ".join(problems))
    return s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the ``train`` stage."""
    parser.add_argument("--features", required=True, help="features folder (features stage)")
    parser.add_argument("--targets", required=True, help="targets file (targets stage)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, logs, split.json")
    defaults = TrainSettings()
    for f in fields(TrainSettings):
        value = getattr(defaults, f.name)
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(value),
            default=value,
            help=f"{f.metadata['help']} (default: {value})",
        )
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="write a checkpoint every N steps")
    parser.add_argument("--eval-every", type=int, default=500, help="validation loss every N steps")
    parser.add_argument(
        "--log-every", type=int, default=10, help="log the (all-rank mean) loss every N steps"
    )
    parser.add_argument(
        "--resume", default="auto", help="'auto' (the run folder's last checkpoint), a path, or 'no'"
    )
    parser.add_argument("--stop-at", type=int, help="stop after this step (the schedule still spans --steps)")
    parser.add_argument("--device", help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    parser.add_argument("--no-tensorboard", action="store_true")
    parser.add_argument("--cpu-threads", type=int, help="torch CPU threads (1 is fastest for small heads)")


def _resume_path(args: argparse.Namespace, out: Path) -> Path | None:
    if args.resume == "no":
        return None
    if args.resume == "auto":
        candidate = last_checkpoint(out)
        return candidate if candidate.is_file() else None
    return Path(args.resume)


def run(args: argparse.Namespace) -> dict:
    """Run (or resume) training; returns the summary written to ``summary.json``."""
    place = current_place(args.device)
    created_group = init_process_group(place)
    distributed = place.world > 1
    threads = torch.get_num_threads()
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    try:
        summary = _train(args, place, distributed)
        if created_group:
            # Tear down together: a rank that closes its gloo pairs while another still reads from them can
            # make that rank abort (seen once on a loaded 2-core machine).
            torch.distributed.barrier()
        return summary
    finally:
        torch.set_num_threads(threads)
        if created_group:
            torch.distributed.destroy_process_group()


def _train(args: argparse.Namespace, place: Place, distributed: bool) -> dict:
    s = settings_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # data: features joined to their names' targets, split by identity
    report = SkipReport("train")
    data = prepare_data(load_features(args.features), load_targets(args.targets), s, report)
    if place.device.type == "cuda":
        data = data.to(place.device)
    in_dim = data.train_features.shape[1]

    # model and optimiser, fresh or resumed. The process's RNG (saved in checkpoints) starts from the seed,
    # so any random op a later head variant adds (dropout, noise) is reproducible and resumes exactly; the
    # head's init has its own generator.
    torch.manual_seed(s.seed)
    head = NameHead(s.head_config(in_dim))
    init_head_(head, generator=torch.Generator().manual_seed(s.seed))
    head.to(place.device).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    start = 0
    resume = _resume_path(args, out)
    if resume is not None:
        start = resume_from(resume, s, head, optimizer, place.device)
    if distributed and not same_on_every_rank(start, place):
        # e.g. several nodes without a shared run folder: rank 0 found a checkpoint, another did not
        raise TrainingError(
            f"ranks disagree on the step to resume from (this rank: {start}); every rank must see the same "
            f"{last_checkpoint(out).parent} (a shared folder) or use --resume no"
        )
    model = head
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            head, device_ids=[place.device.index] if place.device.type == "cuda" else None
        )

    # the loop
    if place.is_main:
        write_json(out / "split.json", {"train": data.train_names, "val": data.val_names, "seed": s.seed})
        report.write(out / "skipped.json")
    stop = min(s.steps, args.stop_at) if args.stop_at else s.steps
    logger = TrainingLog(out, start, stop, place, tensorboard=not args.no_tensorboard)
    sampler = EpochSampler(len(data.train_features), s.batch_size, place, s.seed)
    extra = {"split": {"train": len(data.train_names), "val": len(data.val_names)}, "world": place.world}
    last_loss = float("nan")
    clock = LoopClock(place)
    for step in range(start, stop):
        clock.tick(step - start)
        lr = lr_at(step, s)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = sampler.indices(step).to(data.train_features.device)
        x = data.train_features[idx].to(place.device, torch.float32, non_blocking=True)
        y = data.table[data.train_rows[idx]].to(place.device, non_blocking=True)
        with autocast(place):
            pred = model(x)
        loss = loss_terms(pred, y, s.cosine_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(head.parameters(), s.grad_clip)
        optimizer.step()
        done = step + 1
        if done % args.log_every == 0 or done == s.steps:
            last_loss = mean_over_ranks(loss.detach(), place)
            val = (
                validation_loss(head, data, s, place)
                if place.is_main and (done % args.eval_every == 0 or done == s.steps)
                else None
            )
            logger.log(done, lr, last_loss, val)
        logger.advance()
        if done % args.checkpoint_every == 0 or done == stop:
            if place.is_main:
                save_state(last_checkpoint(out), head, optimizer, done, s, extra)
                if done % args.checkpoint_every == 0:
                    save_state(step_checkpoint(out, done), head, optimizer, done, s, extra)
            if distributed:
                torch.distributed.barrier()

    # the end: each rank's weights hash, rank 0's summary
    steps_per_second = clock.steps_per_second(stop - start)
    logger.close()
    (out / f"weights-rank{place.rank}.sha256").write_text(head_weights_hash(head) + "\n")
    summary = {
        "steps": stop,
        "planned_steps": s.steps,
        "world": place.world,
        "train_loss": last_loss,
        "train_identities": len(data.train_names),
        "val_identities": len(data.val_names),
        "train_crops": len(data.train_features),
        "val_crops": len(data.val_features),
        "settings": asdict(s),
        "steps_per_second": steps_per_second,
    }
    if place.is_main:
        write_json(out / "summary.json", summary)
        print(f"train: {stop} steps, last train loss {last_loss:.6g} -> {out}; {report.summary()}")
    return summary

