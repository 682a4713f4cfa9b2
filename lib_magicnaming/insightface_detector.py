"""The insightface pack detector (opt-in): SCRFD from an insightface model pack, through insightface and
onnxruntime.

A pack (buffalo_l, antelopev2, ...) is a folder of ONNX files under ``<insightface root>/models/<pack>/``
(the WebUI's ``models/insightface``); insightface's packs are for non-commercial research only. Here: the
pack-name rule, whether insightface is installed, the detector, and what to do when the pack is missing.
Faces are reported as every detector reports them (:mod:`lib_magicnaming.detector_interface`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lib_magicnaming.detector_interface import DetectedFace, bgr_pixels, largest_first
from lib_magicnaming.errors import DetectorUnavailable, FaceError

INSIGHTFACE_PREFIX = "insightface:"
DEFAULT_PACK = "buffalo_l"
"""The insightface model pack other WebUI face extensions use (its detector is SCRFD det_10g)."""
PACK_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
"""An insightface pack is a folder name under ``<insightface root>/models``: no path separators, not ``.`` or
``..``; use it with ``fullmatch`` (``$`` would let a trailing newline through)."""
DETECTOR_FILE_HINTS = ("det_", "scrfd", "retinaface")
"""Pack files tried first as the detection model (buffalo_l: det_10g.onnx, antelopev2: scrfd_10g_bnkps)."""
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


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


def onnx_providers(use_cuda: bool) -> list[str]:
    """Providers to ask of onnxruntime: CUDA first when wanted and onnxruntime offers it, CPU always."""
    import onnxruntime

    if use_cuda and CUDA_PROVIDER in onnxruntime.get_available_providers():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


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
        """Providers asked of onnxruntime (:func:`onnx_providers`)."""
        return onnx_providers(self.use_cuda)

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
        boxes, points = self._model.detect(bgr_pixels(image), max_num=0)
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
        return largest_first(faces)

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
