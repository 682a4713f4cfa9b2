"""The likeness stage's images: each row's WebUI-identical conditioning through diffusers' SDXL pipeline.

Text encoders: SDXL's own, from the checkpoint the images come from (the WebUI's layout: its Hugging Face
CLIP-L renamed to open_clip's names, its bigG as it is; or a diffusers folder's ``text_encoder`` and
``text_encoder_2``), or per-tower open_clip files (``--clip-l-weights``/``--clip-g-weights``), or random
towers of ``--text-towers`` specs (``--random-text-towers SEED``: tests, demo), exactly the options of the
targets stage. Images are written atomically as PNG, one at a time, so an interrupted run loses at most the
image it was making.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lib_magicnaming.atomic import write_atomic
from training.common import TrainingError, read_json
from training.prompt_conditioning import SDXLConditioning, WebUIConditioner, fill, match_lengths


@dataclass(frozen=True)
class Job:
    """One image: a person's method row, prompt and seed, and the file it goes to."""

    folder: str
    row: str
    prompt_index: int
    seed: int
    path: Path


def text_tower_specs(path: str | None):
    """The two text-tower specs: SDXL's, or those of a ``{"towers": [...]}`` JSON file."""
    from training.text_encoders import SDXL_CLIP_G, SDXL_CLIP_L, TextTowerSpec

    if not path:
        return [SDXL_CLIP_L, SDXL_CLIP_G]
    towers = read_json(path, "text-tower specs").get("towers")
    try:
        specs = [TextTowerSpec(**tower) for tower in towers]
    except TypeError as exc:
        raise TrainingError(f"{path}: 'towers' must be a list of text-tower specs ({exc})") from exc
    if len(specs) != 2:
        raise TrainingError(f"{path}: SDXL has two text encoders, the file lists {len(specs)}")
    return specs


def text_encoder_source(args: argparse.Namespace) -> str:
    """Where the prompt encoders come from, in words (recorded with the generation settings)."""
    if args.random_text_towers is not None:
        return f"random, seed {args.random_text_towers}, specs {args.text_towers or 'SDXL'}"
    if args.clip_l_weights or args.clip_g_weights:
        return f"files {args.clip_l_weights}, {args.clip_g_weights}"
    return "the SDXL checkpoint's own"


def load_text_encoder(args: argparse.Namespace, device: torch.device):
    """SDXL's two text encoders, as :func:`text_encoder_source` says, on ``device``."""
    from training.targets import load_sdxl_text_encoder
    from training.text_encoders import SDXLTextEncoder, load_text_tower

    specs = text_tower_specs(args.text_towers)
    weights = [args.clip_l_weights, args.clip_g_weights]
    if args.random_text_towers is not None or any(weights):
        encoder = load_sdxl_text_encoder(
            specs,
            weights,
            allow_download=args.allow_download,
            random_seed=args.random_text_towers,
            device=str(device),
        )
    elif Path(args.sdxl).is_dir():
        from training.sdxl import folder_text_states

        states = folder_text_states(args.sdxl)
        towers = [(spec, load_text_tower(spec, state=states[spec.name])) for spec in specs]
        encoder = SDXLTextEncoder(towers, device=device)
    else:
        encoder = load_sdxl_text_encoder(specs, [None, None], sdxl_checkpoint=args.sdxl, device=str(device))
    if not bool(encoder.towers[-1][1].text_projection.detach().any()):
        raise TrainingError(
            f"{args.sdxl}: its bigG text encoder has no text_projection, so SDXL's pooled vector cannot be "
            "computed"
        )
    return encoder


def row_conditioning(
    conditioner: WebUIConditioner,
    row: str,
    template: str,
    f_id: torch.Tensor,
    real_name: str | None,
    subject: str,
) -> SDXLConditioning:
    """One method row's conditioning for one prompt template."""
    if row == "identity":
        return conditioner.prepended(fill(template, subject), f_id)
    if row == "identity_in_place":
        return conditioner.in_place(template, f_id)
    if row == "real_name":
        return conditioner.plain(fill(template, real_name))
    if row == "no_identity":
        return conditioner.plain(fill(template, subject))
    raise TrainingError(f"unknown method row {row!r}")


def generate_missing(missing: list[Job], people: dict, prompts: list[str], args, device, progress) -> int:
    """Generate and atomically write every missing image; returns how many were made.

    ``people``: folder -> (F_ID, real name or None). ``progress``: has ``update()``.
    """
    from training.sdxl import load_generator

    conditioner = WebUIConditioner(load_text_encoder(args, device))
    empty, negative = conditioner.plain(""), conditioner.negative(args.negative_prompt)
    generator = load_generator(args.sdxl, config_folder=args.sdxl_config, sampler=args.sampler, device=device)
    key, cond, uncond, shown = None, None, None, set()
    for job in missing:
        if key != (job.folder, job.row, job.prompt_index):
            key = (job.folder, job.row, job.prompt_index)
            f_id, real_name = people[job.folder]
            made = row_conditioning(
                conditioner, job.row, prompts[job.prompt_index], f_id, real_name, args.subject
            )
            cond, uncond = match_lengths(made, negative, empty)
            for note in set(made.notes) - shown:  # e.g. prompt text the identity pushed out of chunk 0
                print(f"likeness: prompt {job.prompt_index + 1} ({job.row}): {note}", file=sys.stderr)
                shown.add(note)
        image = generator.generate(
            cond,
            uncond,
            seed=job.seed,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            width=args.width,
            height=args.height,
        )
        job.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(job.path, lambda temp, image=image: image.save(temp, format="PNG"))
        progress.update()
    return len(missing)
