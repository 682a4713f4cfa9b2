"""Face detectors behind one small interface: where the faces of a photo are (box, 5 landmarks, score).

- :class:`YuNetDetector` (the default): OpenCV's ``cv2.FaceDetectorYN`` running YuNet 2023mar (opencv_zoo,
  MIT licence) on OpenCV's own DNN module. It needs nothing but OpenCV >= 4.8, which the WebUI already has,
  and one 227 KiB file (:mod:`lib_magicnaming.detector_files`).
- :class:`InsightFaceDetector` (opt-in): the SCRFD detector of an insightface model pack (buffalo_l, ...)
  through insightface and onnxruntime. insightface's packs are for non-commercial research only.
- :class:`AutoDetector`: YuNet when its file is there or can be fetched, otherwise an installed insightface
  pack.

Every detector reports faces in photo pixels with the box in corner form ``(x1, y1, x2, y2)`` (YuNet's
``(x, y, w, h)`` is converted here) and landmarks in the same order: the eye on the image's left, the other
eye, the nose tip, the mouth corner on the image's left, the other one. The crop rule that turns a face into
tower input lives in :mod:`lib_magicnaming.face` and reads only the box, so it is the same for every detector.
Each detector has a :attr:`name` that encoder checkpoints record (which detector made their training crops).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from lib_magicnaming import detector_files
from lib_magicnaming.detector_files import PinnedFile, ensure_file, find_file, missing_file_message
from lib_magicnaming.errors import DetectorUnavailable, EncoderError, FaceError

logger = logging.getLogger("magicnaming")

DETECTOR_CHOICES = ("auto", "yunet", "insightface")
"""What the face-detector setting may say (see :func:`make_detector`)."""
DEFAULT_DETECTOR = "auto"

YUNET_NAME = "yunet-2023mar"
INSIGHTFACE_PREFIX = "insightface:"
NO_DETECTOR = "none"
"""The detector name recorded when photos were used as face crops without detection."""

DEFAULT_PACK = "buffalo_l"
"""The insightface model pack other WebUI face extensions use (its detector is SCRFD det_10g)."""
PACK_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
"""An insightface pack is a folder name under ``<insightface root>/models``: no path separators, not ``.`` or
``..``; use it with ``fullmatch`` (``$`` would let a trailing newline through)."""

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

DETECTOR_FILE_HINTS = ("det_", "scrfd", "retinaface")
"""Pack files tried first as the detection model (buffalo_l: det_10g.onnx, antelopev2: scrfd_10g_bnkps)."""
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


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


def validate_detector_choice(choice: Any) -> str:
    """Return ``choice`` if it is one of DETECTOR_CHOICES; EncoderError naming the value otherwise."""
    value = choice.strip().lower() if isinstance(choice, str) else choice
    if value not in DETECTOR_CHOICES:
        choices = ", ".join(DETECTOR_CHOICES)
        raise EncoderError(f"MagicNaming face detector must be one of {choices}, got {choice!r}")
    return value


def is_pack_name(pack: Any) -> bool:
    """Whether ``pack`` is a plain folder name (the one rule for insightface pack names)."""
    return isinstance(pack, str) and PACK_NAME_RE.fullmatch(pack) is not None


def validate_pack_name(pack: Any) -> str:
    """Return ``pack`` if it is a plain folder name (:func:`is_pack_name`), else raise FaceError naming it."""
    if not is_pack_name(pack):
        raise FaceError(
            f"bad insightface pack name {pack!r}: a pack is a folder name under models/insightface/models "
            f"such as {DEFAULT_PACK} (letters, digits, '_', '.', '-')"
        )
    return pack


def _sorted_by_area(faces: list[DetectedFace]) -> list[DetectedFace]:
    return sorted(faces, key=lambda f: f.area, reverse=True)


def _bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


# ------------------------------------------------------------------------------------------------ YuNet


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
        bgr = _bgr(image)
        height, width = bgr.shape[:2]
        for scale in yunet_scales((width, height)):
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            pixels = bgr if size == (width, height) else cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            rows = self._run(pixels, size)
            faces = [self._face(row, width / size[0], height / size[1]) for row in rows]
            if faces:
                return _sorted_by_area(faces)
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


# ----------------------------------------------------------------------------------------- insightface


def insightface_installed() -> bool:
    """Whether insightface and an onnxruntime build are installed (without importing them)."""
    return all(importlib.util.find_spec(module) is not None for module in ("insightface", "onnxruntime"))


INSIGHTFACE_MISSING = (
    "insightface (with onnxruntime) is not installed. install.py installs it at the next WebUI start when "
    "the face detector setting is 'insightface' or MAGICNAMING_INSTALL_INSIGHTFACE=1 is set (its console "
    "lines say what happened); or choose the 'auto' detector to use YuNet, which needs nothing installed"
)


class InsightFaceDetector:
    """An insightface detection model from a pack folder, run with onnxruntime (loaded on first use).

    The pack lives in ``<insightface_root>/models/<pack>/`` (the WebUI's ``models/insightface``). The model
    goes through insightface's own loader (``insightface.model_zoo.get_model``, 0.7.3 and 2.x); CUDA is used
    when onnxruntime offers it and it actually starts, CPU otherwise; :attr:`provider` says which one ran.
    """

    def __init__(
        self,
        insightface_root: str | os.PathLike,
        pack: str = DEFAULT_PACK,
        *,
        use_cuda: bool = True,
        det_size: int = 640,
        det_thresh: float = 0.5,
    ):
        validate_pack_name(pack)
        self.insightface_root = Path(insightface_root)
        self.pack = pack
        self.use_cuda = use_cuda
        self.det_size = det_size
        self.det_thresh = det_thresh
        self._model: Any = None
        self._provider: str | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """``insightface:<pack>``."""
        return INSIGHTFACE_PREFIX + self.pack

    @property
    def pack_dir(self) -> Path:
        """Folder the pack's .onnx files are in."""
        return self.insightface_root / "models" / self.pack

    @property
    def provider(self) -> str | None:
        """The onnxruntime provider the session actually runs on (None before loading)."""
        return self._provider

    def is_installed(self) -> bool:
        """Whether the pack folder holds any .onnx file."""
        return self.pack_dir.is_dir() and any(self.pack_dir.glob("*.onnx"))

    def is_usable(self) -> bool:
        """Whether the pack is there and insightface with onnxruntime is installed."""
        return self.is_installed() and insightface_installed()

    def requested_providers(self) -> list[str]:
        """Providers asked of onnxruntime: CUDA first when allowed and available, CPU always."""
        import onnxruntime

        available = onnxruntime.get_available_providers()
        if self.use_cuda and CUDA_PROVIDER in available:
            return [CUDA_PROVIDER, CPU_PROVIDER]
        return [CPU_PROVIDER]

    def load(self) -> InsightFaceDetector:
        """Create the onnxruntime session now (idempotent); DetectorUnavailable if the pack or insightface is
        missing, FaceError if the pack is unusable."""
        with self._lock:
            if self._model is None:
                self._model, self._provider = self._load_detection_model()
        return self

    def _load_detection_model(self) -> tuple[Any, str]:
        if not self.is_installed():
            raise DetectorUnavailable(missing_pack_message(self.insightface_root, self.pack))
        if not insightface_installed():
            raise DetectorUnavailable(f"No face detector: {INSIGHTFACE_MISSING}")
        try:
            from insightface.model_zoo import model_zoo
        except ImportError as error:
            raise DetectorUnavailable(
                f"insightface is installed but does not import ({error}); reinstall it, or choose the 'auto' "
                "face detector to use YuNet"
            ) from error
        providers = self.requested_providers()
        files = sorted(
            self.pack_dir.glob("*.onnx"), key=lambda p: (not _looks_like_detector(p.name), p.name)
        )
        for path in files:
            try:
                model = model_zoo.get_model(str(path), providers=providers)
            except Exception as err:  # noqa: BLE001 - onnxruntime/insightface raise many kinds
                raise FaceError(f"insightface cannot load {path}: {type(err).__name__}: {err}") from err
            if model is not None and getattr(model, "taskname", None) == "detection":
                ctx_id = 0 if CUDA_PROVIDER in providers else -1
                model.prepare(ctx_id, input_size=(self.det_size, self.det_size), det_thresh=self.det_thresh)
                return model, model.session.get_providers()[0]
        raise FaceError(f"the insightface pack {self.pack_dir} holds no face detection model (det_*.onnx)")

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        """Faces in an RGB image, largest first."""
        self.load()
        boxes, points = self._model.detect(_bgr(image), max_num=0)
        boxes = np.asarray(boxes).reshape(-1, 5)
        points = None if points is None else np.asarray(points).reshape(len(boxes), 5, 2)
        faces = [
            DetectedFace(
                box=tuple(float(v) for v in row[:4]),
                score=float(row[4]),
                landmarks=None if points is None else tuple((float(x), float(y)) for x, y in points[i]),
            )
            for i, row in enumerate(boxes)
        ]
        return _sorted_by_area(faces)

    def describe(self) -> str:
        """What will run, or ``none: ...`` with what to do."""
        if self.provider is not None:
            return f"{self.name} on {self.provider}"
        if not insightface_installed():
            return "none: " + INSIGHTFACE_MISSING
        if not self.is_installed():
            return "none: " + missing_pack_message(self.insightface_root, self.pack)
        return f"{self.name} (loads on first use)"


def _looks_like_detector(filename: str) -> bool:
    return any(hint in filename.lower() for hint in DETECTOR_FILE_HINTS)


def missing_pack_message(insightface_root: str | os.PathLike, pack: str) -> str:
    """What to do when the detector pack is not installed."""
    where = Path(insightface_root) / "models" / pack
    return (
        f"No face detector: the insightface pack '{pack}' is not installed at {where}. Put the pack's .onnx "
        f"files there (the '{pack}' pack from insightface's model releases, the same folder other WebUI face "
        "extensions use; non-commercial use only), choose the 'auto' face detector to use YuNet, or tick the "
        "'face crop already (skip detection)' box to use the photo as given."
    )


# ----------------------------------------------------------------------------------------------- auto


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
