"""What every face detector gives (:class:`DetectedFace`) and what face capture needs of one
(:class:`FaceDetector`).

Every detector reports faces in photo pixels with the box in corner form ``(x1, y1, x2, y2)`` (each detector
converts its own convention) and landmarks in the same order: the eye on the image's left, the other eye,
the nose tip, the mouth corner on the image's left, the other one. The crop rule that turns a face into
tower input lives in :mod:`lib_magicnaming.face` and reads only the box, so it is the same for every
detector. Each detector has a :attr:`~FaceDetector.name` that encoder checkpoints record (which detector
made their training crops). The detectors: :mod:`lib_magicnaming.yunet_detector` (the default),
:mod:`lib_magicnaming.insightface_detector` (opt-in); the setting that chooses one:
:mod:`lib_magicnaming.face_detectors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

NO_DETECTOR = "none"
"""The detector name recorded when photos were used as face crops without detection."""


@dataclass
class DetectedFace:
    """One face in photo pixels: corner-form box, detector score, and 5 landmarks (None if the model has
    none)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def area(self) -> float:
        """Box area in pixels."""
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


class FaceDetector(Protocol):
    """What face capture needs of a detector."""

    @property
    def name(self) -> str | None:
        """What encoder checkpoints record, e.g. ``yunet-2023mar`` (None before an auto choice is made)."""

    @property
    def provider(self) -> str | None:
        """What runs the model, once loaded (e.g. ``CPUExecutionProvider``)."""

    def load(self) -> FaceDetector:
        """Make the model ready (may download YuNet's file); DetectorUnavailable saying what to do."""

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        """Faces in an RGB photo, largest first."""

    def describe(self) -> str:
        """One line for the status: what will run, or ``none: <what to do>``; never loads or downloads."""


def largest_first(faces: list[DetectedFace]) -> list[DetectedFace]:
    """``faces`` ordered by box area, largest first (the order :meth:`FaceDetector.detect` returns)."""
    return sorted(faces, key=lambda f: f.area, reverse=True)


def bgr_pixels(image: Image.Image) -> np.ndarray:
    """A photo as the contiguous H x W x 3 uint8 BGR array OpenCV and insightface take."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
