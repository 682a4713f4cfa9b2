"""Stand-in for modules/devices.py: CPU only, float32, no-op autocast."""

import contextlib

import torch

cpu = torch.device("cpu")
device = cpu
dtype = torch.float32
dtype_vae = torch.float32
dtype_unet = torch.float32
unet_needs_upcast = False


def torch_gc() -> None:
    """Free cached GPU memory (nothing to do on CPU)."""


def autocast(disable=False):
    """The real one returns torch.autocast on GPU; on CPU with float32 it is a null context."""
    return contextlib.nullcontext()


def without_autocast(disable=False):
    return contextlib.nullcontext()


def cond_cast_unet(tensor):
    """Cast to the U-Net's dtype (float32 here)."""
    return tensor.to(dtype_unet)
