"""Command-line flags of the MagicNaming extension (the WebUI calls ``preload(parser)`` before parsing)."""

from __future__ import annotations

import argparse


def preload(parser: argparse.ArgumentParser) -> None:
    """Add ``--magicnaming-dir`` and ``--magicnaming-device``; they override the matching settings."""
    parser.add_argument(
        "--magicnaming-dir",
        type=str,
        default=None,
        help="MagicNaming: folder holding identities/ and encoder/ (default: models/magicnaming)",
    )
    parser.add_argument(
        "--magicnaming-device",
        type=str,
        default=None,
        help="MagicNaming: photo encoder device: auto, cpu, cuda, cuda:N or mps (default: the setting)",
    )
