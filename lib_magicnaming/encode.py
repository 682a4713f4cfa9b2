"""Photos -> identity: face capture, the name encoder, averaging in name space, sampling new people.

:class:`IdentityEncoder` owns one encoder checkpoint. It loads lazily (the checkpoint when first needed, the
CLIP towers on the first photo), runs on CUDA in float16 when torch sees a GPU and on CPU in float32
otherwise, and remembers encoded photos by content hash in a bounded LRU held on the object.

It alone decides where its weights live between calls; callers never unload it (its owner frees it all with
:meth:`IdentityEncoder.unload` when it replaces it). Once loaded, the weights stay in CPU memory (the master,
optionally page-locked: ``pin_memory``) as long as the encoder lives; each call that runs the towers copies
them to the GPU and drops that copy afterwards (never copied back: they are frozen). With ``keep_loaded`` they
live on the GPU instead (RAM freed) and the warm encode is replayed from CUDA graphs
(:mod:`lib_magicnaming.cuda_graphs`); ``lowvram`` never keeps them there and moves one tower at a time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from lib_magicnaming.checkpoint import EncoderCheckpoint, file_sha256, load_encoder_checkpoint
from lib_magicnaming.cuda_graphs import GraphedForward
from lib_magicnaming.detector_interface import FaceDetector
from lib_magicnaming.errors import EncoderError, FaceError
from lib_magicnaming.face import (
    FaceCrop,
    ImageSource,
    capture_face,
    detector_note,
    load_image,
    pixels_from_crop,
)
from lib_magicnaming.identity import Identity
from lib_magicnaming.insightface_detector import DEFAULT_PACK, InsightFaceDetector
from lib_magicnaming.lru import LRUCache
from lib_magicnaming.model import NameEncoder
from lib_magicnaming.namespace import average_embeddings, sample_namespace
from lib_magicnaming.placement import WeightPlacement

DEFAULT_CACHE_SIZE = 64
"""Encoded photos remembered per encoder (each entry: an 8 x 2048 float32 tensor and a 224 px crop)."""


def photo_hash(photo: ImageSource) -> str:
    """sha256 hex of a photo's bytes (file bytes for bytes/paths; mode, size and pixels for PIL images)."""
    if isinstance(photo, Image.Image):
        digest = hashlib.sha256(f"{photo.mode}:{photo.width}x{photo.height}:".encode())
        digest.update(photo.tobytes())
        return digest.hexdigest()
    if isinstance(photo, bytes | bytearray):
        return hashlib.sha256(bytes(photo)).hexdigest()
    if not isinstance(photo, str | os.PathLike):
        raise FaceError(f"a photo must be bytes, a file path or a PIL image, not {type(photo).__name__}")
    try:
        return file_sha256(photo)
    except OSError as err:
        raise FaceError(f"cannot read photo {photo}: {err.strerror or err}") from err


@dataclass
class PhotoReport:
    """What happened to one photo. ``distance_from_mean``: Frobenius distance of its embedding from the
    average (0 for a single photo); ``cached``: it was not re-encoded."""

    index: int
    photo_hash: str
    face_found: bool
    crop: FaceCrop | None
    faces_found: int | None
    notes: list[str]
    distance_from_mean: float | None = None
    cached: bool = False
    error: str | None = None


@dataclass
class EncodeResult:
    """The averaged identity embedding (ID_TOKENS x SDXL_CONTEXT_WIDTH, CPU float32) and per-photo reports."""

    embedding: torch.Tensor
    per_photo: list[PhotoReport]
    encoder_hash: str
    device: str
    dtype: str

    @property
    def photo_hashes(self) -> list[str]:
        """Content hashes of the photos that went into the embedding, in order."""
        return [r.photo_hash for r in self.per_photo if r.face_found]

    @property
    def thumbnail(self) -> Image.Image | None:
        """The first used face crop (for the identity's thumbnail)."""
        return next((r.crop.image for r in self.per_photo if r.crop is not None), None)


@dataclass
class _CachedPhoto:
    embedding: torch.Tensor
    crop: FaceCrop


@dataclass
class EncoderStats:
    """Counters for tests and the UI: forward passes through the towers and photos they encoded."""

    tower_batches: int = 0
    photos_encoded: int = 0
    cache_hits: int = 0
    loads: int = 0


class IdentityEncoder:
    """One encoder checkpoint, ready to turn photos into identities (thread-safe).

    ``models_dir``: the extension's models folder (tower files under ``towers/``). ``detector``: the face
    detector (:mod:`lib_magicnaming.face_detectors`; without one only face crops can be encoded); or
    ``insightface_root`` (the folder holding ``models/<pack>``) for an insightface pack detector. A photo
    whose face was found by another detector than the checkpoint's training crops gets a note in its report.
    ``device``: None picks CUDA when
    available. ``keep_loaded`` keeps the weights on the GPU between calls (and replays CUDA graphs there
    unless ``cuda_graphs`` is False); ``lowvram`` forbids it and moves one tower at a time. ``pin_memory``
    keeps the CPU master in page-locked memory (CUDA only; faster copies to the GPU, RAM the system cannot
    page out). ``random_towers`` is for benchmarks only (towers with random weights). ``dtype`` overrides the
    towers' dtype (default float16 on CUDA, float32 on CPU; the head always runs in float32).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | EncoderCheckpoint,
        *,
        models_dir: str | os.PathLike | None = None,
        insightface_root: str | os.PathLike | None = None,
        pack: str = DEFAULT_PACK,
        detector: FaceDetector | None = None,
        device: str | torch.device | None = None,
        keep_loaded: bool = False,
        lowvram: bool = False,
        pin_memory: bool = False,
        cuda_graphs: bool = True,
        allow_download: bool = False,
        cache_size: int = DEFAULT_CACHE_SIZE,
        random_towers: bool = False,
        dtype: torch.dtype | None = None,
    ):
        self._checkpoint = checkpoint if isinstance(checkpoint, EncoderCheckpoint) else None
        self._checkpoint_path = None if self._checkpoint else checkpoint
        self.models_dir = models_dir
        if detector is None and insightface_root is not None:
            detector = InsightFaceDetector(insightface_root, pack)
        self.detector = detector
        self.device = torch.device(device) if device is not None else _default_device()
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.lowvram = lowvram
        self.keep_loaded = keep_loaded and not lowvram
        self.pin_memory = pin_memory and self.device.type == "cuda" and not self.keep_loaded
        self.allow_download = allow_download
        self.random_towers = random_towers
        self.stats = EncoderStats()
        self._cache: LRUCache[tuple, _CachedPhoto] = LRUCache(cache_size)
        self._model: NameEncoder | None = None
        self._placements: dict[str, WeightPlacement] = {}
        self._graphed = GraphedForward(enabled=cuda_graphs)
        self._lock = threading.RLock()

    # --- loading -----------------------------------------------------------------------------------------

    @property
    def checkpoint(self) -> EncoderCheckpoint:
        """The validated checkpoint (read on first use)."""
        with self._lock:
            if self._checkpoint is None:
                self._checkpoint = load_encoder_checkpoint(self._checkpoint_path)
            return self._checkpoint

    @property
    def encoder_hash(self) -> str:
        """The checkpoint's short hash (recorded in identities made from photos)."""
        return self.checkpoint.short_hash

    @property
    def is_loaded(self) -> bool:
        """Whether the weights are in memory (CPU master, or on the GPU with ``keep_loaded``)."""
        return self._model is not None

    @property
    def weights_device(self) -> str | None:
        """Where the weights are between calls: 'cpu' (the master), the device (``keep_loaded``), or None."""
        if self._model is None:
            return None
        return str(next(self._model.parameters()).device.type)

    def load(self) -> NameEncoder:
        """Build the model now (towers in ``self.dtype``, head float32); idempotent.

        The weights go to CPU memory (pinned with ``pin_memory``), or, with ``keep_loaded``, to the device.
        """
        with self._lock:
            if self._model is None:
                model = self.checkpoint.build_model(
                    models_dir=self.models_dir, allow_download=self.allow_download,
                    random_towers=self.random_towers, tower_dtype=self.dtype,
                ).eval()
                pin = self.pin_memory and not self.keep_loaded
                parts = {name: model.towers[name] for name in model.towers} | {"head": model.head}
                placements = {name: WeightPlacement(part, pin=pin) for name, part in parts.items()}
                if self.keep_loaded:
                    for placement in placements.values():
                        placement.move_for_good(self.device)
                    placements = {}
                self._model, self._placements = model, placements
                self.stats.loads += 1
            return self._model

    def unload(self) -> None:
        """Free everything: graphs, the GPU copy, the CPU master (and its page lock). For the encoder's owner
        when it replaces the encoder; a later call loads the model again. The photo cache and the checkpoint
        are kept."""
        with self._lock:
            self._graphed.clear()
            for placement in self._placements.values():
                placement.release()
            self._placements = {}
            self._model = None
            _free_cuda(self.device)

    @property
    def graphs(self) -> GraphedForward:
        """The CUDA graphs of the warm encode (captures, replays, and why it runs eagerly, if it does)."""
        return self._graphed

    def _drop_device_copy(self) -> None:
        for placement in self._placements.values():
            placement.drop_device_copy()
        _free_cuda(self.device)

    # --- encoding ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, ID_TOKENS, SDXL_CONTEXT_WIDTH) CPU float32."""
        with self._lock:
            model = self.load()
            self.stats.tower_batches += 1
            self.stats.photos_encoded += int(pixels.shape[0])
            try:
                return self._run_model(model, pixels)
            finally:
                if self._placements:
                    self._drop_device_copy()

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._model(pixels).float()

    def _run_model(self, model: NameEncoder, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.float()
        if self.keep_loaded or self.device.type == "cpu":
            # eager (said once) where graphs cannot run
            return self._graphed(self._forward, pixels, self.device)
        if self.lowvram and self.device.type == "cuda":
            features = self._features_one_tower_at_a_time(model, pixels)
        else:
            for placement in self._placements.values():
                placement.to_device(self.device)
            features = model.features(pixels.to(self.device))
        self._placements["head"].to_device(self.device)
        return model.head_only(features).float().cpu()

    def _features_one_tower_at_a_time(self, model: NameEncoder, pixels: torch.Tensor) -> torch.Tensor:
        parts = []
        for spec in model.config.towers:
            placement = self._placements[spec.name]
            placement.to_device(self.device)
            parts.append(model.tower_features(spec.name, pixels))
            placement.drop_device_copy()
            _free_cuda(self.device)
        return torch.cat(parts, dim=-1)

    def encode_photos(
        self,
        photos: Sequence[ImageSource],
        *,
        assume_cropped: bool = False,
        skip_failed: bool = False,
    ) -> EncodeResult:
        """Encode one or several photos of one person; several are averaged in name space.

        A photo without a usable face raises FaceError naming it, unless ``skip_failed`` (then it is reported
        and left out; at least one photo must work).
        """
        if not photos:
            raise FaceError("no photos given")
        crop_config = self.checkpoint.config.crop
        if not assume_cropped and self.detector is not None:
            self.detector.load()  # a detector that cannot run is one error, not one per photo
        reports: list[PhotoReport] = []
        embeddings: dict[int, torch.Tensor] = {}
        pending: list[tuple[int, tuple, FaceCrop]] = []
        for index, photo in enumerate(photos):
            report, key, crop, known = self._prepare_photo(index, photo, assume_cropped, skip_failed)
            reports.append(report)
            if known is not None:
                embeddings[index] = known.clone()
            elif crop is not None:
                pending.append((index, key, crop))
        if pending:
            pixels = torch.stack([pixels_from_crop(crop.image, crop_config) for _, _, crop in pending])
            for (index, key, crop), embedding in zip(pending, self.embed_pixels(pixels), strict=True):
                embeddings[index] = embedding.clone()
                self._cache.put(key, _CachedPhoto(embeddings[index], crop))
        if not embeddings:
            errors = "; ".join(r.error or "" for r in reports)
            raise FaceError(f"none of the photos had a usable face: {errors}")
        ordered = [embeddings[i] for i in sorted(embeddings)]
        mean = average_embeddings(ordered) if len(ordered) > 1 else ordered[0].clone()
        for report in reports:
            if report.index in embeddings:
                report.distance_from_mean = float(torch.linalg.norm(embeddings[report.index] - mean))
        return EncodeResult(
            embedding=mean, per_photo=reports, encoder_hash=self.encoder_hash,
            device=str(self.device), dtype=str(self.dtype).replace("torch.", ""),
        )

    def _prepare_photo(
        self, index: int, photo: ImageSource, assume_cropped: bool, skip_failed: bool
    ) -> tuple[PhotoReport, tuple | None, FaceCrop | None, torch.Tensor | None]:
        """Hash, cache lookup, face capture for one photo; FaceError (or a failed report) when unusable.

        Returns the report, the cache key, the crop and the cached embedding (None when it must be encoded).
        """
        content = ""
        try:
            content = photo_hash(photo)
            key = (content, assume_cropped)
            cached = self._cached(key)
            crop = cached.crop if cached is not None else capture_face(
                load_image(photo), self.detector, self.checkpoint.config.crop, assume_cropped
            )
        except FaceError as err:
            message = f"photo {index + 1}: {err}"
            if not skip_failed:
                raise FaceError(message) from err
            return PhotoReport(index, content, False, None, None, [], error=message), None, None, None
        notes = list(crop.notes)
        mismatch = detector_note(self.checkpoint.config.crop.detector, crop.detector)
        if mismatch is not None:
            notes.append(mismatch)
        report = PhotoReport(index, content, True, crop, crop.faces_found, notes, cached=cached is not None)
        return report, key, crop, None if cached is None else cached.embedding

    def _cached(self, key: tuple) -> _CachedPhoto | None:
        entry = self._cache.get(key)
        if entry is not None:
            with self._lock:
                self.stats.cache_hits += 1
        return entry

    # --- identities --------------------------------------------------------------------------------------

    def make_identity_from_photos(
        self,
        name: str,
        photos: Sequence[ImageSource],
        *,
        assume_cropped: bool = False,
        skip_failed: bool = False,
    ) -> tuple[Identity, EncodeResult]:
        """Encode ``photos`` into a new Identity (origin kind 'photos'); also returns the encode report.

        Save it with ``IdentityLibrary.save``.
        """
        result = self.encode_photos(photos, assume_cropped=assume_cropped, skip_failed=skip_failed)
        origin = {"kind": "photos", "encoder_hash": result.encoder_hash, "photo_hashes": result.photo_hashes}
        identity = Identity(name=name, embedding=result.embedding, origin=origin, thumbnail=result.thumbnail)
        return identity, result

    def sample_identity(self, seed: int, scale: float = 1.0) -> torch.Tensor:
        """A fictional person from the checkpoint's name-space statistics; the same seed, the same person."""
        stats = self.checkpoint.namespace_stats
        if stats is None:
            raise EncoderError(
                f"encoder checkpoint {self.checkpoint.path.name} has no name-space statistics to sample from"
            )
        return sample_namespace(stats, seed, scale)

    def make_sampled_identity(self, name: str, seed: int, scale: float = 1.0) -> Identity:
        """:meth:`sample_identity` as an Identity (origin kind 'sampled')."""
        embedding = self.sample_identity(seed, scale)
        origin = {
            "kind": "sampled", "encoder_hash": self.encoder_hash, "seed": int(seed), "scale": float(scale),
        }
        return Identity(name=name, embedding=embedding, origin=origin)


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _free_cuda(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
