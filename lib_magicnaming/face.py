"""Face capture: find the face in a photo and cut the square, CLIP-normalised crop the towers read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lib_magicnaming.errors import FaceError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's pixel normalisation (open_clip uses the same for both towers)."""


@dataclass
class CropConfig:
    """How a face becomes tower input.

    The crop is a square centred on the detected box, of side ``max(w, h) * (1 + 2 * margin)``, resized to
    ``size`` x ``size`` and normalised with ``mean``/``std``.
    """

    size: int = 224
    margin: float = 0.25
    mean: tuple[float, float, float] = field(default=CLIP_MEAN)
    std: tuple[float, float, float] = field(default=CLIP_STD)

    def validate(self) -> CropConfig:
        """Raise FaceError naming the bad field; return self (mean/std normalised to tuples)."""
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 16 <= self.size <= 4096:
            raise FaceError(f"crop size must be an integer in 16..4096, got {self.size!r}")
        if not isinstance(self.margin, int | float) or not 0.0 <= float(self.margin) <= 2.0:
            raise FaceError(f"crop margin must be a number in 0..2, got {self.margin!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if (
                not isinstance(value, list | tuple)
                or len(value) != 3
                or not all(isinstance(v, int | float) for v in value)
            ):
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
        """Inverse of :meth:`to_dict`; unknown fields raise FaceError."""
        if not isinstance(data, dict):
            raise FaceError(f"crop config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise FaceError(f"crop config has unknown field(s) {unknown}")
        return cls(**data).validate()
