"""YuNet 2023mar, the default face detector: OpenCV's ``cv2.FaceDetectorYN`` on OpenCV's own DNN module.

YuNet (opencv_zoo ``models/face_detection_yunet``, MIT licence) needs nothing but OpenCV >= 4.8, which the
WebUI already has, and one 227 KiB file (:mod:`lib_magicnaming.detector_files`: where it is looked for, its
pinned download). It gives a box, a score and the 5 landmarks of each face; the box, YuNet's ``(x, y, w, h)``,
is reported in corner form as every detector reports it (:mod:`lib_magicnaming.detector_interface`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lib_magicnaming import detector_files
from lib_magicnaming.detector_files import PinnedFile, ensure_file, find_file, missing_file_message
from lib_magicnaming.detector_interface import DetectedFace, bgr_pixels, largest_first
from lib_magicnaming.errors import DetectorUnavailable, FaceError

YUNET_NAME = "yunet-2023mar"
YUNET_MIN_OPENCV = (4, 8)
"""YuNet 2023mar's outputs (cls/obj/bbox/kps per stride) are decoded by cv2.FaceDetectorYN from OpenCV 4.8."""
YUNET_SIDES = (640, 320, 160)
"""The photo's longest side at each detection try (never enlarged); the next is tried when none found a face.
YuNet finds faces of about 10 to 300 px, so a face filling a large photo is found at a smaller side."""
YUNET_SCORE_THRESHOLD = 0.6
YUNET_NMS_THRESHOLD = 0.3
YUNET_TOP_K = 5000
RETRY_DOWNLOAD_AFTER_S = 300.0
"""After a failed download the same error is given without trying the network again for this long."""


def opencv_version() -> tuple[int, int] | None:
    """(major, minor) of the cv2 module here, or None when OpenCV is not installed."""
    if importlib.util.find_spec("cv2") is None:
        return None
    import cv2

    parts = re.findall(r"\d+", cv2.__version__)[:2]
    return (int(parts[0]), int(parts[1])) if len(parts) == 2 else (0, 0)


def _opencv_problem() -> str | None:
    version = opencv_version()
    if version is None:
        return ("OpenCV (the cv2 module) is not installed; the WebUI normally ships it: pip install "
                "opencv-python-headless in the WebUI's environment")
    if version < YUNET_MIN_OPENCV:
        needed = ".".join(map(str, YUNET_MIN_OPENCV))
        return (f"OpenCV {version[0]}.{version[1]} is too old for YuNet 2023mar (cv2.FaceDetectorYN needs "
                f"OpenCV {needed} or newer): update opencv-python in the WebUI's environment")
    return None


def yunet_scales(size: tuple[int, int]) -> list[float]:
    """The scales a photo of ``size`` is detected at, in order: its longest side at each of YUNET_SIDES,
    never enlarged, each try smaller than the last."""
    longest = max(size)
    scales: list[float] = []
    for side in YUNET_SIDES:
        scale = min(1.0, side / longest)
        if not scales or scale < scales[-1]:
            scales.append(scale)
    return scales


class YuNetDetector:
    """YuNet 2023mar through ``cv2.FaceDetectorYN`` (OpenCV's DNN module, CPU).

    The file is ``model_path`` when given, else the pinned file (``spec``, default YuNet 2023mar) in
    ``folder``, downloaded there on the first :meth:`load` when ``allow_download``. Loading runs the model
    once on a blank image, so a file that is not a YuNet 2023mar model is refused at load, not per photo.
    The photo is scaled so that its longest side is at most 640 px (then 320, then 160 when no face was
    found: YuNet sees faces of about 10-300 px); boxes come back in photo pixels, converted from YuNet's
    (x, y, w, h) to corners.
    """

    def __init__(
        self,
        folder: str | os.PathLike | None = None,
        *,
        model_path: str | os.PathLike | None = None,
        allow_download: bool = True,
        spec: PinnedFile | None = None,
        score_threshold: float = YUNET_SCORE_THRESHOLD,
    ):
        if folder is None and model_path is None:
            raise DetectorUnavailable("YuNet needs a folder to find its file in, or the file itself")
        self.folder = None if folder is None else Path(folder)
        self.model_path = None if model_path is None else Path(model_path)
        self.allow_download = allow_download
        self.spec = spec or detector_files.YUNET_2023MAR
        self.score_threshold = score_threshold
        self._net: Any = None
        self._provider: str | None = None
        self._failure: tuple[float, DetectorUnavailable] | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """``yunet-2023mar``."""
        return YUNET_NAME

    @property
    def provider(self) -> str | None:
        """``OpenCV <version> DNN (CPU)`` once loaded."""
        return self._provider

    def find_model(self) -> Path | None:
        """The model file if it is there (a given path, or the pinned file in the folder); never downloads."""
        if self.model_path is not None:
            return self.model_path if self.model_path.is_file() else None
        return find_file(self.spec, self.folder)

    def is_installed(self) -> bool:
        """Whether OpenCV can run YuNet here and its file is present."""
        return _opencv_problem() is None and self.find_model() is not None

    def load(self) -> YuNetDetector:
        """Create the cv2 detector (idempotent), downloading the file first when it is absent and allowed."""
        with self._lock:
            if self._net is None:
                self._net = self._create(self._model_file(), self.score_threshold)
                import cv2

                self._provider = f"OpenCV {cv2.__version__} DNN (CPU)"
        return self

    def _model_file(self) -> Path:
        problem = _opencv_problem()
        if problem is not None:
            raise DetectorUnavailable(f"No face detector: {problem}")
        if self.model_path is not None:
            if not self.model_path.is_file():
                raise DetectorUnavailable(f"the YuNet model file {self.model_path} does not exist")
            return self.model_path
        if self._failure is not None and time.monotonic() - self._failure[0] < RETRY_DOWNLOAD_AFTER_S:
            found = find_file(self.spec, self.folder)  # the user may have put the file there meanwhile
            if found is None:
                raise self._failure[1]
            return found
        try:
            return ensure_file(self.spec, self.folder, allow_download=self.allow_download)
        except DetectorUnavailable as error:
            self._failure = (time.monotonic(), error)
            raise

    @staticmethod
    def _create(path: Path, score_threshold: float) -> Any:
        import cv2

        try:
            net = cv2.FaceDetectorYN.create(
                str(path), "", (64, 64), score_threshold, YUNET_NMS_THRESHOLD, YUNET_TOP_K
            )
            net.detect(np.zeros((64, 64, 3), np.uint8))  # a model without YuNet's outputs fails here
            return net
        except cv2.error as error:
            raise DetectorUnavailable(
                f"OpenCV cannot load the YuNet model {path.name}: {str(error).strip().splitlines()[-1]}"
            ) from error

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        """Faces in an RGB photo, largest first (at the first scale where any is found)."""
        import cv2

        self.load()
        bgr = bgr_pixels(image)
        height, width = bgr.shape[:2]
        for scale in yunet_scales((width, height)):
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            pixels = bgr if size == (width, height) else cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            rows = self._run(pixels, size)
            faces = [self._face(row, width / size[0], height / size[1]) for row in rows]
            if faces:
                return largest_first(faces)
        return []

    def _run(self, pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        import cv2

        with self._lock:  # setInputSize + detect change the cv2 object's state
            try:
                self._net.setInputSize(size)
                _, rows = self._net.detect(pixels)
            except cv2.error as error:
                reason = str(error).strip().splitlines()[-1]
                raise FaceError(f"YuNet failed on the photo: {reason}") from error
        return np.zeros((0, 15), np.float32) if rows is None else np.asarray(rows, np.float32).reshape(-1, 15)

    @staticmethod
    def _face(row: np.ndarray, sx: float, sy: float) -> DetectedFace:
        x, y, w, h = (float(v) for v in row[:4])
        box = (x * sx, y * sy, (x + w) * sx, (y + h) * sy)
        points = tuple((float(row[4 + 2 * k]) * sx, float(row[5 + 2 * k]) * sy) for k in range(5))
        return DetectedFace(box=box, score=float(row[14]), landmarks=points)

    def describe(self) -> str:
        """What will run, or ``none: ...`` with what to do."""
        if self.provider is not None:
            return f"{YUNET_NAME} on {self.provider}"
        problem = _opencv_problem()
        if problem is not None:
            return "none: " + problem
        if self.find_model() is not None:
            return f"{YUNET_NAME} (file present; loads on first use)"
        if self.model_path is not None:
            return f"none: the YuNet model file {self.model_path} does not exist"
        if self.allow_download:
            return (f"{YUNET_NAME} (its {self.spec.size >> 10} KiB file is downloaded into {self.folder} on "
                    f"the first face detection, from {self.spec.url})")
        return "none: " + missing_file_message(self.spec, self.folder)
