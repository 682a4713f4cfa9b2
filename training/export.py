"""Stage ``export``: the extension's encoder checkpoint (format v1) for ``models/magicnaming/encoder/``.

Writes with ``lib_magicnaming.checkpoint.save_encoder_checkpoint``: the trained head, the towers and crop the
features were computed with (from the features manifest; real towers carry the fingerprint of their weights,
which the extension checks its tower files against), and name-space statistics of all target
embeddings (mean, and a rank-``--rank`` PCA basis with the standard deviation along each axis) for sampling
fictional identities. ``--include-towers`` stores the tower weights in the file too (needed for random test
towers; real towers are found by the extension in its models folder). The training summary (steps, losses,
data sizes, eval metrics when ``RUN/eval-<split>.json`` exist, and the F_ID rule) goes into the metadata.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lib_magicnaming.checkpoint import save_encoder_checkpoint
from lib_magicnaming.model import EncoderConfig
from lib_magicnaming.namespace import fit_namespace_stats
from training.common import TrainingError, read_json
from training.features import MANIFEST, RANDOM_TOWERS_FILE
from training.targets import load_targets
from training.train_state import last_checkpoint, load_state

F_ID_RULE = (
    "rows 1..8 of the name encoded alone as the WebUI encodes an SDXL prompt: CLIP-L hidden layer 11 "
    "(no final norm, end-token padding) + bigG penultimate layer (no final norm, zero padding)"
)


def tower_states(features_folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Random tower weights the features stage saved, as {tower: state}."""
    from safetensors.torch import load_file

    path = features_folder / RANDOM_TOWERS_FILE
    if not path.is_file():
        raise TrainingError(f"--include-towers: {path} not found (only random-tower features save weights)")
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path)).items():
        tower, param = key.split(".", 1)
        states.setdefault(tower, {})[param] = value
    return states


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the ``export`` stage."""
    parser.add_argument("--run", required=True, help="run folder of the train stage")
    parser.add_argument("--features", required=True, help="features folder (towers and crop come from it)")
    parser.add_argument("--targets", required=True, help="targets file (name-space statistics)")
    parser.add_argument("--checkpoint", help="default: RUN/checkpoints/last.safetensors")
    parser.add_argument("--rank", type=int, default=64, help="name-space basis rank")
    parser.add_argument("--include-towers", action="store_true", help="store the tower weights in the file")
    parser.add_argument("--out", required=True, help="the encoder checkpoint to write (.safetensors)")


def run(args: argparse.Namespace) -> str:
    """Run the ``export`` stage; returns the checkpoint's short hash."""
    folder, features = Path(args.run), Path(args.features)
    state = load_state(args.checkpoint or last_checkpoint(folder))
    base = EncoderConfig.from_dict(read_json(features / MANIFEST, "features manifest")["encoder"])
    config = EncoderConfig(
        towers=base.towers, head=state.head_config, crop=base.crop, feature_norm=base.feature_norm
    ).validate()
    targets = load_targets(args.targets)
    summary = {
        "step": state.step,
        "settings": vars(state.settings),
        "f_id_rule": F_ID_RULE,
        "names": len(targets.names),
        "text_towers": targets.towers,
    }
    for name in ("summary.json", "eval-val.json", "eval-train.json"):
        if (folder / name).is_file():
            summary[name.removesuffix(".json")] = read_json(folder / name, name)
    short_hash = save_encoder_checkpoint(
        args.out,
        config=config,
        head_state=state.head_state,
        namespace_stats=fit_namespace_stats(targets.f_id, args.rank),
        training_summary=summary,
        tower_states=tower_states(features) if args.include_towers else None,
    )
    print(f"export: {args.out} (hash {short_hash}); copy it into the WebUI's models/magicnaming/encoder/")
    return short_hash
