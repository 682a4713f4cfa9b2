"""Portraits: small pictures of identities drawn by the loaded SDXL model through the WebUI's own txt2img.

:func:`webui_draw` draws a :class:`DrawJob` — identities that need not be saved (candidates of Sample) and the
:class:`PortraitSettings` — in ONE batch, one image per identity, as the WebUI's API does a txt2img: a
``StableDiffusionProcessingTxt2Img`` with the txt2img script runner, every AlwaysOn script at its UI default
and MagicNaming's on, ``p.is_api`` set (so the Seed and Sampler sections' UI values do not replace the
portrait's own), nothing saved to the outputs folder. Each image's prompt is the fixed portrait prompt with a
``<name:...>`` tag; the identities travel with the processing object (``p.magicnaming_unsaved``, read by
:mod:`.generation` as it reads the one-off face), never through the library or module globals. Every image
of a batch gets the same seed, so candidates differ by their identity only.

The caller holds the WebUI's queue lock (:mod:`.sampling` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lib_magicnaming.errors import EncoderError, MagicNamingError
from lib_magicnaming.tags import identity_key
from lib_magicnaming.webui.limits import MAX_PORTRAITS, PORTRAIT_SIZE_RANGE, PORTRAIT_STEPS_RANGE

PORTRAIT_PROMPT = "portrait photo of {tag}, plain background"
PORTRAIT_NEGATIVE_PROMPT = "blurry, lowres, deformed, text, watermark"
SCRIPT_TITLE = "MagicNaming"
JOB_NAME = "magicnaming-portraits"
UNSAVED_IDENTITIES_ATTRIBUTE = "magicnaming_unsaved"
"""Set on ``p`` by code that draws identities that are not in the library (Sample's candidates): identity key
-> (name, embedding). :mod:`.generation` resolves a tag naming one to it, as ``<name:face>`` to the uploaded
face; the identities travel with this generation only."""


@dataclass(frozen=True)
class PortraitSettings:
    """How portraits are drawn: a short fixed prompt, few steps, a small square, one fixed seed."""

    size: int = 640
    steps: int = 12
    seed: int = 1234
    cfg_scale: float = 5.0
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Karras"

    def validate(self) -> PortraitSettings:
        """MagicNamingError naming a size, step count, seed or CFG scale out of range."""
        for what, value in (("size", self.size), ("steps", self.steps), ("seed", self.seed)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise MagicNamingError(f"the portrait {what} must be a whole number, not {value!r}")
        low, high = PORTRAIT_SIZE_RANGE
        if not low <= self.size <= high or self.size % 64:
            raise MagicNamingError(f"the portrait size must be a multiple of 64 from {low} to {high}, not "
                                   f"{self.size}")
        low, high = PORTRAIT_STEPS_RANGE
        if not low <= self.steps <= high:
            raise MagicNamingError(f"portraits take {low} to {high} steps, not {self.steps}")
        if not 0 <= self.seed < 1 << 32:
            raise MagicNamingError(f"the portrait seed must be from 0 to {(1 << 32) - 1}, not {self.seed}")
        if not isinstance(self.cfg_scale, int | float) or not 1.0 <= float(self.cfg_scale) <= 30.0:
            raise MagicNamingError(f"the portrait CFG scale must be from 1 to 30, not {self.cfg_scale!r}")
        return self

    @staticmethod
    def prompt_for(name: str) -> str:
        """The portrait prompt for the identity called ``name``."""
        return PORTRAIT_PROMPT.format(tag=f"<name:{name}>")


@dataclass(frozen=True)
class DrawJob:
    """Identities to draw, one image each, as (name used in the tag, embedding (8, 2048))."""

    identities: tuple[tuple[str, torch.Tensor], ...]
    settings: PortraitSettings

    def __post_init__(self) -> None:
        if not 1 <= len(self.identities) <= MAX_PORTRAITS:
            raise MagicNamingError(f"portraits are drawn 1 to {MAX_PORTRAITS} at a time, not "
                                   f"{len(self.identities)}")
        keys = [identity_key(name) for name, _ in self.identities]
        if len(set(keys)) != len(keys):
            raise MagicNamingError("each portrait of a batch needs its own identity name")
        self.settings.validate()

    @property
    def unsaved(self) -> dict[str, tuple[str, torch.Tensor]]:
        """What ``p.magicnaming_unsaved`` carries: identity key -> (name, embedding)."""
        return {identity_key(name): (name, embedding) for name, embedding in self.identities}


def magicnaming_script(runner: Any) -> Any:
    """MagicNaming's AlwaysOn script in a script runner; EncoderError when it is not loaded there."""
    for script in getattr(runner, "alwayson_scripts", None) or []:
        if script.title() == SCRIPT_TITLE:
            return script
    raise EncoderError("MagicNaming's txt2img script is not loaded, so no portrait can be drawn: check the "
                       "WebUI's console for an error loading scripts/magicnaming.py")


def script_args_for_portraits(runner: Any, script: Any) -> list[Any]:
    """Every script's args at its UI default (as the WebUI's API fills args a request leaves out), no
    selectable script, and MagicNaming on, its other args None: their defaults (:mod:`.script_args`)."""
    inputs = list(getattr(runner, "inputs", None) or [None])
    args = [getattr(control, "value", None) for control in inputs]
    args[0] = 0
    width = script.args_to - script.args_from
    args[script.args_from : script.args_to] = [True] + [None] * (width - 1)
    return args


def webui_draw(job: DrawJob) -> list[Any]:
    """Draw ``job`` with the loaded model through the WebUI's txt2img processing: one PIL image per identity,
    in order. Raises what the generation raises (a MagicNamingError that stopped it, or the WebUI's own)."""
    from contextlib import closing

    from modules import processing, scripts, shared

    from lib_magicnaming.webui import compat
    from lib_magicnaming.webui.conditioning import require_sdxl

    model = compat.load_model("portraits")  # a WebUI that loads its checkpoint lazily may not have yet
    require_sdxl(model)
    runner = scripts.scripts_txt2img
    if runner is None:
        raise EncoderError("the WebUI's txt2img scripts are not set up yet: try again once it has started")
    script = magicnaming_script(runner)
    settings, count = job.settings, len(job.identities)
    p = processing.StableDiffusionProcessingTxt2Img(
        sd_model=model,
        prompt=[settings.prompt_for(name) for name, _ in job.identities],
        negative_prompt=PORTRAIT_NEGATIVE_PROMPT,
        seed=[settings.seed] * count,
        subseed=-1,
        subseed_strength=0.0,
        batch_size=count,
        n_iter=1,
        steps=settings.steps,
        cfg_scale=float(settings.cfg_scale),
        width=settings.size,
        height=settings.size,
        **compat.sampler_fields(processing.StableDiffusionProcessingTxt2Img, settings.sampler_name,
                                settings.scheduler),
        do_not_save_samples=True,
        do_not_save_grid=True,
    )
    p.is_api = True
    setattr(p, UNSAVED_IDENTITIES_ATTRIBUTE, job.unsaved)
    p.scripts = runner
    p.script_args = tuple(script_args_for_portraits(runner, script))
    with closing(p):
        shared.state.begin(job=JOB_NAME)
        try:
            processed = processing.process_images(p)
        finally:
            shared.state.end()
    images = list(processed.images)[:count]
    if len(images) != count:
        raise MagicNamingError(f"the WebUI drew {len(images)} portrait(s) for {count} identities "
                               "(interrupted?)")
    return images

