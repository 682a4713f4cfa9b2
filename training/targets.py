"""Stage ``targets``: F_ID of every name, with SDXL's two text encoders, exactly as the WebUI encodes it.

The name alone is the prompt. It goes through CLIP-L (hidden layer 11 of 12, no final layer norm) and bigG
(penultimate layer, no final norm) with the WebUI's own chunking and padding (see
``training.text_encoders``); the two are concatenated per token to (77, 2048) and rows 1..8 are kept
(``lib_magicnaming.namespace``, method.md decision 1). Weights: local safetensors files of the two open_clip
models (``--clip-l-weights``, ``--clip-g-weights``: open_clip CLIP checkpoints), or the SDXL checkpoint the
WebUI itself loads (``--sdxl-checkpoint``: its Hugging Face-format CLIP-L is renamed to open_clip's layout,
its bigG is already open_clip's), or open_clip's hub with ``--allow-download``.

Output: a safetensors file with ``f_id`` (N, 8, 2048) float32 and metadata (names in order, the towers).
Names holding text the WebUI's prompt parser would interpret (brackets, colons, BREAK, AND) are skipped and
reported: their WebUI encoding would not be the name's.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lib_magicnaming.atomic import write_atomic
from lib_magicnaming.constants import SDXL_CONTEXT_WIDTH
from lib_magicnaming.namespace import encode_names_f_id
from training.common import SkipReport, TrainingError, read_json, read_safetensors, read_table
from training.text_encoders import (
    SDXL_CLIP_G,
    SDXL_CLIP_L,
    SDXLTextEncoder,
    TextTowerSpec,
    load_text_tower,
    sdxl_checkpoint_text_states,
)

TARGETS_KEY = "f_id"
_PROMPT_SYNTAX_RE = re.compile(r"[()\[\]<>:\\]|\bBREAK\b|\bAND\b")


@dataclass
class Targets:
    """Name embeddings in a fixed order: ``f_id[i]`` is ``names[i]``'s F_ID."""

    names: list[str]
    f_id: torch.Tensor
    towers: list[dict]

    def index(self) -> dict[str, int]:
        """Name -> row."""
        return {n: i for i, n in enumerate(self.names)}


def prompt_syntax_problem(name: str) -> str | None:
    """Why the WebUI would not encode ``name`` as plain text, or None when it would."""
    match = _PROMPT_SYNTAX_RE.search(name)
    return None if match is None else f"holds WebUI prompt syntax {match.group(0)!r}"


def compute_targets(encoder: SDXLTextEncoder, names: list[str], batch_size: int = 64) -> torch.Tensor:
    """(N, 8, width) F_ID of each name, batch by batch."""
    parts = [
        encode_names_f_id(encoder.encode, names[i : i + batch_size]) for i in range(0, len(names), batch_size)
    ]
    return torch.cat(parts).float().cpu()


def save_targets(path: str | Path, targets: Targets) -> Path:
    """Write targets atomically as safetensors (tensor ``f_id``, names and towers in the metadata)."""
    from safetensors.torch import save_file

    metadata = {"names": json.dumps(targets.names), "towers": json.dumps(targets.towers)}
    tensors = {TARGETS_KEY: targets.f_id.contiguous()}
    return write_atomic(path, lambda temp: save_file(tensors, str(temp), metadata=metadata))


def load_targets(path: str | Path) -> Targets:
    """Read a targets file; errors name the file and what is wrong with it."""
    p = Path(path)
    metadata, tensors = read_safetensors(p, "targets file")
    try:
        f_id = tensors[TARGETS_KEY]
        names = json.loads(metadata["names"])
        towers = json.loads(metadata.get("towers", "[]"))
    except (KeyError, ValueError) as exc:  # a missing tensor or entry, or broken JSON
        raise TrainingError(f"{p} is not a targets file written by the targets stage ({exc})") from exc
    if f_id.ndim != 3 or f_id.shape[0] != len(names):
        raise TrainingError(f"{p}: f_id has shape {tuple(f_id.shape)} for {len(names)} names")
    return Targets(names=names, f_id=f_id.float(), towers=towers)


def load_sdxl_text_encoder(
    specs: list[TextTowerSpec],
    weights: list[str | None],
    *,
    sdxl_checkpoint: str | None = None,
    allow_download: bool = False,
    random_seed: int | None = None,
    device: str = "cpu",
) -> SDXLTextEncoder:
    """Both text towers: from an SDXL checkpoint, per-tower files, the hub, or random (``random_seed``)."""
    states = sdxl_checkpoint_text_states(sdxl_checkpoint) if sdxl_checkpoint else {}
    towers = [
        (
            spec,
            load_text_tower(
                spec,
                weights=w,
                state=states.get(spec.name),
                allow_download=allow_download,
                random_seed=None if random_seed is None else random_seed + i,
            ),
        )
        for i, (spec, w) in enumerate(zip(specs, weights, strict=True))
    ]
    return SDXLTextEncoder(towers, device=device)


def build_targets(
    encoder: SDXLTextEncoder, names: list[str], report: SkipReport, batch_size: int = 64
) -> Targets:
    """Targets for the names that encode as plain text; the others go to ``report``."""
    usable = []
    for name in names:
        problem = prompt_syntax_problem(name)
        if problem:
            report.add(name, problem)
        else:
            usable.append(name)
    if not usable:
        raise TrainingError("no name can be encoded as plain prompt text")
    f_id = compute_targets(encoder, usable, batch_size)
    return Targets(names=usable, f_id=f_id, towers=[spec.to_dict() for spec, _ in encoder.towers])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the ``targets`` stage."""
    parser.add_argument("--names", required=True, help="names table (names stage) or images table")
    parser.add_argument(
        "--sdxl-checkpoint", help="an SDXL .safetensors checkpoint: both text encoders from it"
    )
    parser.add_argument("--clip-l-weights", help="safetensors of open_clip ViT-L-14 (openai)")
    parser.add_argument(
        "--clip-g-weights", help="safetensors of open_clip ViT-bigG-14 (or an SDXL checkpoint)"
    )
    parser.add_argument("--allow-download", action="store_true", help="fetch missing weights with open_clip")
    parser.add_argument(
        "--text-towers", help="JSON {towers: [2 text-tower specs]} (default: SDXL's CLIP-L, bigG)"
    )
    parser.add_argument("--random-text-towers", type=int, metavar="SEED", help="random weights (tests, demo)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", required=True, help="targets file to write (.safetensors)")


def run(args: argparse.Namespace) -> Targets:
    """Run the ``targets`` stage; writes the targets file and <out>.skipped.json."""
    report = SkipReport("targets")
    names = sorted(set(read_table(args.names, "names table", columns=("name",))["name"].astype(str)))
    specs = [SDXL_CLIP_L, SDXL_CLIP_G]
    if args.text_towers:
        try:
            specs = [TextTowerSpec(**d) for d in read_json(args.text_towers, "text-tower specs")["towers"]]
        except (KeyError, TypeError) as exc:
            raise TrainingError(
                f"{args.text_towers} must be JSON {{\"towers\": [text-tower specs]}} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    encoder = load_sdxl_text_encoder(
        specs,
        [args.clip_l_weights, args.clip_g_weights],
        sdxl_checkpoint=args.sdxl_checkpoint,
        allow_download=args.allow_download,
        random_seed=args.random_text_towers,
        device=args.device,
    )
    targets = build_targets(encoder, names, report, args.batch_size)
    if targets.f_id.shape[-1] != SDXL_CONTEXT_WIDTH:
        raise TrainingError(
            f"the text towers give width {targets.f_id.shape[-1]}, SDXL needs {SDXL_CONTEXT_WIDTH}"
        )
    save_targets(args.out, targets)
    report.write(f"{args.out}.skipped.json")
    print(f"targets: {len(targets.names)} names -> {args.out}; {report.summary()}")
    return targets
