"""Stand-in for modules/errors.py: ``report`` prints an error and its traceback and carries on."""

import sys
import traceback


def report(message: str, *, exc_info: bool = False) -> None:
    """Print ``message`` (and the current exception) to stderr, as the WebUI does for a failing hook."""
    print(f"*** {message}", file=sys.stderr)
    if exc_info:
        print(traceback.format_exc(), file=sys.stderr)


def display(e: Exception, task: str, **kwargs) -> None:
    """Print an exception raised while doing ``task``."""
    print(f"{task or 'error'}: {type(e).__name__}: {e}", file=sys.stderr)
