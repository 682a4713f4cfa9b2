"""The WebUI adapter's one logger, ``logging.getLogger("magicnaming")``, and its way into the WebUI's console.

AUTOMATIC1111 v1.10.1 sets up logging only when started with ``--loglevel`` or ``SD_WEBUI_LOG_LEVEL``
(``modules/logging_config.py``, called from ``modules/launch_utils.py``): one handler on the root logger,
lines formatted as ``<time> <LEVEL> [<logger>] <message>``. Then our records propagate to that handler and
print its way. Otherwise the root logger has no handler, and Python would print our warnings bare (no time,
level or logger name). :func:`install_console_handler` gives our logger one handler of its own with the
WebUI's format, which prints only while the root logger has no handler, so no record prints twice. The
level is the WebUI's: warnings and errors by default, more with ``--loglevel``.
"""

from __future__ import annotations

import logging
import sys

from lib_magicnaming.errors import MagicNamingError

LOGGER_NAME = "magicnaming"
logger = logging.getLogger(LOGGER_NAME)

CONSOLE_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
CONSOLE_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
"""The WebUI's console format (modules/logging_config.py, v1.10.1)."""
CONSOLE_HANDLER_NAME = "magicnaming-console"
"""Found by name, not class: a script reload may import this module again, with a new class."""


class ConsoleHandler(logging.Handler):
    """Writes records to the console (``sys.stderr``, as the WebUI's handler) while the root logger has no
    handler of its own; when it has one, the record reaches it by propagation instead."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # logging's own rule: a failing handler reports through handleError, never raises
            self.handleError(record)


def install_console_handler() -> None:
    """Add :class:`ConsoleHandler` to the ``magicnaming`` logger, once per process (reloads included)."""
    if any(handler.get_name() == CONSOLE_HANDLER_NAME for handler in logger.handlers):
        return
    handler = ConsoleHandler()
    handler.set_name(CONSOLE_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(CONSOLE_FORMAT, CONSOLE_DATE_FORMAT))
    logger.addHandler(handler)


def log_skipped(what: str, error: BaseException) -> None:
    """Log that ``what`` was skipped because of ``error``: one line for a MagicNamingError (its message names
    the problem), the traceback too for any other error (a bug to report)."""
    exc_info = None if isinstance(error, MagicNamingError) else error
    logger.warning("%s: %s", what, error, exc_info=exc_info)
