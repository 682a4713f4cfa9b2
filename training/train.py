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
import csv
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from lib_magicnaming.atomic import write_atomic
from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.model import HeadConfig, NameHead, init_head_
from training.common import SkipReport, TrainingError, read_json, write_json
from training.distributed import Place, current_place, init_process_group, same_on_every_rank
from training.features import FeatureSet, load_features
from training.targets import Targets, load_targets

STATE_FORMAT = "magicnaming-training-state"
STATE_VERSION = "1"
LAST_CHECKPOINT = "last.safetensors"
LOG_COLUMNS = ["step", "lr", "train_loss", "val_loss"]


@dataclass
class TrainSettings:
    """Everything that determines a training run (recorded in every checkpoint)."""

    steps: int = 10000
    batch_size: int = 256
    lr: float = 1e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 500
    weight_decay: float = 0.01
    cosine_weight: float = 0.0
    grad_clip: float = 1.0
    hidden_dim: int = 2048
    norm: str = "layernorm"
    act: str = "gelu"
    val_fraction: float = 0.05
    seed: int = 0

    def head_config(self, in_dim: int) -> HeadConfig:
        """The head these settings train."""
        return HeadConfig(in_dim=in_dim, hidden_dim=self.hidden_dim, norm=self.norm, act=self.act).validate()


SETTING_HELP = {
    "steps": "optimiser steps the schedule spans",
    "batch_size": "examples per step on each rank",
    "lr": "peak learning rate (AdamW)",
    "min_lr_ratio": "final learning rate as a fraction of the peak",
    "warmup_steps": "linear warm-up steps",
    "weight_decay": "AdamW weight decay",
    "cosine_weight": "weight of the (1 - cosine similarity) term added to the MSE",
    "grad_clip": "gradient norm clip (0: off)",
    "hidden_dim": "head hidden width (recorded in the checkpoint)",
    "norm": "head normalisation: layernorm or none",
    "act": "head activation: gelu, relu or silu",
    "val_fraction": "share of identities held out for validation",
    "seed": "seed of the identity split, batch order and head initialisation",
}


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


def head_weights_hash(head: NameHead) -> str:
    """sha256 over the head's tensors (sorted names, float32 bytes): equal on ranks that agree."""
    digest = hashlib.sha256()
    for key, value in sorted(head.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_state(
    path: Path, head: NameHead, optimizer: torch.optim.Optimizer, step: int, s: TrainSettings, extra: dict
) -> None:
    """Write a training checkpoint atomically (safetensors tensors + JSON metadata)."""
    from safetensors.torch import save_file

    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    params = list(head.parameters())
    for i, param in enumerate(params):
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"optim.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["step"] = torch.tensor([step], dtype=torch.int64)
    tensors["rng.cpu"] = torch.random.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    metadata = {
        "format": STATE_FORMAT,
        "format_version": STATE_VERSION,
        "settings": json.dumps(asdict(s), sort_keys=True),
        "head": json.dumps(head.config.to_dict(), sort_keys=True),
        "extra": json.dumps(extra, sort_keys=True),
    }
    write_atomic(path, lambda temp: save_file(tensors, str(temp), metadata=metadata))


@dataclass
class TrainingState:
    """A loaded training checkpoint."""

    step: int
    settings: TrainSettings
    head_config: HeadConfig
    head_state: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]
    extra: dict


def load_state(path: str | Path) -> TrainingState:
    """Read a training checkpoint; errors name the file and the problem."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"training checkpoint not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises its own error kinds for damaged files
        raise TrainingError(f"{p} is not a readable training checkpoint ({exc})") from exc
    if metadata.get("format") != STATE_FORMAT or metadata.get("format_version") != STATE_VERSION:
        raise TrainingError(f"{p} is not a {STATE_FORMAT} v{STATE_VERSION} file")
    known = {f.name for f in fields(TrainSettings)}
    try:
        settings = json.loads(metadata["settings"])
        return TrainingState(
            step=int(tensors["step"][0]),
            settings=TrainSettings(**{k: v for k, v in settings.items() if k in known}),
            head_config=HeadConfig.from_dict(json.loads(metadata["head"])),
            head_state={k[5:]: v for k, v in tensors.items() if k.startswith("head.")},
            optimizer_tensors={k[6:]: v for k, v in tensors.items() if k.startswith("optim.")},
            rng={k[4:]: v for k, v in tensors.items() if k.startswith("rng.")},
            extra=json.loads(metadata.get("extra", "{}")),
        )
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, MagicNamingError) as exc:
        raise TrainingError(f"{p} is a damaged training checkpoint ({type(exc).__name__}: {exc})") from exc


def restore_optimizer(
    optimizer: torch.optim.Optimizer, head: NameHead, flat: dict[str, torch.Tensor]
) -> None:
    """Rebuild AdamW's per-parameter state from the flattened ``<param index>.<key>`` tensors."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    if state and set(state) != set(range(len(list(head.parameters())))):
        raise TrainingError("the checkpoint's optimizer state does not match the head's parameters")
    saved = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


class CsvLog:
    """``log.csv`` on rank 0; on resume, rows after the resumed step are dropped (they will be redone)."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows = []
        if resume_step > 0 and path.is_file():
            with path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        """Append one row."""
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=LOG_COLUMNS).writerow(row)


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
            help=f"{SETTING_HELP[f.name]} (default: {value})",
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
        candidate = out / "checkpoints" / LAST_CHECKPOINT
        return candidate if candidate.is_file() else None
    return Path(args.resume)


def _check_resumable(state: TrainingState, s: TrainSettings, path: Path) -> None:
    fixed = ("batch_size", "hidden_dim", "norm", "act", "val_fraction", "seed", "steps", "lr", "warmup_steps")
    changed = [k for k in fixed if getattr(state.settings, k) != getattr(s, k)]
    if changed:
        raise TrainingError(f"cannot resume from {path}: settings changed: {', '.join(changed)}")


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
    report = SkipReport("train")
    data = prepare_data(load_features(args.features), load_targets(args.targets), s, report)
    if place.device.type == "cuda":
        data = data.to(place.device)
    in_dim = data.train_features.shape[1]
    # The process's RNG (saved in checkpoints) starts from the seed, so any random op a later head variant
    # adds (dropout, noise) is reproducible and resumes exactly; the head's init has its own generator.
    torch.manual_seed(s.seed)
    head = NameHead(s.head_config(in_dim))
    init_head_(head, generator=torch.Generator().manual_seed(s.seed))
    head.to(place.device).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    start = 0
    resume = _resume_path(args, out)
    if resume is not None:
        state = load_state(resume)
        _check_resumable(state, s, resume)
        head.load_state_dict(state.head_state)
        restore_optimizer(optimizer, head, state.optimizer_tensors)
        torch.random.set_rng_state(state.rng["cpu"])
        if "cuda" in state.rng and place.device.type == "cuda":
            torch.cuda.set_rng_state(state.rng["cuda"], place.device)
        start = state.step
    if distributed and not same_on_every_rank(start, place):
        # e.g. several nodes without a shared run folder: rank 0 found a checkpoint, another did not
        raise TrainingError(
            f"ranks disagree on the step to resume from (this rank: {start}); every rank must see the same "
            f"{out / 'checkpoints'} (a shared folder) or use --resume no"
        )
    model = head
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            head, device_ids=[place.device.index] if place.device.type == "cuda" else None
        )
    if place.is_main:
        write_json(out / "split.json", {"train": data.train_names, "val": data.val_names, "seed": s.seed})
        report.write(out / "skipped.json")
    stop = min(s.steps, args.stop_at) if args.stop_at else s.steps
    logger = _Loggers(out, start, stop, place, tensorboard=not args.no_tensorboard)
    sampler = EpochSampler(len(data.train_features), s.batch_size, place, s.seed)
    extra = {"split": {"train": len(data.train_names), "val": len(data.val_names)}, "world": place.world}
    last_loss = float("nan")
    clock = _LoopClock(place)
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
            last_loss = _mean_over_ranks(loss.detach(), distributed)
            val = (
                validation_loss(head, data, s, place)
                if place.is_main and (done % args.eval_every == 0 or done == s.steps)
                else None
            )
            logger.log(done, lr, last_loss, val)
        logger.advance()
        if done % args.checkpoint_every == 0 or done == stop:
            if place.is_main:
                save_state(out / "checkpoints" / LAST_CHECKPOINT, head, optimizer, done, s, extra)
                if done % args.checkpoint_every == 0:
                    save_state(
                        out / "checkpoints" / f"step-{done:08d}.safetensors", head, optimizer, done, s, extra
                    )
            if distributed:
                torch.distributed.barrier()
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


class _LoopClock:
    """Wall time of the training loop from the end of its first step (start-up and warm-up excluded)."""

    def __init__(self, place: Place):
        self.place, self.started = place, None

    def _now(self) -> float:
        if self.place.device.type == "cuda":
            torch.cuda.synchronize(self.place.device)
        return time.perf_counter()

    def tick(self, done: int) -> None:
        if done == 1:
            self.started = self._now()

    def steps_per_second(self, done: int) -> float | None:
        """Steps per second over steps 2..done (None for runs of fewer than 3 steps)."""
        if self.started is None or done < 3:
            return None
        return (done - 1) / max(1e-9, self._now() - self.started)


def _mean_over_ranks(value: torch.Tensor, distributed: bool) -> float:
    if distributed:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= torch.distributed.get_world_size()
    return float(value)


PLAIN_PROGRESS_EVERY_S = 30.0
"""Without a terminal (a log file, a cluster job) progress is a plain line at most this often."""


class _Loggers:
    """CSV + TensorBoard + progress, all on rank 0 only.

    Progress is a tqdm bar on a terminal; when stderr is not a terminal, a bar's carriage-return redraws would
    fill the log, so plain lines are printed instead (at most every PLAIN_PROGRESS_EVERY_S, and at the end).
    """

    def __init__(self, out: Path, start: int, total: int, place: Place, tensorboard: bool):
        from tqdm import tqdm

        self.main, self.total = place.is_main, total
        self.csv = CsvLog(out / "log.csv", start) if self.main else None
        self.board = None
        if self.main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1 if start else None)
        interactive = self.main and sys.stderr.isatty()
        self.bar = tqdm(initial=start, total=total, disable=not interactive, desc="train", leave=False)
        self.plain = self.main and not interactive
        self.last_plain = None

    def log(self, step: int, lr: float, train_loss: float, val_loss: float | None) -> None:
        if not self.main:
            return
        self.csv.write(
            {
                "step": step,
                "lr": lr,
                "train_loss": train_loss,
                "val_loss": "" if val_loss is None else val_loss,
            }
        )
        if self.board is not None:
            self.board.add_scalar("loss/train", train_loss, step)
            self.board.add_scalar("lr", lr, step)
            if val_loss is not None:
                self.board.add_scalar("loss/val", val_loss, step)
        self.bar.set_postfix(loss=f"{train_loss:.4g}")
        now = time.monotonic()
        if self.plain and (
            self.last_plain is None or now - self.last_plain >= PLAIN_PROGRESS_EVERY_S or step == self.total
        ):
            self.last_plain = now
            val = "" if val_loss is None else f", val loss {val_loss:.6g}"
            line = f"train: step {step}/{self.total}, lr {lr:.3g}, loss {train_loss:.6g}{val}"
            print(line, file=sys.stderr)

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        if self.board is not None:
            self.board.close()


def read_summary(run_folder: str | Path) -> dict:
    """The summary.json of a finished run."""
    return read_json(Path(run_folder) / "summary.json", "training summary")
