"""Face similarity for the likeness stage: find the face, align it, compare its embedding with the references.

* Finding faces: :func:`find_face` is the ONE place the stage detects faces. The detector is the
  extension's, chosen by the options the ``faces`` stage takes too (:mod:`training.detector_options`: YuNet
  by default, an insightface pack by choice); the same object makes the identities, through
  ``IdentityEncoder``. ``find_face`` takes the largest face of an image, as the extension's face capture
  does; with ``assume_cropped`` the whole image is the face (drawn or pre-cropped data).
* Alignment to the 112 x 112 input: where the detector gives the five landmarks (eyes, nose tip, mouth
  corners; YuNet and the insightface packs' SCRFD both do), the similarity transform (least squares,
  Umeyama) onto ArcFace's template (insightface's ``arcface_dst``,
  python-package/insightface/utils/face_align.py) — the standard ArcFace protocol. Where it gives a box only,
  the square around the box with :data:`BOX_MARGIN` each side (about the template's framing).
* The model: the face-recognition model the ``faces`` stage uses too (:mod:`training.arcface`).
* Scores: embeddings are L2-normalised; an image's face similarity is its cosine with the normalised mean of
  the person's reference embeddings (:func:`training.arcface.reference_centre`); the references' ceiling is
  each reference against the mean of the others (:func:`leave_one_out`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from lib_magicnaming.face import CropConfig, center_square, cut_square, square_around
from training.arcface import ARCFACE_SIZE, reference_centre

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
"""Where ArcFace models expect the left eye, right eye, nose tip, left and right mouth corner (112 px)."""
BOX_MARGIN = 0.1
"""Without landmarks: the square around the detector's box, this share of its side added each side."""


@dataclass(frozen=True)
class FoundFace:
    """The face an image's likeness is measured on. ``box`` None: the whole image is the face."""

    box: tuple[float, float, float, float] | None
    landmarks: np.ndarray | None
    faces_found: int | None


def find_face(image: Image.Image, detector, assume_cropped: bool) -> FoundFace | None:
    """The largest face of ``image`` by the extension's detector, or None when it finds none.

    The one place this stage detects faces: a detector is anything with ``detect(image)`` -> faces largest
    first, each with ``box`` and, where the detector gives them, ``landmarks`` (5 x 2).
    """
    if assume_cropped:
        return FoundFace(None, None, None)
    faces = detector.detect(image)
    if not faces:
        return None
    face = faces[0]
    landmarks = getattr(face, "landmarks", None)
    points = None if landmarks is None else np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    return FoundFace(tuple(float(v) for v in face.box), points, len(faces))


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 rotation + uniform scale + shift taking ``source`` points closest to ``target`` (Umeyama)."""
    src, dst = np.asarray(source, np.float64), np.asarray(target, np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.diag([1.0, float(np.sign(np.linalg.det(u) * np.linalg.det(vt))) or 1.0])
    rotation = u @ d @ vt
    scale = float((s * np.diag(d)).sum() / max((src_c**2).sum() / len(src), 1e-12))
    shift = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, shift[:, None]])


def recognition_crop(image: Image.Image, face: FoundFace) -> Image.Image:
    """The 112 x 112 RGB input of ``face``: landmark-aligned, else the box's square, else the centre."""
    if face.landmarks is not None:
        import cv2

        matrix = similarity_transform(face.landmarks, ARCFACE_TEMPLATE)
        pixels = cv2.warpAffine(np.asarray(image.convert("RGB")), matrix, (ARCFACE_SIZE, ARCFACE_SIZE))
        return Image.fromarray(pixels)
    crop = CropConfig(size=ARCFACE_SIZE, margin=BOX_MARGIN, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    square = (
        center_square(image.size) if face.box is None else square_around(face.box, BOX_MARGIN, image.size)
    )
    return cut_square(image, square, crop.validate())


def leave_one_out(embeddings: np.ndarray) -> list[float]:
    """Each reference's cosine with the normalised mean of the OTHER references (the face model's ceiling)."""
    if len(embeddings) < 2:
        return []
    return [
        float(embeddings[i] @ reference_centre(np.delete(embeddings, i, axis=0)))
        for i in range(len(embeddings))
    ]
