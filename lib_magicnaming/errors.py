"""The library's errors. Each message is written for the person who caused it: it names the problem."""


class MagicNamingError(Exception):
    """Base of every error this library raises on purpose."""


class TagError(MagicNamingError):
    """A malformed ``<name:...>`` tag in a prompt; ``.span`` is its (start, end) in the prompt, or None."""

    def __init__(self, message: str, span: tuple[int, int] | None = None):
        super().__init__(message)
        self.span = span


class IdentityError(MagicNamingError):
    """A bad identity name, a bad identity file, or an operation the library refuses."""


class IdentityNotFound(IdentityError):
    """No saved identity has this name (or hash); ``.name`` is the name (or hash) asked for."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


class IdentityExists(IdentityError):
    """An identity of this name exists and overwriting was not asked for; ``.name`` is the name."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


class StrengthError(MagicNamingError):
    """A strength that is not a number from STRENGTH_MIN to STRENGTH_MAX (``lib_magicnaming.tags``).

    ``.problem`` completes the phrase "the strength ...", so each caller can say where the strength was.
    """

    def __init__(self, problem: str):
        super().__init__(f"The strength {problem}.")
        self.problem = problem


class SpliceError(MagicNamingError):
    """Conditioning of a shape an identity cannot be spliced into."""


class EncoderError(MagicNamingError):
    """An encoder checkpoint, tower file or model that cannot be used."""


class FaceError(MagicNamingError):
    """A photo with no usable face, a bad image, or a missing face detector."""


class DetectorUnavailable(EncoderError, FaceError):
    """The face detector cannot run: its model file or pack is missing or unusable, or its package is not
    installed. A problem of the setup, not of the photo (an EncoderError first: HTTP 503, not 422)."""


class NamespaceError(MagicNamingError):
    """Bad input to name-space math: weights, a weighted-names text, embeddings that cannot be mixed."""


class NamespaceFileError(EncoderError):
    """A name-space statistics file (``lib_magicnaming.namespace_cache``) that is damaged, of another
    version or kind, or cannot be written. A problem of the server's files, not of the request (HTTP 503)."""


class Interrupted(EncoderError):
    """Long work outside a generation (measuring a name space) stopped by the WebUI's Interrupt; nothing of it
    was kept. Not the request's fault (HTTP 503: try again)."""
