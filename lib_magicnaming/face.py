"""Face capture: find the face in a photo and cut the square, CLIP-normalised crop the towers read.

The crop rule is defined here once and reads only the detector's face box in corner form (x1, y1, x2, y2,
photo pixels), which every detector reports after converting its own convention
(:mod:`lib_magicnaming.detector_interface`); so the same face box gives the same crop whichever detector
found it.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lib_magicnaming.detector_interface import NO_DETECTOR, FaceDetector
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


BOX_SQUARE_RULE = "box-square"
"""The crop rule: a square centred on the face box (corner form, photo pixels), of side
``max(w, h) * (1 + 2 * margin)``, shifted inside the photo when it fits (see :func:`square_around`)."""
CROP_RULES = (BOX_SQUARE_RULE,)
"""Crop rules this version can apply; a checkpoint naming another one is refused."""

MIN_CROP_PIXELS = 32
"""A face crop is refused when the square cut from the photo is smaller than this on a side (it would be
blown up to 224 px from almost nothing)."""


@dataclass
class CropConfig:
    """How a face becomes tower input.

    The crop is a square centred on the detected box, of side ``max(w, h) * (1 + 2 * margin)``, resized to
    ``size`` x ``size`` and normalised with ``mean``/``std``. ``rule`` names that geometry; ``detector`` is
    the name of the detector that made an encoder's training crops (``none``: photos used as face crops;
    None: not recorded, as in checkpoints written before it was).
    """

    size: int = 224
    margin: float = 0.25
    mean: tuple[float, float, float] = field(default_factory=_openai_mean)
    std: tuple[float, float, float] = field(default_factory=_openai_std)
    rule: str = BOX_SQUARE_RULE
    detector: str | None = None

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
        if self.rule not in CROP_RULES:
            raise FaceError(
                f"crop rule {self.rule!r} is unknown to this MagicNaming (it knows {', '.join(CROP_RULES)}); "
                "update the extension"
            )
        if self.detector is not None and (not isinstance(self.detector, str) or not self.detector.strip()):
            raise FaceError(f"crop detector must be a detector name or null, got {self.detector!r}")
        self.margin = float(self.margin)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (recorded in checkpoints and features manifests). Without a recorded detector and
        with the ``box-square`` rule, ``rule`` and ``detector`` are left out: that is what files written
        before they existed mean, and such files are written again byte for byte (a features folder of an
        earlier version resumes)."""
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        if self.detector is None and self.rule == BOX_SQUARE_RULE:
            del data["rule"], data["detector"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CropConfig:
        """Inverse of :meth:`to_dict`; unknown or missing fields raise FaceError (a recorded crop is complete,
        so a missing field means a damaged file, not "use the default"), except ``rule`` and ``detector``,
        which files written before they existed lack: the rule was then always ``box-square``, the detector
        not recorded."""
        if not isinstance(data, dict):
            raise FaceError(f"crop config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise FaceError(f"crop config has unknown field(s) {unknown}")
        missing = sorted(set(cls.__dataclass_fields__) - set(data) - set(_FIELDS_ADDED_LATER))
        if missing:
            raise FaceError(f"crop config is missing field(s) {missing}")
        return cls(**data).validate()


_FIELDS_ADDED_LATER = ("rule", "detector")


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


DEFAULT_MAX_PIXELS = 50_000_000
"""Photos above this many pixels are refused before decoding (decompression-bomb guard)."""

ImageSource = Union[bytes, bytearray, str, os.PathLike, Image.Image]



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
class FaceCrop:
    """The square face crop the towers read, and how it was found (for the UI and reports).

    ``box`` is the detected face (None when the photo was assumed cropped); ``crop_box`` the square cut from
    the photo (may reach past its edges: that part is filled with the normalisation mean); ``faces_found``
    how many faces the detector saw (None when it did not run); ``provider`` what ran the detector;
    ``notes`` what the user should know (e.g. several faces); ``detector`` the name of the detector that found
    the face (``none`` when the photo was used as given); ``landmarks`` its 5 points, when it gives them.
    """

    image: Image.Image
    box: tuple[float, float, float, float] | None
    score: float | None
    faces_found: int | None
    provider: str | None
    crop_box: tuple[int, int, int, int]
    notes: list[str] = field(default_factory=list)
    detector: str = NO_DETECTOR
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def assumed_cropped(self) -> bool:
        """True when no detector ran and the photo was used as a face crop."""
        return self.faces_found is None


def pixels_from_crop(image: Image.Image, crop: CropConfig) -> torch.Tensor:
    """A crop image -> (3, size, size) float32 tensor, CLIP-normalised (resized if it is not ``size``)."""
    return normalise_crop_pixels(crop_pixels_uint8(image, crop), crop)


def crop_pixels_uint8(image: Image.Image, crop: CropConfig) -> torch.Tensor:
    """The first half of :func:`pixels_from_crop`: a crop image -> (3, size, size) uint8 RGB (resized if it
    is not ``size``). A quarter of the float32 bytes: what the training loader moves to the GPU."""
    if image.size != (crop.size, crop.size):
        image = image.resize((crop.size, crop.size), Image.BICUBIC)
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)


def normalise_crop_pixels(pixels: torch.Tensor, crop: CropConfig) -> torch.Tensor:
    """The second half of :func:`pixels_from_crop`, on any device: (..., 3, S, S) uint8 -> float32
    CLIP-normalised ((x / 255 - mean) / std, each step float32 as IEEE rounds it, so CPU and GPU agree)."""
    mean = torch.tensor(crop.mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(crop.std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


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


def capture_face(
    image: ImageSource,
    detector: FaceDetector | None,
    crop: CropConfig | None = None,
    assume_cropped: bool = False,
) -> FaceCrop:
    """Find the largest face in a photo and cut the square tower input around it.

    ``assume_cropped`` uses the photo as given (its centred square), no detector needed. Raises FaceError
    when there is no detector (and no ``assume_cropped``), no face, or a crop under MIN_CROP_PIXELS a side
    (DetectorUnavailable, a FaceError too, when the detector cannot run).
    """
    crop = (crop or CropConfig()).validate()
    photo = load_image(image)
    if assume_cropped:
        square = center_square(photo.size)
        _check_crop_size(square, f"the photo is {photo.width} x {photo.height} pixels;")
        return FaceCrop(
            image=cut_square(photo, square, crop), box=None, score=None, faces_found=None, provider=None,
            crop_box=square, notes=["used the photo as a face crop (no detection)"],
        )
    if detector is None:
        raise FaceError("No face detector is configured; set up a face detector or use the photo as a "
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
    _check_crop_size(square, f"the face in the photo ({photo.width} x {photo.height}) is too small:")
    return FaceCrop(
        image=cut_square(photo, square, crop), box=face.box, score=face.score, faces_found=len(faces),
        provider=detector.provider, crop_box=square, notes=notes, detector=detector.name or NO_DETECTOR,
        landmarks=face.landmarks,
    )


def _check_crop_size(square: tuple[int, int, int, int], what: str) -> None:
    side = square[2] - square[0]
    if side < MIN_CROP_PIXELS:
        raise FaceError(
            f"{what} its face crop would be {side} x {side} pixels, under the {MIN_CROP_PIXELS} x "
            f"{MIN_CROP_PIXELS} minimum; use a larger photo, or one where the face is bigger"
        )


def detector_note(trained_with: str | None, used: str) -> str | None:
    """A per-photo note when a face was captured otherwise than the encoder's training crops were (None when
    they agree or the encoder does not record its detector)."""
    if trained_with is None or trained_with == used:
        return None
    if trained_with == NO_DETECTOR:
        trained = "photos used as face crops (no detector)"
    else:
        trained = f"crops found by {trained_with}"
    found = "this photo was used as given" if used == NO_DETECTOR else f"this face was found by {used}"
    return (
        f"this encoder was trained on {trained}; {found}, so its crop may frame the face a little "
        "differently than the encoder expects"
    )
