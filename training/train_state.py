"""The training checkpoint format: where a run keeps its checkpoints, how they are written, read and resumed.

A checkpoint (``RUN/checkpoints/last.safetensors``, and ``step-<8 digits>.safetensors`` every
``--checkpoint-every`` steps) is one safetensors file, never pickle: the head's tensors (``head.<name>``),
AdamW's per-parameter state (``optim.<parameter index>.<key>``), the step and the CPU (and CUDA) RNG state
as tensors; the settings, the head config and run facts as JSON metadata. Restoring all of it gives the same
weights as a run that was never interrupted, on the same hardware and world size. The ``eval`` and
``export`` stages read the head from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from lib_magicnaming.atomic import write_atomic
from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.model import HeadConfig, NameHead
from training.common import TrainingError, read_safetensors
from training.train_settings import TrainSettings

STATE_FORMAT = "magicnaming-training-state"
STATE_VERSION = "1"
CHECKPOINTS_FOLDER = "checkpoints"
LAST_CHECKPOINT = "last.safetensors"
RESUME_FIXED_SETTINGS = (
    "batch_size", "hidden_dim", "norm", "act", "val_fraction", "seed", "steps", "lr", "warmup_steps"
)
"""Settings a resumed run must share with its checkpoint (the others may change between sessions)."""


def last_checkpoint(run_folder: str | Path) -> Path:
    """The run's newest checkpoint (where a resume and the later stages look by default)."""
    return Path(run_folder) / CHECKPOINTS_FOLDER / LAST_CHECKPOINT


def step_checkpoint(run_folder: str | Path, step: int) -> Path:
    """The checkpoint kept for ``step``."""
    return Path(run_folder) / CHECKPOINTS_FOLDER / f"step-{step:08d}.safetensors"


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
    p = Path(path)
    metadata, tensors = read_safetensors(p, "training checkpoint")
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


def resume_from(
    path: Path, s: TrainSettings, head: NameHead, optimizer: torch.optim.Optimizer, device: torch.device
) -> int:
    """Continue a run from checkpoint ``path``: its head weights, AdamW state and RNG state replace the fresh
    ones; returns the step it was written after. Settings in RESUME_FIXED_SETTINGS that differ from the
    checkpoint's are refused before anything is restored."""
    state = load_state(path)
    changed = [k for k in RESUME_FIXED_SETTINGS if getattr(state.settings, k) != getattr(s, k)]
    if changed:
        raise TrainingError(f"cannot resume from {path}: settings changed: {', '.join(changed)}")
    head.load_state_dict(state.head_state)
    restore_optimizer(optimizer, head, state.optimizer_tensors)
    torch.random.set_rng_state(state.rng["cpu"])
    if "cuda" in state.rng and device.type == "cuda":
        torch.cuda.set_rng_state(state.rng["cuda"], device)
    return state.step


def head_weights_hash(head: NameHead) -> str:
    """sha256 over the head's tensors (sorted names, float32 bytes): equal on ranks that agree."""
    digest = hashlib.sha256()
    for key, value in sorted(head.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
