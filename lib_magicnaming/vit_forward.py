"""A faster forward pass of open_clip's ViT image tower: the tower's own weights, the same function.

open_clip 2.20 (what A1111 ships) builds each block's attention as ``nn.MultiheadAttention(width, heads)``
with ``batch_first=False`` and runs the transformer on (tokens, batch, width). That never takes torch's
fused MultiheadAttention fast path (it requires ``batch_first=True``); the slow path
(``F.multi_head_attention_forward``) does reach ``scaled_dot_product_attention`` since torch 2.0, but first
copies the packed QKV projection into a contiguous (3, tokens, batch, width) tensor and the attention output
back, once per block. open_clip 3.x builds the same blocks with ``batch_first=True`` (the fast path can run,
in inference, with frozen weights).

:func:`fused_forward` runs the same tower batch first on every open_clip version: the patch embedding as one
matrix product over channels-last patches (the conv's kernel equals its stride), one packed QKV projection
(``in_proj_weight`` as stored) whose q, k and v are strided views handed straight to
``scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA), no layout copies. The state dict
and the parameters are untouched; only the order of floating-point operations may differ (tests compare it
with the tower's own forward). Towers with features this path does not implement (attentional pooling,
average pooling, patch norm, LayerScale in place, custom blocks, token outputs) run their own forward.

:class:`CompiledBlocks` compiles the one residual block function with ``torch.compile`` (the weights are
inputs, so every block of one width shares one compiled graph: two graphs for the two towers instead of one
graph of 80 unrolled blocks) and falls back to eager when compiling fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("magicnaming")

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")


def _activation_name(module: nn.Module) -> str | None:
    if type(module) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    if type(module).__name__ == "QuickGELU" and type(module).__module__.startswith("open_clip"):
        return "quick_gelu"
    return None


def _is_plain_layernorm(module: nn.Module) -> bool:
    """torch's LayerNorm or open_clip's LayerNorm (which only casts back to the input dtype); not
    open_clip's LayerNormFp32, which normalises in float32."""
    kind = type(module)
    if kind is nn.LayerNorm:
        return True
    return kind.__name__ == "LayerNorm" and kind.__module__.startswith("open_clip") and issubclass(
        kind, nn.LayerNorm
    )


def _layer_scale(module: nn.Module) -> torch.Tensor | None | bool:
    """The LayerScale gamma, None for Identity, False when unsupported (in-place scaling or unknown)."""
    if type(module) is nn.Identity:
        return None
    if type(module).__name__ == "LayerScale" and not getattr(module, "inplace", False):
        return module.gamma
    return False


def _block_supported(block: nn.Module) -> bool:
    attn = getattr(block, "attn", None)
    mlp = getattr(block, "mlp", None)
    if type(attn) is not nn.MultiheadAttention or not isinstance(mlp, nn.Sequential):
        return False
    if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
        return False
    if attn.in_proj_bias is None:
        return False
    if hasattr(block, "ln_1_kv") or not (_is_plain_layernorm(block.ln_1) and _is_plain_layernorm(block.ln_2)):
        return False
    if list(mlp._modules) != ["c_fc", "gelu", "c_proj"] or _activation_name(mlp.gelu) is None:
        return False
    if not all(type(mlp._modules[k]) is nn.Linear for k in ("c_fc", "c_proj")):
        return False
    return _layer_scale(block.ls_1) is not False and _layer_scale(block.ls_2) is not False


def supports_fused_forward(tower: nn.Module) -> bool:
    """Whether :func:`fused_forward` computes exactly what ``tower(pixels)`` does for this tower."""
    if type(tower).__name__ != "VisionTransformer" or not type(tower).__module__.startswith("open_clip"):
        return False
    if tower.training or getattr(tower, "output_tokens", False):
        return False
    if getattr(tower, "attn_pool", None) is not None:
        return False
    if getattr(tower, "input_patchnorm", False) or getattr(tower, "global_average_pool", False):
        return False
    if getattr(tower, "pool_type", "tok") != "tok":
        return False
    conv = getattr(tower, "conv1", None)
    if type(conv) is not nn.Conv2d or conv.kernel_size != conv.stride:
        return False
    if conv.padding not in ((0, 0), "valid"):
        return False
    if conv.dilation != (1, 1) or conv.groups != 1:
        return False
    if not (type(tower.ln_pre) is nn.Identity or _is_plain_layernorm(tower.ln_pre)):
        return False
    if not _is_plain_layernorm(tower.ln_post):
        return False
    if type(tower.patch_dropout) is not nn.Identity and tower.patch_dropout.training:
        return False
    blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
    return isinstance(blocks, nn.ModuleList) and len(blocks) > 0 and all(_block_supported(b) for b in blocks)


def residual_block(
    x: torch.Tensor,
    ln1_w: torch.Tensor, ln1_b: torch.Tensor,
    qkv_w: torch.Tensor, qkv_b: torch.Tensor,
    out_w: torch.Tensor, out_b: torch.Tensor,
    ls1: torch.Tensor | None,
    ln2_w: torch.Tensor, ln2_b: torch.Tensor,
    fc_w: torch.Tensor, fc_b: torch.Tensor,
    proj_w: torch.Tensor, proj_b: torch.Tensor,
    ls2: torch.Tensor | None,
    heads: int, act: str, eps1: float, eps2: float,
) -> torch.Tensor:
    """One open_clip ResidualAttentionBlock on batch-first tokens (N, L, D): pre-norm self-attention and MLP.

    A pure function of tensors (weights included), so ``torch.compile`` traces it once per shape and every
    block of a tower reuses that graph.
    """
    n, length, width = x.shape
    y = F.layer_norm(x, (width,), ln1_w, ln1_b, eps1)
    qkv = F.linear(y, qkv_w, qkv_b).view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (N, heads, L, head_dim) views of the packed projection: no copies
    attended = F.scaled_dot_product_attention(q, k, v)
    attended = F.linear(attended.transpose(1, 2).reshape(n, length, width), out_w, out_b)
    x = x + (attended if ls1 is None else attended * ls1)
    y = F.linear(F.layer_norm(x, (width,), ln2_w, ln2_b, eps2), fc_w, fc_b)
    if act == "quick_gelu":
        y = y * torch.sigmoid(1.702 * y)
    else:
        y = F.gelu(y, approximate="tanh" if act == "gelu_tanh" else "none")
    y = F.linear(y, proj_w, proj_b)
    return x + (y if ls2 is None else y * ls2)


BlockFunction = Callable[..., torch.Tensor]


def block_arguments(block: nn.Module) -> tuple:
    """The arguments of :func:`residual_block` after ``x`` for one open_clip block (its own tensors)."""
    attn, mlp = block.attn, block.mlp
    return (
        block.ln_1.weight, block.ln_1.bias,
        attn.in_proj_weight, attn.in_proj_bias,
        attn.out_proj.weight, attn.out_proj.bias,
        _layer_scale(block.ls_1),
        block.ln_2.weight, block.ln_2.bias,
        mlp.c_fc.weight, mlp.c_fc.bias,
        mlp.c_proj.weight, mlp.c_proj.bias,
        _layer_scale(block.ls_2),
        attn.num_heads, _activation_name(mlp.gelu), float(block.ln_1.eps), float(block.ln_2.eps),
    )


def patch_embedding(conv: nn.Conv2d, pixels: torch.Tensor) -> torch.Tensor:
    """``conv(pixels)`` as (N, patches, width) for a conv whose kernel equals its stride: one matrix product
    of channels-last patches with the conv weight (C, ph, pw order, as the weight stores it)."""
    n, channels, height, width = pixels.shape
    ph, pw = conv.kernel_size
    gh, gw = height // ph, width // pw
    patches = pixels[:, :, : gh * ph, : gw * pw].reshape(n, channels, gh, ph, gw, pw)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, channels * ph * pw)
    return F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias)


def fused_forward(tower: nn.Module, pixels: torch.Tensor, block_fn: BlockFunction = residual_block):
    """``tower(pixels)`` for an open_clip VisionTransformer that :func:`supports_fused_forward` accepts."""
    x = patch_embedding(tower.conv1, pixels)
    cls = tower.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + tower.positional_embedding.to(x.dtype)
    x = tower.ln_pre(x)
    for block in tower.transformer.resblocks:
        x = block_fn(x, *block_arguments(block))
    pooled = tower.ln_post(x[:, 0])
    return pooled if tower.proj is None else pooled @ tower.proj


def tower_forward(tower: nn.Module, pixels: torch.Tensor, block_fn: BlockFunction | None = None):
    """The tower on ``pixels``: :func:`fused_forward` where supported (``block_fn`` or the eager block),
    else the tower's own forward."""
    if supports_fused_forward(tower):
        return fused_forward(tower, pixels, block_fn or residual_block)
    return tower(pixels)


class CompiledBlocks:
    """:func:`residual_block` under ``torch.compile`` (one graph per block shape), eager when compiling fails.

    The first failure is logged once (``magicnaming`` logger) and every later call runs eagerly: a training
    run never stops because a compiler is missing (no Triton, Windows, an old GPU).
    """

    def __init__(self, mode: str | None = None):
        self.failed: str | None = None
        try:
            self._compiled = torch.compile(residual_block, dynamic=False, mode=mode)
        except Exception as err:  # noqa: BLE001 - torch.compile unsupported here: eager it is
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        self.failed = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        logger.warning("torch.compile of the tower blocks failed (%s); running them eagerly", self.failed)
        logger.debug("torch.compile failure", exc_info=err)

    def __call__(self, *args) -> torch.Tensor:
        if self.failed is None:
            try:
                return self._compiled(*args)
            except Exception as err:  # noqa: BLE001 - any compiler error: fall back, once
                self._fail(err)
        return residual_block(*args)
