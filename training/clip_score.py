"""CLIP-T: how well an image follows its prompt, as the identity-generation papers report it.

CLIP-T = 100 x max(cos(image embedding, text embedding), 0) with an open_clip CLIP model (the standard
CLIPScore scale the T2I papers use, without CLIPScore's 2.5 weight); the text is the prompt WITHOUT the
identity (the person's slot filled with the neutral subject, e.g. "a person"), so every method row is
scored against the same text. Default model: OpenAI's CLIP ViT-L/14 (open_clip ``ViT-L-14`` / ``openai``),
the model behind the papers' numbers and the extension's CLIP-L tower.

Weights come from a file, never from the network unless allowed: ``--clip-weights FILE`` (a whole open_clip
CLIP checkpoint, image and text towers: .safetensors, or .bin/.pt read with ``weights_only``), else the
extension's tower file ``<models-dir>/towers/ViT-L-14-openai.safetensors`` when it holds the whole model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from lib_magicnaming.towers import KNOWN_SOURCES, TOWERS_SUBDIR
from training.common import TrainingError, read_json

CLIP_T_SCALE = 100.0


@dataclass(frozen=True)
class ClipModelSpec:
    """An open_clip CLIP model: architecture, weights tag, activation, or a custom config (tiny models)."""

    arch: str = "ViT-L-14"
    pretrained: str = "openai"
    quick_gelu: bool = True
    model_cfg: dict | None = None

    def to_dict(self) -> dict:
        """JSON-able form (what ``--clip-config`` reads)."""
        return asdict(self)

    @classmethod
    def from_file(cls, path: str | Path) -> ClipModelSpec:
        """A spec from a JSON file (``to_dict``'s form); errors name the file."""
        data = read_json(path, "CLIP model spec")
        try:
            return cls(**data)
        except TypeError as exc:
            raise TrainingError(f"{path} is not a CLIP model spec ({exc})") from exc

    @property
    def file_stem(self) -> str:
        """``<arch>-<pretrained>``, the extension's tower-file naming."""
        return f"{self.arch}-{self.pretrained}"

    def config(self) -> dict:
        """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``)."""
        from training.text_encoders import open_clip_config  # the one rule: custom config, else open_clip's

        return open_clip_config(self)


DEFAULT_CLIP = ClipModelSpec()


def tiny_clip_spec() -> ClipModelSpec:
    """A one-layer CLIP of open_clip's shape with the real tokenizer (tests, demo)."""
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    return ClipModelSpec(arch="tiny-clip", pretrained="random", quick_gelu=False, model_cfg=cfg)


def build_clip(spec: ClipModelSpec) -> torch.nn.Module:
    """The CLIP model of ``spec`` with open_clip's random initialisation."""
    from open_clip.model import CLIP

    cfg = spec.config()
    return CLIP(
        embed_dim=cfg["embed_dim"],
        vision_cfg=cfg["vision_cfg"],
        text_cfg=cfg["text_cfg"],
        quick_gelu=spec.quick_gelu,
    )


def default_weights_file(spec: ClipModelSpec, models_dir: str | Path | None) -> Path | None:
    """The extension's tower file for ``spec`` (``<models-dir>/towers/<arch>-<pretrained>.safetensors``)."""
    return None if models_dir is None else Path(models_dir) / TOWERS_SUBDIR / f"{spec.file_stem}.safetensors"


def missing_weights_message(spec: ClipModelSpec, looked_at: Path | None) -> str:
    """What to do when no CLIP-T weights file exists."""
    where = f"none at {looked_at}" if looked_at is not None else "no --clip-weights and no --models-dir given"
    source = KNOWN_SOURCES.get((spec.arch, spec.pretrained), f"open_clip's {spec.arch} / {spec.pretrained}")
    return (
        f"CLIP-T needs the whole open_clip {spec.arch} ({spec.pretrained}) checkpoint, image and text "
        f"towers: {where}. Get it from {source} and pass --clip-weights FILE (or put it at "
        f"<models-dir>/{TOWERS_SUBDIR}/{spec.file_stem}.safetensors), or use --allow-download."
    )


def weights_file(
    spec: ClipModelSpec,
    weights: str | Path | None,
    models_dir: str | Path | None,
    random_seed: int | None,
    allow_download: bool,
) -> Path | None:
    """The weights file to load; None for random weights or an allowed download; TrainingError naming the
    missing file otherwise (cheap: checked before any model loads)."""
    if weights is not None:
        if not Path(weights).is_file():
            raise TrainingError(f"CLIP-T weights not found: {weights}")
        return Path(weights)
    if random_seed is not None:
        return None
    default = default_weights_file(spec, models_dir)
    if default is not None and default.is_file():
        return default
    if allow_download:
        return None
    raise TrainingError(missing_weights_message(spec, default))


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A CLIP state dict from a safetensors file, or a plain tensor file read with ``weights_only``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - safetensors/torch raise many kinds for a bad file
        raise TrainingError(
            f"{path} cannot be read as a CLIP checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TrainingError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


class ClipScorer:
    """CLIP-T of images against texts with one open_clip CLIP model."""

    def __init__(self, model: torch.nn.Module, image_size: int, device: torch.device, source: str):
        from open_clip import tokenize
        from open_clip.transform import image_transform

        self.model = model.to(device).eval().requires_grad_(False)
        self.preprocess = image_transform(image_size, is_train=False)
        self.tokenize = tokenize
        self.device = device
        self.source = source

    @classmethod
    def load(
        cls,
        spec: ClipModelSpec,
        *,
        weights: str | Path | None = None,
        models_dir: str | Path | None = None,
        random_seed: int | None = None,
        allow_download: bool = False,
        device: torch.device = torch.device("cpu"),
    ) -> ClipScorer:
        """From ``weights``, else the extension's tower file, else open_clip's hub (allowed), else random."""
        image_size = spec.config()["vision_cfg"]["image_size"]
        path = weights_file(spec, weights, models_dir, random_seed, allow_download)
        if path is not None:
            model = build_clip(spec)
            state = read_state(path)
            missing = [k for k in model.state_dict() if k not in state]
            if missing:
                raise TrainingError(
                    f"{path} lacks CLIP tensors {missing[:3]} ({len(missing)} missing): CLIP-T needs "
                    f"the whole {spec.arch} checkpoint, image and text towers (a vision-only tower file "
                    "is not enough)"
                )
            model.load_state_dict({k: state[k] for k in model.state_dict()})
            return cls(model, image_size, device, str(path))
        if random_seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(random_seed)
                return cls(build_clip(spec), image_size, device, f"random {spec.arch} (seed {random_seed})")
        import open_clip

        model = open_clip.create_model(
            spec.arch, pretrained=spec.pretrained, force_quick_gelu=spec.quick_gelu
        )
        return cls(model, image_size, device, f"open_clip {spec.arch} / {spec.pretrained}")

    @torch.no_grad()
    def scores(self, images: list[Image.Image], texts: list[str]) -> list[float]:
        """CLIP-T of each image against its text (same length lists)."""
        if len(images) != len(texts):
            raise ValueError("one text per image")
        if not images:
            return []
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        image_features = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
        text_features = self.model.encode_text(self.tokenize(texts).to(self.device)).float()
        text_features = torch.nn.functional.normalize(text_features, dim=-1)
        cosine = (image_features * text_features).sum(dim=-1)
        return [CLIP_T_SCALE * max(float(c), 0.0) for c in cosine]
