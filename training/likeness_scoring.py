"""The likeness stage's metrics for one person: face similarity and CLIP-T of each image, references' ceiling.

Every image gets a record (row, prompt, seed, file, whether a face was found, face similarity, CLIP-T);
images without a face keep their record with ``face_found: false`` and no face similarity, so they are
counted, not dropped. The references row holds each reference photo's cosine with the normalised mean of
the other references (leave one out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lib_magicnaming.face import load_image
from training.arcface import load_recognition_model, reference_centre
from training.clip_score import DEFAULT_CLIP, ClipModelSpec, ClipScorer, weights_file
from training.common import write_json
from training.face_similarity import find_face, leave_one_out, recognition_crop
from training.likeness_report import PEOPLE_FOLDER, ROWS, SHEETS_FOLDER, person_rows, write_contact_sheet
from training.prompt_conditioning import fill

SCORE_BATCH = 16


def clip_spec(args: argparse.Namespace) -> ClipModelSpec:
    """``--clip-config``'s spec, else OpenAI's CLIP ViT-L/14."""
    return ClipModelSpec.from_file(args.clip_config) if args.clip_config else DEFAULT_CLIP


def check_metric_inputs(args: argparse.Namespace) -> None:
    """The recognition model loads and has ArcFace's signature; CLIP-T's weights exist (before any work)."""
    load_recognition_model(args, use_cuda=False)
    weights_file(clip_spec(args), args.clip_weights, args.models_dir, args.clip_random, args.allow_download)


class Scorer:
    """The face detector, the recognition model and the CLIP model, loaded once."""

    def __init__(self, args: argparse.Namespace, detector, device):
        self.face_model = load_recognition_model(args, use_cuda=device.type == "cuda")
        spec = clip_spec(args)
        self.clip_spec = spec
        self.clip = ClipScorer.load(
            spec,
            weights=args.clip_weights,
            models_dir=args.models_dir,
            random_seed=args.clip_random,
            allow_download=args.allow_download,
            device=device,
        )
        self.detector, self.assume_cropped = detector, args.assume_cropped

    def faces(self, images: list) -> list[tuple[np.ndarray, int | None] | None]:
        """(embedding, faces in the image) per image, None where no face was found."""
        found = []
        for image in images:
            face = find_face(image, self.detector, self.assume_cropped)
            found.append(None if face is None else (recognition_crop(image, face), face.faces_found))
        crops = [f[0] for f in found if f is not None]
        embeddings = iter(self.face_model.embed(crops)) if crops else iter(())
        return [None if f is None else (next(embeddings), f[1]) for f in found]


def reference_records(photos: tuple[Path, ...], scorer: Scorer) -> tuple[list[dict], np.ndarray | None]:
    """The references row's records and the normalised mean of their embeddings (None: no face in any)."""
    faces = scorer.faces([load_image(str(p)) for p in photos])
    embeddings = np.array([f[0] for f in faces if f is not None])
    ceiling = iter(leave_one_out(embeddings))
    records = [
        {
            "row": "references",
            "file": str(photo),
            "face_found": face is not None,
            "face_sim": next(ceiling, None) if face is not None else None,
            "clip_t": None,
        }
        for photo, face in zip(photos, faces, strict=True)
    ]
    return records, reference_centre(embeddings) if len(embeddings) else None


def image_records(
    jobs: list, prompts: list[str], subject: str, centre, scorer: Scorer, out: Path
) -> list[dict]:
    """One record per generated image of ``jobs``."""
    records = []
    for start in range(0, len(jobs), SCORE_BATCH):
        batch = jobs[start : start + SCORE_BATCH]
        images = [load_image(str(job.path)) for job in batch]
        texts = [fill(prompts[job.prompt_index], subject) for job in batch]
        faces = scorer.faces(images)
        clip_t = scorer.clip.scores(images, texts)
        for job, text, face, clip in zip(batch, texts, faces, clip_t, strict=True):
            records.append(
                {
                    "row": job.row,
                    "prompt_index": job.prompt_index,
                    "prompt": text,
                    "seed": job.seed,
                    "file": job.path.relative_to(out).as_posix(),
                    "face_found": face is not None,
                    "faces_in_image": None if face is None else face[1],
                    "face_sim": None if face is None or centre is None else float(face[0] @ centre),
                    "clip_t": clip,
                }
            )
    return records


def score_person(
    person, identity_notes: list[str], identity_hash: str, jobs: list, args, prompts, scorer, out
):
    """Score one person, write ``people/<folder>.json`` and ``sheets/<folder>.png``; returns the result."""
    references, centre = reference_records(person.photos, scorer)
    records = image_records(jobs, prompts, args.subject, centre, scorer, out)
    sheet = out / SHEETS_FOLDER / f"{person.folder}.png"
    rows = [("references", list(person.photos))]
    rows += [
        (ROWS[row], [j.path for j in jobs if j.row == row]) for row in ROWS if any(j.row == row for j in jobs)
    ]
    write_contact_sheet(sheet, rows, args.sheet_columns)
    result = {
        "name": person.name,
        "folder": person.folder,
        "real_name": person.real_name,
        "identity_hash": identity_hash,
        "references": {
            "photos": len(person.photos),
            "with_face": sum(1 for r in references if r["face_found"]),
            "identity_notes": identity_notes,
            "records": references,
        },
        "rows": person_rows(records + references),
        "images": records,
        "sheet": sheet.relative_to(out).as_posix(),
    }
    if centre is None:
        result["references"]["problem"] = "no face found in any reference photo: face similarity not computed"
    write_json(out / PEOPLE_FOLDER / f"{person.folder}.json", result)
    return result
