"""New people without an encoder: the sampling use cases, behind the tab's Sample section and the REST API.

The loaded checkpoint's name space (:mod:`lib_magicnaming.namespace_cache`) is the default source of
fictional people: it is measured on first use (never at start-up) under the WebUI's queue lock, with the
checkpoint's own text encoders (``Services.encode_texts``, the path that makes identities from names), its
progress shown as a WebUI job (``Services.job``: shared.state, a console bar, the tab's bar; the WebUI's
Interrupt stops it), and read from its cache file afterwards. An encoder checkpoint's statistics are the
other source. A sampled identity's origin records its source (checkpoint hash + names-list hash, or encoder
hash), seed and scale; the same seed, scale and source give the same person.
:meth:`SamplingUseCases.candidates` draws N of them as portraits in one batch through the WebUI's txt2img
(:mod:`.portraits`) so the user picks one; any saved identity can be drawn the same way and the portrait made
its thumbnail. :meth:`SamplingUseCases.nearest` names the listed people closest to an identity, from the
cached name space only (it never starts the measurement).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lib_magicnaming.errors import EncoderError, IdentityError, MagicNamingError
from lib_magicnaming.nearest import NEAREST_COUNT, NearestName
from lib_magicnaming.webui.job_progress import Progress, no_progress
from lib_magicnaming.webui.limits import LIMITS, Limits, check_candidates, check_name_chunks
from lib_magicnaming.webui.log import logger
from lib_magicnaming.webui.portraits import DrawJob, PortraitSettings
from lib_magicnaming.webui.services import Services

if TYPE_CHECKING:
    from PIL.Image import Image

    from lib_magicnaming.identity_file import IdentityInfo
    from lib_magicnaming.namespace_cache import CheckpointNamespace

CHECKPOINT_SOURCE = "checkpoint"
ENCODER_SOURCE = "encoder"
SOURCES = (CHECKPOINT_SOURCE, ENCODER_SOURCE)
"""Where a sampled person comes from: the loaded checkpoint's name space (default), or the encoder's."""
CANDIDATE_NAME = "candidate-{number}"
"""The tag name of the n-th candidate in its portrait's prompt (it lives on the processing object only)."""
DEFAULT_CANDIDATES = 4
NAMESPACE_JOB = "MagicNaming: measuring the name space"
"""The WebUI job (shared.state, console bar) of measuring a checkpoint's name space, one step a name."""


@dataclass(frozen=True)
class Sampled:
    """A person drawn from a source: the embedding (8, 2048) and the origin that says how."""

    seed: int
    scale: float
    embedding: torch.Tensor
    origin: dict


@dataclass(frozen=True)
class Candidate:
    """One candidate of Sample: the person and their portrait."""

    sampled: Sampled
    portrait: Image

    @property
    def short_hash(self) -> str:
        from lib_magicnaming.identity import embedding_hash

        return embedding_hash(self.sampled.embedding.half())  # as the library stores it (float16)


@dataclass(frozen=True)
class NearestNames:
    """The listed names nearest to an identity, and which name space says so."""

    names: list[NearestName]
    checkpoint_hash: str
    checkpoint_title: str
    names_list_hash: str

    def to_dict(self) -> dict:
        """JSON form, for the REST API."""
        return {
            "names": [item.to_dict() for item in self.names], "checkpoint_hash": self.checkpoint_hash,
            "checkpoint": self.checkpoint_title, "names_list_hash": self.names_list_hash,
        }

    def text(self) -> str:
        """``Ada Lovelace (0.81), Alan Turing (0.77), ...``"""
        return ", ".join(f"{item.name} ({item.cosine:.2f})" for item in self.names)


def check_source(source: str) -> str:
    """``source`` if it is one of SOURCES; MagicNamingError (a bad request) otherwise."""
    if source not in SOURCES:
        raise MagicNamingError(f"the sample source must be {' or '.join(map(repr, SOURCES))}, not {source!r}")
    return source


def check_scale(scale: Any) -> float:
    """``scale`` as a float >= 0; MagicNamingError (a bad request) otherwise."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(float(scale)) \
            or float(scale) < 0:
        raise MagicNamingError(f"the scale must be a finite number >= 0, not {scale!r}")
    return float(scale)


def check_seed(seed: Any) -> int:
    """``seed`` as an int; MagicNamingError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MagicNamingError(f"the seed must be a whole number, not {seed!r}")
    return seed


class SamplingUseCases:
    """Sampling fictional people, their portraits, and nearest known names (module docstring)."""

    def __init__(self, services: Services, limits: Limits = LIMITS):
        self.services = services
        self.limits = limits

    # -- the loaded checkpoint's name space

    def cached_namespace(self) -> CheckpointNamespace | None:
        """The loaded checkpoint's name space if it has been measured with the configured list, else None.
        Never measures it, never hashes a checkpoint file (safe in a library view)."""
        try:
            checkpoint = self.services.loaded_checkpoint(compute_hash=False)
            return self.services.namespace_cache().load(checkpoint, self.services.names_list())
        except EncoderError:
            return None

    def namespace(self, progress: Progress = no_progress) -> CheckpointNamespace:
        """The loaded checkpoint's name space: from its cache file, or measured now (once) under the queue
        lock and cached; the WebUI's checkpoint is loaded first if it is not yet (the WebUI's own way).
        EncoderError when no SDXL checkpoint can be had or the names list is unusable."""
        cache = self.services.namespace_cache()
        names_list = self.services.names_list()
        try:
            found = cache.load(self.services.loaded_checkpoint(), names_list)
        except EncoderError:  # no checkpoint loaded yet, or not an SDXL one: decided under the lock
            found = None
        if found is not None:
            return found
        self._check_listed_names(names_list)
        progress(0.0, desc="Waiting for the WebUI's queue")
        with self.services.queue_lock():
            # loaded now if the WebUI has not yet; the model cannot change while the lock is held
            checkpoint = self.services.loaded_checkpoint(load=True)
            found = cache.load(checkpoint, names_list)  # measured by another request while this one waited
            if found is not None:
                return found
            return self._measure(cache, checkpoint, names_list, progress)

    def _check_listed_names(self, names_list: Any) -> None:
        """Each listed name fits in one prompt chunk (counted by the loaded checkpoint's tokenizer, no model
        work), so measuring costs one chunk of the text encoders per name: checked before the queue lock.
        EncoderError (the names-list setting is a problem of the setup) naming the name."""
        try:
            check_name_chunks(names_list.names, self.services.count_chunks, self.limits)
        except MagicNamingError as error:
            raise EncoderError(f"the MagicNaming names-list setting: names list {names_list.label}: "
                               f"{error}") from error

    def _measure(
        self, cache: Any, checkpoint: Any, names_list: Any, progress: Progress
    ) -> CheckpointNamespace:
        from lib_magicnaming.namespace_cache import compute_checkpoint_namespace

        logger.warning(
            "measuring the name space of %s [%s] with %d names of %s (once per checkpoint and list; "
            "minutes on a CPU, seconds on a GPU; the WebUI's queue waits)",
            checkpoint.title, checkpoint.short_hash, len(names_list.names), names_list.label,
        )
        with self.services.job(NAMESPACE_JOB, len(names_list.names), progress) as report:
            namespace = compute_checkpoint_namespace(
                self.services.encode_texts, names_list, checkpoint, progress=report
            )
        path = cache.save(namespace)
        logger.warning("measured the name space of %s in %.1f s; cached in %s", checkpoint.title,
                       namespace.seconds, path)
        return namespace

    def namespace_status(self) -> str:
        """One line: whether the loaded checkpoint's name space is measured, and with how many names."""
        try:
            checkpoint = self.services.loaded_checkpoint(compute_hash=False)
        except EncoderError as error:
            return f"Name space: {error}"
        namespace = self.cached_namespace()
        if namespace is None:
            return (f"Name space of {checkpoint.title}: not measured yet; the first Sample measures it once "
                    "(minutes on a CPU, seconds on a GPU)")
        return (f"Name space of {checkpoint.title} [{namespace.checkpoint_hash}]: {len(namespace.names)} "
                f"names, rank {namespace.stats.rank}, measured {namespace.created} in "
                f"{namespace.seconds:.0f} s")

    # -- sampling

    def sample(
        self, seed: int, scale: float = 1.0, source: str = CHECKPOINT_SOURCE,
        progress: Progress = no_progress,
    ) -> Sampled:
        """One fictional person from ``source``; the same seed, scale and source give the same values."""
        seed, scale, source = check_seed(seed), check_scale(scale), check_source(source)
        return self._sample_many([seed], scale, source, progress)[0]

    def _sample_many(
        self, seeds: Sequence[int], scale: float, source: str, progress: Progress
    ) -> list[Sampled]:
        if source == ENCODER_SOURCE:
            progress(0.1, desc="Loading the MagicNaming encoder")
            encoder = self.services.encoder()
            people = [encoder.make_sampled_identity("sampled", seed, scale) for seed in seeds]
            pairs = zip(seeds, people, strict=True)
            return [Sampled(seed, scale, person.embedding, person.origin) for seed, person in pairs]
        namespace = self.namespace(progress)
        return [Sampled(seed, scale, namespace.sample(seed, scale), namespace.sample_origin(seed, scale))
                for seed in seeds]

    # -- portraits

    def candidates(
        self, seed: int, count: int = DEFAULT_CANDIDATES, scale: float = 1.0, source: str = CHECKPOINT_SOURCE,
        portrait: PortraitSettings = PortraitSettings(), progress: Progress = no_progress,
    ) -> list[Candidate]:
        """``count`` people (seeds ``seed`` .. ``seed + count - 1``) drawn as portraits in one batch."""
        seed, scale, source = check_seed(seed), check_scale(scale), check_source(source)
        count = check_candidates(count, self.limits)
        portrait.validate()
        people = self._sample_many([seed + offset for offset in range(count)], scale, source, progress)
        names = [CANDIDATE_NAME.format(number=index + 1) for index in range(count)]
        images = self._draw(list(zip(names, [person.embedding for person in people], strict=True)), portrait,
                            progress)
        return [Candidate(person, image) for person, image in zip(people, images, strict=True)]

    def draw_portrait(
        self, name: str, portrait: PortraitSettings = PortraitSettings(), progress: Progress = no_progress
    ) -> tuple[Image, IdentityInfo]:
        """A portrait of the saved identity ``name``, and its header (the short hash it was drawn from)."""
        portrait.validate()
        library = self.services.library()
        identity = library.load(name)
        info = library.get_info(name)
        (image,) = self._draw([(identity.name, identity.embedding)], portrait, progress)
        return image, info

    def _draw(self, identities: list[tuple[str, torch.Tensor]], portrait: PortraitSettings,
              progress: Progress) -> list[Image]:
        job = DrawJob(tuple(identities), portrait)
        progress(0.5, desc=f"Drawing {len(identities)} portrait(s) with the loaded checkpoint")
        with self.services.queue_lock():
            images = list(self.services.draw(job))
        if len(images) != len(identities):
            raise MagicNamingError(f"{len(images)} portrait(s) came back for {len(identities)} identities")
        return images

    def set_thumbnail(self, name: str, image: Image, expected_hash: str | None = None) -> IdentityInfo:
        """Make ``image`` the thumbnail of the saved identity ``name`` (its embedding and hash stay; its file
        is rewritten at the same precision). With ``expected_hash``, refuse if the identity changed since
        the portrait was drawn."""
        library = self.services.library()
        identity = library.load(name)
        info = library.get_info(name)
        if expected_hash and info.short_hash != expected_hash:
            raise IdentityError(
                f"{name!r} changed since its portrait was drawn (hash {info.short_hash}, was "
                f"{expected_hash}): draw it again"
            )
        if image is None:
            raise MagicNamingError("no portrait to use: draw one first")
        dtype = torch.float32 if info.dtype == "float32" else torch.float16
        return library.save(dataclasses.replace(identity, thumbnail=image), overwrite=True, dtype=dtype)

    # -- nearest known names

    def nearest(self, embedding: torch.Tensor, count: int = NEAREST_COUNT) -> NearestNames | None:
        """The listed names nearest to ``embedding`` in the loaded checkpoint's measured name space; None
        while it is not measured (this never measures it)."""
        namespace = self.cached_namespace()
        if namespace is None:
            return None
        return NearestNames(namespace.nearest(embedding, count), namespace.checkpoint_hash,
                            namespace.checkpoint_title, namespace.names_list_short_hash)

    def nearest_to_saved(self, name: str, count: int = NEAREST_COUNT) -> NearestNames | None:
        """:meth:`nearest` for the saved identity ``name`` (IdentityNotFound when there is none)."""
        return self.nearest(self.services.library().load(name).embedding, count)


NOT_MEASURED_NOTE = (
    "the loaded checkpoint's name space is not measured yet: sample once (tab or POST "
    "/magicnaming/v1/identities/sample) to measure it"
)
