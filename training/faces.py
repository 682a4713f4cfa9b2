"""Stage ``faces``: face crops with the extension's own detector and crop code, filtered by identity.

1. Capture: every image of the images table goes through ``lib_magicnaming.face.capture_face`` (the same
   detectors, square margin crop and size the extension uses on a user's photo; the crop settings come from
   ``--crop-size``/``--margin``). The detector options are the ones ``likeness`` takes too
   (:mod:`training.detector_options`): YuNet by default (``cv2.FaceDetectorYN``, MIT licence: its file from
   ``--yunet-file``, or ``detectors/`` of ``--models-dir``, fetched there with ``--allow-download``), or an
   insightface pack with ``--detector insightface --insightface-root`` (non-commercial packs).
   ``--assume-cropped`` uses each image's centred square instead of running a detector (synthetic or
   pre-cropped data). Unreadable images, images without a face and faces too small
   for a crop are skipped and reported. ``faces.json`` records the detector and crop rule, and the features
   stage carries them into the encoder checkpoint, so the extension can say when it detects faces otherwise.
2. Identity consistency (optional, the paper's steps 5 and 7): the face-recognition model ``likeness`` uses
   too (:mod:`training.arcface`: an ArcFace-signature ONNX model, ``--recognition-model FILE`` or ``pack``
   for the pack's ``w600k_r50.onnx``, run as insightface runs it) embeds every crop (resized to the model's
   input; not landmark-aligned). Per identity the reference is the
   normalised mean embedding; crops whose cosine similarity to it is below ``--consistency-threshold`` are
   dropped, then the reference is recomputed once from the kept crops and the test repeated. The threshold
   and model are recorded in ``faces.json``.
3. Identities with ``--drop-at-most`` (default 5, as in the paper) kept crops or fewer are dropped.

Output folder: ``crops/<image_id>.png``, ``faces.csv`` (image_id, name, crop_path, source_path, score,
consistency), ``faces.json`` (settings, counts) and ``skipped.json``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lib_magicnaming.detector_interface import NO_DETECTOR, FaceDetector
from lib_magicnaming.errors import FaceError
from lib_magicnaming.face import CropConfig, capture_face, load_image
from training.arcface import ArcFaceModel, load_recognition_model, reference_centre
from training.common import SkipReport, TrainingError, read_json, read_table, write_json, write_table
from training.detector_options import add_detector_arguments, build_detector

PAPER_DROP_AT_MOST = 5
"""The paper drops identities with 5 images or fewer."""
FACES_COLUMNS = ["image_id", "name", "crop_path", "source_path", "score", "consistency"]


def capture_all(
    images: pd.DataFrame,
    out: Path,
    detector: FaceDetector | None,
    crop: CropConfig,
    assume_cropped: bool,
    report: SkipReport,
) -> pd.DataFrame:
    """Crop every image (skipping and reporting failures); crops are saved as PNG under ``out/crops``."""
    crops_dir = out / "crops"
    crops_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id, name, path in images[["image_id", "name", "path"]].itertuples(index=False):
        target = crops_dir / f"{image_id}.png"
        try:
            face = capture_face(str(path), detector, crop, assume_cropped=assume_cropped)
        except FaceError as exc:
            report.add(str(path), str(exc))
            continue
        face.image.save(target)
        rows.append(
            {
                "image_id": image_id,
                "name": name,
                "crop_path": str(target),
                "source_path": str(path),
                "score": face.score if face.score is not None else float("nan"),
                "consistency": float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=FACES_COLUMNS)


@dataclass(frozen=True)
class ConsistencyRule:
    """Keep a crop when its cosine similarity to its identity's mean embedding is >= threshold."""

    threshold: float
    rounds: int = 2


def consistent_mask(embeddings: np.ndarray, rule: ConsistencyRule) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, similarity to the final reference) for one identity's embeddings."""
    keep = np.ones(len(embeddings), dtype=bool)
    sims = np.ones(len(embeddings))
    for _ in range(rule.rounds):
        if not keep.any():
            break
        sims = embeddings @ reference_centre(embeddings[keep])
        keep = sims >= rule.threshold
    return keep, sims


def filter_consistency(
    faces: pd.DataFrame, model: ArcFaceModel, rule: ConsistencyRule, report: SkipReport
) -> pd.DataFrame:
    """Drop crops that do not look like the rest of their identity; record each crop's similarity."""
    kept = []
    for _name, group in faces.groupby("name", sort=True):
        crops = [load_image(path) for path in group["crop_path"]]
        keep, sims = consistent_mask(model.embed(crops), rule)
        group = group.assign(consistency=sims)
        for path, sim in zip(group["source_path"][~keep], sims[~keep], strict=True):
            report.add(
                str(path), f"face does not match its identity (similarity {sim:.3f} < {rule.threshold})"
            )
        kept.append(group[keep])
    return pd.concat(kept, ignore_index=True) if kept else faces.iloc[0:0]


def drop_small_identities(faces: pd.DataFrame, drop_at_most: int, report: SkipReport) -> pd.DataFrame:
    """Drop identities with ``drop_at_most`` crops or fewer (each reported)."""
    counts = faces["name"].value_counts()
    small = sorted(counts[counts <= drop_at_most].index)
    for name in small:
        report.add(name, f"only {counts[name]} usable face(s), need more than {drop_at_most}")
    return faces[~faces["name"].isin(small)].reset_index(drop=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the ``faces`` stage."""
    parser.add_argument("--images", required=True, help="images table (images stage)")
    parser.add_argument("--out", required=True, help="output folder (crops/, faces.csv, faces.json)")
    add_detector_arguments(parser)
    parser.add_argument("--crop-size", type=int, default=CropConfig().size)
    parser.add_argument("--margin", type=float, default=CropConfig().margin)
    parser.add_argument(
        "--recognition-model",
        help="ArcFace ONNX model for the consistency filter, or 'pack' (the pack's own)",
    )
    parser.add_argument("--consistency-threshold", type=float, default=0.4, help="minimum cosine similarity")
    parser.add_argument(
        "--drop-at-most",
        type=int,
        default=PAPER_DROP_AT_MOST,
        help="drop identities with this many crops or fewer (paper: 5)",
    )
    parser.add_argument("--cpu", action="store_true", help="run onnxruntime on the CPU only")


def recorded_crop(faces_table: str | Path) -> dict | None:
    """The crop record (``crop`` of faces.json: size, margin, rule, detector) of the faces stage that wrote
    ``faces_table``; None for a faces table without faces.json beside it."""
    report = Path(faces_table).parent / "faces.json"
    if not report.is_file():
        return None
    crop = read_json(report, "faces report").get("crop")
    return crop if isinstance(crop, dict) else None


def run(args: argparse.Namespace) -> pd.DataFrame:
    """Run the ``faces`` stage; writes crops, faces.csv, faces.json and skipped.json."""
    out = Path(args.out)
    images = read_table(args.images, "images table", columns=("image_id", "name", "path"))
    crop = CropConfig(size=args.crop_size, margin=args.margin).validate()
    detector = build_detector(args, use_cuda=not args.cpu)
    model = load_recognition_model(args, use_cuda=not args.cpu) if args.recognition_model else None
    crop = replace(crop, detector=NO_DETECTOR if detector is None else detector.name)
    report = SkipReport("faces")
    faces = capture_all(images, out, detector, crop, args.assume_cropped, report)
    captured = len(faces)
    rule = None
    if model is not None and not faces.empty:
        rule = ConsistencyRule(args.consistency_threshold)
        faces = filter_consistency(faces, model, rule, report)
    faces = drop_small_identities(faces, args.drop_at_most, report)
    if faces.empty:
        raise TrainingError(f"no identity kept more than {args.drop_at_most} faces; {report.summary()}")
    write_table(out / "faces.csv", faces)
    report.write(out / "skipped.json")
    write_json(
        out / "faces.json",
        {
            "images": len(images),
            "captured": captured,
            "kept": len(faces),
            "identities": int(faces["name"].nunique()),
            "crop": crop.to_dict(),
            "assume_cropped": bool(args.assume_cropped),
            "detector": None if detector is None else {
                "name": detector.name, "provider": detector.provider,
            },
            "consistency": None
            if rule is None
            else {
                "model": str(model.path),
                "threshold": rule.threshold,
                "rounds": rule.rounds,
                "reference": "normalised mean embedding of the identity's crops",
            },
            "drop_at_most": args.drop_at_most,
        },
    )
    print(
        f"faces: kept {len(faces)} of {len(images)} images, {faces['name'].nunique()} identities -> {out}; "
        f"{report.summary()}"
    )
    return faces
