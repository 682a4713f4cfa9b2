"""The identity use cases: everything the MagicNaming tab and the REST API do with identities, in one place.

:class:`IdentityUseCases` makes identities (from names, a mix of saved ones, face photos, a name-space
sample), renames, deletes, imports, exports, lists and reads them, over one :class:`.services.Services`
bag. Making one follows the same steps whoever asks: check the name and that it is free (unless
overwriting) before any costly work, do the work (under the WebUI's queue lock when it runs a model), save.
Failures are MagicNamingErrors whose message names the problem; the REST API (:mod:`.api`) maps them to HTTP
statuses (:mod:`.http_status`) and requests to calls, the tab (:mod:`.tab_actions`) maps them to messages
and its events to calls; neither adds rules of its own.

``progress``, where taken, is called as ``progress(fraction, desc=text)`` (gradio's ``gr.Progress``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib_magicnaming.errors import IdentityError, IdentityExists, MagicNamingError
from lib_magicnaming.tags import validate_identity_name
from lib_magicnaming.webui.encoder_cache import EncoderStatus
from lib_magicnaming.webui.job_progress import Progress, no_progress
from lib_magicnaming.webui.sampling import CHECKPOINT_SOURCE, SamplingUseCases
from lib_magicnaming.webui.services import Services

if TYPE_CHECKING:
    from lib_magicnaming.encode import EncodeResult, PhotoReport
    from lib_magicnaming.identity import Identity
    from lib_magicnaming.identity_file import IdentityInfo
    from lib_magicnaming.identity_library import IdentityLibrary

WeightedNames = Sequence[tuple[str, float]]


def photo_report_json(report: PhotoReport) -> dict[str, Any]:
    """One photo's report (``encode.PhotoReport``) as JSON: face found, detector score, notes, ..."""
    crop = report.crop
    return {
        "index": report.index,
        "photo_hash": report.photo_hash,
        "face_found": report.face_found,
        "faces_found": report.faces_found,
        "score": None if crop is None or crop.score is None else round(float(crop.score), 4),
        "box": None if crop is None or crop.box is None else [round(float(v), 1) for v in crop.box],
        "provider": None if crop is None else crop.provider,
        "detector": None if crop is None else crop.detector,
        "distance_from_mean": report.distance_from_mean,
        "cached": report.cached,
        "notes": list(report.notes),
        "error": report.error,
    }


def _check_image(photo: bytes, index: int) -> None:
    """MagicNamingError (a bad request, not an unusable face) naming the photo unless it opens as an image."""
    from lib_magicnaming.errors import FaceError
    from lib_magicnaming.face import load_image

    try:
        load_image(photo)
    except FaceError as error:
        raise MagicNamingError(f"photo {index + 1}: {error}") from error


class IdentityUseCases:
    """What can be done with identities (module docstring); one per :class:`.services.Services` bag."""

    def __init__(self, services: Services):
        self.services = services

    # -- reading

    def list(self) -> list[IdentityInfo]:
        """Every saved identity, from the file headers, sorted by key."""
        return self.services.library().list()

    def info(self, name: str) -> IdentityInfo:
        """One saved identity's header (IdentityNotFound when there is none)."""
        return self.services.library().get_info(name)

    def load(self, name: str) -> Identity:
        """One saved identity with its embedding and thumbnail (IdentityNotFound when there is none)."""
        return self.services.library().load(name)

    def encoder_status(self) -> EncoderStatus:
        """What the photo encoder needs and has."""
        return self.services.encoder_status()

    # -- creating

    def _library_for_new(self, name: str, overwrite: bool) -> IdentityLibrary:
        """The library, once ``name`` is a legal name that is free or may be overwritten (IdentityExists)."""
        validate_identity_name(name)
        library = self.services.library()
        if not overwrite and library.exists(name):
            raise IdentityExists(
                f"an identity named {name!r} already exists; choose another name or overwrite", name
            )
        return library

    def create_from_names(
        self, name: str, weighted: WeightedNames, method: str = "linear", *, overwrite: bool = False,
        progress: Progress = no_progress,
    ) -> IdentityInfo:
        """Save an identity made from weighted names by the loaded checkpoint's SDXL text encoders."""
        from lib_magicnaming.identity import Identity
        from lib_magicnaming.namespace import identity_from_names

        library = self._library_for_new(name, overwrite)
        progress(0.3, desc="Encoding names with the SDXL text encoders")
        with self.services.queue_lock():
            embedding = identity_from_names(self.services.encode_texts, weighted, method=method)
        origin = {"kind": "names", "names": [[text, float(weight)] for text, weight in weighted]}
        return library.save(Identity(name, embedding, origin), overwrite=bool(overwrite))

    def create_mix(
        self, name: str, weighted: WeightedNames, method: str = "linear", *, overwrite: bool = False
    ) -> IdentityInfo:
        """Save a mix of saved identities; its origin records each one's name, hash and weight."""
        from lib_magicnaming.identity import Identity
        from lib_magicnaming.namespace import mix_embeddings

        library = self._library_for_new(name, overwrite)
        sources = [library.load(source) for source, _ in weighted]
        weights = [float(weight) for _, weight in weighted]
        embedding = mix_embeddings([source.embedding for source in sources], weights, method=method)
        pairs = zip(sources, weights, strict=True)
        mixed = [[source.name, source.short_hash, weight] for source, weight in pairs]
        origin = {"kind": "mix", "identities": mixed, "method": method}
        return library.save(Identity(name, embedding, origin), overwrite=bool(overwrite))

    def encode_photos(
        self, photos: Sequence[bytes], *, assume_cropped: bool = False, skip_failed: bool = False,
        progress: Progress = no_progress,
    ) -> EncodeResult:
        """Detect the faces and encode the photos (one person) into one embedding, under the queue lock; a
        photo without a usable face is reported and left out with ``skip_failed``, else a FaceError."""
        progress(0.1, desc="Loading the MagicNaming encoder")
        encoder = self.services.encoder()
        progress(0.4, desc=f"Encoding {len(photos)} photo(s)")
        with self.services.queue_lock():
            return encoder.encode_photos(
                photos, assume_cropped=bool(assume_cropped), skip_failed=bool(skip_failed)
            )

    def create_from_encoded(
        self, name: str, result: EncodeResult, *, overwrite: bool = False
    ) -> IdentityInfo:
        """Save an :meth:`encode_photos` result (origin 'photos'; the first face crop is its thumbnail)."""
        from lib_magicnaming.identity import Identity

        library = self._library_for_new(name, overwrite)
        origin = {"kind": "photos", "encoder_hash": result.encoder_hash, "photo_hashes": result.photo_hashes}
        identity = Identity(name, result.embedding, origin, thumbnail=result.thumbnail)
        return library.save(identity, overwrite=bool(overwrite))

    def create_from_photos(
        self, name: str, photos: Sequence[bytes], *, assume_cropped: bool = False, skip_failed: bool = False,
        overwrite: bool = False,
    ) -> tuple[IdentityInfo, EncodeResult]:
        """Encode face photos and save them as one identity: (its header, the per-photo report).

        The name and every photo (it must open as an image) are checked before the encoder loads.
        """
        self._library_for_new(name, overwrite)
        for index, photo in enumerate(photos):
            _check_image(photo, index)
        result = self.encode_photos(photos, assume_cropped=assume_cropped, skip_failed=skip_failed)
        return self.create_from_encoded(name, result, overwrite=overwrite), result

    def create_sampled(
        self, name: str, seed: int, scale: float = 1.0, *, source: str = CHECKPOINT_SOURCE,
        overwrite: bool = False, thumbnail: Any = None, progress: Progress = no_progress,
    ) -> IdentityInfo:
        """Save a fictional person (:meth:`.sampling.SamplingUseCases.sample`): from the loaded checkpoint's
        name space (``source="checkpoint"``, measured on first use) or the encoder checkpoint's statistics
        (``"encoder"``). The name, seed, scale and source are checked before any work (a bad scale is the
        caller's mistake, HTTP 400, not "encoder unavailable"). ``thumbnail``: usually the chosen candidate's
        portrait."""
        from lib_magicnaming.identity import Identity

        library = self._library_for_new(name, overwrite)
        sampled = SamplingUseCases(self.services).sample(seed, scale, source, progress)
        identity = Identity(name, sampled.embedding, sampled.origin, thumbnail=thumbnail)
        return library.save(identity, overwrite=bool(overwrite))

    # -- managing

    def rename(self, old: str, new: str) -> IdentityInfo:
        """Rename a saved identity (its file moves; the embedding and hash stay)."""
        return self.services.library().rename(old, new)

    def delete(self, name: str) -> None:
        """Delete a saved identity."""
        self.services.library().delete(name)

    def import_files(
        self, contents: Sequence[bytes], *, name: str | None = None, overwrite: bool = False
    ) -> list[IdentityInfo]:
        """Import identity files (their bytes), in order; ``name`` renames a single file.

        A file that cannot be imported stops the import with its error, its message naming the file by
        position and the identities imported before it.
        """
        if not contents:
            raise IdentityError("no identity files to import")
        if name and len(contents) > 1:
            raise IdentityError("A new name works for one file at a time")
        library = self.services.library()
        imported: list[IdentityInfo] = []
        with tempfile.TemporaryDirectory(prefix="magicnaming-import-") as folder:
            for index, data in enumerate(contents):
                path = Path(folder) / f"import-{index}.safetensors"
                path.write_bytes(data)
                try:
                    imported.append(library.import_file(path, name=name or None, overwrite=bool(overwrite)))
                except MagicNamingError as error:
                    before = ", ".join(info.name for info in imported)
                    done = f" (imported before it: {before})" if before else ""
                    # the same error (its type sets the HTTP status), its message placed in the batch
                    error.args = (f"File {index + 1}: {error}{done}",)
                    raise
        return imported

    def export(self, name: str, folder: Path, *, overwrite: bool = False) -> Path:
        """Write the identity's file into ``folder`` (made if missing); the file's path."""
        try:
            folder.mkdir(exist_ok=True)
            return self.services.library().export_file(name, folder, overwrite=overwrite)
        except OSError as error:
            raise IdentityError(f"Cannot write the export to {folder}: {error}") from error
