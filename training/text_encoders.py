"""SDXL's two text encoders through open_clip, computing a prompt's conditioning the way WebUI v1.10.1 does.

What the WebUI does for an SDXL prompt (read from modules/sd_hijack_clip.py, sd_hijack_open_clip.py,
sd_models_xl.py and sgm/modules/encoders/modules.py):

* Tokenise without start/end tokens; cut into chunks of 75 tokens (a full chunk moves the text after a
  comma that lies within the last 20 tokens into the next chunk: ``comma_padding_backtrack``); pad each
  chunk to 75 with the end token, then wrap it as [start] + 75 + [end] = 77 tokens.
* CLIP-L (``FrozenCLIPEmbedder``, layer="hidden", layer_idx=11; the SDXL wrapper reads
  ``hidden_states[layer_idx]`` and applies NO final layer norm): the output after 11 of the 12 blocks.
* bigG (``FrozenOpenCLIPEmbedder2``, layer="penultimate", legacy=False): every position after the first end
  token is set to pad id 0 (``process_tokens``, because id_end != id_pad), and the output is the input of the
  last block ("penultimate"), again without ``ln_final``.
* Emphasis "Original" multiplies by the token weights and restores the mean; for text without emphasis
  syntax every weight is 1 and this is exactly the identity, so it is not computed here (names never carry
  emphasis syntax: see ``training.targets.prompt_syntax_problem``).
* Chunks are concatenated along the token axis, the two encoders along the width: (77k, 768 + 1280).

Both encoders use open_clip's tokenizer. The WebUI's CLIP-L path uses Hugging Face's CLIPTokenizer for
openai/clip-vit-large-patch14, which has the same vocabulary, merges and text cleaning (ftfy, whitespace,
lower case), so the token ids agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lib_magicnaming.constants import CHUNK_TEXT_TOKENS
from training.common import TrainingError

COMMA_PADDING_BACKTRACK = 20
"""The WebUI's default ``opts.comma_padding_backtrack``."""


@dataclass(frozen=True)
class TextTowerSpec:
    """One SDXL text encoder: an open_clip architecture, its weights tag, and how the WebUI reads it."""

    name: str
    arch: str
    pretrained: str
    pad_with_end_token: bool
    """CLIP-L pads a chunk with its end token; bigG pads with 0 after the first end token."""
    quick_gelu: bool = False
    model_cfg: dict | None = field(default=None, hash=False)
    """A custom open_clip config ({"embed_dim", "text_cfg"}) for tiny test towers; None: the arch's own."""

    def to_dict(self) -> dict:
        """JSON-able description (recorded in the targets file's metadata)."""
        return asdict(self)


SDXL_CLIP_L = TextTowerSpec("clip_l", "ViT-L-14", "openai", pad_with_end_token=True, quick_gelu=True)
SDXL_CLIP_G = TextTowerSpec("clip_g", "ViT-bigG-14", "laion2b_s39b_b160k", pad_with_end_token=False)


def tiny_spec(base: TextTowerSpec, *, width: int, layers: int = 2, heads: int = 4) -> TextTowerSpec:
    """A tiny tower with ``base``'s rules (padding, activation), real vocabulary: tests, demo."""
    cfg = {"embed_dim": width, "text_cfg": {"width": width, "heads": heads, "layers": layers}}
    return TextTowerSpec(base.name, base.arch, "random", base.pad_with_end_token, base.quick_gelu, cfg)


def open_clip_config(spec) -> dict:
    """The open_clip model config of ``spec`` (a text tower's or a whole CLIP model's: anything with ``arch``
    and ``model_cfg``): its custom ``model_cfg``, else open_clip's registered config for ``arch``."""
    if spec.model_cfg is not None:
        return spec.model_cfg
    import open_clip

    cfg = open_clip.get_model_config(spec.arch)
    if cfg is None:
        raise TrainingError(f"open_clip has no model config named {spec.arch!r}")
    return cfg


def build_text_tower(spec: TextTowerSpec) -> torch.nn.Module:
    """An open_clip text transformer of ``spec``'s shape, randomly initialised."""
    from open_clip.model import _build_text_tower

    cfg = open_clip_config(spec)
    return _build_text_tower(cfg["embed_dim"], cfg["text_cfg"], quick_gelu=spec.quick_gelu)


def random_text_tower(spec: TextTowerSpec, seed: int) -> torch.nn.Module:
    """A tower with cheap seeded random weights (tests, demo, benchmarks), built without open_clip's init.

    The (49408 x width) token table is the sum of two small random tables indexed by ``id % 251`` and
    ``id // 251``: every token gets its own vector at a fraction of the cost of drawing the whole table.
    """
    with torch.device("meta"):
        tower = build_text_tower(spec)
    tower = tower.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in tower.named_parameters():
            if name == "token_embedding.weight":
                vocab, width = param.shape
                ids = torch.arange(vocab)
                low = torch.randn(251, width, generator=generator) * 0.02
                high = torch.randn(vocab // 251 + 1, width, generator=generator) * 0.02
                param.copy_(low[ids % 251] + high[ids // 251])
            elif name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    tower.register_buffer("attn_mask", torch.full((77, 77), float("-inf")).triu_(1), persistent=False)
    return tower.eval().requires_grad_(False)


_STRIP_PREFIXES = ("conditioner.embedders.1.model.", "model.", "text.")


def text_state_from_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text-tower tensors of an open_clip CLIP state dict (or an SDXL checkpoint's bigG embedder)."""
    text = {}
    for key, value in state.items():
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        if key.startswith("visual.") or key in ("logit_scale", "logit_bias"):
            continue
        text[key] = value
    return text


SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
UNUSED_FOR_HIDDEN_STATES = ("text_projection",)
"""Tensors the hidden-state computation never reads; an SDXL checkpoint's CLIP-L lacks its projection."""


def open_clip_state_from_hf_text(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face CLIPTextModel ``text_model.*`` state (prefix removed) in open_clip's names.

    q/k/v projections are stacked into ``in_proj_*`` (open_clip's nn.MultiheadAttention), layer norms and MLP
    layers renamed; position ids and anything else are dropped.
    """
    renames = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    parts = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    out = {new: state[old] for old, new in renames.items() if old in state}
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
            for old, new in parts.items():
                out[f"{dst}{new}.{kind}"] = state[f"{src}{old}.{kind}"]
    return out


def sdxl_checkpoint_text_states(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Both text encoders' states (open_clip names) from an SDXL .safetensors checkpoint."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"SDXL checkpoint not found: {p}")
    with safe_open(str(p), framework="pt") as handle:
        keys = list(handle.keys())
        clip_l = {
            k[len(SDXL_CLIP_L_PREFIX) :]: handle.get_tensor(k)
            for k in keys
            if k.startswith(SDXL_CLIP_L_PREFIX)
        }
        clip_g = {
            k[len(SDXL_CLIP_G_PREFIX) :]: handle.get_tensor(k)
            for k in keys
            if k.startswith(SDXL_CLIP_G_PREFIX)
        }
    if not clip_l or not clip_g:
        raise TrainingError(
            f"{p} holds no SDXL text encoders (no {SDXL_CLIP_L_PREFIX}* or {SDXL_CLIP_G_PREFIX}* tensors)"
        )
    return {"clip_l": open_clip_state_from_hf_text(clip_l), "clip_g": clip_g}


def load_state_into_tower(
    tower: torch.nn.Module, state: dict[str, torch.Tensor], source: str, name: str
) -> None:
    """Load a text-tower state strictly, except tensors the hidden states never read (zeroed when absent)."""
    wanted = tower.state_dict()
    missing = [k for k in wanted if k not in state and k not in UNUSED_FOR_HIDDEN_STATES]
    if missing:
        raise TrainingError(f"{source} lacks {name} text-tower tensors, e.g. {missing[:3]}")
    bad = [k for k in wanted if k in state and tuple(state[k].shape) != tuple(wanted[k].shape)]
    if bad:
        raise TrainingError(
            f"{source}: {name} tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
            f"the {name} tower needs {tuple(wanted[bad[0]].shape)}"
        )
    tower.load_state_dict({k: state[k] if k in state else torch.zeros_like(wanted[k]) for k in wanted})


def load_text_tower(
    spec: TextTowerSpec,
    *,
    weights: str | Path | None = None,
    state: dict[str, torch.Tensor] | None = None,
    allow_download: bool = False,
    random_seed: int | None = None,
) -> torch.nn.Module:
    """The text tower, eval mode: weights from a safetensors file, a state, open_clip's hub, or random."""
    if state is not None:
        tower = build_text_tower(spec)
        load_state_into_tower(tower, state, "the SDXL checkpoint", spec.name)
        return tower.eval().requires_grad_(False)
    if random_seed is not None and weights is None:
        return random_text_tower(spec, random_seed)
    if weights is None and not allow_download:
        raise TrainingError(
            f"no weights for the {spec.name} text encoder ({spec.arch} {spec.pretrained}): pass a local "
            f"safetensors file of it (--{spec.name.replace('_', '-')}-weights FILE) or allow downloading"
        )
    if weights is not None and not Path(weights).is_file():
        raise TrainingError(f"{spec.name} text-encoder weights not found: {weights}")
    tower = build_text_tower(spec)
    if weights is not None:
        from safetensors.torch import load_file

        path = Path(weights)
        load_state_into_tower(tower, text_state_from_checkpoint(load_file(str(path))), str(path), spec.name)
    elif allow_download:
        import open_clip

        full = open_clip.create_model(spec.arch, pretrained=spec.pretrained, force_quick_gelu=spec.quick_gelu)
        tower.load_state_dict(
            {
                k: v
                for k, v in text_state_from_checkpoint(full.state_dict()).items()
                if k in tower.state_dict()
            },
            strict=True,
        )
    return tower.eval().requires_grad_(False)


def tokenize_line(text: str, comma_backtrack: int = COMMA_PADDING_BACKTRACK) -> list[list[int]]:
    """The WebUI's chunking of one prompt without emphasis or textual inversion: 77-token chunks."""
    from open_clip.tokenizer import _tokenizer as tokenizer

    start, end = tokenizer.encoder["<start_of_text>"], tokenizer.encoder["<end_of_text>"]
    comma = tokenizer.encoder[",</w>"]
    chunks: list[list[int]] = []
    chunk: list[int] = []
    last_comma = -1

    def close(current: list[int]) -> None:
        chunks.append([start] + current + [end] * (CHUNK_TEXT_TOKENS - len(current)) + [end])

    for token in tokenizer.encode(text):
        if token == comma:
            last_comma = len(chunk)
        elif (
            comma_backtrack
            and len(chunk) == CHUNK_TEXT_TOKENS
            and last_comma != -1
            and len(chunk) - last_comma <= comma_backtrack
        ):
            moved = chunk[last_comma + 1 :]
            close(chunk[: last_comma + 1])
            chunk, last_comma = moved, -1
        if len(chunk) == CHUNK_TEXT_TOKENS:
            close(chunk)
            chunk, last_comma = [], -1
        chunk.append(token)
    if chunk or not chunks:
        close(chunk)
    return chunks


def empty_chunk() -> list[int]:
    """The chunk the WebUI uses to pad a batch whose prompts have fewer chunks: start + 76 end tokens."""
    return tokenize_line("")[0]


def hidden_before_last_block(
    tower: torch.nn.Module, tokens: torch.Tensor, pad_with_end_token: bool
) -> torch.Tensor:
    """(B, 77) tokens -> (B, 77, width): the output after all blocks but the last, no final layer norm."""
    tokens = tokens.clone()
    if not pad_with_end_token:
        end = int(tokens[0, -1])
        for row in tokens:
            first_end = int((row == end).nonzero()[0])
            row[first_end + 1 :] = 0
    transformer = tower.transformer
    cast_dtype = transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast_dtype) + tower.positional_embedding.to(cast_dtype)
    batch_first = getattr(transformer, "batch_first", False)
    if not batch_first:
        x = x.permute(1, 0, 2)
    for block in transformer.resblocks[:-1]:
        x = block(x, attn_mask=tower.attn_mask)
    return x if batch_first else x.permute(1, 0, 2)


class SDXLTextEncoder:
    """Both SDXL text towers; ``encode(texts)`` -> (B, 77k, 768 + 1280) as the WebUI's ``crossattn``."""

    def __init__(
        self, towers: list[tuple[TextTowerSpec, torch.nn.Module]], device: str | torch.device = "cpu"
    ):
        self.device = torch.device(device)
        self.towers = [(spec, tower.to(self.device)) for spec, tower in towers]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Encode prompts (no emphasis syntax) exactly as the WebUI's SDXL conditioner does, float32."""
        per_text = [tokenize_line(t) for t in texts]
        count = max(len(c) for c in per_text)
        outputs = []
        for index in range(count):
            batch = [c[index] if index < len(c) else empty_chunk() for c in per_text]
            tokens = torch.tensor(batch, dtype=torch.long, device=self.device)
            widths = [
                hidden_before_last_block(tower, tokens, spec.pad_with_end_token).float()
                for spec, tower in self.towers
            ]
            outputs.append(torch.cat(widths, dim=-1))
        return torch.cat(outputs, dim=1)
