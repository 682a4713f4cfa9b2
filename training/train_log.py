"""What a training run reports while it runs: ``log.csv``, TensorBoard, progress, and its speed.

Rank 0 writes ``RUN/log.csv`` (LOG_COLUMNS; the ``eval`` stage plots it) and TensorBoard events
(``RUN/tensorboard/``), and shows progress: a tqdm bar on a terminal, plain lines when output goes to a log.
Other ranks report nothing. A resumed run rewinds both logs to the step it resumes from, so they read as if
the run had never stopped. LoopClock measures the loop's steps per second for the run's summary.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import torch

from training.distributed import Place

LOG_FILE = "log.csv"
LOG_COLUMNS = ["step", "lr", "train_loss", "val_loss"]
PLAIN_PROGRESS_EVERY_S = 30.0
"""Without a terminal (a log file, a cluster job) progress is a plain line at most this often."""


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


class TrainingLog:
    """CSV + TensorBoard + progress, all on rank 0 only.

    Progress is a tqdm bar on a terminal; when stderr is not a terminal, a bar's carriage-return redraws would
    fill the log, so plain lines are printed instead (at most every PLAIN_PROGRESS_EVERY_S, and at the end).
    """

    def __init__(self, out: Path, start: int, total: int, place: Place, tensorboard: bool):
        from tqdm import tqdm

        self.main, self.total = place.is_main, total
        self.csv = CsvLog(out / LOG_FILE, start) if self.main else None
        self.board = None
        if self.main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1 if start else None)
        interactive = self.main and sys.stderr.isatty()
        self.bar = tqdm(initial=start, total=total, disable=not interactive, desc="train", leave=False)
        self.plain = self.main and not interactive
        self.last_plain = None

    def log(self, step: int, lr: float, train_loss: float, val_loss: float | None) -> None:
        """Record the losses after ``step`` (val_loss None: not evaluated at this step)."""
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
        """One step done (moves the progress bar)."""
        self.bar.update(1)

    def close(self) -> None:
        """Close the bar and flush TensorBoard."""
        self.bar.close()
        if self.board is not None:
            self.board.close()


class LoopClock:
    """Wall time of the training loop from the end of its first step (start-up and warm-up excluded)."""

    def __init__(self, place: Place):
        self.place, self.started = place, None

    def _now(self) -> float:
        if self.place.device.type == "cuda":
            torch.cuda.synchronize(self.place.device)
        return time.perf_counter()

    def tick(self, done: int) -> None:
        """Called before each step with the steps done so far in this session; starts after the first."""
        if done == 1:
            self.started = self._now()

    def steps_per_second(self, done: int) -> float | None:
        """Steps per second over steps 2..done (None for runs of fewer than 3 steps)."""
        if self.started is None or done < 3:
            return None
        return (done - 1) / max(1e-9, self._now() - self.started)
