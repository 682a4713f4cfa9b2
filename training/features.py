"""Stage ``features``: the frozen CLIP towers' features of every face crop, in resumable shards.

Each shard is a safetensors file ``shard-NNNNN.safetensors`` holding ``features`` (n, 2048: the two towers'
projected embeddings, normalised and concatenated exactly as ``lib_magicnaming.model.NameEncoder.features``
computes them; bf16 on CUDA, float32 on CPU unless ``--dtype`` says otherwise), ``identity`` (n, int64:
index into the manifest's ``names``) and ``row`` (n, int64: the row of the faces table). Shards are written
atomically and skipped when already present, so an interrupted run resumes where it stopped. Under torchrun
rank r computes shards r, r + world, r + 2 * world, ... on its own GPU. Crops load in DataLoader workers with
pinned memory so the towers never wait for images.

Towers: the real ones (open_clip ViT-L/14 openai + ViT-bigG/14 laion2b_s39b_b160k) from ``--models-dir``
(lib_magicnaming.towers), or any EncoderConfig in ``--encoder-config`` (JSON: towers, crop, feature_norm),
or random weights with ``--random-towers SEED`` (tests, benchmarks; the weights are saved beside the
shards so ``export --include-towers`` can ship them). Real towers are fingerprinted once loaded
(``lib_magicnaming.towers.tower_fingerprint``: weights_sha256 + param_count, from the tensors in memory) and
the manifest's ``encoder.towers`` records it, so ``export`` writes it into the checkpoint and the extension
refuses other weights; resuming into a folder made with other tower weights is refused too. Random towers
record no fingerprint.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from lib_magicnaming.atomic import write_atomic
from lib_magicnaming.errors import MagicNamingError
from lib_magicnaming.face import CropConfig, pixels_from_crop
from lib_magicnaming.factory import build_encoder
from lib_magicnaming.model import EncoderConfig, NameEncoder
from lib_magicnaming.towers import recorded_fingerprint, tower_fingerprint, with_fingerprint
from training.common import SkipReport, TrainingError, read_json, read_table, write_json
from training.distributed import Place, current_place

MANIFEST = "manifest.json"
CROP_FROM_FACES = ("margin", "rule", "detector")
"""What the crop record takes from the faces stage (size, mean and std belong to the towers)."""
RANDOM_TOWERS_FILE = "random_towers.safetensors"
FACES_COLUMNS = ("image_id", "name", "crop_path")


def crop_as_captured(crop: CropConfig, faces_table: str | Path) -> CropConfig:
    """``crop`` with the margin, rule and detector the faces stage really used (its faces.json), so the
    checkpoint records how its training crops were made; unchanged without a faces.json."""
    from training.faces import recorded_crop

    recorded = recorded_crop(faces_table)
    if recorded is None:
        return crop
    taken = {key: recorded[key] for key in CROP_FROM_FACES if key in recorded}
    try:
        return CropConfig.from_dict({**crop.to_dict(), **taken})
    except MagicNamingError as err:
        raise TrainingError(f"the faces report beside {faces_table}: {err}") from err


class CropDataset(torch.utils.data.Dataset):
    """Face crops of some faces-table rows; unreadable files give ``ok = False`` instead of an exception."""

    def __init__(self, paths: list[str], rows: list[int], crop: CropConfig):
        self.paths, self.rows, self.crop = paths, rows, crop

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool, int]:
        try:
            with Image.open(self.paths[index]) as image:
                pixels = pixels_from_crop(image, self.crop)
            return pixels, True, self.rows[index]
        except Exception:  # any decoding failure means "unreadable": reported, not fatal
            return torch.zeros(3, self.crop.size, self.crop.size), False, self.rows[index]


@dataclass(frozen=True)
class ShardPlan:
    """Which faces-table rows go to which shard."""

    rows: int
    shard_size: int

    @property
    def count(self) -> int:
        """Number of shards."""
        return max(1, math.ceil(self.rows / self.shard_size))

    def rows_of(self, shard: int) -> range:
        """Faces-table rows of one shard."""
        return range(shard * self.shard_size, min(self.rows, (shard + 1) * self.shard_size))

    def shards_of_rank(self, rank: int, world: int) -> list[int]:
        """Rank r takes shards r, r + world, ..."""
        return list(range(rank, self.count, world))


def shard_path(folder: Path, shard: int) -> Path:
    """Where shard ``shard`` lives."""
    return folder / f"shard-{shard:05d}.safetensors"


def check_resumable(folder: Path, manifest: dict) -> None:
    """Refuse to mix shards of another faces table, tower set or shard size into this folder."""
    path = folder / MANIFEST
    if not path.is_file():
        return
    old = read_json(path, "features manifest")
    keys = ("names", "rows", "encoder", "shard_size", "random_towers_seed")
    changed = [k for k in keys if old.get(k) != manifest.get(k)]
    if changed:
        raise TrainingError(
            f"{folder} holds features of a different run (changed: {', '.join(changed)}); "
            "use a new --out folder or delete the old shards"
        )


def build_feature_encoder(args: argparse.Namespace, folder: Path, place: Place) -> NameEncoder:
    """The towers (--encoder-config or the defaults) on the rank's device, in the compute dtype."""
    if args.encoder_config:
        config = EncoderConfig.from_dict(read_json(args.encoder_config, "encoder config"))
    else:
        config = EncoderConfig().validate()
    if args.random_towers is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.random_towers)
            encoder = build_encoder(config, random_towers=True)
        if place.is_main:
            save_tower_states(folder / RANDOM_TOWERS_FILE, encoder)
    else:
        encoder = build_encoder(config, models_dir=args.models_dir, allow_download=args.allow_download)
        encoder.config = record_tower_fingerprints(encoder)
    return encoder.to(device=place.device, dtype=compute_dtype(args.dtype, place.device)).eval()


def record_tower_fingerprints(encoder: NameEncoder) -> EncoderConfig:
    """``encoder``'s config with each tower recording the fingerprint of the weights it holds (float32, as
    loaded: before any move to the compute dtype). A tower whose spec already records one was checked
    against it on load and keeps it."""
    towers = []
    for spec in encoder.config.towers:
        if recorded_fingerprint(spec) is None:
            spec = with_fingerprint(spec, tower_fingerprint(encoder.towers[spec.name].state_dict()))
        towers.append(spec)
    return replace(encoder.config, towers=towers).validate()


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on CUDA (fp16 on GPUs without bf16, before Ampere) and float32 on CPU."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def save_tower_states(path: Path, encoder: NameEncoder) -> None:
    """Save random tower weights (as ``<tower>.<param>``) so an export can carry them."""
    from safetensors.torch import save_file

    tensors = {
        f"{name}.{k}": v.detach().cpu().contiguous()
        for name, tower in encoder.towers.items()
        for k, v in tower.state_dict().items()
    }
    write_atomic(path, lambda temp: save_file(tensors, str(temp)))


def write_shard(path: Path, features: torch.Tensor, identity: torch.Tensor, rows: torch.Tensor) -> None:
    """Write one shard atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    tensors = {"features": features.contiguous(), "identity": identity, "row": rows}
    write_atomic(path, lambda temp: save_file(tensors, str(temp)))


@torch.inference_mode()
def compute_shard(
    encoder: NameEncoder,
    dataset: CropDataset,
    identities: list[int],
    args: argparse.Namespace,
    place: Place,
    report: SkipReport,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features of one shard's crops, batch by batch; unreadable crops are left out and reported."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=place.device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if args.workers > 0 else None,
    )
    dtype = compute_dtype(args.dtype, place.device)
    out_feats, out_rows = [], []
    identity_of = dict(zip(dataset.rows, identities, strict=True))
    path_of = dict(zip(dataset.rows, dataset.paths, strict=True))
    for pixels, ok, rows in loader:
        for row in rows[~ok].tolist():
            report.add(path_of[row], "unreadable image")
        if not bool(ok.any()):
            continue
        pixels = pixels[ok].to(place.device, dtype=dtype, non_blocking=True)
        out_feats.append(encoder.features(pixels).to(dtype).cpu())
        out_rows.append(rows[ok])
    if not out_feats:
        width = sum(t.embed_dim for t in encoder.config.towers)
        empty = torch.zeros(0, dtype=torch.long)
        return torch.zeros(0, width, dtype=dtype), empty, empty.clone()
    rows = torch.cat(out_rows).long()
    ids = torch.tensor([identity_of[int(r)] for r in rows], dtype=torch.long)
    return torch.cat(out_feats), ids, rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the ``features`` stage."""
    parser.add_argument("--faces", required=True, help="faces table from the faces stage")
    parser.add_argument("--out", required=True, help="folder for the manifest and shards")
    parser.add_argument("--encoder-config", help="JSON: towers, crop, feature_norm (default: real towers)")
    parser.add_argument("--models-dir", help="WebUI models/magicnaming (towers/ inside)")
    parser.add_argument("--allow-download", action="store_true", help="fetch tower weights with open_clip")
    parser.add_argument("--random-towers", type=int, metavar="SEED", help="random towers (tests, bench)")
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    parser.add_argument("--device", help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")


def run(args: argparse.Namespace) -> dict:
    """Run the ``features`` stage on this rank's shards; rank 0 writes the manifest."""
    place = current_place(args.device)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    faces = read_table(args.faces, "faces table", columns=FACES_COLUMNS)
    if faces.empty:
        raise TrainingError(f"faces table {args.faces} has no rows")
    names = sorted(set(faces["name"].astype(str)))
    identity_index = {n: i for i, n in enumerate(names)}
    plan = ShardPlan(rows=len(faces), shard_size=args.shard_size)
    encoder = build_feature_encoder(args, folder, place)
    encoder.config.crop = crop_as_captured(encoder.config.crop, args.faces)
    manifest = {
        "names": names,
        "shards": plan.count,
        "rows": len(faces),
        "faces_table": str(args.faces),
        "encoder": encoder.config.to_dict(with_head=False),
        "feature_dim": encoder.config.feature_dim,
        "random_towers_seed": args.random_towers,
    }
    manifest["shard_size"] = args.shard_size
    check_resumable(folder, manifest)
    if place.is_main:
        write_json(folder / MANIFEST, manifest)
    report = SkipReport("features")
    paths = faces["crop_path"].astype(str).tolist()
    identities = [identity_index[n] for n in faces["name"].astype(str)]
    done = 0
    mine = plan.shards_of_rank(place.rank, place.world)
    for number, shard in enumerate(mine, start=1):
        target = shard_path(folder, shard)
        if target.is_file():
            continue
        started = time.perf_counter()
        rows = list(plan.rows_of(shard))
        dataset = CropDataset([paths[r] for r in rows], rows, encoder.config.crop)
        feats, ids, kept = compute_shard(encoder, dataset, [identities[r] for r in rows], args, place, report)
        write_shard(target, feats, ids, kept)
        done += 1
        rate = len(rows) / max(1e-9, time.perf_counter() - started)
        # one plain line per shard: readable in a log file, unlike a progress bar
        print(f"features: rank {place.rank} shard {shard} ({number}/{len(mine)}): {len(kept)} crops, "
              f"{rate:.1f} images/s", flush=True)
    report.write(folder / f"skipped-rank{place.rank}.json")
    print(f"features: rank {place.rank}/{place.world} wrote {done} shard(s) to {folder}; {report.summary()}")
    return manifest


@dataclass
class FeatureSet:
    """All shards of a features folder in memory: features (N, D), identity (N,), row (N,), names."""

    features: torch.Tensor
    identity: torch.Tensor
    row: torch.Tensor
    names: list[str]
    manifest: dict


def load_features(folder: str | Path) -> FeatureSet:
    """Read every shard of a features folder; a missing shard is an error naming it."""
    from safetensors.torch import load_file

    base = Path(folder)
    manifest = read_json(base / MANIFEST, "features manifest")
    parts = []
    for shard in range(manifest["shards"]):
        path = shard_path(base, shard)
        if not path.is_file():
            raise TrainingError(f"features shard missing: {path} (run the features stage to finish)")
        parts.append(load_file(str(path)))
    return FeatureSet(
        features=torch.cat([p["features"] for p in parts]),
        identity=torch.cat([p["identity"] for p in parts]),
        row=torch.cat([p["row"] for p in parts]),
        names=list(manifest["names"]),
        manifest=manifest,
    )

