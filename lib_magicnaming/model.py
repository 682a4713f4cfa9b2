"""The name encoder: two frozen CLIP image towers and a three-layer MLP head (method.md decisions 2-3).

A face crop goes through OpenAI CLIP ViT-L/14 (projected, 768) and OpenCLIP ViT-bigG/14 (projected, 1280);
the two image embeddings are concatenated in that order (CLIP-L then bigG, as SDXL concatenates its text
encoders per token) to 2048 features, and the head maps them to an F_ID of ID_TOKENS x SDXL_CONTEXT_WIDTH.

Everything that decides the architecture (tower configs, head config, feature normalisation, crop) lives in
:class:`EncoderConfig`, which the checkpoint records (``to_dict``/``from_dict``, the one serialiser), so a
checkpoint rebuilds its own model. This module holds the configs, the head and the encoder module; building
towers and loading their weights is :mod:`lib_magicnaming.towers`, assembling an encoder from a config is
:func:`lib_magicnaming.factory.build_encoder`.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import MISSING, asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lib_magicnaming.constants import CLIP_G_WIDTH, CLIP_L_WIDTH, ID_TOKENS, SDXL_CONTEXT_WIDTH
from lib_magicnaming.errors import EncoderError, FaceError
from lib_magicnaming.face import CropConfig
from lib_magicnaming.vit_forward import tower_forward

TOWER_NAMES = ("clip_l", "clip_g")
"""Tower slots, in concatenation order."""

HEAD_NORMS = ("layernorm", "none")
HEAD_ACTS = ("gelu", "relu", "silu")
FEATURE_NORMS = ("l2", "none")

OPEN_CLIP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A plain open_clip architecture or pretrained tag ("ViT-L-14", "laion2b_s39b_b160k"). It becomes part of a
local file name, and open_clip 3.x reads "hf-hub:..."/"local-dir:..." names from the network or the disk, so a
checkpoint may name nothing else."""

SHA256_RE = re.compile(r"[0-9a-f]{64}")

VISION_CFG_INTS = ("image_size", "layers", "width", "head_width", "patch_size")
VISION_CFG_LIMITS = {
    "image_size": 4096, "layers": 256, "width": 16384, "head_width": 16384, "patch_size": 4096,
}
"""Positive integers a custom vision config must hold (when given), with generous upper bounds so a
malformed checkpoint cannot ask for a tower that exhausts memory."""


@dataclass
class HeadConfig:
    """Shape of the MLP head: in_dim -> hidden_dim -> hidden_dim -> out_tokens * out_dim."""

    in_dim: int = SDXL_CONTEXT_WIDTH
    hidden_dim: int = 2048
    out_tokens: int = ID_TOKENS
    out_dim: int = SDXL_CONTEXT_WIDTH
    norm: str = "layernorm"
    act: str = "gelu"

    def validate(self) -> HeadConfig:
        """Raise EncoderError naming the first bad field; return self."""
        for name in ("in_dim", "hidden_dim", "out_tokens", "out_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise EncoderError(f"head config: {name} must be a positive integer, got {value!r}")
        if self.norm not in HEAD_NORMS:
            raise EncoderError(f"head config: norm must be one of {HEAD_NORMS}, got {self.norm!r}")
        if self.act not in HEAD_ACTS:
            raise EncoderError(f"head config: act must be one of {HEAD_ACTS}, got {self.act!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (recorded in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        """Inverse of :meth:`to_dict`; unknown or missing fields raise EncoderError."""
        return cls(**_exact_fields(cls, data, "head config")).validate()


@dataclass
class TowerSpec:
    """One frozen CLIP image tower.

    ``model_cfg`` is a custom open_clip model config (a dict like open_clip's model_configs/*.json) for towers
    open_clip does not know by name, e.g. the tiny towers of the tests; ``None`` means open_clip's config for
    ``arch``. ``weights_sha256``/``param_count`` are the fingerprint of the weights the encoder was trained
    with (recorded together, or not at all: random test towers have none): the sha256 of the tower's state
    dict in a canonical form independent of the file that held it, and the number of values in that state
    dict. The rule lives in :func:`lib_magicnaming.towers.tower_fingerprint`; loading checks a user's tower
    against it.
    """

    name: str
    arch: str
    pretrained: str
    embed_dim: int
    model_cfg: dict | None = None
    weights_sha256: str | None = None
    param_count: int | None = None

    def validate(self) -> TowerSpec:
        """Raise EncoderError naming the problem (bad slot, unknown arch, embed_dim mismatch); return self."""
        if self.name not in TOWER_NAMES:
            raise EncoderError(f"tower name must be one of {TOWER_NAMES}, got {self.name!r}")
        for label, value in (("arch", self.arch), ("pretrained tag", self.pretrained)):
            if not isinstance(value, str) or not OPEN_CLIP_NAME_RE.fullmatch(value):
                raise EncoderError(
                    f"tower {self.name}: {label} must be a plain open_clip name (letters, digits, '.', '_', "
                    f"'-'; no paths or hub schemes), got {value!r}"
                )
        if not _is_positive_int(self.embed_dim):
            raise EncoderError(
                f"tower {self.name}: embed_dim must be a positive integer, got {self.embed_dim!r}"
            )
        cfg = tower_model_config(self)
        if cfg.get("embed_dim") != self.embed_dim:
            raise EncoderError(
                f"tower {self.name} ({self.arch}): embed_dim {self.embed_dim} does not match the model "
                f"config's embed_dim {cfg.get('embed_dim')}"
            )
        self._validate_fingerprint()
        return self

    def _validate_fingerprint(self) -> None:
        if (self.weights_sha256 is None) != (self.param_count is None):
            raise EncoderError(
                f"tower {self.name}: weights_sha256 and param_count form the weights fingerprint and are "
                f"recorded together, got weights_sha256={self.weights_sha256!r}, "
                f"param_count={self.param_count!r}"
            )
        if self.weights_sha256 is not None and (
            not isinstance(self.weights_sha256, str) or not SHA256_RE.fullmatch(self.weights_sha256)
        ):
            raise EncoderError(
                f"tower {self.name}: weights_sha256 must be 64 lower-case hex characters, "
                f"got {self.weights_sha256!r}"
            )
        if self.param_count is not None and not _is_positive_int(self.param_count):
            raise EncoderError(
                f"tower {self.name}: param_count must be a positive integer, got {self.param_count!r}"
            )

    @property
    def file_stem(self) -> str:
        """Base name of the tower's local weight file: ``<arch>-<pretrained>``."""
        return f"{self.arch}-{self.pretrained}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (recorded in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TowerSpec:
        """Inverse of :meth:`to_dict`; unknown or missing fields raise EncoderError."""
        return cls(**_exact_fields(cls, data, "tower spec")).validate()


CLIP_L_TOWER = TowerSpec(name="clip_l", arch="ViT-L-14", pretrained="openai", embed_dim=CLIP_L_WIDTH)
CLIP_G_TOWER = TowerSpec(
    name="clip_g", arch="ViT-bigG-14", pretrained="laion2b_s39b_b160k", embed_dim=CLIP_G_WIDTH
)


def default_towers() -> list[TowerSpec]:
    """The two towers of method.md decision 2 (fresh copies)."""
    return [copy.deepcopy(CLIP_L_TOWER), copy.deepcopy(CLIP_G_TOWER)]


@dataclass
class EncoderConfig:
    """Everything that defines a name encoder; recorded in (and rebuilt from) a checkpoint."""

    towers: list[TowerSpec] = field(default_factory=default_towers)
    head: HeadConfig = field(default_factory=HeadConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    feature_norm: str = "l2"
    """'l2': each tower's projected embedding is L2-normalised before concatenation (as CLIP compares
    embeddings); 'none': used raw."""

    def validate(self) -> EncoderConfig:
        """Check towers, head and their agreement; raise EncoderError naming the problem; return self."""
        if not self.towers:
            raise EncoderError("encoder config has no towers")
        names = [t.name for t in self.towers]
        if len(set(names)) != len(names):
            raise EncoderError(f"encoder config names a tower slot twice: {names}")
        if names != [n for n in TOWER_NAMES if n in names]:
            raise EncoderError(f"towers must be in the order {TOWER_NAMES}, got {names}")
        for tower in self.towers:
            tower.validate()
        self.head.validate()
        total = sum(t.embed_dim for t in self.towers)
        if total != self.head.in_dim:
            raise EncoderError(
                f"head in_dim {self.head.in_dim} does not match the towers' embed dims summed ({total})"
            )
        if self.feature_norm not in FEATURE_NORMS:
            raise EncoderError(f"feature_norm must be one of {FEATURE_NORMS}, got {self.feature_norm!r}")
        try:
            self.crop.validate()
        except FaceError as err:
            raise EncoderError(f"encoder config: {err}") from err
        return self

    @property
    def feature_dim(self) -> int:
        """Width of the concatenated tower features."""
        return sum(t.embed_dim for t in self.towers)

    def to_dict(self, *, with_head: bool = True) -> dict[str, Any]:
        """JSON-able form: ``towers`` (list), ``head``, ``crop`` and ``feature_norm``; checkpoints record it.

        ``with_head=False`` leaves the head out: what a features folder depends on (training chooses its own).
        """
        data = {
            "towers": [t.to_dict() for t in self.towers],
            "head": self.head.to_dict(),
            "crop": self.crop.to_dict(),
            "feature_norm": self.feature_norm,
        }
        if not with_head:
            del data["head"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> EncoderConfig:
        """Inverse of :meth:`to_dict`, validated; EncoderError names an unknown, missing or bad field.

        Without ``head`` (``to_dict(with_head=False)``) the head is the default one for the towers' width.
        """
        fields = _exact_fields(cls, data, "encoder config")
        missing = sorted({"towers", "crop", "feature_norm"} - set(fields))
        if missing:
            raise EncoderError(f"encoder config is missing field(s) {missing}")
        if not isinstance(fields["towers"], list):
            kind = type(fields["towers"]).__name__
            raise EncoderError(f"encoder config: towers must be a list, got {kind}")
        towers = [TowerSpec.from_dict(t) for t in fields["towers"]]
        if "head" in fields:
            head = HeadConfig.from_dict(fields["head"])
        else:
            head = HeadConfig(in_dim=sum(t.embed_dim for t in towers))
        try:
            crop = CropConfig.from_dict(fields["crop"])
        except FaceError as err:
            raise EncoderError(f"encoder config: {err}") from err
        return cls(towers=towers, head=head, crop=crop, feature_norm=fields["feature_norm"]).validate()


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _exact_fields(cls: type, data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise EncoderError(f"{what} must be a JSON object, got {type(data).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise EncoderError(f"{what} has unknown field(s) {unknown}")
    required = {
        n for n, f in cls.__dataclass_fields__.items()
        if f.default is MISSING and f.default_factory is MISSING
    }
    missing = sorted(required - set(data))
    if missing:
        raise EncoderError(f"{what} is missing field(s) {missing}")
    return dict(data)


def tower_model_config(spec: TowerSpec) -> dict[str, Any]:
    """The open_clip model config that builds ``spec``'s tower (a fresh dict).

    Custom configs are used as given; otherwise open_clip's registered config for ``spec.arch``. OpenAI
    weights were trained with QuickGELU, which open_clip applies for the 'openai' tag; so do we.
    """
    if spec.model_cfg is not None:
        _check_custom_model_cfg(spec)
        return copy.deepcopy(spec.model_cfg)
    import open_clip

    cfg = open_clip.get_model_config(spec.arch)
    if cfg is None:
        raise EncoderError(
            f"tower {spec.name}: unknown open_clip architecture {spec.arch!r} "
            f"(open_clip {_open_clip_version()} does not know it and no model_cfg was given)"
        )
    if spec.pretrained == "openai":
        cfg["quick_gelu"] = True
    return cfg


def _check_custom_model_cfg(spec: TowerSpec) -> None:
    """Refuse custom configs open_clip would turn into downloads (timm/HF towers) or absurd sizes."""
    cfg = spec.model_cfg
    if not isinstance(cfg, dict) or not isinstance(cfg.get("vision_cfg"), dict):
        raise EncoderError(f"tower {spec.name}: model_cfg must be a dict with a 'vision_cfg' dict")
    vision = cfg["vision_cfg"]
    external = sorted(k for k in vision if k.startswith(("timm_", "hf_")))
    if external:
        raise EncoderError(
            f"tower {spec.name}: model_cfg vision_cfg names {external}; only open_clip's own ViT is "
            "supported (timm/Hugging Face towers could download weights)"
        )
    for key in VISION_CFG_INTS:
        value = vision.get(key)
        if key == "image_size" and isinstance(value, list | tuple) and len(value) == 2:
            values = list(value)
        else:
            values = [value] if key in vision else []
        if not all(_is_positive_int(v) and v <= VISION_CFG_LIMITS[key] for v in values):
            raise EncoderError(
                f"tower {spec.name}: model_cfg vision_cfg {key} must be a positive integer up to "
                f"{VISION_CFG_LIMITS[key]}, got {value!r}"
            )


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients and put ``module`` in eval mode; return it."""
    for param in module.parameters():
        param.requires_grad_(False)
    return module.eval()


_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class NameHead(nn.Module):
    """Three linear layers, (norm, activation) between them: features (B, in) -> F_ID (B, tokens, dim)."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config.validate()
        hidden = config.hidden_dim
        self.fc1 = nn.Linear(config.in_dim, hidden)
        self.norm1 = nn.LayerNorm(hidden) if config.norm == "layernorm" else nn.Identity()
        self.fc2 = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden) if config.norm == "layernorm" else nn.Identity()
        self.fc3 = nn.Linear(hidden, config.out_tokens * config.out_dim)
        self.act = _ACTIVATIONS[config.act]()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_tokens, out_dim)."""
        x = self.act(self.norm1(self.fc1(features)))
        x = self.act(self.norm2(self.fc2(x)))
        return self.fc3(x).reshape(features.shape[0], self.config.out_tokens, self.config.out_dim)


def head_state_shapes(config: HeadConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a :class:`NameHead`'s state dict for ``config`` (without building it)."""
    h, out = config.hidden_dim, config.out_tokens * config.out_dim
    shapes = {
        "fc1.weight": (h, config.in_dim), "fc1.bias": (h,),
        "fc2.weight": (h, h), "fc2.bias": (h,),
        "fc3.weight": (out, h), "fc3.bias": (out,),
    }
    if config.norm == "layernorm":
        shapes.update({"norm1.weight": (h,), "norm1.bias": (h,), "norm2.weight": (h,), "norm2.bias": (h,)})
    return shapes


def init_head_(
    head: NameHead, *, out_std: float = 0.02, generator: torch.Generator | None = None
) -> NameHead:
    """Re-initialise a head in place (normal weights: 1/sqrt(fan-in), ``out_std`` for the last layer; zero
    biases); return it. Uses torch.randn so a ``generator`` works on every torch the WebUI ships."""
    with torch.no_grad():
        for linear, std in ((head.fc1, None), (head.fc2, None), (head.fc3, out_std)):
            std = 1.0 / math.sqrt(linear.in_features) if std is None else std
            noise = torch.randn(linear.weight.shape, generator=generator, dtype=torch.float32)
            linear.weight.copy_(noise * std)
            linear.bias.zero_()
    return head


class NameEncoder(nn.Module):
    """Frozen towers + head: normalised pixels (B, 3, S, S) -> F_ID (B, ID_TOKENS, SDXL_CONTEXT_WIDTH).

    Towers and head may sit on different devices/dtypes only transiently (see IdentityEncoder); here inputs
    are cast to each tower's parameter dtype and features to the head's.

    The towers run through :func:`lib_magicnaming.vit_forward.tower_forward` (batch-first fused attention,
    the same weights and function as open_clip's own forward) unless ``fused_towers`` is False;
    ``block_fn`` replaces the eager residual block (e.g.
    :class:`~lib_magicnaming.vit_forward.CompiledBlocks`).
    Training's features stage and the extension both compute features this way.
    """

    def __init__(self, config: EncoderConfig, towers: dict[str, nn.Module], head: NameHead):
        super().__init__()
        self.config = config.validate()
        names = [t.name for t in config.towers]
        if sorted(towers) != sorted(names):
            raise EncoderError(f"towers given {sorted(towers)} do not match the config's {names}")
        self.towers = nn.ModuleDict({name: freeze(towers[name]) for name in names})
        self.head = head
        self.fused_towers = True
        self.block_fn = None

    def train(self, mode: bool = True) -> NameEncoder:
        """Train the head only; the towers stay frozen in eval mode."""
        super().train(mode)
        for tower in self.towers.values():
            tower.eval()
        return self

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) CLIP-normalised pixels -> (B, feature_dim) concatenated tower embeddings (float32)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise EncoderError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
        parts = [self.tower_features(spec.name, pixels) for spec in self.config.towers]
        device = parts[0].device
        return torch.cat([p.to(device) for p in parts], dim=-1)

    def tower_features(self, name: str, pixels: torch.Tensor) -> torch.Tensor:
        """One tower's part of :meth:`features`: (B, embed_dim) float32, normalised per ``feature_norm``,
        on the tower's device (pixels are moved and cast to the tower's parameters)."""
        tower = self.towers[name]
        param = next(tower.parameters())
        pixels = pixels.to(device=param.device, dtype=param.dtype)
        out = tower_forward(tower, pixels, self.block_fn) if self.fused_towers else tower(pixels)
        if isinstance(out, tuple):  # towers configured with output_tokens return (pooled, tokens)
            out = out[0]
        out = out.float()
        if self.config.feature_norm == "l2":
            out = torch.nn.functional.normalize(out, dim=-1)
        return out

    def head_only(self, features: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) -> (B, ID_TOKENS, SDXL_CONTEXT_WIDTH) float32."""
        param = next(self.head.parameters())
        return self.head(features.to(device=param.device, dtype=param.dtype)).float()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> F_ID."""
        return self.head_only(self.features(pixels))


def _open_clip_version() -> str:
    try:
        from open_clip.version import __version__
    except ImportError:  # pragma: no cover - every released open_clip has it
        return "?"
    return __version__
