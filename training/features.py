"""Stage ``features``: the frozen CLIP towers' features of every face crop, in resumable shards.

Each shard is a safetensors file ``shard-NNNNN.safetensors`` holding ``features`` (n, 2048: the two towers'
projected embeddings, normalised and concatenated exactly as ``lib_magicnaming.model.NameEncoder.features``
computes them; bf16 on CUDA, float32 on CPU unless ``--dtype`` says otherwise), ``identity`` (n, int64:
index into the manifest's ``names``) and ``row`` (n, int64: the row of the faces table). Shards are written
atomically and skipped when already present, so an interrupted run resumes where it stopped. Under torchrun
rank r computes shards r, r + world, r + 2 * world, ... on its own GPU.

Feeding the GPU: one DataLoader per rank runs over all of its pending shards (workers start once and keep
prefetching across shard boundaries); workers decode crops into uint8 batches of ``LOADER_BATCH`` (a quarter
of float32's bytes, and the first batch is ready after a few crops, not a whole GPU batch), pinned memory
carries them to the GPU, where they are normalised (``face.normalise_crop_pixels``: the same float32
arithmetic as the extension's ``pixels_from_crop``) and gathered into batches of ``--batch-size``. Features
stay on the GPU until their shard is complete: one synchronisation per shard, not per batch. The towers run
through the fused forward (``lib_magicnaming.vit_forward``), and under ``torch.compile`` with ``--compile on``
(``auto``: on a CUDA device when the rank has at least ``COMPILE_AUTO_MIN_CROPS`` crops to do, since
compiling costs tens of seconds once); the features equal what open_clip's own forward computes within bf16
rounding.

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
from lib_magicnaming.face import CropConfig, crop_pixels_uint8, normalise_crop_pixels
from lib_magicnaming.factory import build_encoder
from lib_magicnaming.model import EncoderConfig, NameEncoder
from lib_magicnaming.towers import recorded_fingerprint, tower_fingerprint, with_fingerprint
from lib_magicnaming.vit_forward import CompiledBlocks
from training.common import SkipReport, TrainingError, read_json, read_table, write_json
from training.distributed import Place, current_place

MANIFEST = "manifest.json"
CROP_FROM_FACES = ("margin", "rule", "detector")
"""What the crop record takes from the faces stage (size, mean and std belong to the towers)."""
RANDOM_TOWERS_FILE = "random_towers.safetensors"
FACES_COLUMNS = ("image_id", "name", "crop_path")
LOADER_BATCH = 32
"""Crops one DataLoader worker decodes into one batch (GPU batches gather several)."""
COMPILE_AUTO_MIN_CROPS = 50_000
"""``--compile auto`` compiles the tower blocks on CUDA from this many crops per rank: compiling costs tens of
seconds once and gains about a tenth of the extraction time (measured on an H200: README "Performance")."""


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
    """Face crops of some faces-table rows as uint8 (3, S, S) RGB (normalised on the device); unreadable files
    give ``ok = False`` instead of an exception."""

    def __init__(self, paths: list[str], rows: list[int], crop: CropConfig):
        self.paths, self.rows, self.crop = paths, rows, crop

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool, int]:
        try:
            with Image.open(self.paths[index]) as image:
                pixels = crop_pixels_uint8(image, self.crop)
            return pixels, True, self.rows[index]
        except Exception:  # any decoding failure means "unreadable": reported, not fatal
            return torch.zeros(3, self.crop.size, self.crop.size, dtype=torch.uint8), False, self.rows[index]


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


@dataclass
class FeatureStage:
    """Everything one rank needs to extract its shards (made by :func:`prepare`)."""

    args: argparse.Namespace
    place: Place
    folder: Path
    encoder: NameEncoder
    plan: ShardPlan
    manifest: dict
    paths: list[str]
    identities: list[int]
    report: SkipReport

    def pending_shards(self) -> list[int]:
        """This rank's shards not written yet."""
        mine = self.plan.shards_of_rank(self.place.rank, self.place.world)
        return [shard for shard in mine if not shard_path(self.folder, shard).is_file()]


@dataclass
class ExtractStats:
    """What :func:`extract` did: shards written, crops read, seconds from the first batch asked for to the
    last shard written (loader start-up included; tower building not)."""

    shards: int = 0
    crops: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Crops per second end to end."""
        return self.crops / max(self.seconds, 1e-9)


def _batches_by_shard(plan: ShardPlan, shards: list[int], batch: int) -> tuple[list[list[int]], list[int]]:
    """Loader batches (indices into the rows of ``shards`` in order) and the shard of each; none crosses a
    shard boundary."""
    batches, owner, start = [], [], 0
    for shard in shards:
        count = len(plan.rows_of(shard))
        for first in range(0, count, batch):
            batches.append(list(range(start + first, start + min(count, first + batch))))
            owner.append(shard)
        start += count
    return batches, owner


@torch.inference_mode()
def extract(stage: FeatureStage) -> ExtractStats:
    """Compute and write this rank's pending shards; unreadable crops are left out and reported."""
    args, place, encoder = stage.args, stage.place, stage.encoder
    shards = stage.pending_shards()
    stats = ExtractStats()
    if not shards:
        return stats
    rows = [row for shard in shards for row in stage.plan.rows_of(shard)]
    dataset = CropDataset([stage.paths[r] for r in rows], rows, encoder.config.crop)
    batches, owner = _batches_by_shard(stage.plan, shards, min(LOADER_BATCH, args.batch_size))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=args.workers,
        pin_memory=place.device.type == "cuda",
        prefetch_factor=4 if args.workers > 0 else None,
    )
    dtype = compute_dtype(args.dtype, place.device)
    started = time.perf_counter()
    gatherer = _ShardGatherer(encoder, place.device, dtype, args.batch_size)
    shard_started, done = started, 0
    for index, (pixels, ok, batch_rows) in enumerate(loader):
        for row in batch_rows[~ok].tolist():
            stage.report.add(stage.paths[row], "unreadable image")
        if not bool(ok.all()):
            pixels, batch_rows = pixels[ok], batch_rows[ok]
        gatherer.add(pixels.to(place.device, non_blocking=True), batch_rows)
        if index + 1 == len(batches) or owner[index + 1] != owner[index]:
            shard = owner[index]
            feats, kept = gatherer.finish()
            ids = torch.tensor([stage.identities[int(r)] for r in kept], dtype=torch.long)
            write_shard(shard_path(stage.folder, shard), feats, ids, kept)
            done += 1
            count = len(stage.plan.rows_of(shard))
            stats.crops += count
            now = time.perf_counter()
            # one plain line per shard: readable in a log file, unlike a progress bar
            print(f"features: rank {place.rank} shard {shard} ({done}/{len(shards)}): {len(kept)} crops, "
                  f"{count / max(1e-9, now - shard_started):.1f} images/s", flush=True)
            shard_started = now
    stats.shards, stats.seconds = done, time.perf_counter() - started
    return stats


class _ShardGatherer:
    """Gathers loader batches (uint8, on the device) into GPU batches and one shard's features, which stay on
    the device until :meth:`finish` (one synchronisation per shard)."""

    def __init__(self, encoder: NameEncoder, device: torch.device, dtype: torch.dtype, batch_size: int):
        self.encoder, self.device, self.dtype, self.batch_size = encoder, device, dtype, batch_size
        self.pending: list[torch.Tensor] = []
        self.features: list[torch.Tensor] = []
        self.rows: list[torch.Tensor] = []

    def add(self, pixels: torch.Tensor, rows: torch.Tensor) -> None:
        if pixels.shape[0]:
            self.pending.append(pixels)
            self.rows.append(rows)
        if sum(p.shape[0] for p in self.pending) >= self.batch_size:
            self._run()

    def _run(self) -> None:
        if not self.pending:
            return
        uint8 = self.pending[0] if len(self.pending) == 1 else torch.cat(self.pending)
        self.pending = []
        pixels = normalise_crop_pixels(uint8, self.encoder.config.crop).to(self.dtype)
        self.features.append(self.encoder.features(pixels).to(self.dtype))

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This shard's features (CPU) and faces-table rows; resets for the next shard."""
        self._run()
        if self.features:
            feats = torch.cat(self.features).cpu()
            rows = torch.cat(self.rows).long()
        else:
            feats = torch.zeros(0, self.encoder.config.feature_dim, dtype=self.dtype)
            rows = torch.zeros(0, dtype=torch.long)
        self.features, self.rows = [], []
        return feats, rows


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
    parser.add_argument(
        "--compile", choices=("auto", "on", "off"), default="auto",
        help=f"torch.compile the tower blocks (auto: on CUDA from {COMPILE_AUTO_MIN_CROPS:,} crops per rank; "
             "falls back to eager, with a warning, where compiling fails)",
    )


def prepare(args: argparse.Namespace) -> FeatureStage:
    """Read the faces table, build the towers, check and write the manifest: everything before extraction."""
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
    stage = FeatureStage(
        args=args, place=place, folder=folder, encoder=encoder, plan=plan, manifest=manifest,
        paths=faces["crop_path"].astype(str).tolist(),
        identities=[identity_index[n] for n in faces["name"].astype(str)],
        report=SkipReport("features"),
    )
    if use_compile(getattr(args, "compile", "off"), place.device, stage):
        encoder.block_fn = CompiledBlocks()
    return stage


def use_compile(choice: str, device: torch.device, stage: FeatureStage) -> bool:
    """Whether to compile the tower blocks: ``on``/``off``, or ``auto`` (CUDA and enough crops to pay)."""
    if choice != "auto":
        return choice == "on"
    pending = sum(len(stage.plan.rows_of(shard)) for shard in stage.pending_shards())
    return device.type == "cuda" and pending >= COMPILE_AUTO_MIN_CROPS


def run(args: argparse.Namespace) -> dict:
    """Run the ``features`` stage on this rank's shards; rank 0 writes the manifest."""
    stage = prepare(args)
    stats = extract(stage)
    stage.report.write(stage.folder / f"skipped-rank{stage.place.rank}.json")
    rate = f" in {stats.seconds:.1f} s ({stats.images_per_second:.1f} images/s)" if stats.crops else ""
    print(f"features: rank {stage.place.rank}/{stage.place.world} wrote {stats.shards} shard(s) to "
          f"{stage.folder}{rate}; {stage.report.summary()}")
    return stage.manifest


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

