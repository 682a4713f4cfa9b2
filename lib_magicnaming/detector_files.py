"""The face detector's model file: where it is looked for, and its one download, checked against a pin.

YuNet 2023mar (opencv_zoo ``models/face_detection_yunet``, MIT licence) is one 227 KiB ONNX file. It is
looked for in the detectors folder (``models/magicnaming/detectors/`` in the WebUI) under its opencv_zoo
name or a short name other tools give it; a file is used only when its size and SHA-256 are the pinned ones
(taken from the Git LFS pointer of that file in opencv/opencv_zoo). When it is absent it is downloaded, once,
from opencv_zoo's published location, and only when a face is to be detected (never at import or start-up):
the bytes go to a temporary file beside the final name and get that name only after the size and hash
check passed (:mod:`lib_magicnaming.atomic`), so a cut connection or a wrong file never leaves anything
under the final name. Without a network the error names the file, the address and the folder to put it in.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lib_magicnaming.atomic import write_atomic
from lib_magicnaming.errors import DetectorUnavailable

logger = logging.getLogger("magicnaming")


@dataclass(frozen=True)
class PinnedFile:
    """A model file known by its exact content: name, size in bytes, SHA-256, and where it is published."""

    name: str
    size: int
    sha256: str
    url: str
    aliases: tuple[str, ...] = ()
    """Other file names the same file goes by in other tools; looked for after ``name``."""
    description: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """Every file name it is looked for under, its own first."""
        return (self.name, *self.aliases)


YUNET_2023MAR = PinnedFile(
    name="face_detection_yunet_2023mar.onnx",
    size=232589,
    sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    url=(
        "https://github.com/opencv/opencv_zoo/raw/f12e12798e8314f7c074a6656816c048dcc95b7a/"
        "models/face_detection_yunet/face_detection_yunet_2023mar.onnx"
    ),
    aliases=("yunet_2023mar.onnx", "yunet_2023_mar.onnx", "yunet.onnx"),
    description="OpenCV's YuNet face detector (opencv_zoo, MIT licence)",
)
"""The face detector file (opencv_zoo commit f12e127, "update yunet to v2"); size and SHA-256 from its Git
LFS pointer."""

DOWNLOAD_TIMEOUT_S = 20.0
"""Seconds a connection or a read may wait before the download gives up (it then says what to do)."""
_CHUNK = 1 << 16

Progress = Callable[[int, int], None]
"""``progress(received_bytes, total_bytes)``, called as a download goes."""


def file_matches(path: Path, spec: PinnedFile) -> bool:
    """Whether ``path`` is a file of exactly the pinned size and SHA-256."""
    try:
        if path.stat().st_size != spec.size:
            return False
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == spec.sha256


def find_file(spec: PinnedFile, folder: str | os.PathLike) -> Path | None:
    """The first of ``spec.names`` in ``folder`` whose content is the pinned one; None when there is none.

    A file with a known name but other content (a damaged download, another version) is skipped with a
    warning naming it.
    """
    for name in spec.names:
        path = Path(folder) / name
        if not path.is_file():
            continue
        if file_matches(path, spec):
            return path
        logger.warning(
            "MagicNaming: %s is not %s (size or SHA-256 differ from the pinned %s bytes, %s...); ignored. "
            "Delete it to let MagicNaming download the right file.",
            path, spec.name, spec.size, spec.sha256[:12],
        )
    return None


def missing_file_message(spec: PinnedFile, folder: str | os.PathLike, reason: str | None = None) -> str:
    """What to do when the file is absent and could not (or may not) be downloaded."""
    why = f"could not be downloaded ({reason})" if reason else "is not there and downloading it is off"
    return (
        f"The face detector file {spec.name} ({spec.description}, {spec.size:,} bytes) {why}. "
        f"Download it from {spec.url} and put it in {Path(folder)}, or tick the 'face crop already "
        "(skip detection)' box to use photos as given."
    )


def console_progress(spec: PinnedFile, stream=None) -> Progress:
    """A progress line on the console (stderr, where the WebUI's download bars go), rewritten in place."""
    out = stream or sys.stderr

    def show(received: int, total: int) -> None:
        percent = 100 * received // max(1, total)
        end = "\n" if received >= total else ""
        kib = f"{received >> 10}/{total >> 10} KiB"
        out.write(f"\rMagicNaming: downloading {spec.name}: {percent:3d}% ({kib}){end}")
        out.flush()

    return show


def download_file(
    spec: PinnedFile,
    folder: str | os.PathLike,
    *,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    progress: Progress | None = None,
) -> Path:
    """Download ``spec.url`` into ``folder/spec.name`` atomically, refusing any other size or SHA-256.

    Raises DetectorUnavailable saying what to do (with the address and the folder) when the network fails
    or the bytes are not the pinned file; nothing is then left under the final name.
    """
    target = Path(folder) / spec.name
    show = progress or console_progress(spec)
    logger.info("MagicNaming: downloading %s from %s into %s", spec.name, spec.url, target.parent)

    def fetch(temp: Path) -> None:
        digest, received = hashlib.sha256(), 0
        request = urllib.request.Request(spec.url, headers={"User-Agent": "sd-webui-magicnaming"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(temp, "wb") as out:
            announced = response.headers.get("Content-Length")
            if announced and announced.isdigit() and int(announced) != spec.size:
                raise _refused(spec, target, f"the server announced {int(announced):,} bytes")
            show(0, spec.size)
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > spec.size:
                    raise _refused(spec, target, f"the server sent more than {spec.size:,} bytes")
                digest.update(chunk)
                out.write(chunk)
                show(received, spec.size)
        if received != spec.size:
            raise _refused(spec, target, f"the download stopped after {received:,} of {spec.size:,} bytes")
        if digest.hexdigest() != spec.sha256:
            raise _refused(spec, target, f"its SHA-256 is {digest.hexdigest()}")

    try:
        write_atomic(target, fetch)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        http_error = isinstance(error, urllib.error.HTTPError)
        reason = error if http_error else getattr(error, "reason", None) or error
        logger.warning("MagicNaming: downloading %s failed: %s", spec.name, reason)
        raise DetectorUnavailable(missing_file_message(spec, target.parent, str(reason))) from error
    logger.info("MagicNaming: %s saved to %s", spec.name, target)
    return target


def _refused(spec: PinnedFile, target: Path, what: str) -> DetectorUnavailable:
    logger.warning("MagicNaming: refused the download of %s: %s", spec.name, what)
    return DetectorUnavailable(
        f"The download of {spec.name} from {spec.url} was refused: {what}, not the pinned {spec.size:,} "
        f"bytes with SHA-256 {spec.sha256}. Nothing was saved. Download the file yourself and put it in "
        f"{target.parent}."
    )


def ensure_file(
    spec: PinnedFile,
    folder: str | os.PathLike,
    *,
    allow_download: bool,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    progress: Progress | None = None,
) -> Path:
    """The pinned file in ``folder``: found, or downloaded when allowed; DetectorUnavailable otherwise."""
    found = find_file(spec, folder)
    if found is not None:
        return found
    if not allow_download:
        raise DetectorUnavailable(missing_file_message(spec, folder))
    return download_file(spec, folder, timeout=timeout, progress=progress)
