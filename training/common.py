"""Pieces every stage shares: the pipeline's error, the skipped-input report, atomic file writes, tables,
reading a safetensors file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from lib_magicnaming.atomic import write_atomic, write_bytes_atomic
from lib_magicnaming.errors import MagicNamingError

if TYPE_CHECKING:
    import torch


class TrainingError(MagicNamingError):
    """A training-pipeline input or setting that cannot be used; the message names the problem."""


@dataclass
class SkipReport:
    """What a stage left out, and why, so malformed inputs never vanish silently."""

    stage: str
    skipped: list[dict] = field(default_factory=list)

    def add(self, item: str, reason: str) -> None:
        """Record one skipped input (a row, a file, a name) with the reason it was skipped."""
        self.skipped.append({"item": item, "reason": reason})

    def summary(self, limit: int = 5) -> str:
        """One line for the console: how many were skipped and the first few reasons."""
        if not self.skipped:
            return f"{self.stage}: nothing skipped"
        head = "; ".join(f"{s['item']}: {s['reason']}" for s in self.skipped[:limit])
        more = f" (+{len(self.skipped) - limit} more)" if len(self.skipped) > limit else ""
        return f"{self.stage}: skipped {len(self.skipped)}: {head}{more}"

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON (atomically) and return its path."""
        return write_json(path, {"stage": self.stage, "count": len(self.skipped), "skipped": self.skipped})


def write_json(path: str | os.PathLike, payload: object) -> Path:
    """Write JSON atomically (sorted keys, indented) and return the path."""
    return write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: str | os.PathLike, what: str) -> dict:
    """Read a JSON file the pipeline wrote; ``what`` names it in the error if it is missing or broken."""
    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{what} is not valid JSON: {p} ({exc})") from exc


def write_table(path: str | os.PathLike, table: pd.DataFrame) -> Path:
    """Write a table as CSV or parquet (by the file's suffix), atomically."""
    if Path(path).suffix == ".parquet":
        return write_atomic(path, lambda temp: table.to_parquet(temp, index=False))
    return write_atomic(path, lambda temp: table.to_csv(temp, index=False))


def read_table(path: str | os.PathLike, what: str, columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a CSV or parquet table and check it has ``columns``; errors name the file and what is missing."""
    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"{what} not found: {p}")
    try:
        table = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, keep_default_na=False)
    except Exception as exc:  # pandas/pyarrow raise many kinds for a broken file
        raise TrainingError(f"{what} cannot be read as a table: {p} ({exc})") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise TrainingError(
            f"{what} {p} lacks the column(s) {', '.join(missing)}; "
            f"it has: {', '.join(map(str, table.columns))}"
        )
    return table


def read_safetensors(path: str | os.PathLike, what: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a safetensors file; ``what`` names it in the error if it is missing or
    unreadable (checking its contents is the caller's)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"{what} not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as handle:
            return handle.metadata() or {}, {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises its own error kinds for damaged files
        raise TrainingError(f"{p} is not a readable {what} ({exc})") from exc
