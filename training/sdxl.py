"""SDXL for generating test images: diffusers' U-Net, VAE and scheduler, loaded offline.

Two sources:

* the SDXL checkpoint file the WebUI loads (one ``.safetensors`` in the WebUI/sgm layout:
  ``model.diffusion_model.*``, ``first_stage_model.*``, ``conditioner.embedders.*``). Its U-Net and VAE are
  converted with diffusers' own conversion functions (``convert_ldm_unet_checkpoint``,
  ``convert_ldm_vae_checkpoint``) against local configs: by default SDXL base's published configs, shipped in
  ``training/sdxl_configs/`` (``unet.json``, ``vae.json``, ``scheduler.json``), so nothing is fetched from the
  Hub (diffusers' ``from_single_file`` would). ``--sdxl-config DIR`` gives other configs (same three files);
* a diffusers folder (``unet/``, ``vae/``, ``scheduler/``; ``text_encoder/``, ``text_encoder_2/`` when its
  text encoders are used), read with ``local_files_only``.

The pipeline gets no text encoders: prompts are encoded by :mod:`training.prompt_conditioning` exactly as the
WebUI encodes them, and reach diffusers' ``StableDiffusionXLPipeline`` as ``prompt_embeds`` (77k x 2048) and
``pooled_prompt_embeds`` (1280). diffusers adds SDXL's size conditioning itself (original size = target size =
the image size, crop 0, 0: the WebUI's defaults). Samplers: ``dpmpp_2m_karras`` (DPM++ 2M with the Karras
schedule, the WebUI's default sampler), ``euler``, ``euler_a``.

diffusers (and transformers, which its SDXL pipeline imports) is an optional dependency: only this module
imports it, and says what to install when it is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from training.common import TrainingError
from training.text_encoders import open_clip_state_from_hf_text

SDXL_CONFIGS = Path(__file__).resolve().parent / "sdxl_configs"
"""SDXL base's published U-Net, VAE and scheduler configs, written for this project as JSON."""
CONFIG_FILES = {"unet": "unet.json", "vae": "vae.json", "scheduler": "scheduler.json"}
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
DIFFUSERS_PIN = "pip install diffusers==0.37.1 transformers==4.57.6"
SAMPLERS = ("dpmpp_2m_karras", "euler", "euler_a")
DEFAULT_SAMPLER = "dpmpp_2m_karras"
HF_TEXT_PREFIX = "text_model."
HF_TEXT_FILES = ("model.safetensors", "model.fp16.safetensors")


def import_diffusers():
    """The diffusers module, or a TrainingError saying what to install."""
    try:
        import diffusers
        from diffusers import StableDiffusionXLPipeline  # noqa: F401 - imports transformers too
    except ImportError as exc:
        raise TrainingError(
            f"generating images needs the optional dependencies diffusers and transformers: {DIFFUSERS_PIN} "
            f"({exc})"
        ) from exc
    return diffusers


def read_configs(folder: str | Path = SDXL_CONFIGS) -> dict[str, dict]:
    """The U-Net, VAE and scheduler configs in ``folder`` (unet.json, vae.json, scheduler.json)."""
    base = Path(folder)
    configs = {}
    for part, file_name in CONFIG_FILES.items():
        path = base / file_name
        if not path.is_file():
            needs = ", ".join(CONFIG_FILES.values())
            raise TrainingError(f"SDXL config folder {base} lacks {file_name} (it needs {needs})")
        try:
            configs[part] = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise TrainingError(f"{path} is not valid JSON ({exc})") from exc
    return configs


def make_scheduler(config: dict, sampler: str):
    """The diffusers scheduler for ``sampler`` from a base (Euler) scheduler config."""
    diffusers = import_diffusers()
    if sampler == "dpmpp_2m_karras":
        return diffusers.DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    if sampler == "euler":
        return diffusers.EulerDiscreteScheduler.from_config(config)
    if sampler == "euler_a":
        return diffusers.EulerAncestralDiscreteScheduler.from_config(config)
    raise TrainingError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def _read_prefixed(path: Path, prefixes: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """{prefix: {full key: tensor}} of a safetensors file, reading only the tensors under those prefixes."""
    from safetensors import SafetensorError, safe_open

    found: dict[str, dict[str, torch.Tensor]] = {prefix: {} for prefix in prefixes}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                prefix = next((p for p in prefixes if key.startswith(p)), None)
                if prefix is not None:
                    found[prefix][key] = handle.get_tensor(key)
    except (SafetensorError, OSError) as exc:
        raise TrainingError(f"{path} is not a readable safetensors file ({exc})") from exc
    return found


def _build_loaded(model_class, config: dict, state: dict[str, torch.Tensor], what: str, source: Path):
    """``model_class`` from ``config`` with exactly ``state`` as its weights (built without initialising)."""
    try:
        with torch.device("meta"):
            model = model_class.from_config(config)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"the {what} config cannot build a {model_class.__name__} ({exc})") from exc
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in wanted]
    bad = [k for k in wanted if k in state and tuple(state[k].shape) != tuple(wanted[k].shape)]
    if missing or unexpected or bad:
        detail = "; ".join(
            f"{label} {items[:3]}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad))
            if items
        )
        raise TrainingError(
            f"{source}: its {what} does not match the {what} config ({detail}). Is it an SDXL "
            "base-architecture checkpoint? Other architectures need their own configs (--sdxl-config DIR)."
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def load_single_file(path: str | Path, configs: dict[str, dict], dtype: torch.dtype):
    """(unet, vae) from a WebUI/sgm SDXL checkpoint, converted by diffusers' functions against ``configs``."""
    diffusers = import_diffusers()
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"SDXL checkpoint not found: {p}")
    parts = _read_prefixed(p, (UNET_PREFIX, VAE_PREFIX))
    for prefix, what in ((UNET_PREFIX, "U-Net"), (VAE_PREFIX, "VAE")):
        if not parts[prefix]:
            raise TrainingError(f"{p} holds no SDXL {what} (no {prefix}* tensors): is it an SDXL checkpoint?")
    unet_state = convert_ldm_unet_checkpoint(parts[UNET_PREFIX], configs["unet"])
    vae_state = convert_ldm_vae_checkpoint(parts[VAE_PREFIX], configs["vae"])
    del parts
    unet_state = {k: v.to(dtype) for k, v in unet_state.items()}
    vae_state = {k: v.to(dtype) for k, v in vae_state.items()}
    unet = _build_loaded(diffusers.UNet2DConditionModel, configs["unet"], unet_state, "U-Net", p)
    vae = _build_loaded(diffusers.AutoencoderKL, configs["vae"], vae_state, "VAE", p)
    return unet, vae


def _has_accelerate() -> bool:
    """diffusers skips random initialisation when loading (much faster for SDXL) only with accelerate."""
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def load_folder(path: str | Path, dtype: torch.dtype):
    """(unet, vae, scheduler config) from a diffusers SDXL folder, offline."""
    diffusers = import_diffusers()
    base = Path(path)
    for part in ("unet", "vae", "scheduler"):
        if not (base / part).is_dir():
            raise TrainingError(f"{base} is not a diffusers SDXL folder: it has no {part}/ folder")
    try:
        options = {"torch_dtype": dtype, "local_files_only": True, "low_cpu_mem_usage": _has_accelerate()}
        unet = diffusers.UNet2DConditionModel.from_pretrained(base, subfolder="unet", **options)
        vae = diffusers.AutoencoderKL.from_pretrained(base, subfolder="vae", **options)
        scheduler = diffusers.EulerDiscreteScheduler.load_config(
            base, subfolder="scheduler", local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot load the diffusers folder {base} ({exc})") from exc
    return unet.eval().requires_grad_(False), vae.eval().requires_grad_(False), dict(scheduler)


def _read_hf_text_file(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    for name in HF_TEXT_FILES:
        if (folder / name).is_file():
            return load_file(str(folder / name))
    raise TrainingError(
        f"{folder} holds no {' or '.join(HF_TEXT_FILES)} (text encoders are read from safetensors only)"
    )


def folder_text_states(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Both text encoders of a diffusers SDXL folder in open_clip's names (as the targets stage loads them).

    ``text_encoder`` (CLIPTextModel) and ``text_encoder_2`` (CLIPTextModelWithProjection: its
    ``text_projection`` Linear is open_clip's projection matrix transposed).
    """
    base = Path(path)
    states = {}
    for tower, sub in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2")):
        raw = _read_hf_text_file(base / sub)
        text = {k[len(HF_TEXT_PREFIX) :]: v for k, v in raw.items() if k.startswith(HF_TEXT_PREFIX)}
        if not text:
            raise TrainingError(f"{base / sub} holds no {HF_TEXT_PREFIX}* tensors of a CLIP text model")
        state = open_clip_state_from_hf_text(text)
        if "text_projection.weight" in raw:
            state["text_projection"] = raw["text_projection.weight"].T.contiguous()
        states[tower] = state
    return states


@dataclass
class SDXLGenerator:
    """diffusers' SDXL pipeline without text encoders, fed with WebUI-identical prompt conditioning."""

    pipeline: object
    device: torch.device

    @torch.no_grad()
    def generate(self, cond, uncond, *, seed: int, steps: int, cfg_scale: float, width: int, height: int):
        """One image (PIL) from ``cond``/``uncond`` (:class:`~training.prompt_conditioning.SDXLConditioning`,
        the same number of rows) at ``seed`` (a torch generator on the generating device, as the WebUI's
        default "GPU" noise source)."""
        dtype = self.pipeline.unet.dtype
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        result = self.pipeline(
            prompt_embeds=cond.crossattn[None].to(self.device, dtype),
            pooled_prompt_embeds=cond.pooled[None].to(self.device, dtype),
            negative_prompt_embeds=uncond.crossattn[None].to(self.device, dtype),
            negative_pooled_prompt_embeds=uncond.pooled[None].to(self.device, dtype),
            num_inference_steps=steps,
            guidance_scale=cfg_scale,
            width=width,
            height=height,
            generator=generator,
            output_type="pil",
        )
        return result.images[0]


def build_generator(unet, vae, scheduler_config: dict, sampler: str, device: torch.device) -> SDXLGenerator:
    """The text-encoder-less SDXL pipeline on ``device`` with ``sampler``."""
    diffusers = import_diffusers()
    pipeline = diffusers.StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        unet=unet,
        scheduler=make_scheduler(scheduler_config, sampler),
        add_watermarker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return SDXLGenerator(pipeline.to(device), device)


def load_generator(
    source: str | Path, *, config_folder: str | Path, sampler: str, device: torch.device
) -> SDXLGenerator:
    """The generator from an SDXL checkpoint file or a diffusers folder (float16 on CUDA, else float32)."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    path = Path(source)
    if path.is_dir():
        unet, vae, scheduler = load_folder(path, dtype)
    else:
        configs = read_configs(config_folder)
        unet, vae = load_single_file(path, configs, dtype)
        scheduler = configs["scheduler"]
    return build_generator(unet, vae, scheduler, sampler, device)


# --- tiny SDXL-shaped models (tests, demo) ---------------------------------------------------------------

TINY_UNET = {
    "block_out_channels": [16, 32, 32],
    "attention_head_dim": [2, 4, 4],
    "transformer_layers_per_block": [1, 1, 2],
    "norm_num_groups": 8,
    "sample_size": 8,
}
TINY_VAE = {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4, "sample_size": 64}


def tiny_configs() -> dict[str, dict]:
    """SDXL's configs with tiny widths: the same blocks, cross-attention 2048, added conditioning 2816."""
    configs = read_configs(SDXL_CONFIGS)
    configs["unet"].update(TINY_UNET)
    configs["vae"].update(TINY_VAE)
    return configs


def tiny_models(seed: int = 0, configs: dict[str, dict] | None = None):
    """(unet, vae) of :func:`tiny_configs` with seeded random weights, float32."""
    diffusers = import_diffusers()
    configs = configs or tiny_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel.from_config(configs["unet"])
        vae = diffusers.AutoencoderKL.from_config(configs["vae"])
    return unet.eval().requires_grad_(False), vae.eval().requires_grad_(False)


def write_diffusers_folder(folder: str | Path, unet, vae, scheduler_config: dict) -> Path:
    """A diffusers folder (unet/, vae/, scheduler/) of these models (text encoders are added separately)."""
    diffusers = import_diffusers()
    base = Path(folder)
    unet.save_pretrained(base / "unet")
    vae.save_pretrained(base / "vae")
    diffusers.EulerDiscreteScheduler.from_config(scheduler_config).save_config(base / "scheduler")
    return base
