"""The one factory of name encoders: a :class:`~lib_magicnaming.model.NameEncoder` from its config.

The config (:mod:`lib_magicnaming.model`) says what to build; the towers and their weights come from
:mod:`lib_magicnaming.towers`; the head is built here and loaded from the given state.
"""

from __future__ import annotations

import torch
from torch import nn

from lib_magicnaming.model import EncoderConfig, NameEncoder, NameHead, TowerSpec, init_head_
from lib_magicnaming.towers import (
    build_empty_tower,
    build_tower_module,
    check_state_weights,
    load_state_strict,
    load_tower,
)


def build_encoder(
    config: EncoderConfig,
    *,
    head_state: dict[str, torch.Tensor] | None = None,
    tower_states: dict[str, dict[str, torch.Tensor]] | None = None,
    models_dir: str | None = None,
    allow_download: bool = False,
    random_towers: bool = False,
    tower_dtype: torch.dtype = torch.float32,
) -> NameEncoder:
    """Build a :class:`NameEncoder` for ``config``, its towers in ``tower_dtype`` (the head in float32).

    Tower weights come from ``tower_states`` (e.g. stored in a checkpoint) when given for a tower, random
    when ``random_towers`` (tests, benchmarks), else from local files / open_clip (see towers.load_tower).
    Weights from ``tower_states``, files or open_clip must match the fingerprint a tower spec records.
    ``head_state`` loads the head (strict); without it the head is freshly initialised. Weights that are
    loaded are never initialised first (modules built on the meta device take the loaded tensors).
    """
    config.validate()
    tower_states = tower_states or {}
    towers = {
        spec.name: _build_tower(
            spec, tower_states.get(spec.name), models_dir, allow_download=allow_download,
            random=random_towers, dtype=tower_dtype,
        )
        for spec in config.towers
    }
    if head_state is None:
        head = init_head_(NameHead(config.head))
    else:
        with torch.device("meta"):
            head = NameHead(config.head)
        # its own copy of the given tensors (the caller's stay untouched), without a random init first
        load_state_strict(head, {k: v.to(torch.float32, copy=True) for k, v in head_state.items()}, "head",
                          assign=True)
    return NameEncoder(config, towers, head)


def _build_tower(
    spec: TowerSpec,
    state: dict[str, torch.Tensor] | None,
    models_dir: str | None,
    *,
    allow_download: bool,
    random: bool,
    dtype: torch.dtype,
) -> nn.Module:
    """One tower: with ``state`` (checked against the spec's fingerprint), random weights, or real ones."""
    if state is not None:
        tower, on_meta = build_empty_tower(spec, dtype)
        copies = {k: v.to(dtype if v.is_floating_point() else v.dtype, copy=True) for k, v in state.items()}
        load_state_strict(tower, copies, f"tower {spec.name}", assign=on_meta)
        check_state_weights(spec, state, f"the {spec.name} weights stored in the checkpoint")
        return tower
    if random:
        return build_tower_module(spec).to(dtype)
    return load_tower(spec, models_dir, allow_download=allow_download, dtype=dtype)

