"""Face capture: find the face in a photo and cut the square, CLIP-normalised crop the towers read."""

from __future__ import annotations

import io
import logging
import math
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lib_magicnaming.errors import FaceError


def _openai_mean() -> tuple[float, float, float]:
    """OpenAI CLIP's pixel mean, open_clip's OPENAI_DATASET_MEAN (both towers were trained with it).

    Read when a CropConfig is made, not when this module is imported: importing open_clip takes seconds, and
    everything that needs no photo encoder (names, mixes, identities) works without it.
    """
    from open_clip.constants import OPENAI_DATASET_MEAN

    return tuple(OPENAI_DATASET_MEAN)


def _openai_std() -> tuple[float, float, float]:
    """OpenAI CLIP's pixel standard deviation, open_clip's OPENAI_DATASET_STD (see _openai_mean)."""
    from open_clip.constants import OPENAI_DATASET_STD

    return tuple(OPENAI_DATASET_STD)


@dataclass
class CropConfig:
    """How a face becomes tower input.

    The crop is a square centred on the detected box, of side ``max(w, h) * (1 + 2 * margin)``, resized to
    ``size`` x ``size`` and normalised with ``mean``/``std``.
    """

    size: int = 224
    margin: float = 0.25
    mean: tuple[float, float, float] = field(default_factory=_openai_mean)
    std: tuple[float, float, float] = field(default_factory=_openai_std)

    def validate(self) -> CropConfig:
        """Raise FaceError naming the bad field; return self (mean/std normalised to tuples)."""
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 16 <= self.size <= 4096:
            raise FaceError(f"crop size must be an integer in 16..4096, got {self.size!r}")
        if not _is_number(self.margin) or not 0.0 <= float(self.margin) <= 2.0:
            raise FaceError(f"crop margin must be a number in 0..2, got {self.margin!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, list | tuple) or len(value) != 3 or not all(map(_is_number, value)):
                raise FaceError(f"crop {name} must be three numbers, got {value!r}")
            setattr(self, name, tuple(float(v) for v in value))
        if min(self.std) <= 0:
            raise FaceError(f"crop std must be positive, got {self.std}")
        self.margin = float(self.margin)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (recorded in checkpoints)."""
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CropConfig:
        """Inverse of :meth:`to_dict`; unknown or missing fields raise FaceError (a recorded crop is complete,
        so a missing field means a damaged file, not "use the default")."""
        if not isinstance(data, dict):
            raise FaceError(f"crop config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise FaceError(f"crop config has unknown field(s) {unknown}")
        missing = sorted(set(cls.__dataclass_fields__) - set(data))
        if missing:
            raise FaceError(f"crop config is missing field(s) {missing}")
        return cls(**data).validate()


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


DEFAULT_PACK = "buffalo_l"
"""The insightface model pack other WebUI face extensions use (its detector is SCRFD det_10g)."""

PACK_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
"""A detector pack is a folder name under ``<insightface root>/models``: no path separators, not ``.``/``..``;
use it with ``fullmatch``."""

DEFAULT_MAX_PIXELS = 50_000_000
"""Photos above this many pixels are refused before decoding (decompression-bomb guard)."""

DETECTOR_FILE_HINTS = ("det_", "scrfd", "retinaface")
"""Pack files tried first as the detection model (buffalo_l: det_10g.onnx, antelopev2: scrfd_10g_bnkps)."""

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

ImageSource = Union[bytes, bytearray, str, os.PathLike, Image.Image]

logger = logging.getLogger("magicnaming")


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a photo (bytes, a path, or a PIL image) to a new RGB PIL image, EXIF orientation applied.

    Raises FaceError for what is not an image, a truncated file, or a photo over ``max_pixels`` pixels
    (checked from the header, before decoding, so decompression bombs cost nothing).
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels, "the image")
        return source.convert("RGB") if source.mode != "RGB" else source.copy()
    label, data = _read_source(source)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise FaceError(f"{label} is too large to decode safely (decompression bomb guard): {err}") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise FaceError(f"{label} is not an image file this program can read") from err
    _check_pixels(image.size, max_pixels, label)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as err:
        raise FaceError(f"{label} is too large to decode safely (decompression bomb guard): {err}") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise FaceError(f"{label} is damaged or truncated and cannot be decoded ({err})") from err
    return image.convert("RGB")


def _read_source(source: Any) -> tuple[str, bytes]:
    if isinstance(source, bytes | bytearray):
        return "the uploaded photo", bytes(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            return str(path), path.read_bytes()
        except OSError as err:
            raise FaceError(f"cannot read photo {path}: {err.strerror or err}") from err
    raise FaceError(f"a photo must be bytes, a file path or a PIL image, not {type(source).__name__}")


def _check_pixels(size: tuple[int, int], max_pixels: int, label: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise FaceError(f"{label} has no pixels ({width} x {height})")
    if width * height > max_pixels:
        raise FaceError(
            f"{label} is {width} x {height} = {width * height:,} pixels, over the {max_pixels:,}-pixel limit "
            "(decompression bomb guard); downscale it first"
        )


@dataclass
class DetectedFace:
    """One detector hit, in image pixel coordinates."""

    box: tuple[float, float, float, float]
    score: float

    @property
    def area(self) -> float:
        """Box area in pixels."""
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@dataclass
class FaceCrop:
    """The square face crop the towers read, and how it was found (for the UI and reports).

    ``box`` is the detected face (None when the photo was assumed cropped); ``crop_box`` the square cut from
    the photo (may reach past its edges: that part is filled with the normalisation mean); ``faces_found``
    how many faces the detector saw (None when it did not run); ``provider`` the onnxruntime provider that
    actually ran; ``notes`` what the user should know (e.g. several faces).
    """

    image: Image.Image
    box: tuple[float, float, float, float] | None
    score: float | None
    faces_found: int | None
    provider: str | None
    crop_box: tuple[int, int, int, int]
    notes: list[str] = field(default_factory=list)

    @property
    def assumed_cropped(self) -> bool:
        """True when no detector ran and the photo was used as a face crop."""
        return self.faces_found is None


def pixels_from_crop(image: Image.Image, crop: CropConfig) -> torch.Tensor:
    """A crop image -> (3, size, size) float32 tensor, CLIP-normalised (resized if it is not ``size``)."""
    if image.size != (crop.size, crop.size):
        image = image.resize((crop.size, crop.size), Image.BICUBIC)
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    mean = torch.tensor(crop.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(crop.std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean) / std


def square_around(box: tuple[float, float, float, float], margin: float, image_size: tuple[int, int]):
    """The square (left, top, right, bottom) of side max(w, h) * (1 + 2 * margin) centred on ``box``.

    When the square fits in the image it is shifted inside it; otherwise it stays centred (and overhangs).
    """
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    side = max(1, int(round(side)))
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    width, height = image_size
    if side <= width:
        left = min(max(left, 0), width - side)
    if side <= height:
        top = min(max(top, 0), height - side)
    return left, top, left + side, top + side


def cut_square(image: Image.Image, square: tuple[int, int, int, int], crop: CropConfig) -> Image.Image:
    """Cut ``square`` out of ``image`` (overhang filled with the normalisation mean), resized to crop.size."""
    left, top, right, bottom = square
    fill = tuple(int(round(255 * m)) for m in crop.mean)
    canvas = Image.new("RGB", (right - left, bottom - top), fill)
    canvas.paste(image, (-left, -top))
    return canvas.resize((crop.size, crop.size), Image.BICUBIC)


def center_square(image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred square inside an image of ``image_size``."""
    width, height = image_size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def validate_pack_name(pack: str) -> str:
    """Return ``pack`` if it is a plain folder name (PACK_NAME_RE), else raise FaceError naming it."""
    if not isinstance(pack, str) or not PACK_NAME_RE.fullmatch(pack):
        raise FaceError(
            f"bad insightface pack name {pack!r}: a pack is a folder name under models/insightface/models "
            "such as buffalo_l (letters, digits, '_', '.', '-')"
        )
    return pack


class FaceDetector:
    """An insightface detection model from a pack folder, run with onnxruntime (loaded on first use).

    The pack lives in ``<insightface_root>/models/<pack>/`` (the WebUI's ``models/insightface``). The model
    goes through insightface's own loader (``insightface.model_zoo.get_model``); CUDA is used when
    onnxruntime offers it and it actually starts, CPU otherwise; :attr:`provider` says which one ran.
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

    def requested_providers(self) -> list[str]:
        """Providers asked of onnxruntime: CUDA first when allowed and available, CPU always."""
        import onnxruntime

        available = onnxruntime.get_available_providers()
        if self.use_cuda and CUDA_PROVIDER in available:
            return [CUDA_PROVIDER, CPU_PROVIDER]
        return [CPU_PROVIDER]

    def load(self) -> FaceDetector:
        """Create the onnxruntime session now (idempotent); FaceError if the pack is missing or unusable."""
        with self._lock:
            if self._model is None:
                self._model, self._provider = self._load_detection_model()
        return self

    def _load_detection_model(self) -> tuple[Any, str]:
        if not self.is_installed():
            raise FaceError(missing_pack_message(self.insightface_root, self.pack))
        from insightface.model_zoo import model_zoo

        providers = self.requested_providers()
        files = sorted(
            self.pack_dir.glob("*.onnx"), key=lambda p: (not _looks_like_detector(p.name), p.name)
        )
        for path in files:
            try:
                model = model_zoo.get_model(str(path), providers=providers)
            except Exception as err:  # noqa: BLE001 - onnxruntime/insightface raise many kinds
                logger.debug("insightface could not load %s", path, exc_info=True)
                raise FaceError(f"insightface cannot load {path}: {type(err).__name__}: {err}") from err
            if model is not None and getattr(model, "taskname", None) == "detection":
                ctx_id = 0 if CUDA_PROVIDER in providers else -1
                model.prepare(ctx_id, input_size=(self.det_size, self.det_size), det_thresh=self.det_thresh)
                return model, model.session.get_providers()[0]
        raise FaceError(f"the insightface pack {self.pack_dir} holds no face detection model (det_*.onnx)")

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        """Faces in an RGB image, largest first."""
        self.load()
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        boxes, _ = self._model.detect(bgr, max_num=0)
        faces = [
            DetectedFace(box=tuple(float(v) for v in row[:4]), score=float(row[4]))
            for row in np.asarray(boxes).reshape(-1, 5)
        ]
        return sorted(faces, key=lambda f: f.area, reverse=True)


def _looks_like_detector(filename: str) -> bool:
    return any(hint in filename.lower() for hint in DETECTOR_FILE_HINTS)


def missing_pack_message(insightface_root: str | os.PathLike, pack: str) -> str:
    """What to do when the detector pack is not installed."""
    where = Path(insightface_root) / "models" / pack
    return (
        f"No face detector: the insightface pack '{pack}' is not installed at {where}. Put the pack's .onnx "
        f"files there (the '{pack}' pack from insightface's model releases, the same folder other WebUI face "
        "extensions use), or tick the 'face crop already (skip detection)' box to use the photo as given."
    )


def capture_face(
    image: ImageSource,
    detector: FaceDetector | None,
    crop: CropConfig | None = None,
    assume_cropped: bool = False,
) -> FaceCrop:
    """Find the largest face in a photo and cut the square tower input around it.

    ``assume_cropped`` uses the photo as given (its centred square), no detector needed. Raises FaceError
    when there is no detector (and no ``assume_cropped``), or no face.
    """
    crop = (crop or CropConfig()).validate()
    photo = load_image(image)
    if assume_cropped:
        square = center_square(photo.size)
        return FaceCrop(
            image=cut_square(photo, square, crop), box=None, score=None, faces_found=None, provider=None,
            crop_box=square, notes=["used the photo as a face crop (no detection)"],
        )
    if detector is None:
        raise FaceError("No face detector is configured; install an insightface pack or use the photo as a "
                        "face crop (assume_cropped)")
    faces = detector.detect(photo)
    if not faces:
        raise FaceError(
            f"no face found in the photo ({photo.width} x {photo.height}); use a photo where the face is "
            "clearly visible, or tick the 'face crop already (skip detection)' box"
        )
    face = faces[0]
    notes = []
    if len(faces) > 1:
        notes.append(f"{len(faces)} faces found; used the largest")
    square = square_around(face.box, crop.margin, photo.size)
    return FaceCrop(
        image=cut_square(photo, square, crop), box=face.box, score=face.score, faces_found=len(faces),
        provider=detector.provider, crop_box=square, notes=notes,
    )
