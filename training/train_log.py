"""What a training run reports while it runs: ``log.csv``, TensorBoard, progress, and its speed.

Rank 0 writes ``RUN/log.csv`` (LOG_COLUMNS; the ``eval`` stage plots it) and TensorBoard events
(``RUN/tensorboard/``), and shows progress (:mod:`training.progress`: a tqdm bar on a terminal, plain lines
with the step, learning rate and losses when output goes to a log).
Other ranks report nothing. A resumed run rewinds both logs to the step it resumes from, so they read as if
the run had never stopped. LoopClock measures the loop's steps per second for the run's summary.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch

from training.distributed import Place
from training.progress import Progress

LOG_FILE = "log.csv"
LOG_COLUMNS = ["step", "lr", "train_loss", "val_loss"]


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
    """CSV + TensorBoard + progress (:class:`training.progress.Progress`), all on rank 0 only."""

    def __init__(self, out: Path, start: int, total: int, place: Place, tensorboard: bool):
        self.main, self.total = place.is_main, total
        self.csv = CsvLog(out / LOG_FILE, start) if self.main else None
        self.board = None
        if self.main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1 if start else None)
        self.progress = Progress(total, "train", place, initial=start)

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
        self.progress.postfix(loss=f"{train_loss:.4g}")
        val = "" if val_loss is None else f", val loss {val_loss:.6g}"
        line = f"train: step {step}/{self.total}, lr {lr:.3g}, loss {train_loss:.6g}{val}"
        self.progress.say(line, final=step == self.total)

    def advance(self) -> None:
        """One step done (moves the progress bar)."""
        self.progress.advance()

    def close(self) -> None:
        """Close the bar and flush TensorBoard."""
        self.progress.close()
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
