"""The training commands the README shows parse with the real command line (a renamed flag breaks this)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from training.cli import STAGES, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks of a Markdown text."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def readme_training_commands() -> list[list[str]]:
    """Each ``... -m training <stage> ...`` command in the README code blocks, as argv after ``training``."""
    commands = []
    for block in code_blocks(README.read_text(encoding="utf-8")):
        for command in block.replace("\\\n", " ").splitlines():
            if "-m training" not in command:
                continue
            words = shlex.split(command, comments=True)
            commands.append(words[words.index("training") + 1 :])
    return commands


def test_the_readme_shows_every_stage():
    shown = {argv[0] for argv in readme_training_commands()}
    assert shown == {name for name, _module, _summary in STAGES}


@pytest.mark.parametrize("argv", readme_training_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_readme_training_command_parses(argv):
    parser = build_parser(argv[0])
    parser.exit = lambda status=0, message=None: pytest.fail(f"{' '.join(argv)}: {message}")
    args = parser.parse_args(argv)
    assert args.stage == argv[0]
