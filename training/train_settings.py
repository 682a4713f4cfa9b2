"""What determines a training run: the ``train`` stage's settings, each with its command-line help.

The trainer (training.train) takes them from the command line; every training checkpoint records them
(training.train_state), so a resume can refuse changed settings and export can report them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lib_magicnaming.model import HeadConfig


def _setting(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrainSettings:
    """Everything that determines a training run (recorded in every checkpoint).

    Each field is a ``--flag`` of the ``train`` stage (dashes for underscores) whose help is
    ``metadata["help"]``.
    """

    steps: int = _setting(10000, "optimiser steps the schedule spans")
    batch_size: int = _setting(256, "examples per step on each rank")
    lr: float = _setting(1e-4, "peak learning rate (AdamW)")
    min_lr_ratio: float = _setting(0.05, "final learning rate as a fraction of the peak")
    warmup_steps: int = _setting(500, "linear warm-up steps")
    weight_decay: float = _setting(0.01, "AdamW weight decay")
    cosine_weight: float = _setting(0.0, "weight of the (1 - cosine similarity) term added to the MSE")
    grad_clip: float = _setting(1.0, "gradient norm clip (0: off)")
    hidden_dim: int = _setting(2048, "head hidden width (recorded in the checkpoint)")
    norm: str = _setting("layernorm", "head normalisation: layernorm or none")
    act: str = _setting("gelu", "head activation: gelu, relu or silu")
    val_fraction: float = _setting(0.05, "share of identities held out for validation")
    seed: int = _setting(0, "seed of the identity split, batch order and head initialisation")

    def head_config(self, in_dim: int) -> HeadConfig:
        """The head these settings train."""
        return HeadConfig(in_dim=in_dim, hidden_dim=self.hidden_dim, norm=self.norm, act=self.act).validate()
