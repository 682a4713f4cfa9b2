"""The command line: one sub-command per stage, each with ``--help`` explaining it."""

from __future__ import annotations

import argparse
import importlib
import sys

from lib_magicnaming.errors import MagicNamingError

STAGES: list[tuple[str, str, str]] = [
    (
        "names",
        "training.names",
        "extract person names from captions (or read a list), merge spellings, count",
    ),
    (
        "images",
        "training.images",
        "index root/<Name>/*.jpg, download URL lists (img2dataset) or generate (SDXL)",
    ),
    (
        "faces",
        "training.faces",
        "capture face crops; optional identity-consistency filter; drop small identities",
    ),
    (
        "targets",
        "training.targets",
        "F_ID per name with SDXL's two text encoders, exactly as the WebUI encodes",
    ),
    ("features", "training.features", "CLIP image-tower features of every face crop into resumable shards"),
    (
        "train",
        "training.train",
        "train the MLP head on the features (AdamW, warm-up+cosine, DDP under torchrun)",
    ),
    ("eval", "training.evaluate", "MSE, cosine and retrieval top-1/top-5 on held-out identities; loss plot"),
    (
        "export",
        "training.export",
        "write the extension's encoder checkpoint (format v1) with name-space stats",
    ),
    (
        "likeness",
        "training.likeness",
        "does SDXL draw the person? face similarity and CLIP-T of generated images, with peers' baselines",
    ),
    (
        "demo",
        "training.demo",
        "tiny synthetic dataset through every stage on CPU, ending in encoder.safetensors",
    ),
]


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per stage.

    Only the ``selected`` stage's module is imported (it supplies that sub-parser's options and docs), so
    one stage's heavy or optional imports never slow or break another stage.
    """
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="MagicNaming training pipeline. Stages run in the order listed; each reads the previous "
        "stage's output files. Use `python -m training <stage> --help` for a stage's options.",
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")
    for name, module_name, summary in STAGES:
        if name != selected:
            sub.add_parser(name, help=summary, description=summary)
            continue
        module = importlib.import_module(module_name)
        stage_parser = sub.add_parser(
            name,
            help=summary,
            description=(module.__doc__ or summary).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(stage_main=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one stage; a pipeline error prints its message and returns 2."""
    argv = sys.argv[1:] if argv is None else argv
    stage = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(stage).parse_args(argv)
    try:
        args.stage_main(args)
    except MagicNamingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
