"""The one factory of name encoders: a :class:`~lib_magicnaming.model.NameEncoder` from its config.

The config (:mod:`lib_magicnaming.model`) says what to build; the towers and their weights come from
:mod:`lib_magicnaming.towers`; the head is built here and loaded from the given state.
"""

from __future__ import annotations

import torch
from torch import nn

from lib_magicnaming.model import EncoderConfig, NameEncoder, NameHead, TowerSpec, init_head_
from lib_magicnaming.towers import build_tower_module, check_tower_weights, load_state_strict, load_tower


def build_encoder(
    config: EncoderConfig,
    *,
    head_state: dict[str, torch.Tensor] | None = None,
    tower_states: dict[str, dict[str, torch.Tensor]] | None = None,
    models_dir: str | None = None,
    allow_download: bool = False,
    random_towers: bool = False,
) -> NameEncoder:
    """Build a :class:`NameEncoder` for ``config``.

    Tower weights come from ``tower_states`` (e.g. stored in a checkpoint) when given for a tower, random
    when ``random_towers`` (tests, benchmarks), else from local files / open_clip (see towers.load_tower).
    Weights from ``tower_states``, files or open_clip must match the fingerprint a tower spec records.
    ``head_state`` loads the head (strict); without it the head is freshly initialised.
    """
    config.validate()
    tower_states = tower_states or {}
    towers = {
        spec.name: _build_tower(
            spec, tower_states.get(spec.name), models_dir, allow_download=allow_download, random=random_towers
        )
        for spec in config.towers
    }
    head = NameHead(config.head)
    if head_state is None:
        init_head_(head)
    else:
        load_state_strict(head, head_state, "head")
    return NameEncoder(config, towers, head)


def _build_tower(
    spec: TowerSpec,
    state: dict[str, torch.Tensor] | None,
    models_dir: str | None,
    *,
    allow_download: bool,
    random: bool,
) -> nn.Module:
    """One tower: with ``state`` (checked against the spec's fingerprint), random weights, or real ones."""
    if state is not None:
        tower = build_tower_module(spec)
        load_state_strict(tower, state, f"tower {spec.name}")
        check_tower_weights(spec, tower, f"the {spec.name} weights stored in the checkpoint")
        return tower
    if random:
        return build_tower_module(spec)
    return load_tower(spec, models_dir, allow_download=allow_download)
