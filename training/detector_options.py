"""The face-detector options that the ``faces`` and ``likeness`` stages share, and the detector they build.

Both stages find faces with the extension's own detectors (:mod:`lib_magicnaming.face_detectors`), so crops
for training and the identities a likeness run measures come from the same face capture as a user's photo:

* ``--detector yunet`` (the default): OpenCV's YuNet (MIT licence); its file is ``--yunet-file``, or is looked
  for in ``detectors/`` of ``--models-dir`` (the WebUI's ``models/magicnaming``) and fetched there with
  ``--allow-download``. YuNet gives the 5 landmarks too.
* ``--detector insightface``: the detector of the insightface pack ``--pack`` under ``--insightface-root``
  (the WebUI's ``models/insightface``; non-commercial packs).
* ``--assume-cropped``: no detector; each image's centred square is the face (drawn or pre-cropped data).

:func:`build_detector` checks what it can without loading a model first, so a missing file is named before
any costly work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lib_magicnaming.detector_files import YUNET_2023MAR, missing_file_message
from lib_magicnaming.detector_interface import FaceDetector
from lib_magicnaming.insightface_detector import (
    DEFAULT_PACK,
    INSIGHTFACE_MISSING,
    InsightFaceDetector,
    insightface_installed,
    missing_pack_message,
)
from lib_magicnaming.yunet_detector import YuNetDetector
from training.common import TrainingError

DETECTORS = ("yunet", "insightface")


def add_detector_arguments(parser, *, models_dir_also: str = "", downloads_also: str = "") -> None:
    """The shared options on ``parser`` (a parser or an argument group). ``models_dir_also`` and
    ``downloads_also``: what else a stage reads from ``--models-dir`` or fetches with ``--allow-download``."""
    parser.add_argument(
        "--detector", choices=DETECTORS, default="yunet",
        help="face detector: YuNet through OpenCV (MIT; default) or an insightface pack (non-commercial)",
    )
    parser.add_argument("--yunet-file", help=f"the YuNet model file ({YUNET_2023MAR.name})")
    parser.add_argument(
        "--models-dir",
        help="the WebUI's models/magicnaming: the YuNet file is looked for in detectors/" + models_dir_also,
    )
    parser.add_argument(
        "--allow-download", action="store_true",
        help=f"fetch a missing YuNet file into MODELS_DIR/detectors{downloads_also}",
    )
    parser.add_argument(
        "--insightface-root", help="folder holding models/<pack>/ (the WebUI's models/insightface)"
    )
    parser.add_argument(
        "--pack", default=DEFAULT_PACK,
        help="insightface pack: its detector with --detector insightface, its recognition model with "
        "--recognition-model pack",
    )
    parser.add_argument(
        "--assume-cropped", action="store_true", help="no detector: each image's centred square is the face"
    )


def build_detector(args: argparse.Namespace, *, use_cuda: bool, load: bool = True) -> FaceDetector | None:
    """The detector the options ask for (None with ``--assume-cropped``), loaded unless ``load`` is False.

    Without loading, a missing file, pack or package is still named (TrainingError saying what to pass).
    """
    if args.assume_cropped:
        return None
    if args.detector == "insightface":
        if not args.insightface_root:
            raise TrainingError(
                "--detector insightface needs --insightface-root (the folder holding models/<pack>)"
            )
        detector = InsightFaceDetector(args.insightface_root, args.pack, use_cuda=use_cuda)
        if not detector.is_installed():
            raise TrainingError(missing_pack_message(args.insightface_root, args.pack))
        if not insightface_installed():
            raise TrainingError(INSIGHTFACE_MISSING)
    elif args.yunet_file:
        detector = YuNetDetector(model_path=args.yunet_file)
        if detector.find_model() is None:
            raise TrainingError(f"--yunet-file not found: {args.yunet_file}")
    elif args.models_dir:
        detector = YuNetDetector(Path(args.models_dir) / "detectors", allow_download=args.allow_download)
        if detector.find_model() is None and not args.allow_download:
            raise TrainingError(missing_file_message(detector.spec, detector.folder))
    else:
        raise TrainingError(
            "the YuNet face detector needs its file: --models-dir (the WebUI's models/magicnaming; the "
            "file is looked for in its detectors/, fetched with --allow-download) or --yunet-file; or use "
            "--detector insightface --insightface-root, or --assume-cropped"
        )
    return detector.load() if load else detector
