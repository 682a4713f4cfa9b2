"""The face-detector setting: which detector captures faces (``auto``, ``yunet`` or ``insightface``).

- ``yunet``: :class:`~lib_magicnaming.yunet_detector.YuNetDetector`, OpenCV's YuNet (MIT licence), which
  needs nothing but OpenCV and one small file.
- ``insightface``: :class:`~lib_magicnaming.insightface_detector.InsightFaceDetector`, the SCRFD detector of
  an insightface model pack (non-commercial packs; insightface and onnxruntime installed by choice).
- ``auto`` (the default): :class:`AutoDetector`, YuNet when its file is there or can be fetched, otherwise an
  installed insightface pack.

:func:`make_detector` builds the detector a setting names. Every detector gives faces as
:mod:`lib_magicnaming.detector_interface` defines them, so the crop rule is the same whichever runs.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from PIL import Image

from lib_magicnaming.detector_interface import DetectedFace, FaceDetector
from lib_magicnaming.errors import DetectorUnavailable, EncoderError
from lib_magicnaming.insightface_detector import DEFAULT_PACK, InsightFaceDetector
from lib_magicnaming.yunet_detector import YuNetDetector

logger = logging.getLogger("magicnaming")

DETECTOR_CHOICES = ("auto", "yunet", "insightface")
"""What the face-detector setting may say (see :func:`make_detector`)."""
DEFAULT_DETECTOR = "auto"


def validate_detector_choice(choice: Any) -> str:
    """Return ``choice`` if it is one of DETECTOR_CHOICES; EncoderError naming the value otherwise."""
    value = choice.strip().lower() if isinstance(choice, str) else choice
    if value not in DETECTOR_CHOICES:
        choices = ", ".join(DETECTOR_CHOICES)
        raise EncoderError(f"MagicNaming face detector must be one of {choices}, got {choice!r}")
    return value


class AutoDetector:
    """YuNet when its file is there or can be fetched, otherwise an installed insightface pack.

    The choice is made on the first :meth:`load` and kept by this object (a new detector chooses again).
    """

    def __init__(self, yunet: YuNetDetector, insightface: InsightFaceDetector | None = None):
        self.yunet = yunet
        self.insightface = insightface
        self._chosen: FaceDetector | None = None
        self._lock = threading.Lock()

    @property
    def chosen(self) -> FaceDetector | None:
        """The detector in use (None before the first load)."""
        return self._chosen

    @property
    def name(self) -> str | None:
        """The chosen detector's name."""
        return None if self._chosen is None else self._chosen.name

    @property
    def provider(self) -> str | None:
        """The chosen detector's provider."""
        return None if self._chosen is None else self._chosen.provider

    def load(self) -> AutoDetector:
        """Choose and load: YuNet (found or downloaded), else the insightface pack; DetectorUnavailable if
        neither can run (the message says how to get YuNet)."""
        with self._lock:
            if self._chosen is None:
                self._chosen = self._choose()
        return self

    def _choose(self) -> FaceDetector:
        try:
            return self.yunet.load()
        except DetectorUnavailable as error:
            if self.insightface is not None and self.insightface.is_usable():
                logger.warning("MagicNaming: YuNet cannot run (%s); using the insightface pack '%s' instead",
                               error, self.insightface.pack)
                return self.insightface.load()
            raise

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        """Faces found by the chosen detector, largest first."""
        self.load()
        return self._chosen.detect(image)

    def describe(self) -> str:
        """What runs (or will), or ``none: ...``."""
        if self._chosen is not None:
            return self._chosen.describe()
        yunet = self.yunet.describe()
        if not yunet.startswith("none:") or self.insightface is None or not self.insightface.is_usable():
            return yunet
        return self.insightface.describe()


def make_detector(
    choice: str,
    *,
    detectors_dir: str | os.PathLike,
    allow_download: bool = True,
    insightface_root: str | os.PathLike | None = None,
    pack: str = DEFAULT_PACK,
    use_cuda: bool = True,
) -> FaceDetector:
    """The detector a setting names: ``yunet``, ``insightface`` (needs ``insightface_root``) or ``auto``."""
    choice = validate_detector_choice(choice)
    insightface = (
        None if insightface_root is None else InsightFaceDetector(insightface_root, pack, use_cuda=use_cuda)
    )
    if choice == "insightface":
        if insightface is None:
            raise DetectorUnavailable("the insightface detector needs the insightface root folder")
        return insightface
    yunet = YuNetDetector(detectors_dir, allow_download=allow_download)
    return yunet if choice == "yunet" else AutoDetector(yunet, insightface)
