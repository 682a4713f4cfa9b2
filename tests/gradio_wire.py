"""Driving a gr.Blocks' events as the browser does, read the same way on gradio 3.41 (A1111) and 4.40 (Forge).

The two gradios differ in the wire format only: an event's targets are component ids (3.41) or
``[id, event name]`` pairs (4.40); session state is a plain dict (3.41) or a ``SessionState`` (4.40, which
starts a fresh one when handed an empty dict); dropdown choices are names (3.41) or ``[label, value]``
pairs (4.40); gallery items are ``[image, caption]`` (3.41) or ``{"image": ..., "caption": ...}`` (4.40).
"""

from __future__ import annotations

from typing import Any

import gradio as gr


def target_ids(dependency: dict) -> list[int]:
    """The ids of the components whose events fire this dependency (an entry of the config's dependencies)."""
    return [target if isinstance(target, int) else target[0] for target in dependency["targets"]]


def new_session(blocks: gr.Blocks) -> Any:
    """One browser session's state, to pass as ``process_api(..., state=...)`` to every event of a test."""
    if gr.__version__.startswith("3."):
        return {}
    from gradio.state_holder import SessionState

    return SessionState(blocks)


def choice_values(choices: list) -> list:
    """Dropdown choices as their values."""
    return [choice if isinstance(choice, str) else choice[1] for choice in choices]


def gallery_captions(gallery: list) -> list[str]:
    """The captions of a gallery value as gradio sends it to the browser."""
    return [item["caption"] if isinstance(item, dict) else item[1] for item in gallery]
